/**
 * The RuntimeManager over the real world, in one layer: DownloaderLive (HTTPS), SpawnerLive (the
 * runtime process), HealthProbeLive and ResourceStatLive, on Node's file system, command executor
 * and undici. Everything is read through `Config`: `RuntimeManagerConfig`, `DownloaderConfig`
 * and `SpawnerConfig` (see docs/api.md for the keys).
 */
import { NodeContext, NodeHttpClient } from "@effect/platform-node"
import { Effect, Layer, Option } from "effect"
import { RuntimeManagerConfig } from "../services/RuntimeManager.js"
import * as DownloaderLive from "./DownloaderLive.js"
import * as HealthProbeLive from "./HealthProbeLive.js"
import * as ResourceStatLive from "./ResourceStatLive.js"
import * as RuntimeManagerLive from "./RuntimeManagerLive.js"
import * as SpawnerLive from "./SpawnerLive.js"

const services = Layer.unwrapEffect(
  Effect.gen(function*() {
    const manager = yield* RuntimeManagerConfig
    const runtime = yield* SpawnerLive.SpawnerConfig
    return RuntimeManagerLive.layer(manager).pipe(
      Layer.provide(
        Layer.mergeAll(
          // Same `allowedSources` key as the manager's, so every redirect hop meets the same allowlist.
          DownloaderLive.layerConfig,
          SpawnerLive.layer({
            kind: runtime.kind,
            binary: runtime.binary,
            parallel: manager.admission.maxInFlight,
            contextSize: Option.getOrUndefined(runtime.contextSize),
            threads: Option.getOrUndefined(runtime.threads),
            envAllowlist: runtime.envAllowlist,
            addressTimeout: runtime.addressTimeout,
            stopGrace: manager.stopGrace
          }),
          HealthProbeLive.layer(runtime.kind, manager.health.probeTimeout),
          ResourceStatLive.layer
        )
      )
    )
  })
)

/** The whole live stack from `Config`; fails to build on invalid config or a missing `setpriv`. */
export const layer = services.pipe(Layer.provide(Layer.mergeAll(NodeContext.layer, NodeHttpClient.layerUndici)))
