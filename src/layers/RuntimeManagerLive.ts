/**
 * The RuntimeManager: the pure decisions of `src/domain` driven by the four services and the
 * file system. All mutable state lives in one SubscriptionRef and changes only inside its
 * critical section, so a transition, an admission and a hand-over of a slot are each atomic.
 */
import { FileSystem, Path } from "@effect/platform"
import {
  Cause,
  Clock,
  Deferred,
  Duration,
  Effect,
  Either,
  ExecutionStrategy,
  Exit,
  Layer,
  Metric,
  Option,
  Schedule,
  Scope,
  Stream,
  SubscriptionRef
} from "effect"
import * as Admission from "../domain/Admission.js"
import { type AdmissionError, LifecycleError } from "../domain/Errors.js"
import * as Integrity from "../domain/Integrity.js"
import * as Lifecycle from "../domain/Lifecycle.js"
import * as ResourcePolicy from "../domain/ResourcePolicy.js"
import { Downloader } from "../services/Downloader.js"
import {
  CircuitOpenError,
  DownloadError,
  HealthError,
  ModelStoreError,
  QueueTimeoutError,
  RuntimeExitedError,
  StartError
} from "../services/Errors.js"
import { HealthProbe } from "../services/HealthProbe.js"
import { ResourceStat } from "../services/ResourceStat.js"
import {
  type DownloadProgress,
  type EnsureModelError,
  type LifecycleChange,
  type ManagerStatus,
  type RunFailure,
  RuntimeManager,
  RuntimeManagerConfig,
  type RuntimeManagerService
} from "../services/RuntimeManager.js"
import { type RuntimeHandle, Spawner, VerifiedModel } from "../services/Spawner.js"

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

export const metrics = {
  admissions: Metric.counter("companion_runtime_admissions_total", { description: "Requests admitted by the gate" }),
  rejections: Metric.counter("companion_runtime_rejections_total", { description: "Requests refused, by reason" }),
  inFlight: Metric.gauge("companion_runtime_in_flight", { description: "Requests running now" }),
  queued: Metric.gauge("companion_runtime_queued", { description: "Requests waiting for a slot" }),
  downloadedBytes: Metric.counter("companion_runtime_downloaded_bytes_total", { description: "Model bytes received" }),
  restarts: Metric.counter("companion_runtime_restarts_total", { description: "Supervised restarts of the runtime" })
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

interface Runtime {
  readonly handle: RuntimeHandle
  /** Closing it interrupts the supervisor, stops the process gracefully, then kills what is left. */
  readonly scope: Scope.CloseableScope
  /** Fails once the runtime stops serving; every in-flight request races it. */
  readonly gone: Deferred.Deferred<never, RuntimeExitedError>
}

type Waiter = Deferred.Deferred<Runtime, LifecycleError>

interface State {
  readonly lifecycle: Lifecycle.LifecycleState
  readonly since: number
  readonly runtime: Runtime | undefined
  readonly admission: Admission.AdmissionState
  /** FIFO: the head gets the next free slot. */
  readonly waiters: ReadonlyArray<Waiter>
  readonly observation: { readonly value: ResourcePolicy.ResourceObservation; readonly at: number } | undefined
  /** Start failures and crashes inside the circuit window, as epoch milliseconds. */
  readonly failures: ReadonlyArray<number>
  readonly circuitOpenUntil: number | undefined
  readonly restarts: number
  readonly lastActivity: number
  /** Stopped by the idle timer: the next request loads the runtime again. */
  readonly unloadedIdle: boolean
}

const notReady = () => new LifecycleError({ reason: "not_ready" })

/** An invariant of this module broke: a bug, not a failure to report. */
const must = <A, E>(result: Either.Either<A, E>): A =>
  Either.getOrElse(result, () => {
    throw new Error("RuntimeManager: admission arithmetic refused a step its own checks allowed")
  })

const ioFailed = () => new ModelStoreError({ reason: "io_failed" })

// ---------------------------------------------------------------------------------------------
// The manager
// ---------------------------------------------------------------------------------------------

export const make = Effect.fn("RuntimeManager.make")(function*(config: RuntimeManagerConfig) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const downloader = yield* Downloader
  const spawner = yield* Spawner
  const health = yield* HealthProbe
  const stat = yield* ResourceStat
  const layerScope = yield* Effect.scope

  const admission = Either.getOrThrowWith(
    Admission.makeAdmissionState(config.admission),
    () => new Error("RuntimeManager: the admission limits were not validated")
  )
  const now0 = yield* Clock.currentTimeMillis
  const ref = yield* SubscriptionRef.make<State>({
    lifecycle: Lifecycle.initialState,
    since: now0,
    runtime: undefined,
    admission,
    waiters: [],
    observation: undefined,
    failures: [],
    circuitOpenUntil: undefined,
    restarts: 0,
    lastActivity: now0,
    unloadedIdle: false
  })
  const progress = yield* SubscriptionRef.make<DownloadProgress>({ receivedBytes: 0, expectedBytes: 0 })
  // Lifecycle operations (start, drain, crash handling) run one at a time.
  const lifecycleLock = yield* Effect.makeSemaphore(1)
  // One model write at a time in this store, within this process.
  const storeLock = yield* Effect.makeSemaphore(1)

  /** Change the state atomically; effects in `f` run inside the critical section. */
  const update = <A, E>(f: (s: State, now: number) => Effect.Effect<readonly [A, State], E>) =>
    Effect.flatMap(Clock.currentTimeMillis, (now) =>
      SubscriptionRef.modifyEffect(ref, (s) =>
        Effect.tap(f(s, now), ([, next]) =>
          Effect.zipRight(
            Metric.set(metrics.inFlight, next.admission.inFlight),
            Metric.set(metrics.queued, next.admission.queued)
          )
        )
      )
    )

  /** Apply a lifecycle event through the domain table; a refused event leaves the state as it was. */
  const transition = (event: Lifecycle.LifecycleEvent, patch: (s: State) => Partial<State> = () => ({})) =>
    update((s, now) =>
      Either.match(Lifecycle.transition(s.lifecycle, event), {
        onLeft: (error) => Effect.fail(error),
        onRight: (lifecycle) => Effect.succeed([lifecycle, { ...s, ...patch(s), lifecycle, since: now }] as const)
      })
    )

  /** Everyone still queued is refused: the runtime is leaving `ready`. */
  const refuseWaiters = (s: State): Partial<State> => {
    for (const waiter of s.waiters) Deferred.unsafeDone(waiter, Exit.fail(notReady()))
    return { waiters: [], admission: { ...s.admission, queued: 0 } }
  }

  const circuitOpen = (s: State, now: number) => s.circuitOpenUntil !== undefined && now < s.circuitOpenUntil

  const recordFailure = update((s, now) => {
    const windowMs = Duration.toMillis(config.restart.window)
    const failures = [...s.failures.filter((t) => now - t < windowMs), now]
    const open = failures.length >= config.restart.maxFailures
    return Effect.succeed([
      open,
      {
        ...s,
        failures: open ? [] : failures,
        circuitOpenUntil: open ? now + Duration.toMillis(config.restart.cooldown) : s.circuitOpenUntil
      }
    ] as const)
  })

  const failIfCircuitOpen = Effect.flatMap(Clock.currentTimeMillis, (now) =>
    Effect.flatMap(SubscriptionRef.get(ref), (s) => (circuitOpen(s, now) ? Effect.fail(new CircuitOpenError({ reason: "circuit_open" })) : Effect.void))
  )

  // -------------------------------------------------------------------------------------------
  // Model store
  // -------------------------------------------------------------------------------------------

  const io = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.mapError(effect, ioFailed)

  const syncDirectory = (dir: string) =>
    Effect.scoped(Effect.flatMap(fs.open(dir, { flag: "r" }), (handle) => handle.sync)).pipe(io)

  const sizeOf = (file: string) =>
    fs.stat(file).pipe(
      Effect.map((info) => Number(info.size)),
      Effect.catchTag("SystemError", (e) => (e.reason === "NotFound" ? Effect.succeed(0) : Effect.fail(e))),
      io
    )

  /** Feed a stored file through a verifier; the verifier refuses a file longer than the spec. */
  const hashInto = (verifier: Integrity.Verifier, file: string) =>
    fs.stream(file).pipe(
      Stream.mapError(ioFailed),
      Stream.runForEach((chunk) => verifier.update(chunk))
    )

  const downloadOnce = (spec: Integrity.ModelSpec, url: URL, partial: string) =>
    Effect.scoped(
      Effect.gen(function*() {
        let offset = yield* sizeOf(partial)
        let verifier = Integrity.makeVerifier(spec)
        if (offset > spec.sizeBytes) {
          yield* io(fs.remove(partial))
          offset = 0
        }
        // Re-hash what an earlier attempt left, so the final digest covers every byte on disk.
        if (offset > 0) yield* hashInto(verifier, partial)
        yield* SubscriptionRef.set(progress, { receivedBytes: offset, expectedBytes: spec.sizeBytes })
        if (offset < spec.sizeBytes) {
          const body = yield* downloader.open({ url, offset })
          if (body.startsAt !== offset) {
            if (body.startsAt !== 0) return yield* new DownloadError({ reason: "range_mismatch" })
            // The source sent the whole file: start over rather than append it to the partial one.
            verifier = Integrity.makeVerifier(spec)
            offset = 0
          }
          const file = yield* io(fs.open(partial, { flag: offset === 0 ? "w" : "a", mode: 0o600 }))
          let received = offset
          yield* body.bytes.pipe(
            Stream.runForEach((chunk) =>
              Effect.gen(function*() {
                // Refused before it is written: the file never holds a byte past the expected size.
                yield* verifier.update(chunk)
                yield* io(file.writeAll(chunk))
                received += chunk.length
                yield* Metric.incrementBy(metrics.downloadedBytes, chunk.length)
                yield* SubscriptionRef.set(progress, { receivedBytes: received, expectedBytes: spec.sizeBytes })
              })
            )
          )
          yield* io(file.sync)
        }
        yield* verifier.finalize()
      })
    )

  const retryable = (error: EnsureModelError) =>
    error._tag === "DownloadError" &&
    error.transient &&
    (error.retryAfterMillis ?? 0) <= Duration.toMillis(config.download.retryMax)

  const downloadRetry = Schedule.exponential(config.download.retryBase, 2).pipe(
    Schedule.jittered,
    Schedule.union(Schedule.spaced(config.download.retryMax)),
    Schedule.intersect(Schedule.recurs(config.download.retries)),
    Schedule.intersect(Schedule.identity<EnsureModelError>()),
    // A server's Retry-After is a floor under the backoff (and `retryable` gives up past retryMax).
    Schedule.modifyDelay(([, error], delay) =>
      error._tag === "DownloadError" && error.retryAfterMillis !== undefined
        ? Duration.max(delay, Duration.millis(error.retryAfterMillis))
        : delay
    ),
    Schedule.whileInput(retryable)
  )

  const ensureModel: RuntimeManagerService["ensureModel"] = Effect.fn("RuntimeManager.ensureModel")(
    function*(specInput: unknown, sourceInput: unknown) {
      const spec = yield* Integrity.checkSpec(specInput)
      const url = yield* Integrity.checkSource(sourceInput, config.allowedSources)
      return yield* storeLock.withPermits(1)(
        Effect.gen(function*() {
          const finalPath = path.join(config.storeDir, spec.sha256)
          const partialDir = path.join(config.storeDir, "partial")
          const partial = path.join(partialDir, `${spec.sha256}.partial`)
          const model = VerifiedModel({ path: finalPath, sha256: spec.sha256, sizeBytes: spec.sizeBytes })
          yield* io(fs.makeDirectory(partialDir, { recursive: true }))

          if (yield* io(fs.exists(finalPath))) {
            const verifier = Integrity.makeVerifier(spec)
            const stored = yield* Effect.either(
              Effect.zipRight(hashInto(verifier, finalPath), Effect.suspend(() => verifier.finalize()))
            )
            if (Either.isRight(stored)) return model
            if (stored.left._tag !== "IntegrityError") return yield* stored.left
            // A stored file that no longer verifies is never used: fetch it again.
            yield* Effect.logWarning("stored model failed re-verification; downloading it again")
            yield* io(fs.remove(finalPath))
          }

          yield* downloadOnce(spec, url, partial).pipe(
            Effect.retry(downloadRetry),
            Effect.tapError(() => Effect.ignore(fs.remove(partial)))
          )
          yield* syncDirectory(partialDir)
          yield* io(fs.rename(partial, finalPath))
          yield* syncDirectory(config.storeDir)
          return model
        })
      )
    }
  )

  // -------------------------------------------------------------------------------------------
  // Start, health, supervision
  // -------------------------------------------------------------------------------------------

  const probeSchedule = Schedule.exponential(config.health.firstProbeInterval, 2).pipe(
    Schedule.union(Schedule.spaced(config.health.maxProbeInterval))
  )

  const waitHealthy = (handle: RuntimeHandle) =>
    health.probe(handle).pipe(
      Effect.timeoutFail({ duration: config.health.probeTimeout, onTimeout: () => new HealthError({ reason: "probe_timeout" }) }),
      // Not listening yet, or slow to answer, is still loading; an explicit failure is final.
      Effect.catchTag("HealthError", (e) =>
        e.reason === "unhealthy" ? Effect.fail(new StartError({ reason: "health_failed" })) : Effect.succeed("loading" as const)
      ),
      Effect.repeat({ schedule: probeSchedule, until: (h) => h === "ok" }),
      Effect.timeoutFail({
        duration: config.health.loadDeadline,
        onTimeout: () => new StartError({ reason: "load_deadline_exceeded" })
      }),
      Effect.raceFirst(Effect.zipRight(handle.exited, Effect.fail(new StartError({ reason: "exited_while_starting" }))))
    )

  const bringUp = Effect.gen(function*() {
    const model = yield* ensureModel(config.model.spec, config.model.source)
    const scope = yield* Scope.fork(layerScope, ExecutionStrategy.sequential)
    const up = Effect.gen(function*() {
      const handle = yield* Scope.extend(spawner.spawn(model), scope)
      // Added after the spawner's kill, so it runs first when the scope closes.
      yield* Scope.addFinalizer(scope, Effect.asVoid(handle.stop(config.stopGrace)))
      yield* waitHealthy(handle)
      const gone = yield* Deferred.make<never, RuntimeExitedError>()
      const runtime: Runtime = { handle, scope, gone }
      yield* transition("health_ok", () => ({ runtime, unloadedIdle: false }))
      // Forked into the runtime's scope: closing the scope interrupts it before the process stops.
      yield* Effect.forkIn(supervise(runtime), scope)
    })
    yield* Effect.onError(up, () => Scope.close(scope, Exit.void))
  })

  const startLocked = Effect.gen(function*() {
    yield* failIfCircuitOpen
    yield* transition("start")
    const outcome = yield* Effect.exit(bringUp)
    if (Exit.isSuccess(outcome)) return
    const exited = Option.exists(
      Cause.failureOption(outcome.cause),
      (e) => e._tag === "StartError" && e.reason === "exited_while_starting"
    )
    yield* transition(exited ? "exited" : "health_fail", (s) => ({ ...refuseWaiters(s), runtime: undefined }))
    yield* recordFailure
    return yield* outcome
  })

  const start: RuntimeManagerService["start"] = lifecycleLock.withPermits(1)(startLocked).pipe(
    Effect.withSpan("RuntimeManager.start")
  )

  /** The runtime died on its own: fail its requests, go to stopped, and maybe start it again. */
  const onCrash = (runtime: Runtime) =>
    Effect.gen(function*() {
      const handled = yield* lifecycleLock.withPermits(1)(
        Effect.gen(function*() {
          const s = yield* SubscriptionRef.get(ref)
          if (s.runtime !== runtime) return false
          yield* transition("exited", (s) => ({ ...refuseWaiters(s), runtime: undefined }))
          yield* Scope.close(runtime.scope, Exit.void)
          yield* Effect.logWarning("the runtime exited on its own")
          return !(yield* recordFailure)
        })
      )
      if (handled && config.restart.enabled) yield* restartLoop
    })

  const supervise = (runtime: Runtime) =>
    Effect.gen(function*() {
      yield* runtime.handle.exited
      // In-flight work fails at once, without waiting for the lifecycle lock (a drain may hold it).
      yield* Deferred.fail(runtime.gone, new RuntimeExitedError({ reason: "runtime_exited" }))
      // Handled outside the runtime's scope, since handling it closes that scope.
      yield* Effect.forkIn(onCrash(runtime), layerScope)
    })

  const restartLoop = Effect.gen(function*() {
    for (let attempt = 0; ; attempt++) {
      const base = Duration.toMillis(config.restart.backoffBase) * 2 ** attempt
      yield* Effect.sleep(Duration.min(Duration.millis(base), config.restart.backoffMax))
      const s = yield* SubscriptionRef.get(ref)
      if (s.lifecycle !== "stopped") return
      yield* Metric.increment(metrics.restarts)
      yield* update((s) => Effect.succeed([undefined, { ...s, restarts: s.restarts + 1 }] as const))
      const outcome = yield* Effect.exit(start)
      if (Exit.isSuccess(outcome)) return
      const error = Option.getOrUndefined(Cause.failureOption(outcome.cause))
      // Give up when the circuit is open or someone else owns the lifecycle now.
      if (error === undefined || error._tag === "CircuitOpenError" || error._tag === "LifecycleError") return
      if (circuitOpen(yield* SubscriptionRef.get(ref), yield* Clock.currentTimeMillis)) return
    }
  })

  // -------------------------------------------------------------------------------------------
  // Requests
  // -------------------------------------------------------------------------------------------

  type Ticket =
    | { readonly _tag: "admitted"; readonly runtime: Runtime }
    | { readonly _tag: "queued" }
    | { readonly _tag: "refused"; readonly error: LifecycleError | AdmissionError }

  const enter = (waiter: Waiter) =>
    update((s, now): Effect.Effect<readonly [Ticket, State]> => {
      const ready = Lifecycle.requireReady(s.lifecycle)
      if (Either.isLeft(ready) || s.runtime === undefined) {
        return Effect.succeed([{ _tag: "refused", error: notReady() }, s])
      }
      const verdict = Admission.evaluate(s.admission)
      if (Either.isRight(verdict)) {
        return Effect.succeed([
          { _tag: "admitted", runtime: s.runtime },
          { ...s, admission: must(Admission.recordAdmit(s.admission)), lastActivity: now }
        ])
      }
      if (verdict.left.reason === "at_capacity") {
        return Effect.succeed([
          { _tag: "queued" },
          { ...s, admission: must(Admission.recordEnqueue(s.admission)), waiters: [...s.waiters, waiter], lastActivity: now }
        ])
      }
      return Effect.succeed([{ _tag: "refused", error: verdict.left }, s])
    })

  /** Give a slot back, or hand it straight to the head of the queue. */
  const release = update((s, now) => {
    const [head, ...rest] = s.waiters
    if (head !== undefined && s.runtime !== undefined) {
      Deferred.unsafeDone(head, Exit.succeed(s.runtime))
      return Effect.succeed([undefined, { ...s, admission: must(Admission.recordDequeue(s.admission)), waiters: rest, lastActivity: now }] as const)
    }
    return Effect.succeed([undefined, { ...s, admission: must(Admission.recordComplete(s.admission)), lastActivity: now }] as const)
  })

  /**
   * A waiter leaves without running. Still queued: it just leaves the queue. Already handed a slot
   * (the hand-over and its departure raced): it gives that slot back. Refused by a drain: nothing.
   */
  const leave = (waiter: Waiter) =>
    Effect.flatten(
      update((s) => {
        if (s.waiters.includes(waiter)) {
          const rest = s.waiters.filter((w) => w !== waiter)
          return Effect.succeed([Effect.void, { ...s, admission: must(Admission.recordDequeue(s.admission)), waiters: rest }] as const)
        }
        return Effect.map(Deferred.poll(waiter), (done) => {
          const handedSlot = Option.exists(done, (result) => Exit.isExit(result) && Exit.isSuccess(result))
          return [handedSlot ? release : Effect.void, s] as const
        })
      })
    )

  /** Lifecycle, then admission: a slot now, a place in the queue, or a refusal. Runs uninterruptibly but for the wait. */
  const acquire = (restore: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>) =>
    Effect.gen(function*() {
      const waiter = yield* Deferred.make<Runtime, LifecycleError>()
      const ticket = yield* enter(waiter)
      if (ticket._tag === "admitted") return ticket.runtime
      if (ticket._tag === "refused") return yield* ticket.error
      const wait = Option.match(config.admission.queueTimeout, {
        onNone: () => Deferred.await(waiter),
        onSome: (duration) =>
          Effect.timeoutFail(Deferred.await(waiter), { duration, onTimeout: () => new QueueTimeoutError({ reason: "queue_timeout" }) })
      })
      return yield* restore(wait).pipe(Effect.onExit((exit) => (Exit.isSuccess(exit) ? Effect.void : leave(waiter))))
    })

  const observe = (runtime: Runtime) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const s = yield* SubscriptionRef.get(ref)
      if (s.observation !== undefined && now - s.observation.at <= Duration.toMillis(config.maxObservationAge)) {
        return s.observation.value
      }
      const value = yield* stat.observe(runtime.handle)
      yield* update((s) => Effect.succeed([undefined, { ...s, observation: { value, at: now } }] as const))
      return value
    })

  const countRejection = (error: RunFailure) =>
    Metric.increment(Metric.tagged(metrics.rejections, "reason", error.reason))

  const reloadIfIdle = Effect.gen(function*() {
    const s = yield* SubscriptionRef.get(ref)
    if (!(s.unloadedIdle && s.lifecycle === "stopped")) return
    yield* start.pipe(
      Effect.catchAll((error) =>
        error._tag === "LifecycleError" ? Effect.void : Effect.zipRight(Effect.logWarning(`reload after idle unload failed: ${error.reason}`), Effect.fail(notReady()))
      )
    )
  })

  /** The gate, in the domain's order: circuit, lifecycle, admission, then resources. Holds a slot on success. */
  const admit = (restore: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>) =>
    Effect.gen(function*() {
      yield* restore(Effect.zipRight(failIfCircuitOpen, reloadIfIdle))
      const runtime = yield* acquire(restore)
      yield* restore(
        Effect.flatMap(observe(runtime), (observation) => ResourcePolicy.evaluateResources(observation, config.resources))
      ).pipe(Effect.onError(() => release))
      yield* Metric.increment(metrics.admissions)
      return runtime
    }).pipe(Effect.tapError(countRejection))

  const run: RuntimeManagerService["run"] = (request) =>
    Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(admit(restore), (runtime) =>
        restore(
          Effect.raceFirst(
            request({ baseUrl: runtime.handle.baseUrl, apiKey: runtime.handle.apiKey }),
            Effect.tapError(Deferred.await(runtime.gone), countRejection)
          )
        ).pipe(Effect.ensuring(release))
      )
    ).pipe(Effect.withSpan("RuntimeManager.run"))

  // -------------------------------------------------------------------------------------------
  // Drain, idle unload, status
  // -------------------------------------------------------------------------------------------

  const drainLocked = (deadline: Duration.DurationInput) =>
    Effect.gen(function*() {
      yield* transition("drain", refuseWaiters)
      yield* ref.changes.pipe(
        Stream.takeUntil((s) => s.admission.inFlight === 0),
        Stream.runDrain,
        Effect.timeout(deadline),
        Effect.ignore
      )
      const { runtime } = yield* SubscriptionRef.get(ref)
      if (runtime !== undefined) {
        // Work still running past the deadline fails now instead of hanging on a dying process.
        yield* Deferred.fail(runtime.gone, new RuntimeExitedError({ reason: "runtime_stopped" }))
        yield* Scope.close(runtime.scope, Exit.void)
      }
      yield* transition("stopped", () => ({ runtime: undefined }))
    })

  const drain: RuntimeManagerService["drain"] = Effect.fn("RuntimeManager.drain")(function*(deadline: Duration.DurationInput) {
    yield* lifecycleLock.withPermits(1)(drainLocked(deadline))
  })

  const idleUnload = (ttl: Duration.Duration) =>
    Effect.gen(function*() {
      const s = yield* SubscriptionRef.get(ref)
      const now = yield* Clock.currentTimeMillis
      const idle = s.lifecycle === "ready" && s.admission.inFlight === 0 && s.admission.queued === 0 &&
        now - s.lastActivity >= Duration.toMillis(ttl)
      if (!idle) return
      yield* lifecycleLock.withPermits(1)(
        Effect.gen(function*() {
          // Checked again under the lock: a request may have arrived meanwhile.
          const again = yield* SubscriptionRef.get(ref)
          if (again.lifecycle !== "ready" || again.admission.inFlight > 0 || again.admission.queued > 0) return
          yield* drainLocked(Duration.zero)
          yield* update((s) => Effect.succeed([undefined, { ...s, unloadedIdle: true }] as const))
          yield* Effect.logInfo("runtime unloaded after its idle time")
        })
      ).pipe(Effect.ignore)
    })

  if (Option.isSome(config.idleTtl)) {
    const ttl = config.idleTtl.value
    // Checked four times per TTL, so an idle runtime unloads within 1.25 × TTL.
    const every = Duration.millis(Math.max(10, Duration.toMillis(ttl) / 4))
    yield* Effect.forkIn(Effect.repeat(idleUnload(ttl), Schedule.spaced(every)), layerScope)
  }

  const status: Effect.Effect<ManagerStatus> = Effect.gen(function*() {
    const s = yield* SubscriptionRef.get(ref)
    const now = yield* Clock.currentTimeMillis
    return {
      state: s.lifecycle,
      since: s.since,
      inFlight: s.admission.inFlight,
      queued: s.admission.queued,
      restarts: s.restarts,
      circuitOpen: circuitOpen(s, now)
    }
  })

  const changes: Stream.Stream<LifecycleChange> = ref.changes.pipe(
    Stream.map((s): LifecycleChange => ({ state: s.lifecycle, at: s.since })),
    Stream.changesWith((a, b) => a.state === b.state && a.at === b.at)
  )

  const service: RuntimeManagerService = {
    ensureModel,
    start,
    run,
    drain,
    status,
    changes,
    available: Effect.map(SubscriptionRef.get(ref), (s) => Lifecycle.canServe(s.lifecycle)),
    progress: progress.changes
  }
  return service
})

/** The manager, configured from `Config` (see `RuntimeManagerConfig`). */
export const RuntimeManagerLive = Layer.scoped(RuntimeManager, Effect.flatMap(RuntimeManagerConfig, make))

/** The manager with a configuration given in code. */
export const layer = (config: RuntimeManagerConfig) => Layer.scoped(RuntimeManager, make(config))

