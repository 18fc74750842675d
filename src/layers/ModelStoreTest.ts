/**
 * The model store in memory: the real store's logic (`ModelStoreLive`) over `MemoryFileSystem` and
 * `DownloaderTest`, configured from `CompanionConfig`, with the lock's process table scripted: the
 * store runs as pid `Processes.pid`, and only the pids a test names are alive.
 */
import { Path } from "@effect/platform"
import { Context, Effect, Layer } from "effect"
import { readConfig } from "../config/Config.js"
import * as DownloaderTest from "./DownloaderTest.js"
import * as MemoryFileSystem from "./MemoryFileSystem.js"
import * as ModelStoreLive from "./ModelStoreLive.js"

export interface ProcessesService {
  /** The store's own pid. */
  readonly pid: number
  /** The other processes alive from now on (the store's own is always alive). */
  readonly setAlive: (pids: ReadonlyArray<number>) => Effect.Effect<void>
  /** What the store's lock asks of a holder's pid. */
  readonly isAlive: (pid: number) => boolean
}

export class Processes extends Context.Tag("companion-runtime/ModelStoreTest/Processes")<Processes, ProcessesService>() {}

const PID = 4242

const processes = Layer.sync(Processes, (): ProcessesService => {
  // Read synchronously by the lock's liveness check, so a plain set behind an effectful setter.
  let alive: ReadonlySet<number> = new Set()
  return {
    pid: PID,
    setAlive: (pids) => Effect.sync(() => void (alive = new Set(pids))),
    isAlive: (pid) => pid === PID || alive.has(pid)
  }
})

/** The store over whatever `MemoryFileSystem` and `Downloader` are given, with `extra` over the config's options. */
export const storeWith = (extra: Partial<ModelStoreLive.ModelStoreOptions> = {}) =>
  Layer.unwrapEffect(
    Effect.map(Effect.all([readConfig, Processes]), ([config, table]) =>
      ModelStoreLive.layer({ ...ModelStoreLive.optionsFrom(config), holder: table, ...extra }))
  )

export const storeOnly = storeWith()

/** ModelStore with its in-memory file system, downloader and process table, each with its control (`extra` as in `storeWith`). */
export const layerWith = (extra: Partial<ModelStoreLive.ModelStoreOptions> = {}) =>
  storeWith(extra).pipe(
    Layer.provideMerge(Layer.mergeAll(MemoryFileSystem.layer, DownloaderTest.layer, processes, Path.layer))
  )

export const layer = layerWith()
