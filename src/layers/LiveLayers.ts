/**
 * The live stack, in two sizes, both read through `CompanionConfig` (or given one):
 *
 * - `store`: the ModelStore alone (HTTPS downloader, the real file system): what `pull` needs, on a
 *   machine without `setpriv` or `nvidia-smi`;
 * - `layer`: the RuntimeManager (of the first model) and the ModelStore with every service under
 *   them: the spawner (`setpriv` required), health probe and resource stat;
 * - `pool`: the same with the ModelPool of every configured model instead of one manager: what the
 *   gateway needs.
 *
 * `TestLayers` provides the same services in memory.
 */
import { NodeContext, NodeHttpClient } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import { type CompanionConfig, readConfig } from "../config/Config.js"
import * as DownloaderLive from "./DownloaderLive.js"
import * as HealthProbeLive from "./HealthProbeLive.js"
import * as ModelPoolLive from "./ModelPoolLive.js"
import * as ModelStoreLive from "./ModelStoreLive.js"
import * as ResourceStatLive from "./ResourceStatLive.js"
import * as RuntimeManagerLive from "./RuntimeManagerLive.js"
import * as SpawnerLive from "./SpawnerLive.js"
import * as StoreFileSystemLive from "./StoreFileSystemLive.js"

/** ModelStore, Downloader, StoreFileSystem. */
export const storeFrom = (config: CompanionConfig) =>
  ModelStoreLive.layer(ModelStoreLive.optionsFrom(config)).pipe(
    Layer.provideMerge(Layer.mergeAll(DownloaderLive.layerFrom(config), StoreFileSystemLive.layer)),
    Layer.provide(NodeContext.layer)
  )

/** What the managers need: the store and the spawner, health probe and resource stat. */
const runtimeFrom = <A, E, R>(config: CompanionConfig, top: Layer.Layer<A, E, R>) =>
  top.pipe(
    Layer.provideMerge(storeFrom(config)),
    Layer.provideMerge(Layer.mergeAll(
      SpawnerLive.layer(SpawnerLive.optionsFrom(config)),
      HealthProbeLive.layer(config.runtime.kind, config.health.probeTimeout),
      ResourceStatLive.layer
    )),
    Layer.provide(Layer.mergeAll(NodeContext.layer, NodeHttpClient.layerUndici))
  )

/** RuntimeManager (the first model's) and ModelStore, with Downloader, StoreFileSystem, Spawner, HealthProbe and ResourceStat. */
export const layerFrom = (config: CompanionConfig) => runtimeFrom(config, RuntimeManagerLive.layer(RuntimeManagerLive.configFrom(config)))

/** ModelPool (every model, one budget) and ModelStore, with the same services under them. */
export const poolFrom = (config: CompanionConfig) => runtimeFrom(config, ModelPoolLive.layer(config))

/** `storeFrom`, configured from `Config`. */
export const store = Layer.unwrapEffect(Effect.map(readConfig, storeFrom))

/** `layerFrom`, configured from `Config`; fails to build on invalid config or a missing `setpriv`. */
export const layer = Layer.unwrapEffect(Effect.map(readConfig, layerFrom))

/** `poolFrom`, configured from `Config`. */
export const pool = Layer.unwrapEffect(Effect.map(readConfig, poolFrom))
