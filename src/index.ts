// The command's config file
export * as ConfigFile from "./cli/ConfigFile.js"

// Pure decisions
export * as Admission from "./domain/Admission.js"
export {
  AdmissionError,
  type AdmissionReason,
  type DomainError,
  type DomainReason,
  IntegrityError,
  type IntegrityReason,
  LifecycleError,
  type LifecycleReason,
  RequestGateError,
  type RequestGateReason,
  ResourceError,
  type ResourceReason
} from "./domain/Errors.js"
export * as Integrity from "./domain/Integrity.js"
export * as Lifecycle from "./domain/Lifecycle.js"
export * as RequestGate from "./domain/RequestGate.js"
export * as ResourcePolicy from "./domain/ResourcePolicy.js"

// Services: interfaces and tags
export * from "./services/Downloader.js"
export * from "./services/Errors.js"
export * from "./services/HealthProbe.js"
export * from "./services/ResourceStat.js"
export * from "./services/RuntimeManager.js"
export * from "./services/Spawner.js"

// Layers: live (the real world) and Test (in memory, each with a control service)
export * as DownloaderLive from "./layers/DownloaderLive.js"
export * as DownloaderTest from "./layers/DownloaderTest.js"
export * as GatewayLive from "./layers/GatewayLive.js"
export * as HealthProbeLive from "./layers/HealthProbeLive.js"
export * as HealthProbeTest from "./layers/HealthProbeTest.js"
export * as LiveLayers from "./layers/LiveLayers.js"
export * as MemoryFileSystem from "./layers/MemoryFileSystem.js"
export * as ResourceStatLive from "./layers/ResourceStatLive.js"
export * as ResourceStatTest from "./layers/ResourceStatTest.js"
export * as RuntimeManagerLive from "./layers/RuntimeManagerLive.js"
export * as SpawnerLive from "./layers/SpawnerLive.js"
export * as SpawnerTest from "./layers/SpawnerTest.js"
export * as TestLayers from "./layers/TestLayers.js"
