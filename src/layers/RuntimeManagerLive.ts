/**
 * The RuntimeManager: the pure decisions of `src/domain` driven by the four services and the
 * file system. All mutable state lives in one Ref and changes only through synchronous updates,
 * so a transition, an admission and a hand-over of a slot are each atomic. Lifecycle changes are
 * published separately, since they happen only under the lifecycle lock.
 */
import { FileSystem, Path } from "@effect/platform"
import {
  Cause,
  Chunk,
  Clock,
  Deferred,
  Fiber,
  FiberId,
  Duration,
  Effect,
  Either,
  ExecutionStrategy,
  Exit,
  Layer,
  Metric,
  Option,
  Ref,
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
import * as StoreLock from "./StoreLock.js"
import {
  CircuitOpenError,
  DownloadError,
  HealthError,
  ModelStoreError,
  QueueTimeoutError,
  type ResourceStatError,
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
  type RuntimeEndpoint,
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
  /** The fibers running requests on it; interrupted when it stops serving. */
  readonly requests: Set<Fiber.RuntimeFiber<unknown, unknown>>
  /** Why it stopped serving, once it has. */
  gone: RuntimeExitedError | undefined
}

interface Waiter {
  readonly deferred: Deferred.Deferred<Runtime, LifecycleError>
  /** Set when a released slot was handed to this waiter. */
  granted: boolean
}

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
  /** Completed by the release that brings in-flight work to zero while draining. */
  readonly drained: Deferred.Deferred<void> | undefined
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
  const ref = yield* Ref.make<State>({
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
    unloadedIdle: false,
    drained: undefined
  })
  const lifecycleChanges = yield* SubscriptionRef.make<LifecycleChange>({ state: Lifecycle.initialState, at: now0 })
  const progress = yield* SubscriptionRef.make<DownloadProgress>({ receivedBytes: 0, expectedBytes: 0 })
  // Lifecycle operations (start, drain, crash handling) run one at a time.
  const lifecycleLock = yield* Effect.makeSemaphore(1)
  // One model write at a time in this store, within this process.
  const storeLock = yield* Effect.makeSemaphore(1)

  /**
   * Change the state atomically. `f` is synchronous; completing a Deferred inside it is how a slot
   * changes hands without a window. Gauges move by deltas, which commute under concurrency.
   */
  const update = <A>(f: (s: State, now: number) => readonly [A, State]) =>
    Effect.flatMap(Clock.currentTimeMillis, (now) =>
      Effect.flatMap(
        Ref.modify(ref, (s) => {
          const [value, next] = f(s, now)
          return [[value, next.admission.inFlight - s.admission.inFlight, next.admission.queued - s.admission.queued] as const, next]
        }),
        ([value, dInFlight, dQueued]) =>
          dInFlight === 0 && dQueued === 0
            ? Effect.succeed(value)
            : Effect.as(
              Effect.zipRight(Metric.modify(metrics.inFlight, dInFlight), Metric.modify(metrics.queued, dQueued)),
              value
            )
      )
    )

  /** Apply a lifecycle event through the domain table; a refused event leaves the state as it was. */
  const transition = (event: Lifecycle.LifecycleEvent, patch: (s: State) => Partial<State> = () => ({})) =>
    Effect.tap(
      Effect.flatten(
        update((s, now): readonly [Either.Either<LifecycleChange, LifecycleError>, State] =>
          Either.match(Lifecycle.transition(s.lifecycle, event), {
            onLeft: (error) => [Either.left(error), s],
            onRight: (lifecycle) => [Either.right({ state: lifecycle, at: now }), { ...s, ...patch(s), lifecycle, since: now }]
          })
        )
      ),
      (change) => SubscriptionRef.set(lifecycleChanges, change)
    )

  /** Everyone still queued is refused: the runtime is leaving `ready`. */
  const refuseWaiters = (s: State): Partial<State> => {
    for (const waiter of s.waiters) Deferred.unsafeDone(waiter.deferred, Exit.fail(notReady()))
    return { waiters: [], admission: { ...s.admission, queued: 0 } }
  }

  /** The runtime stops serving: record why and interrupt every request still running on it. */
  const retire = (runtime: Runtime, reason: RuntimeExitedError["reason"]) =>
    Effect.suspend(() => {
      runtime.gone ??= new RuntimeExitedError({ reason })
      return Fiber.interruptAll([...runtime.requests])
    })

  const circuitOpen = (s: State, now: number) => s.circuitOpenUntil !== undefined && now < s.circuitOpenUntil

  const recordFailure = update((s, now) => {
    const windowMs = Duration.toMillis(config.restart.window)
    const failures = [...s.failures.filter((t) => now - t < windowMs), now]
    const open = failures.length >= config.restart.maxFailures
    return [
      open,
      {
        ...s,
        failures: open ? [] : failures,
        circuitOpenUntil: open ? now + Duration.toMillis(config.restart.cooldown) : s.circuitOpenUntil
      }
    ] as const
  })

  const failIfCircuitOpen = Effect.flatMap(Clock.currentTimeMillis, (now) =>
    Effect.flatMap(Ref.get(ref), (s) => (circuitOpen(s, now) ? Effect.fail(new CircuitOpenError({ reason: "circuit_open" })) : Effect.void)))

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
            Stream.runForEachChunk((chunks) =>
              Effect.gen(function*() {
                const batch = chunks.length === 1 ? Chunk.unsafeHead(chunks) : Buffer.concat(Chunk.toArray(chunks))
                // Refused before it is written: the file never holds a byte past the expected size.
                yield* verifier.update(batch)
                yield* io(file.writeAll(batch))
                received += batch.length
                yield* Metric.incrementBy(metrics.downloadedBytes, batch.length)
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
          // Another manager on this store may be writing the same model: wait for it.
          yield* StoreLock.hold(fs, path.join(partialDir, `${spec.sha256}.lock`), {
            ...StoreLock.thisProcess(),
            poll: Duration.millis(250),
            wait: config.download.lockWait
          })

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
        }).pipe(Effect.scoped)
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
      const runtime: Runtime = { handle, scope, requests: new Set(), gone: undefined }
      yield* transition("health_ok", () => ({ runtime, unloadedIdle: false }))
      // Forked into the runtime's scope: closing the scope interrupts it before the process stops.
      yield* Effect.forkIn(supervise(runtime), scope)
    })
    yield* Effect.onError(up, () => Scope.close(scope, Exit.void))
  })

  // Uninterruptible but for bringing the runtime up: an interrupted start still ends in `stopped`.
  const startLocked = Effect.uninterruptibleMask((restore) => Effect.gen(function*() {
    yield* failIfCircuitOpen
    yield* transition("start")
    const outcome = yield* Effect.exit(restore(bringUp))
    if (Exit.isSuccess(outcome)) return
    const exited = Option.exists(
      Cause.failureOption(outcome.cause),
      (e) => e._tag === "StartError" && e.reason === "exited_while_starting"
    )
    yield* transition(exited ? "exited" : "health_fail", (s) => ({ ...refuseWaiters(s), runtime: undefined }))
    if (!Cause.isInterruptedOnly(outcome.cause)) yield* recordFailure
    return yield* outcome
  }))

  const start: RuntimeManagerService["start"] = lifecycleLock.withPermits(1)(startLocked).pipe(
    Effect.withSpan("RuntimeManager.start")
  )

  /** The runtime died on its own: fail its requests, go to stopped, and maybe start it again. */
  const onCrash = (runtime: Runtime) =>
    Effect.gen(function*() {
      const handled = yield* lifecycleLock.withPermits(1)(
        Effect.gen(function*() {
          const s = yield* Ref.get(ref)
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
      yield* retire(runtime, "runtime_exited")
      // Handled outside the runtime's scope, since handling it closes that scope.
      yield* Effect.forkIn(onCrash(runtime), layerScope)
    })

  const restartLoop = Effect.gen(function*() {
    for (let attempt = 0; ; attempt++) {
      const base = Duration.toMillis(config.restart.backoffBase) * 2 ** attempt
      yield* Effect.sleep(Duration.min(Duration.millis(base), config.restart.backoffMax))
      const s = yield* Ref.get(ref)
      if (s.lifecycle !== "stopped") return
      yield* Metric.increment(metrics.restarts)
      yield* update((s) => [undefined, { ...s, restarts: s.restarts + 1 }] as const)
      const outcome = yield* Effect.exit(start)
      if (Exit.isSuccess(outcome)) return
      const error = Option.getOrUndefined(Cause.failureOption(outcome.cause))
      // Give up when the circuit is open or someone else owns the lifecycle now.
      if (error === undefined || error._tag === "CircuitOpenError" || error._tag === "LifecycleError") return
      if (circuitOpen(yield* Ref.get(ref), yield* Clock.currentTimeMillis)) return
    }
  })

  // -------------------------------------------------------------------------------------------
  // Requests
  // -------------------------------------------------------------------------------------------

  type Ticket =
    | {
      readonly _tag: "admitted"
      readonly runtime: Runtime
      /** The cached observation when it is fresh enough to decide on. */
      readonly observation: ResourcePolicy.ResourceObservation | undefined
    }
    | { readonly _tag: "queued"; readonly waiter: Waiter }
    | { readonly _tag: "refused"; readonly error: LifecycleError | AdmissionError | CircuitOpenError }
    | { readonly _tag: "reload" }

  const freshObservation = (s: State, now: number) =>
    s.observation !== undefined && now - s.observation.at <= Duration.toMillis(config.maxObservationAge)
      ? s.observation.value
      : undefined

  /** One atomic look at the state decides: circuit, idle reload, lifecycle, then admission. */
  const enter = update((s, now): readonly [Ticket, State] => {
    if (circuitOpen(s, now)) return [{ _tag: "refused", error: new CircuitOpenError({ reason: "circuit_open" }) }, s]
    if (s.unloadedIdle && s.lifecycle === "stopped") return [{ _tag: "reload" }, s]
    const ready = Lifecycle.requireReady(s.lifecycle)
    if (Either.isLeft(ready) || s.runtime === undefined || s.runtime.gone !== undefined) {
      return [{ _tag: "refused", error: notReady() }, s]
    }
    // The domain's steps decide and count at once: a free slot, else a place in the queue, else refusal.
    const admitted = Admission.recordAdmit(s.admission)
    if (Either.isRight(admitted)) {
      return [
        { _tag: "admitted", runtime: s.runtime, observation: freshObservation(s, now) },
        { ...s, admission: admitted.right, lastActivity: now }
      ]
    }
    const enqueued = Admission.recordEnqueue(s.admission)
    if (Either.isLeft(enqueued)) return [{ _tag: "refused", error: enqueued.left }, s]
    const waiter: Waiter = { deferred: Deferred.unsafeMake(FiberId.none), granted: false }
    return [{ _tag: "queued", waiter }, { ...s, admission: enqueued.right, waiters: [...s.waiters, waiter], lastActivity: now }]
  })

  /** Give a slot back, or hand it straight to the head of the queue. */
  const release = update((s, now) => {
    const [head, ...rest] = s.waiters
    // A runtime that stopped serving hands nothing on: its waiters are refused by the crash or drain.
    if (head !== undefined && s.runtime !== undefined && s.runtime.gone === undefined) {
      head.granted = true
      Deferred.unsafeDone(head.deferred, Exit.succeed(s.runtime))
      return [undefined, { ...s, admission: must(Admission.recordDequeue(s.admission)), waiters: rest, lastActivity: now }] as const
    }
    const admission = must(Admission.recordComplete(s.admission))
    if (admission.inFlight === 0 && s.drained !== undefined) Deferred.unsafeDone(s.drained, Exit.void)
    return [undefined, { ...s, admission, lastActivity: now }] as const
  })

  /**
   * A waiter leaves without running. Still queued: it just leaves the queue. Already handed a slot
   * (the hand-over and its departure raced): it gives that slot back. Refused by a drain: nothing.
   */
  const leave = (waiter: Waiter) =>
    Effect.flatten(
      update((s) => {
        if (!s.waiters.includes(waiter)) return [waiter.granted ? release : Effect.void, s] as const
        const rest = s.waiters.filter((w) => w !== waiter)
        return [Effect.void, { ...s, admission: must(Admission.recordDequeue(s.admission)), waiters: rest }] as const
      })
    )

  type Restore = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  type Slot = { readonly runtime: Runtime; readonly observation: ResourcePolicy.ResourceObservation | undefined }

  /** A slot now, a place in the queue, or a refusal. Runs uninterruptibly but for the waits. */
  const acquire = (restore: Restore): Effect.Effect<Slot, LifecycleError | AdmissionError | QueueTimeoutError | CircuitOpenError> =>
    Effect.flatMap(enter, (ticket) => {
      if (ticket._tag === "admitted") return Effect.succeed(ticket)
      if (ticket._tag === "refused") return Effect.fail(ticket.error)
      if (ticket._tag === "reload") return Effect.zipRight(restore(reloadIdle), Effect.suspend(() => acquire(restore)))
      const { waiter } = ticket
      const wait = Option.match(config.admission.queueTimeout, {
        onNone: () => Deferred.await(waiter.deferred),
        onSome: (duration) =>
          Effect.timeoutFail(Deferred.await(waiter.deferred), {
            duration,
            onTimeout: () => new QueueTimeoutError({ reason: "queue_timeout" })
          })
      })
      return restore(wait).pipe(
        Effect.onExit((exit) => (Exit.isSuccess(exit) ? Effect.void : leave(waiter))),
        // Handed a slot from the queue: the cached observation serves it too, if still fresh.
        Effect.flatMap((runtime) => update((s, now): readonly [Slot, State] => [{ runtime, observation: freshObservation(s, now) }, s]))
      )
    })

  /**
   * A fresh observation, kept for the requests that follow within maxObservationAge. One at a
   * time: requests that find one under way wait for it rather than each reading /proc again.
   * The reading itself is not interruptible (it is bounded), so those waiting always get an answer.
   */
  const observing = new Map<Runtime, Deferred.Deferred<ResourcePolicy.ResourceObservation, ResourceStatError>>()
  const observe = (runtime: Runtime) =>
    Effect.suspend(() => {
      const underway = observing.get(runtime)
      if (underway !== undefined) return Deferred.await(underway)
      const done = Deferred.unsafeMake<ResourcePolicy.ResourceObservation, ResourceStatError>(FiberId.none)
      observing.set(runtime, done)
      return stat.observe(runtime.handle).pipe(
        Effect.tap((value) => update((s, now) => [undefined, { ...s, observation: { value, at: now } }] as const)),
        Effect.exit,
        Effect.flatMap((exit) =>
          Effect.sync(() => {
            observing.delete(runtime)
            Deferred.unsafeDone(done, exit)
          }).pipe(Effect.zipRight(exit))
        ),
        Effect.uninterruptible
      )
    })

  const countRejection = (error: RunFailure) =>
    Metric.increment(Metric.tagged(metrics.rejections, "reason", error.reason))

  /** After an idle unload the next request starts the runtime again; a failed start refuses it as not ready. */
  const reloadIdle = start.pipe(
    Effect.catchAll((error) =>
      error._tag === "LifecycleError"
        ? Effect.void // someone else is starting or started it
        : Effect.zipRight(Effect.logWarning(`reload after idle unload failed: ${error.reason}`), Effect.fail(notReady()))
    )
  )

  /** The gate, in the domain's order: circuit, lifecycle, admission, then resources. Holds a slot on success. */
  const admit = (restore: Restore) =>
    Effect.flatMap(acquire(restore), ({ observation, runtime }) =>
      (observation !== undefined ? Effect.succeed(observation) : restore(observe(runtime))).pipe(
        // The process vanished under the probe: to the caller that is the runtime having exited.
        Effect.catchTag("ResourceStatError", (e) =>
          Effect.fail(e.reason === "process_gone" ? runtime.gone ?? new RuntimeExitedError({ reason: "runtime_exited" }) : e)
        ),
        Effect.flatMap((o) => ResourcePolicy.evaluateResources(o, config.resources)),
        Effect.onError(() => release),
        Effect.zipRight(Metric.increment(metrics.admissions)),
        Effect.as(runtime)
      )
    ).pipe(Effect.tapError(countRejection))

  /**
   * The request runs in a child fiber registered with its runtime, so a runtime that stops serving
   * can interrupt it and the caller gets the typed reason. No span here: this is the hot path, and a
   * span costs more than the whole gate (see docs/benchmarks.md).
   */
  const run: RuntimeManagerService["run"] = <A, E, R>(request: (endpoint: RuntimeEndpoint) => Effect.Effect<A, E, R>) =>
    Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(admit(restore), (runtime) =>
        Effect.flatMap(Effect.fork(restore(request({ baseUrl: runtime.handle.baseUrl, apiKey: runtime.handle.apiKey }))), (fiber) => {
          runtime.requests.add(fiber)
          // Retired between admission and now: `retire` did not see this fiber, so stop it here.
          const stopIfRetired = runtime.gone === undefined ? Effect.void : Fiber.interruptFork(fiber)
          return stopIfRetired.pipe(
            Effect.zipRight(restore(Fiber.await(fiber))),
            Effect.ensuring(Effect.sync(() => runtime.requests.delete(fiber))),
            Effect.flatMap((exit): Effect.Effect<A, E | RuntimeExitedError> => {
              const gone = runtime.gone
              if (Exit.isFailure(exit) && gone !== undefined && Cause.isInterruptedOnly(exit.cause)) {
                return Effect.zipRight(countRejection(gone), Effect.fail(gone))
              }
              return exit
            })
          )
        }).pipe(Effect.ensuring(release))
      )
    )

  // -------------------------------------------------------------------------------------------
  // Drain, idle unload, status
  // -------------------------------------------------------------------------------------------

  // Uninterruptible but for the wait: an interrupted drain stops the runtime at once and still ends in `stopped`.
  const drainLocked = (deadline: Duration.DurationInput) =>
    Effect.uninterruptibleMask((restore) => Effect.gen(function*() {
      const drained = yield* Deferred.make<void>()
      yield* transition("drain", (s) => {
        if (s.admission.inFlight === 0) Deferred.unsafeDone(drained, Exit.void)
        return { ...refuseWaiters(s), drained }
      })
      const waited = yield* Effect.exit(restore(Effect.timeout(Deferred.await(drained), deadline)))
      const { runtime } = yield* Ref.get(ref)
      if (runtime !== undefined) {
        // Work still running past the deadline fails now instead of hanging on a dying process.
        yield* retire(runtime, "runtime_stopped")
        yield* Scope.close(runtime.scope, Exit.void)
      }
      yield* transition("stopped", () => ({ runtime: undefined, drained: undefined }))
      if (Exit.isFailure(waited) && Cause.isInterruptedOnly(waited.cause)) return yield* Effect.interrupt
    }))

  const drain: RuntimeManagerService["drain"] = Effect.fn("RuntimeManager.drain")(function*(deadline: Duration.DurationInput) {
    yield* lifecycleLock.withPermits(1)(drainLocked(deadline))
  })

  const idleUnload = (ttl: Duration.Duration) =>
    Effect.gen(function*() {
      const s = yield* Ref.get(ref)
      const now = yield* Clock.currentTimeMillis
      const idle = s.lifecycle === "ready" && s.admission.inFlight === 0 && s.admission.queued === 0 &&
        now - s.lastActivity >= Duration.toMillis(ttl)
      if (!idle) return
      yield* lifecycleLock.withPermits(1)(
        Effect.gen(function*() {
          // Checked again under the lock: a request may have arrived meanwhile.
          const again = yield* Ref.get(ref)
          if (again.lifecycle !== "ready" || again.admission.inFlight > 0 || again.admission.queued > 0) return
          yield* drainLocked(Duration.zero)
          yield* update((s) => [undefined, { ...s, unloadedIdle: true }] as const)
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
    const s = yield* Ref.get(ref)
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

  const changes: Stream.Stream<LifecycleChange> = lifecycleChanges.changes

  const service: RuntimeManagerService = {
    ensureModel,
    start,
    run,
    drain,
    status,
    changes,
    available: Effect.map(Ref.get(ref), (s) => Lifecycle.canServe(s.lifecycle)),
    progress: progress.changes
  }
  return service
})

/** The manager, configured from `Config` (see `RuntimeManagerConfig`). */
export const RuntimeManagerLive = Layer.scoped(RuntimeManager, Effect.flatMap(RuntimeManagerConfig, make))

/** The manager with a configuration given in code. */
export const layer = (config: RuntimeManagerConfig) => Layer.scoped(RuntimeManager, make(config))

