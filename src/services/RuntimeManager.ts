/**
 * The RuntimeManager: one model's runtime, its lifecycle, its supervision and the gate in front of
 * it. The model comes from the `ModelStore`; the process from the `Spawner`.
 */
import type * as Gguf from "../domain/Gguf.js"
import type * as ModelPolicy from "../domain/ModelPolicy.js"
import { Context, type Duration, type Effect, Metric, type Option, type Redacted, type Stream } from "effect"
import type * as Admission from "../domain/Admission.js"
import type * as Circuit from "../domain/Circuit.js"
import type { Refusal } from "../domain/Errors.js"
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

/** Every way `run` refuses or fails a request, and no other (the request's own errors aside). */
export type RunFailure =
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
}

export class RuntimeManager extends Context.Tag("companion-runtime/RuntimeManager")<RuntimeManager, RuntimeManagerService>() {}

/** The part of the configuration the manager reads (a `CompanionConfig` is one). */
export interface RuntimeManagerConfig {
  readonly model: { readonly spec: ModelSpec; readonly source: URL }
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
  readonly runtime: { readonly contextSize: Option.Option<number> }
  /** Caps on the model's GGUF header. */
  readonly gguf: Gguf.GgufCaps
}

export const metrics = {
  admissions: Metric.counter("companion_runtime_admissions_total", { description: "Requests admitted by the gate" }),
  rejections: Metric.counter("companion_runtime_rejections_total", { description: "Requests refused, by reason" }),
  inFlight: Metric.gauge("companion_runtime_in_flight", { description: "Requests running now" }),
  queued: Metric.gauge("companion_runtime_queued", { description: "Requests waiting for a slot" }),
  restarts: Metric.counter("companion_runtime_restarts_total", { description: "Supervised restarts of the runtime" })
}
