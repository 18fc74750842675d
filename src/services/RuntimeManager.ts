/**
 * The RuntimeManager: one model's runtime, its lifecycle, its supervision and the gate in front of
 * it. The model comes from the `ModelStore`; the process from the `Spawner`.
 */
import type * as Gguf from "../domain/Gguf.js"
import type * as MemoryFit from "../domain/MemoryFit.js"
import type * as ModelPolicy from "../domain/ModelPolicy.js"
import { Context, type Duration, type Effect, Metric, type Option, type Redacted, type Scope, type Stream } from "effect"
import type * as Admission from "../domain/Admission.js"
import type * as Circuit from "../domain/Circuit.js"
import type { Refusal, ResourceError } from "../domain/Errors.js"
import type { ModelSpec } from "../domain/Integrity.js"
import type * as Lifecycle from "../domain/Lifecycle.js"
import type * as ResourcePolicy from "../domain/ResourcePolicy.js"
import type { ModelStoreError, QueueTimeoutError, ResourceStatError, RuntimeExitedError, SpawnError, StartError } from "./Errors.js"
import type { EnsureError } from "./ModelStore.js"

/** What an inference effect gets: where the runtime listens and the key it demands. */
export interface RuntimeEndpoint {
  readonly baseUrl: string
  readonly apiKey: Redacted.Redacted<string>
}

export interface LifecycleChange {
  readonly state: Lifecycle.LifecycleState
  /** Epoch milliseconds, from the Clock service. */
  readonly at: number
}

export interface ManagerStatus {
  readonly state: Lifecycle.LifecycleState
  readonly since: number
  readonly inFlight: number
  readonly queued: number
  readonly restarts: number
  readonly circuitOpen: boolean
  /** When a request last entered or left (epoch milliseconds). */
  readonly lastActivity: number
  /**
   * The runtime's last measured RAM and VRAM (0 before any measurement, when not running, and on a
   * runtime shared with other models, Ollama, whose process tree holds them all).
   */
  readonly ramBytes: number
  readonly vramBytes: number
  /** Stopped but loaded again by the next request (unloaded while idle, or not preloaded). */
  readonly onDemand: boolean
}

/** Why `start` failed: the model, the lifecycle (already starting or started), the process, its health, the circuit. */
export type StartFailure =
  | EnsureError
  | ModelStoreError
  | ModelPolicy.PreflightError
  | Lifecycle.InvalidTransition
  | SpawnError
  | StartError
  | Circuit.CircuitOpen
  | InsufficientResources

/** The memory budget of a pool has no room for the model now (see `ModelPool`). */
export type InsufficientResources = Refusal<ResourceError, "insufficient_resources">

/** Every way `run` refuses or fails a request, and no other (the request's own errors aside). */
export type RunFailure =
  | InsufficientResources
  | Circuit.CircuitOpen
  | Lifecycle.NotReady
  | Admission.QueueFull
  | QueueTimeoutError
  | ResourcePolicy.OverLimit
  | Refusal<ResourceStatError, "stat_failed" | "parse_failed">
  | RuntimeExitedError

export interface RuntimeManagerService {
  /** stopped → starting → ready: the model from the store, spawned, polled until healthy. */
  readonly start: Effect.Effect<void, StartFailure>
  /**
   * Run an inference effect through the gate (circuit, lifecycle, admission, resources) holding a
   * slot; the slot is returned on success, failure and interruption alike.
   */
  readonly run: <A, E, R>(
    request: (endpoint: RuntimeEndpoint) => Effect.Effect<A, E, R>
  ) => Effect.Effect<A, E | RunFailure, R>
  /** ready → draining → stopped: refuse new work, let in-flight work finish up to `deadline`, stop. */
  readonly drain: (deadline: Duration.DurationInput) => Effect.Effect<void, Lifecycle.InvalidTransition>
  readonly status: Effect.Effect<ManagerStatus>
  /** The current lifecycle state, then every change. */
  readonly changes: Stream.Stream<LifecycleChange>
  /** True only in `ready`. */
  readonly available: Effect.Effect<boolean>
  /**
   * Stop the runtime if, at this moment, it is ready with nothing in flight or queued; the next
   * request loads it again. Atomic with admission: a request admitted first keeps it running
   * (`false`), one arriving after waits for the reload. What a pool's eviction calls.
   */
  readonly unloadIfIdle: Effect.Effect<boolean>
}

export class RuntimeManager extends Context.Tag("companion-runtime/RuntimeManager")<RuntimeManager, RuntimeManagerService>() {}

/** The part of the configuration the manager reads (a `CompanionConfig` is one). */
export interface RuntimeManagerConfig {
  readonly model: {
    readonly spec: ModelSpec
    readonly source: URL
    /** What clients call it (the runtime's `--alias`); the spawner's own when absent. Labels its metrics. */
    readonly name?: string | undefined
    /** `embedding`: the runtime serves embeddings, with the model's pooling (or mean). Default `chat`. */
    readonly kind?: "chat" | "embedding" | undefined
    /** Not started with the service: the first request loads it. Default false. */
    readonly onDemand?: boolean | undefined
  }
  readonly admission: Admission.AdmissionLimits & { readonly queueTimeout: Option.Option<Duration.Duration> }
  readonly resources: ResourcePolicy.ResourceLimits
  /** How long one resource observation serves the requests that follow. */
  readonly maxObservationAge: Duration.Duration
  readonly health: {
    readonly firstProbeInterval: Duration.Duration
    readonly maxProbeInterval: Duration.Duration
    readonly probeTimeout: Duration.Duration
    readonly loadDeadline: Duration.Duration
  }
  readonly restart: {
    readonly enabled: boolean
    readonly maxFailures: number
    readonly window: Duration.Duration
    readonly cooldown: Duration.Duration
    readonly backoffBase: Duration.Duration
    readonly backoffMax: Duration.Duration
  }
  readonly stopGrace: Duration.Duration
  readonly idleTtl: Option.Option<Duration.Duration>
  /** What the model must be (read from its GGUF header before any spawn). */
  readonly policy: {
    readonly architectures: ReadonlyArray<string>
    readonly maxChatTemplateBytes: number
    readonly chatTemplateSha256s: ReadonlyArray<string>
    readonly chatTemplateFile: Option.Option<string>
  }
  /** The runtime's context size (`-c`), for the memory estimate: the model's own when none. */
  readonly runtime: { readonly contextSize: Option.Option<number>; readonly threads?: Option.Option<number> | undefined }
  /** Caps on the model's GGUF header. */
  readonly gguf: Gguf.GgufCaps
}

/**
 * What a pool asks of each of its managers: before the spawn, with the model's memory estimate, a
 * share of the budget held while `Scope` is open (the runtime's life), or a refusal.
 */
export interface ManagerHooks {
  readonly reserve?: ((estimate: MemoryFit.Estimate) => Effect.Effect<void, InsufficientResources, Scope.Scope>) | undefined
}

/** The manager's metrics; a named model's carry a `model` label. */
export const metrics = {
  admissions: Metric.counter("companion_runtime_admissions_total", { description: "Requests admitted by the gate" }),
  rejections: Metric.counter("companion_runtime_rejections_total", { description: "Requests refused, by reason" }),
  inFlight: Metric.gauge("companion_runtime_in_flight", { description: "Requests running now" }),
  queued: Metric.gauge("companion_runtime_queued", { description: "Requests waiting for a slot" }),
  restarts: Metric.counter("companion_runtime_restarts_total", { description: "Supervised restarts of the runtime" })
}
