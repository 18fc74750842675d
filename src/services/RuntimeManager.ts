import { Config, ConfigError, Context, Duration, Either, type Effect, Option, type Redacted, type Stream } from "effect"
import * as Admission from "../domain/Admission.js"
import type { AdmissionError, IntegrityError, LifecycleError, ResourceError } from "../domain/Errors.js"
import * as Integrity from "../domain/Integrity.js"
import type { LifecycleState } from "../domain/Lifecycle.js"
import * as ResourcePolicy from "../domain/ResourcePolicy.js"
import type {
  CircuitOpenError,
  DownloadError,
  ModelStoreError,
  QueueTimeoutError,
  ResourceStatError,
  RuntimeExitedError,
  SpawnError,
  StartError
} from "./Errors.js"
import type { VerifiedModel } from "./Spawner.js"

/** What an inference effect gets: where the runtime listens and the key it demands. */
export interface RuntimeEndpoint {
  readonly baseUrl: string
  readonly apiKey: Redacted.Redacted<string>
}

export interface LifecycleChange {
  readonly state: LifecycleState
  /** Epoch milliseconds, from the Clock service. */
  readonly at: number
}

export interface DownloadProgress {
  readonly receivedBytes: number
  readonly expectedBytes: number
}

export interface ManagerStatus {
  readonly state: LifecycleState
  readonly since: number
  readonly inFlight: number
  readonly queued: number
  readonly restarts: number
  readonly circuitOpen: boolean
}

export type EnsureModelError = IntegrityError | DownloadError | ModelStoreError
export type StartFailure = EnsureModelError | LifecycleError | SpawnError | StartError | CircuitOpenError
export type RunFailure =
  | LifecycleError
  | AdmissionError
  | ResourceError
  | ResourceStatError
  | QueueTimeoutError
  | RuntimeExitedError
  | CircuitOpenError

export interface RuntimeManagerService {
  /** Verify (or download, verify and store) a model; the result is the only thing a spawn accepts. */
  readonly ensureModel: (spec: unknown, source: unknown) => Effect.Effect<VerifiedModel, EnsureModelError>
  /** stopped → starting → ready: ensure the configured model, spawn it, wait until healthy. */
  readonly start: Effect.Effect<void, StartFailure>
  /** Run an inference effect through the gate: lifecycle, admission, resources; the slot is always returned. */
  readonly run: <A, E, R>(
    request: (endpoint: RuntimeEndpoint) => Effect.Effect<A, E, R>
  ) => Effect.Effect<A, E | RunFailure, R>
  /** ready → draining → stopped: refuse new work, let in-flight work finish up to `deadline`, stop. */
  readonly drain: (deadline: Duration.DurationInput) => Effect.Effect<void, LifecycleError>
  readonly status: Effect.Effect<ManagerStatus>
  /** The current lifecycle state, then every change. */
  readonly changes: Stream.Stream<LifecycleChange>
  /** True only in `ready`. */
  readonly available: Effect.Effect<boolean>
  /** Download progress of the model being ensured. */
  readonly progress: Stream.Stream<DownloadProgress>
}

export class RuntimeManager extends Context.Tag("companion-runtime/RuntimeManager")<RuntimeManager, RuntimeManagerService>() {}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

export interface RuntimeManagerConfig {
  readonly storeDir: string
  readonly model: { readonly spec: Integrity.ModelSpec; readonly source: string }
  readonly allowedSources: ReadonlyArray<string>
  readonly admission: Admission.AdmissionLimits & { readonly queueTimeout: Option.Option<Duration.Duration> }
  readonly resources: ResourcePolicy.ResourceLimits
  readonly maxObservationAge: Duration.Duration
  readonly health: {
    readonly firstProbeInterval: Duration.Duration
    readonly maxProbeInterval: Duration.Duration
    readonly probeTimeout: Duration.Duration
    readonly loadDeadline: Duration.Duration
  }
  readonly download: {
    readonly retries: number
    readonly retryBase: Duration.Duration
    readonly retryMax: Duration.Duration
    /** How long to wait for another manager writing the same model before `store_locked`. */
    readonly lockWait: Duration.Duration
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
}

const GiB = 1024 ** 3

const invalid = (path: ReadonlyArray<string>, expected: string) =>
  Either.left(ConfigError.InvalidData([...path], `expected ${expected}`))

const positiveInt = (name: string, fallback: number) =>
  Config.integer(name).pipe(
    Config.withDefault(fallback),
    Config.mapOrFail((n) => (n > 0 ? Either.right(n) : invalid([name], "a positive integer")))
  )

const positive = (name: string) =>
  Config.mapOrFail((d: Duration.Duration) => (Duration.toMillis(d) > 0 ? Either.right(d) : invalid([name], "a positive duration")))

const positiveDuration = (name: string, fallback: Duration.DurationInput) =>
  Config.duration(name).pipe(Config.withDefault(Duration.decode(fallback)), positive(name))

/** Off unless configured: no default inside the option, or it would always be on. */
const optionalDuration = (name: string) => Config.option(Config.duration(name).pipe(positive(name)))

/**
 * The manager's configuration, with defaults for everything but the model. Messages name the field
 * and what it expected and never echo the value, which may be a secret URL.
 */
export const RuntimeManagerConfig: Config.Config<RuntimeManagerConfig> = Config.all({
  storeDir: Config.string("storeDir").pipe(Config.withDefault(".companion-runtime/models")),
  model: Config.nested(
    Config.all({ sha256: Config.string("sha256"), sizeBytes: Config.number("sizeBytes"), source: Config.string("source") }).pipe(
      Config.mapOrFail(({ sha256, sizeBytes, source }) =>
        Either.match(Integrity.checkSpec({ sha256, sizeBytes }), {
          onLeft: () => invalid(["model"], "sha256 as 64 lowercase hex characters and sizeBytes as a positive integer"),
          onRight: (spec) => Either.right({ spec, source })
        })
      )
    ),
    "model"
  ),
  allowedSources: Config.array(Config.string(), "allowedSources").pipe(Config.withDefault([])),
  admission: Config.nested(
    Config.all({
      maxInFlight: positiveInt("maxInFlight", 4),
      queueBound: positiveInt("queueBound", 64),
      queueTimeout: optionalDuration("queueTimeout")
    }),
    "admission"
  ),
  resources: Config.nested(
    Config.all({
      maxRamBytes: Config.number("maxRamBytes").pipe(Config.withDefault(8 * GiB)),
      maxVramBytes: Config.option(Config.number("maxVramBytes")),
      maxCpuPercent: Config.number("maxCpuPercent").pipe(Config.withDefault(100))
    }).pipe(
      Config.mapOrFail(({ maxRamBytes, maxVramBytes, maxCpuPercent }) =>
        Either.mapLeft(
          ResourcePolicy.checkLimits(
            Option.match(maxVramBytes, {
              onNone: () => ({ maxRamBytes, maxCpuPercent }),
              onSome: (v) => ({ maxRamBytes, maxVramBytes: v, maxCpuPercent })
            })
          ),
          () => ConfigError.InvalidData(["resources"], "expected positive finite byte limits and maxCpuPercent in (0, 100]")
        )
      )
    ),
    "resources"
  ),
  maxObservationAge: Config.duration("maxObservationAge").pipe(Config.withDefault(Duration.seconds(1))),
  health: Config.nested(
    Config.all({
      firstProbeInterval: positiveDuration("firstProbeInterval", "50 millis"),
      maxProbeInterval: positiveDuration("maxProbeInterval", "1 second"),
      probeTimeout: positiveDuration("probeTimeout", "2 seconds"),
      loadDeadline: positiveDuration("loadDeadline", "2 minutes")
    }),
    "health"
  ),
  download: Config.nested(
    Config.all({
      retries: Config.integer("retries").pipe(
        Config.withDefault(5),
        Config.mapOrFail((n) => (n >= 0 ? Either.right(n) : invalid(["retries"], "a non-negative integer")))
      ),
      retryBase: positiveDuration("retryBase", "500 millis"),
      retryMax: positiveDuration("retryMax", "30 seconds"),
      lockWait: positiveDuration("lockWait", "15 minutes")
    }),
    "download"
  ),
  restart: Config.nested(
    Config.all({
      enabled: Config.boolean("enabled").pipe(Config.withDefault(true)),
      maxFailures: positiveInt("maxFailures", 5),
      window: positiveDuration("window", "5 minutes"),
      cooldown: positiveDuration("cooldown", "5 minutes"),
      backoffBase: positiveDuration("backoffBase", "1 second"),
      backoffMax: positiveDuration("backoffMax", "30 seconds")
    }),
    "restart"
  ),
  stopGrace: positiveDuration("stopGrace", "5 seconds"),
  idleTtl: optionalDuration("idleTtl")
})
