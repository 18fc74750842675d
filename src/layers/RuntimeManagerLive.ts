/**
 * The RuntimeManager: one model's lifecycle, its supervision and its run gate. The model comes
 * from the ModelStore, the process from the Spawner, readiness from the HealthProbe and usage
 * from ResourceStat; every decision is `src/domain`'s.
 *
 * All mutable state lives in one Ref and changes only through synchronous updates, so a
 * transition, an admission and the hand-over of a slot are each atomic. Lifecycle operations
 * (start, drain, crash handling) run one at a time under a lock, and each change is published.
 */
import {
  Cache,
  Cause,
  Clock,
  Deferred,
  Duration,
  Effect,
  Either,
  ExecutionStrategy,
  Exit,
  Fiber,
  FiberSet,
  Layer,
  Metric,
  Option,
  Ref,
  Schedule,
  Scope,
  type Stream,
  SubscriptionRef
} from "effect"
import {
  type CompanionConfig,
  firstModel,
  type ModelConfig,
  preflightOptions as preflightOptionsFrom,
  readConfig
} from "../config/Config.js"
import * as Circuit from "../domain/Circuit.js"
import { LifecycleError, type Refusal, refusal } from "../domain/Errors.js"
import * as Gguf from "../domain/Gguf.js"
import * as Lifecycle from "../domain/Lifecycle.js"
import * as ModelPolicy from "../domain/ModelPolicy.js"
import * as RequestGate from "../domain/RequestGate.js"
import type * as ResourcePolicy from "../domain/ResourcePolicy.js"
import { HealthError, QueueTimeoutError, ResourceStatError, RuntimeExitedError, StartError } from "../services/Errors.js"
import { HealthProbe } from "../services/HealthProbe.js"
import { ModelStore } from "../services/ModelStore.js"
import { ResourceStat } from "../services/ResourceStat.js"
import {
  type InsufficientResources,
  type LifecycleChange,
  type ManagerHooks,
  type ManagerStatus,
  metrics,
  type RunFailure,
  type RuntimeEndpoint,
  RuntimeManager,
  type RuntimeManagerConfig,
  type RuntimeManagerService
} from "../services/RuntimeManager.js"
import { type RuntimeHandle, Spawner } from "../services/Spawner.js"
import * as SlotGate from "./internal/SlotGate.js"

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

/** A spawned runtime that became ready, with what lives and dies with it. */
interface Running {
  readonly handle: RuntimeHandle
  /** Closing it interrupts the supervisor and the requests, stops the process, then closes the model's descriptor. */
  readonly scope: Scope.CloseableScope
  /** The requests running on it; interrupted when it stops serving. */
  readonly requests: FiberSet.FiberSet<unknown, unknown>
  /** The resource observation, kept for `maxObservationAge`; a failed one is not kept. */
  readonly observation: Cache.Cache<void, ResourcePolicy.ResourceObservation, ResourceStatError>
  /** Why it stopped serving, once it has: set once, before its requests are interrupted. */
  gone: RuntimeExitedError | undefined
  /** The last observation that succeeded, for the pool's budget. */
  observed: ResourcePolicy.ResourceObservation | undefined
}

/** Why a queued request is refused without running: the runtime left `ready`, or its load found no room. */
type QueuedRefusal = Lifecycle.NotReady | InsufficientResources

type Slots = SlotGate.SlotGate<Running, QueuedRefusal>

/** A failed observation as `run` reports it (a vanished process is reported as the runtime's exit). */
type ObservationFailure = Refusal<ResourceStatError, "stat_failed" | "parse_failed">

interface State {
  readonly lifecycle: Lifecycle.LifecycleState
  readonly since: number
  readonly running: Running | undefined
  readonly slots: Slots
  readonly circuit: Circuit.CircuitState
  readonly restarts: number
  readonly lastActivity: number
  /**
   * Loaded on demand (unloaded while idle, evicted, or never preloaded): requests queue and the
   * first one starts the runtime.
   */
  readonly unloadedIdle: boolean
  /** A load on demand is under way (its fiber started, its lifecycle maybe not yet `starting`). */
  readonly waking: boolean
}

const notReady = () => refusal(LifecycleError, "not_ready")

/** An invariant of this module broke: a bug, not a failure to report. */
const defined = <A>(value: A | undefined): A => {
  if (value === undefined) throw new Error("RuntimeManager: state that its own transitions set is missing")
  return value
}

// ---------------------------------------------------------------------------------------------
// The manager
// ---------------------------------------------------------------------------------------------

export const make = Effect.fn("RuntimeManager.make")(function*(config: RuntimeManagerConfig, hooks: ManagerHooks = {}) {
  const store = yield* ModelStore
  const spawner = yield* Spawner
  const health = yield* HealthProbe
  const stat = yield* ResourceStat
  const layerScope = yield* Effect.scope

  const circuitPolicy: Circuit.CircuitPolicy = {
    maxFailures: config.restart.maxFailures,
    windowMillis: Duration.toMillis(config.restart.window),
    cooldownMillis: Duration.toMillis(config.restart.cooldown)
  }
  const now0 = yield* Clock.currentTimeMillis
  const ref = yield* Ref.make<State>({
    lifecycle: Lifecycle.initialState,
    since: now0,
    running: undefined,
    slots: SlotGate.make(config.admission),
    circuit: Circuit.closed,
    restarts: 0,
    lastActivity: now0,
    unloadedIdle: config.model.onDemand === true,
    waking: false
  })
  // A named model's metrics carry its name (several share one registry in a pool).
  const label = <M extends Metric.Metric<any, any, any>>(metric: M): M =>
    config.model.name === undefined ? metric : (Metric.tagged(metric, "model", config.model.name) as M)
  const m = {
    admissions: label(metrics.admissions),
    rejections: label(metrics.rejections),
    inFlight: label(metrics.inFlight),
    queued: label(metrics.queued),
    restarts: label(metrics.restarts)
  }
  const lifecycleChanges = yield* SubscriptionRef.make<LifecycleChange>({ state: Lifecycle.initialState, at: now0 })
  // Lifecycle operations (start, drain, crash handling) run one at a time.
  const lifecycleLock = yield* Effect.makeSemaphore(1)

  /**
   * Change the state atomically. `f` is synchronous; the SlotGate steps it calls hand a slot over
   * without a window. Gauges move by deltas, which commute under concurrency.
   */
  const update = <A>(f: (s: State, now: number) => readonly [A, State]) =>
    Effect.flatMap(Clock.currentTimeMillis, (now) =>
      Effect.flatMap(
        Ref.modify(ref, (s) => {
          const [value, next] = f(s, now)
          const dInFlight = next.slots.admission.inFlight - s.slots.admission.inFlight
          const dQueued = next.slots.admission.queued - s.slots.admission.queued
          return [[value, dInFlight, dQueued] as const, next]
        }),
        // Only the gauges that moved: a metric update is a few µs of the gate's hot path.
        ([value, dInFlight, dQueued]) =>
          dQueued === 0
            ? (dInFlight === 0 ? Effect.succeed(value) : Effect.as(Metric.modify(m.inFlight, dInFlight), value))
            : dInFlight === 0
            ? Effect.as(Metric.modify(m.queued, dQueued), value)
            : Effect.as(Effect.zipRight(Metric.modify(m.inFlight, dInFlight), Metric.modify(m.queued, dQueued)), value)
      ))

  /** Apply a lifecycle event through the domain table; a refused event leaves the state as it was. */
  const transition = (event: Lifecycle.LifecycleEvent, patch: (s: State) => Partial<State> = () => ({})) =>
    Effect.tap(
      Effect.flatten(
        update((s, now): readonly [Either.Either<LifecycleChange, Lifecycle.InvalidTransition>, State] =>
          Either.match(Lifecycle.transition(s.lifecycle, event), {
            onLeft: (error) => [Either.left(error), s],
            onRight: (lifecycle) => [Either.right({ state: lifecycle, at: now }), { ...s, ...patch(s), lifecycle, since: now }]
          })
        )
      ),
      (change) => SubscriptionRef.set(lifecycleChanges, change)
    )

  /** Leaving `ready`, or a load that failed: everyone still queued is refused. */
  const refuseQueue = (s: State, error: QueuedRefusal = notReady()): Partial<State> => ({ slots: SlotGate.refuseAll(s.slots, error) })

  /** The runtime stops serving: record why and interrupt every request still running on it. */
  const retire = (running: Running, reason: RuntimeExitedError["reason"]) =>
    Effect.suspend(() => {
      running.gone ??= new RuntimeExitedError({ reason })
      return FiberSet.clear(running.requests)
    })

  const recordFailure = update((s, now) => {
    const circuit = Circuit.recordFailure(s.circuit, circuitPolicy, now)
    return [Circuit.isOpen(circuit, now), { ...s, circuit }] as const
  })

  const checkCircuit = Effect.flatMap(Clock.currentTimeMillis, (now) =>
    Effect.flatMap(Ref.get(ref), (s) => Circuit.check(s.circuit, now)))

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
        e.reason === "unhealthy"
          ? Effect.fail(new StartError({ reason: "health_failed" }))
          : e.reason === "wrong_model"
          ? Effect.fail(new StartError({ reason: "model_mismatch" }))
          : Effect.succeed("loading" as const)
      ),
      Effect.repeat({ schedule: probeSchedule, until: (h) => h === "ok" }),
      Effect.timeoutFail({
        duration: config.health.loadDeadline,
        onTimeout: () => new StartError({ reason: "load_deadline_exceeded" })
      }),
      Effect.raceFirst(Effect.zipRight(handle.exited, Effect.fail(new StartError({ reason: "exited_while_starting" }))))
    )

  const preflightOptions = preflightOptionsFrom(config)

  /** The same judgement on a download's first, not yet verified, bytes (advisory: see `Screen`). */
  const screen = (prefix: Uint8Array, fileSize: number): Either.Either<void, ModelPolicy.PreflightError | Gguf.NeedMore> =>
    Either.flatMap(Gguf.read(prefix, fileSize, config.gguf), (header) => Either.map(ModelPolicy.preflight(header, preflightOptions), () => undefined))

  const bringUp = Effect.gen(function*() {
    const scope = yield* Scope.fork(layerScope, ExecutionStrategy.sequential)
    const up = Effect.gen(function*() {
      // The verified descriptor is held as long as the runtime lives, and handed to it.
      // A download is screened as its first bytes arrive: a model that cannot pass stops there.
      const model = yield* Scope.extend(store.ensure(config.model.spec, config.model.source, screen), scope)
      // Before any native code reads it: the header's structure, the policy, the memory fit.
      const header = yield* store.header(model)
      const estimate = yield* ModelPolicy.preflight(header, preflightOptions)
      // In a pool: room in the shared budget, held as long as the runtime lives.
      if (hooks.reserve !== undefined) yield* Scope.extend(hooks.reserve(estimate), scope)
      const pooling = config.model.kind === "embedding"
        ? Either.match(Gguf.summarize(header), { onLeft: () => "mean" as const, onRight: ModelPolicy.embeddingPooling })
        : undefined
      const handle = yield* Scope.extend(
        spawner.spawn(model, {
          alias: config.model.name,
          parallel: config.admission.maxInFlight,
          contextSize: Option.getOrUndefined(config.runtime.contextSize),
          threads: config.runtime.threads === undefined ? undefined : Option.getOrUndefined(config.runtime.threads),
          embeddings: pooling === undefined ? undefined : { pooling }
        }),
        scope
      )
      // Added after the spawner's kill, so it runs first when the scope closes.
      yield* Scope.addFinalizer(scope, Effect.asVoid(handle.stop(config.stopGrace)))
      yield* waitHealthy(handle)
      // Nothing wrote the file while the runtime loaded it: what it serves is what was verified.
      yield* store.confirm(model)
      const requests = yield* Scope.extend(FiberSet.make<unknown, unknown>(), scope)
      const observation = yield* Cache.make<void, ResourcePolicy.ResourceObservation, ResourceStatError>({
        capacity: 1,
        // Bounded: a hung `nvidia-smi` must not hold every request. Disconnected, so the timeout
        // answers at once instead of waiting for a probe that will not stop. (The lookup runs in a
        // fiber of its own, see `observe`.)
        lookup: () =>
          Effect.disconnect(stat.observe(handle)).pipe(
            Effect.timeoutFail({ duration: config.health.probeTimeout, onTimeout: () => new ResourceStatError({ reason: "stat_failed" }) })
          ),
        timeToLive: config.maxObservationAge
      })
      const running: Running = { handle, scope, requests, observation, gone: undefined, observed: undefined }
      // Requests that waited for a load on demand take the free slots now.
      yield* transition("health_ok", (s) => ({ running, unloadedIdle: false, slots: SlotGate.fill(s.slots, running) }))
      // Forked into the runtime's scope: closing the scope interrupts it before the process stops.
      yield* Effect.forkIn(supervise(running), scope)
    })
    yield* Effect.onError(up, () => Scope.close(scope, Exit.void))
  })

  // Uninterruptible but for bringing the runtime up: an interrupted start still ends in `stopped`.
  const startLocked = Effect.uninterruptibleMask((restore) =>
    Effect.gen(function*() {
      yield* checkCircuit
      yield* transition("start")
      const outcome = yield* Effect.exit(restore(bringUp))
      if (Exit.isSuccess(outcome)) return
      const failure = Option.getOrUndefined(Cause.failureOption(outcome.cause))
      const exited = failure?._tag === "StartError" && failure.reason === "exited_while_starting"
      const noRoom = failure?._tag === "ResourceError" && failure.reason === "insufficient_resources" ? failure : undefined
      yield* transition(exited ? "exited" : "health_fail", (s) => ({ ...refuseQueue(s, noRoom), running: undefined }))
      // No room in a pool's budget is not the runtime failing: the circuit does not count it.
      if (!Cause.isInterruptedOnly(outcome.cause) && noRoom === undefined) yield* recordFailure
      return yield* outcome
    })
  )

  const start: RuntimeManagerService["start"] = lifecycleLock.withPermits(1)(startLocked).pipe(
    Effect.withSpan("RuntimeManager.start")
  )

  /** The runtime died on its own: fail its requests, go to stopped, and maybe start it again. */
  const onCrash = (running: Running) =>
    Effect.gen(function*() {
      const handled = yield* lifecycleLock.withPermits(1)(
        Effect.gen(function*() {
          const s = yield* Ref.get(ref)
          if (s.running !== running) return false
          yield* transition("exited", (s) => ({ ...refuseQueue(s), running: undefined }))
          yield* Scope.close(running.scope, Exit.void)
          yield* Effect.logWarning("the runtime exited on its own")
          return !(yield* recordFailure)
        })
      )
      if (handled && config.restart.enabled) yield* restartLoop
    })

  const supervise = (running: Running) =>
    Effect.gen(function*() {
      yield* running.handle.exited
      // In-flight work fails at once, without waiting for the lifecycle lock (a drain may hold it).
      yield* retire(running, "runtime_exited")
      // Handled outside the runtime's scope, since handling it closes that scope.
      yield* Effect.forkIn(onCrash(running), layerScope)
    })

  /** Waits of backoffBase × 2^n, capped at backoffMax, before each attempt. */
  const restartBackoff = Schedule.exponential(config.restart.backoffBase, 2).pipe(
    Schedule.union(Schedule.spaced(config.restart.backoffMax))
  )

  const restartLoop = Effect.gen(function*() {
    const backoff = yield* Schedule.driver(restartBackoff)
    for (;;) {
      yield* Effect.orDie(backoff.next(undefined))
      if ((yield* Ref.get(ref)).lifecycle !== "stopped") return
      yield* Metric.increment(m.restarts)
      yield* update((s) => [undefined, { ...s, restarts: s.restarts + 1 }] as const)
      const outcome = yield* Effect.exit(start)
      if (Exit.isSuccess(outcome)) return
      const error = Option.getOrUndefined(Cause.failureOption(outcome.cause))
      // Give up when the circuit is open or someone else owns the lifecycle now.
      if (error === undefined || error._tag === "CircuitOpenError" || error._tag === "LifecycleError") return
      const s = yield* Ref.get(ref)
      if (Circuit.isOpen(s.circuit, yield* Clock.currentTimeMillis)) return
    }
  })

  // -------------------------------------------------------------------------------------------
  // Requests
  // -------------------------------------------------------------------------------------------

  type Waiter = SlotGate.Waiter<Running, QueuedRefusal>

  type Ticket =
    | { readonly _tag: "admitted"; readonly running: Running }
    | { readonly _tag: "queued"; readonly waiter: Waiter; readonly wake: boolean }
    | { readonly _tag: "refused"; readonly error: RequestGate.EntryRefusal }

  /** One atomic look at the state, and the domain gate decides: circuit, lifecycle, admission. */
  const enter = update((s, now): readonly [Ticket, State] => {
    const decision = RequestGate.enter({
      now,
      circuit: s.circuit,
      lifecycle: s.lifecycle,
      exiting: s.running?.gone !== undefined,
      unloadedIdle: s.unloadedIdle,
      waking: s.waking,
      admission: s.slots.admission
    })
    if (Either.isLeft(decision)) return [{ _tag: "refused", error: decision.left }, s]
    const entry = decision.right
    switch (entry._tag) {
      case "reload": {
        // Queued like the rest, and this request's entry starts the load (once: `waking`).
        const [waiter, slots] = SlotGate.enqueue(s.slots, entry.admission)
        return [{ _tag: "queued", waiter, wake: true }, { ...s, slots, lastActivity: now, waking: true }]
      }
      case "admitted":
        return [
          { _tag: "admitted", running: defined(s.running) },
          { ...s, slots: { ...s.slots, admission: entry.admission }, lastActivity: now }
        ]
      case "queued": {
        const [waiter, slots] = SlotGate.enqueue(s.slots, entry.admission)
        return [{ _tag: "queued", waiter, wake: false }, { ...s, slots, lastActivity: now }]
      }
    }
  })

  /** Give a slot back: to the head of the queue while the runtime serves, else free. */
  const release = update((s, now) => {
    const serving = s.running !== undefined && s.running.gone === undefined ? s.running : undefined
    return [undefined, { ...s, slots: SlotGate.release(s.slots, serving), lastActivity: now }] as const
  })

  /** A waiter leaves without running; one that was handed a slot as it left gives it back. */
  const leave = (waiter: Waiter) =>
    Effect.flatten(update((s) => {
      const [giveBack, slots] = SlotGate.leave(s.slots, waiter)
      return [giveBack ? release : Effect.void, { ...s, slots }] as const
    }))

  type Restore = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

  /**
   * A load on demand, in a fiber of the service's own: the requests wait for it in the queue, and
   * none of them owns it (one leaving does not stop the load the others wait for). A start that
   * succeeds fills the queue (`health_ok`); one that fails has refused it, or, failing before it
   * began (the circuit), is refused here.
   */
  const wake = Effect.flatMap(Effect.exit(start), (exit) =>
    Effect.flatMap(
      update((s) => {
        const failure = Exit.isFailure(exit) ? Option.getOrUndefined(Cause.failureOption(exit.cause)) : undefined
        const noRoom = failure?._tag === "ResourceError" && failure.reason === "insufficient_resources" ? failure : undefined
        const stranded = s.lifecycle === "stopped" && s.slots.waiters.length > 0
        return [failure, { ...s, waking: false, ...(stranded ? refuseQueue(s, noRoom) : {}) }] as const
      }),
      (failure) =>
        failure === undefined || failure._tag === "LifecycleError" // someone else is starting or started it
          ? Effect.void
          : Effect.logWarning(`load on demand failed: ${failure.reason}`)
    ))

  // Interruptible: a fiber forked from the gate's uninterruptible region would inherit that, and
  // its races (the health probe against the process's exit) could never stop their losers.
  const startWake = Effect.asVoid(Effect.forkIn(Effect.interruptible(wake), layerScope))

  /** After an unload, requests that arrived while it drained start the runtime again. */
  const wakeIfWaiting = Effect.flatMap(
    update((s) => {
      const due = s.lifecycle === "stopped" && s.unloadedIdle && !s.waking && s.slots.waiters.length > 0
      return [due, due ? { ...s, waking: true } : s] as const
    }),
    (due) => (due ? startWake : Effect.void)
  )

  /** Steps 1–3 of the gate: a slot now, a place in the queue, or a refusal. Runs uninterruptibly but for the waits. */
  const acquire = (restore: Restore): Effect.Effect<Running, RequestGate.EntryRefusal | QueueTimeoutError | InsufficientResources> =>
    Effect.flatMap(enter, (ticket): Effect.Effect<Running, RequestGate.EntryRefusal | QueueTimeoutError | InsufficientResources> => {
      switch (ticket._tag) {
        case "admitted":
          return Effect.succeed(ticket.running)
        case "refused":
          return Effect.fail(ticket.error)
        case "queued": {
          const { waiter } = ticket
          const wait = Option.match(config.admission.queueTimeout, {
            onNone: () => waiter.deferred,
            onSome: (duration) =>
              Effect.timeoutFail(waiter.deferred, { duration, onTimeout: () => new QueueTimeoutError({ reason: "queue_timeout" }) })
          })
          return (ticket.wake ? startWake : Effect.void).pipe(
            Effect.zipRight(restore(wait)),
            Effect.onExit((exit) => (Exit.isSuccess(exit) ? Effect.void : leave(waiter)))
          )
        }
      }
    })

  const countRejection = (error: RunFailure) => Metric.increment(Metric.tagged(m.rejections, "reason", error.reason))

  /**
   * The observation, shared by every request within `maxObservationAge`. A failed one reaches those
   * who waited for it and is not kept. The process vanished under the probe: to the caller that is
   * the runtime having exited.
   */
  const observe = (running: Running): Effect.Effect<ResourcePolicy.ResourceObservation, ObservationFailure | RuntimeExitedError> =>
    Effect.flatMap(running.observation.getOption(undefined), (kept) =>
      Option.isSome(kept)
        ? Effect.succeed(kept.value)
        // Nothing fresh: the lookup runs in a fiber of its own, so a caller that leaves (interrupted
        // while waiting) does not interrupt the lookup that others wait for too.
        : Effect.flatMap(
          Effect.forkDaemon(Effect.tapError(running.observation.get(undefined), () => running.observation.invalidate(undefined))),
          Fiber.join
        )).pipe(
      Effect.map((o) => {
        running.observed = o
        return o
      }),
      Effect.mapError((e): ObservationFailure | RuntimeExitedError =>
        e.reason === "process_gone" ? running.gone ?? new RuntimeExitedError({ reason: "runtime_exited" }) : (e as ObservationFailure)
      )
    )

  /** The whole gate, in the domain's order; step 4 (resources) with the slot held. Holds a slot on success. */
  const admit = (restore: Restore) =>
    Effect.flatMap(acquire(restore), (running) =>
      restore(observe(running)).pipe(
        Effect.flatMap((o) => RequestGate.checkResources(o, config.resources)),
        Effect.onError(() => release),
        Effect.zipRight(Metric.increment(m.admissions)),
        Effect.as(running)
      )).pipe(Effect.tapError(countRejection))

  /**
   * The request runs in a fiber of its runtime's FiberSet, so a runtime that stops serving can
   * interrupt it and the caller gets the typed reason. No span here: this is the hot path, and a
   * span costs more than the whole gate (see docs/benchmarks.md).
   */
  const run: RuntimeManagerService["run"] = <A, E, R>(request: (endpoint: RuntimeEndpoint) => Effect.Effect<A, E, R>) =>
    Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(admit(restore), (running) =>
        Effect.flatMap(
          FiberSet.run(running.requests, restore(request({ baseUrl: running.handle.baseUrl, apiKey: running.handle.apiKey }))),
          (fiber) =>
            // Retired between admission and now: `retire` did not see this fiber, so stop it here.
            (running.gone === undefined ? Effect.void : Fiber.interruptFork(fiber)).pipe(
              Effect.zipRight(restore(Fiber.await(fiber))),
              // The caller left: its request goes with it.
              Effect.onInterrupt(() => Fiber.interrupt(fiber)),
              Effect.flatMap((exit): Effect.Effect<A, E | RuntimeExitedError> => {
                const gone = running.gone
                if (Exit.isFailure(exit) && gone !== undefined && Cause.isInterruptedOnly(exit.cause)) {
                  return Effect.zipRight(countRejection(gone), Effect.fail(gone))
                }
                return exit
              })
            )
        ).pipe(Effect.ensuring(release)))
    )

  // -------------------------------------------------------------------------------------------
  // Drain, idle unload, status
  // -------------------------------------------------------------------------------------------

  /**
   * The rest of a drain, begun: wait for in-flight work up to `deadline`, stop the runtime, `stopped`.
   * Work still running past the deadline fails now instead of hanging on a dying process.
   */
  const finishDrain = (restore: Restore, deadline: Duration.DurationInput) =>
    Effect.gen(function*() {
      const idle = defined((yield* Ref.get(ref)).slots.idle)
      const waited = yield* Effect.exit(restore(Effect.timeout(Deferred.await(idle), deadline)))
      const { running } = yield* Ref.get(ref)
      if (running !== undefined) {
        yield* retire(running, "runtime_stopped")
        yield* Scope.close(running.scope, Exit.void)
      }
      yield* transition("stopped", (s) => ({ running: undefined, slots: SlotGate.forgetIdle(s.slots) }))
      if (Exit.isFailure(waited) && Cause.isInterruptedOnly(waited.cause)) return yield* Effect.interrupt
    })

  // Uninterruptible but for the wait: an interrupted drain stops the runtime at once and still ends in `stopped`.
  const drainLocked = (deadline: Duration.DurationInput) =>
    Effect.uninterruptibleMask((restore) =>
      Effect.zipRight(
        transition("drain", (s) => ({ slots: SlotGate.whenIdle(SlotGate.refuseAll(s.slots, notReady()))[1] })),
        finishDrain(restore, deadline)
      )
    )

  const drain: RuntimeManagerService["drain"] = Effect.fn("RuntimeManager.drain")(function*(deadline: Duration.DurationInput) {
    yield* lifecycleLock.withPermits(1)(drainLocked(deadline))
  })

  /**
   * `ready → draining` only if, in the same atomic step, nothing is in flight or queued and nothing
   * has entered for `minIdleMillis`: no request is admitted between the look and the drain. The
   * runtime is then loaded on demand; requests arriving meanwhile queue for that.
   */
  const beginUnload = (minIdleMillis: number) =>
    Effect.flatMap(
      update((s, now): readonly [LifecycleChange | undefined, State] => {
        const idle = s.lifecycle === "ready" && s.running?.gone === undefined && s.slots.admission.inFlight === 0 &&
          s.slots.admission.queued === 0 && now - s.lastActivity >= minIdleMillis
        const next = Lifecycle.transition(s.lifecycle, "drain")
        if (!idle || Either.isLeft(next)) return [undefined, s]
        return [{ state: next.right, at: now }, {
          ...s,
          lifecycle: next.right,
          since: now,
          unloadedIdle: true,
          slots: SlotGate.whenIdle(s.slots)[1]
        }]
      }),
      (change) => (change === undefined ? Effect.succeed(false) : Effect.as(SubscriptionRef.set(lifecycleChanges, change), true))
    )

  const unloadLocked = (minIdleMillis: number) =>
    Effect.uninterruptibleMask((restore) =>
      Effect.gen(function*() {
        if (!(yield* beginUnload(minIdleMillis))) return false
        yield* finishDrain(restore, Duration.zero)
        yield* wakeIfWaiting
        return true
      })
    )

  // From `draining`, `stopped` is always a transition the table has. A lifecycle operation under way
  // (a start, a drain, a crash) means the runtime is not idle: `false` at once, never a wait, so a
  // pool deciding under its own lock cannot deadlock with a start waiting for that lock.
  const unloadIfIdle: RuntimeManagerService["unloadIfIdle"] = Effect.orDie(
    Effect.map(lifecycleLock.withPermitsIfAvailable(1)(unloadLocked(0)), Option.getOrElse(() => false))
  )

  const idleUnload = (ttl: Duration.Duration) =>
    Effect.flatMap(Effect.orDie(lifecycleLock.withPermits(1)(unloadLocked(Duration.toMillis(ttl)))), (unloaded) =>
      unloaded ? Effect.logInfo("runtime unloaded after its idle time") : Effect.void)

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
      inFlight: s.slots.admission.inFlight,
      queued: s.slots.admission.queued,
      restarts: s.restarts,
      circuitOpen: Circuit.isOpen(s.circuit, now),
      lastActivity: s.lastActivity,
      // A shared runtime's measurement is every model's on it: this model counts at its estimate.
      ramBytes: s.running?.handle.shared === true ? 0 : s.running?.observed?.ramBytes ?? 0,
      vramBytes: s.running?.handle.shared === true ? 0 : s.running?.observed?.vramBytes ?? 0,
      onDemand: s.unloadedIdle
    }
  })

  const changes: Stream.Stream<LifecycleChange> = lifecycleChanges.changes

  const service: RuntimeManagerService = {
    start,
    run,
    drain,
    status,
    changes,
    available: Effect.map(Ref.get(ref), (s) => Lifecycle.canServe(s.lifecycle)),
    unloadIfIdle
  }
  return service
})

/** The manager with a configuration given in code. */
export const layer = (config: RuntimeManagerConfig) => Layer.scoped(RuntimeManager, make(config))

/**
 * The manager's configuration for one model of a `CompanionConfig` (the first when none is named):
 * that model's name, kind, slots, context, threads and idle time over the shared settings.
 */
export const configFrom = (config: CompanionConfig, model: ModelConfig = firstModel(config)): RuntimeManagerConfig => ({
  ...config,
  model: { spec: model.spec, source: model.source, name: model.name, kind: model.kind, onDemand: !model.preload },
  admission: { ...config.admission, maxInFlight: model.parallel },
  idleTtl: model.idleTtl,
  runtime: { contextSize: model.contextSize, threads: model.threads }
})

/** The manager, configured from `CompanionConfig` (its first model: several are a `ModelPool`'s). */
export const layerConfig = Layer.scoped(RuntimeManager, Effect.flatMap(readConfig, (config) => make(configFrom(config))))
