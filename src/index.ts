/**
 * companion-runtime: everything public, by job. Pure decisions (`src/domain`), the configuration
 * (`src/config`), service tags (`src/services`), their layers (`src/layers`: `*Live` for the real
 * world, `*Test` in memory), and the gateway (`src/http`).
 */

// Pure decisions (also `companion-runtime/domain`)
export * from "./domain/index.js"

// The configuration: one schema, for the file and for Config
export * as CompanionConfig from "./config/Config.js"

// Services: interfaces and tags
export * from "./services/Downloader.js"
export * from "./services/Errors.js"
export * from "./services/HealthProbe.js"
export * from "./services/HubClient.js"
export { ModelPool, type ModelPoolService, type PoolModel, type PoolStatus } from "./services/ModelPool.js"
export { type DownloadProgress, type EnsureError, ModelStore, type ModelStoreService, type VerifiedModel } from "./services/ModelStore.js"
export * from "./services/ResourceStat.js"
export {
  type InsufficientResources,
  type LifecycleChange,
  type ManagerHooks,
  type ManagerStatus,
  type RunFailure,
  type RuntimeEndpoint,
  RuntimeManager,
  type RuntimeManagerConfig,
  type RuntimeManagerService,
  type StartFailure
} from "./services/RuntimeManager.js"
export * from "./services/Spawner.js"
export { type Entry, type EntryKind, type FileIdentity, type StoreFile, StoreFileSystem } from "./services/StoreFileSystem.js"

// Layers: live (the real world) and Test (in memory, each with a control service; the Test ones
// are also `companion-runtime/testing`)
export * as DownloaderLive from "./layers/DownloaderLive.js"
export * as DownloaderTest from "./layers/DownloaderTest.js"
export * as HealthProbeLive from "./layers/HealthProbeLive.js"
export * as HealthProbeTest from "./layers/HealthProbeTest.js"
export * as HubClientLive from "./layers/HubClientLive.js"
export * as LiveLayers from "./layers/LiveLayers.js"
export * as MemoryFileSystem from "./layers/MemoryFileSystem.js"
export * as ModelPoolLive from "./layers/ModelPoolLive.js"
export * as ModelStoreLive from "./layers/ModelStoreLive.js"
export * as ModelStoreTest from "./layers/ModelStoreTest.js"
export * as ResourceStatLive from "./layers/ResourceStatLive.js"
export * as ResourceStatTest from "./layers/ResourceStatTest.js"
export * as RuntimeManagerLive from "./layers/RuntimeManagerLive.js"
export * as SpawnerLive from "./layers/SpawnerLive.js"
export * as SpawnerTest from "./layers/SpawnerTest.js"
export * as StoreFileSystemLive from "./layers/StoreFileSystemLive.js"
export * as TestLayers from "./layers/TestLayers.js"
export * as ModelFixtures from "./testing/ModelFixtures.js"

// The gateway (also `companion-runtime/http`)
export * from "./http/index.js"
