/**
 * The same services as `LiveLayers`, in memory and configured from `CompanionConfig`: the real
 * RuntimeManager and ModelStore over a file system in memory, a scriptable downloader, fake
 * processes, scripted health answers and resource observations. Every fake comes with its control
 * service; time is the Clock's, so `TestClock` drives it.
 */
import { Layer } from "effect"
import * as HealthProbeTest from "./HealthProbeTest.js"
import * as ModelPoolLive from "./ModelPoolLive.js"
import * as ModelStoreTest from "./ModelStoreTest.js"
import * as ResourceStatTest from "./ResourceStatTest.js"
import * as RuntimeManagerLive from "./RuntimeManagerLive.js"
import * as SpawnerTest from "./SpawnerTest.js"

/** ModelStore, Downloader, StoreFileSystem (and FileSystem, Path), with their controls. */
export const store = ModelStoreTest.layer

const services = Layer.mergeAll(SpawnerTest.layer, HealthProbeTest.layer, ResourceStatTest.layer)

/** RuntimeManager (the first model's) and ModelStore over every service in memory, with their controls. */
export const layer = RuntimeManagerLive.layerConfig.pipe(Layer.provideMerge(store), Layer.provideMerge(services))

/** ModelPool (every configured model, one budget) and ModelStore over every service in memory, with their controls. */
export const pool = ModelPoolLive.layerConfig.pipe(Layer.provideMerge(store), Layer.provideMerge(services))

