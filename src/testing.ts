/**
 * `companion-runtime/testing`: the in-memory layers and their controls, for an app's own tests.
 * `TestLayers.layer` is the real RuntimeManager and ModelStore over fakes driven by `TestClock`.
 */
export * as DownloaderTest from "./layers/DownloaderTest.js"
export * as HealthProbeTest from "./layers/HealthProbeTest.js"
export * as MemoryFileSystem from "./layers/MemoryFileSystem.js"
export * as ModelStoreTest from "./layers/ModelStoreTest.js"
export * as ResourceStatTest from "./layers/ResourceStatTest.js"
export * as SpawnerTest from "./layers/SpawnerTest.js"
export * as TestLayers from "./layers/TestLayers.js"
export * as ModelFixtures from "./testing/ModelFixtures.js"
