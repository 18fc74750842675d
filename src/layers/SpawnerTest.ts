/**
 * An in-memory Spawner: fake processes whose exit and exit timing a test controls. Readiness is
 * what the health probe answers (see HealthProbeTest). Time passes on the Clock, so TestClock
 * drives grace periods. Like the live one, it starts only a model the store verified.
 */
import { Context, Deferred, Duration, Effect, Layer, Redacted, Ref } from "effect"
import { SpawnError } from "../services/Errors.js"
import type { VerifiedModel } from "../services/ModelStore.js"
import { type ExitStatus, type RuntimeHandle, Spawner, type SpawnOptions } from "../services/Spawner.js"
import * as VerifiedModels from "./internal/VerifiedModels.js"

export type Signal = "SIGTERM" | "SIGKILL"

export interface FakeRuntime {
  readonly pid: number
  readonly model: VerifiedModel
  /** What the spawn was asked to set (alias, slots, context, embeddings). */
  readonly options: SpawnOptions
  readonly handle: RuntimeHandle
  /** Signals sent to it, in order. */
  readonly signals: Effect.Effect<ReadonlyArray<Signal>>
  readonly alive: Effect.Effect<boolean>
  /** The process dies on its own. */
  readonly crash: (status?: ExitStatus) => Effect.Effect<void>
}

export interface SpawnerBehaviour {
  /** The process ignores SIGTERM and lives until SIGKILL. */
  readonly ignoreSigterm: boolean
  /** How long the process takes to exit after SIGTERM (default: at once). */
  readonly exitAfterSigterm: Duration.DurationInput
  /** Where the next runtimes claim to listen (default `http://127.0.0.1:<40000 + pid>`, nothing). */
  readonly baseUrl: string | undefined
}

export interface SpawnerControlService {
  readonly spawned: Effect.Effect<ReadonlyArray<FakeRuntime>>
  /** The most recent process; dies if none was spawned. */
  readonly latest: Effect.Effect<FakeRuntime>
  /** How many fake processes are alive now. */
  readonly alive: Effect.Effect<number>
  readonly failNextSpawn: (error: SpawnError) => Effect.Effect<void>
  readonly setBehaviour: (behaviour: Partial<SpawnerBehaviour>) => Effect.Effect<void>
}

export class SpawnerControl extends Context.Tag("companion-runtime/SpawnerControl")<SpawnerControl, SpawnerControlService>() {}

export const layer: Layer.Layer<Spawner | SpawnerControl> = Layer.effectContext(
  Effect.gen(function*() {
    const spawned = yield* Ref.make<ReadonlyArray<FakeRuntime>>([])
    const nextFailure = yield* Ref.make<SpawnError | undefined>(undefined)
    const behaviour = yield* Ref.make<SpawnerBehaviour>({ ignoreSigterm: false, exitAfterSigterm: Duration.zero, baseUrl: undefined })

    const makeProcess = (model: VerifiedModel, pid: number, options: SpawnOptions) =>
      Effect.gen(function*() {
        const baseUrl = (yield* Ref.get(behaviour)).baseUrl ?? `http://127.0.0.1:${40_000 + pid}`
        const exited = yield* Deferred.make<ExitStatus>()
        const signals = yield* Ref.make<ReadonlyArray<Signal>>([])
        const signal = (s: Signal) => Ref.update(signals, (all) => [...all, s])
        const kill = Effect.gen(function*() {
          if (yield* Deferred.isDone(exited)) return
          yield* signal("SIGKILL")
          yield* Deferred.succeed(exited, { code: null, signal: "SIGKILL" })
        })
        const stop = (grace: Duration.DurationInput) =>
          Effect.gen(function*() {
            if (!(yield* Deferred.isDone(exited))) {
              yield* signal("SIGTERM")
              const { exitAfterSigterm, ignoreSigterm } = yield* Ref.get(behaviour)
              const exitNow = Deferred.succeed(exited, { code: 0, signal: null })
              const graceful = ignoreSigterm
                ? Effect.never
                : Duration.isZero(Duration.decode(exitAfterSigterm))
                ? exitNow
                : Effect.zipRight(Effect.sleep(exitAfterSigterm), exitNow)
              // Interruptible, so the grace period bounds the wait even where stop runs uninterruptibly.
              yield* Effect.interruptible(Effect.race(graceful, Deferred.await(exited))).pipe(Effect.timeout(grace), Effect.ignore)
              yield* kill
            }
            return yield* Deferred.await(exited)
          })
        const handle: RuntimeHandle = {
          pid,
          baseUrl,
          apiKey: Redacted.make(`test-key-${pid}`),
          exited: Deferred.await(exited),
          stop,
          output: Effect.succeed([])
        }
        const fake: FakeRuntime = {
          pid,
          model,
          options,
          handle,
          signals: Ref.get(signals),
          alive: Effect.map(Deferred.isDone(exited), (done) => !done),
          crash: (status = { code: 139, signal: null }) => Effect.asVoid(Deferred.succeed(exited, status))
        }
        return { fake, kill }
      })

    const spawner = Spawner.of({
      spawn: (model, options = {}) =>
        Effect.gen(function*() {
          if (!(yield* VerifiedModels.stillVerified(model))) return yield* new SpawnError({ reason: "unverified_model" })
          const failure = yield* Ref.getAndSet(nextFailure, undefined)
          if (failure !== undefined) return yield* failure
          const pid = 1000 + (yield* Ref.get(spawned)).length
          const { fake } = yield* Effect.acquireRelease(makeProcess(model, pid, options), ({ kill }) => kill)
          yield* Ref.update(spawned, (all) => [...all, fake])
          return fake.handle
        })
    })

    const control: SpawnerControlService = {
      spawned: Ref.get(spawned),
      latest: Effect.flatMap(Ref.get(spawned), (all) => {
        const last = all.at(-1)
        return last === undefined ? Effect.dieMessage("SpawnerTest: nothing was spawned") : Effect.succeed(last)
      }),
      alive: Effect.flatMap(Ref.get(spawned), (all) =>
        Effect.map(Effect.forEach(all, (p) => p.alive), (states) => states.filter(Boolean).length)
      ),
      failNextSpawn: (error) => Ref.set(nextFailure, error),
      setBehaviour: (patch) => Ref.update(behaviour, (b) => ({ ...b, ...patch }))
    }
    return Context.make(Spawner, spawner).pipe(Context.add(SpawnerControl, control))
  })
)
