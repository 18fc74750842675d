/**
 * The ModelPool: one `RuntimeManager` per configured model, and one memory budget between them.
 *
 * The budget is a ledger of the models held (loaded, or loading past their pre-flight), each
 * counted at its estimate or its measured RAM, whichever is higher. A manager asks for room through
 * its `reserve` hook with the model's estimate, after the GGUF pre-flight and before the spawn; the
 * room is held in the runtime's scope and given back when the runtime stops, however it stops.
 * Every decision is `Budget.plan`'s, taken under one lock, so two loads are judged one after the
 * other and never both started when they do not fit together. A plan that needs room evicts the
 * least recently used idle models through `unloadIfIdle`, which is atomic with their admission (a
 * model that took a request meanwhile is kept, and the plan is made again). With no idle model to
 * evict the load waits, woken when a model is given back or a request ends, up to the load deadline
 * (`health.loadDeadline`, the bound a load has anyway); then it fails as `insufficient_resources`,
 * and the requests still waiting for that model (each within its own queue timeout) get the same
 * answer (503).
 *
 * Written here rather than with an Effect `Semaphore` of bytes: the permits a load needs depend on
 * the measured RAM of the others at the moment it asks, and eviction must run inside the decision.
 */
import { Clock, Deferred, Duration, Effect, Layer, Ref, Stream } from "effect"
import { type CompanionConfig, modelsOf, readConfig } from "../config/Config.js"
import * as Budget from "../domain/Budget.js"
import { LifecycleError, refusal, ResourceError } from "../domain/Errors.js"
import { PoolError } from "../services/Errors.js"
import { ModelPool, type ModelPoolService, type PoolModel, type PoolStatus } from "../services/ModelPool.js"
import { type InsufficientResources, RuntimeManager, type RuntimeManagerService } from "../services/RuntimeManager.js"
import * as RuntimeManagerLive from "./RuntimeManagerLive.js"

/** How often a load waiting for room decides again even without a change. */
const RECHECK_MILLIS = 250

const noRoom = (): InsufficientResources => refusal(ResourceError, "insufficient_resources")

const modelNotFound = () => new PoolError({ reason: "model_not_found" })

/** The pool's own parts, over managers however they were made. */
const assemble = (
  entries: ReadonlyArray<readonly [PoolModel, RuntimeManagerService]>,
  poke: Effect.Effect<void>,
  heldBytes: Effect.Effect<number>
): ModelPoolService => {
  const managers = new Map(entries.map(([model, manager]) => [model.name, manager]))
  const models = entries.map(([model]) => model)
  const run: ModelPoolService["run"] = (name, request) => {
    const manager = managers.get(name)
    return manager === undefined ? Effect.fail(modelNotFound()) : Effect.ensuring(manager.run(request), poke)
  }
  const status: Effect.Effect<PoolStatus> = Effect.gen(function*() {
    const all = yield* Effect.forEach(entries, ([model, manager]) => Effect.map(manager.status, (status) => ({ ...model, status })))
    return {
      models: all,
      // A preloaded model evicted since is loaded on demand again: it does not hold readiness back.
      ready: all.every((m) => !m.preload || m.status.state === "ready" || (m.status.state === "stopped" && m.status.onDemand)),
      heldBytes: yield* heldBytes
    }
  })
  return {
    models,
    start: Effect.forEach(entries, ([model, manager]) => (model.preload ? manager.start : Effect.void), { discard: true }),
    run,
    drain: (deadline) => Effect.forEach(entries, ([, manager]) => Effect.ignore(manager.drain(deadline)), { concurrency: "unbounded", discard: true }),
    status,
    manager: (name) => managers.get(name)
  }
}

export const make = Effect.fn("ModelPool.make")(function*(config: CompanionConfig) {
  const limits = config.resources
  const waitFor = config.health.loadDeadline
  /** name → the estimate held for it. */
  const ledger = yield* Ref.make<ReadonlyMap<string, number>>(new Map())
  const decide = yield* Effect.makeSemaphore(1)
  // Woken on every change that may make room: a model given back, a request ended.
  const signal = yield* Ref.make(yield* Deferred.make<void>())
  let waiting = 0
  /** Draining for good: no load starts, no request enters. */
  let closing = false
  const changed = Effect.flatMap(Deferred.make<void>(), (next) =>
    Effect.flatMap(Ref.getAndSet(signal, next), (done) => Deferred.succeed(done, undefined)))
  const poke = Effect.suspend(() => (waiting > 0 ? changed : Effect.void))

  const managers = new Map<string, RuntimeManagerService>()

  const snapshot = (except: string) =>
    Effect.flatMap(Ref.get(ledger), (held) =>
      Effect.forEach([...held].filter(([name]) => name !== except), ([name, estimateBytes]) =>
        Effect.map(managers.get(name)!.status, (s): Budget.Held => ({
          name,
          estimateBytes,
          ramBytes: s.ramBytes,
          vramBytes: s.vramBytes,
          idle: s.state === "ready" && s.inFlight === 0 && s.queued === 0,
          lastActivity: s.lastActivity
        }))))

  type Step = { readonly _tag: "held" } | { readonly _tag: "again" } | { readonly _tag: "wait"; readonly until: Deferred.Deferred<void> }

  /** One decision under the lock: hold the room, evict and decide again, or wait for a change. */
  const step = (name: string, bytes: number): Effect.Effect<Step, InsufficientResources> =>
    decide.withPermits(1)(Effect.gen(function*() {
      // Taken before the look: a change after it wakes this waiter.
      const until = yield* Ref.get(signal)
      if (closing) return yield* Effect.fail(noRoom())
      const plan = Budget.plan(yield* snapshot(name), bytes, limits)
      switch (plan._tag) {
        case "fits":
          yield* Ref.update(ledger, (held) => new Map([...held, [name, bytes]]))
          return { _tag: "held" } as const
        case "evict":
          for (const victim of plan.names) {
            // Busy again, or starting, draining or restarting: wait for a change, then decide anew.
            if (!(yield* managers.get(victim)!.unloadIfIdle)) {
              waiting++
              return { _tag: "wait", until } as const
            }
            yield* Effect.logInfo("model unloaded to make room", { model: victim })
          }
          return { _tag: "again" } as const
        case "wait":
          // Counted under the lock: a change after this decision wakes it.
          waiting++
          return { _tag: "wait", until } as const
        case "never":
          return yield* Effect.fail(noRoom())
      }
    }))

  /**
   * Decide until the room is held. Runs as the acquisition of the reservation (uninterruptible, so
   * a hold is never lost between the ledger and its release): only the wait for a change is
   * interruptible, and it alone is bounded by the deadline.
   */
  const admit = (name: string, bytes: number) =>
    Effect.gen(function*() {
      const deadline = (yield* Clock.currentTimeMillis) + Duration.toMillis(waitFor)
      for (;;) {
        const next = yield* step(name, bytes)
        if (next._tag === "held") return
        if (next._tag === "wait") {
          const left = deadline - (yield* Clock.currentTimeMillis)
          if (left <= 0) {
            waiting--
            return yield* Effect.fail(noRoom())
          }
          // Woken by a change, and in any case every RECHECK: a change can come while a victim's
          // lifecycle lock is still held (a start finishing), when it cannot be unloaded yet.
          yield* Effect.interruptible(Deferred.await(next.until)).pipe(
            Effect.timeout(Duration.millis(Math.min(left, RECHECK_MILLIS))),
            Effect.ignore,
            Effect.ensuring(Effect.sync(() => waiting--))
          )
        }
      }
    })

  const giveBack = (name: string) => Effect.zipRight(Ref.update(ledger, (held) => new Map([...held].filter(([n]) => n !== name))), changed)

  const reserve = (name: string) => (estimate: { readonly totalBytes: number }) =>
    Effect.acquireRelease(admit(name, estimate.totalBytes), () => giveBack(name))

  const entries: Array<readonly [PoolModel, RuntimeManagerService]> = []
  for (const model of modelsOf(config)) {
    const manager = yield* RuntimeManagerLive.make(RuntimeManagerLive.configFrom(config, model), { reserve: reserve(model.name) })
    managers.set(model.name, manager)
    entries.push([{ name: model.name, kind: model.kind, preload: model.preload }, manager])
  }
  // A model that becomes ready (and idle), or stops, may make room for a waiting load.
  for (const [, manager] of entries) yield* Effect.forkScoped(Stream.runForEach(manager.changes, () => poke))
  const heldBytes = Effect.flatMap(snapshot(""), (held) => Effect.succeed(held.reduce((n, h) => n + Budget.cost(h), 0)))
  const pool = assemble(entries, poke, heldBytes)
  return ModelPool.of({
    ...pool,
    run: (name, request) => (closing ? Effect.fail(refusal(LifecycleError, "not_ready")) : pool.run(name, request)),
    drain: (deadline) =>
      Effect.zipRight(
        Effect.zipRight(Effect.sync(() => {
          closing = true
        }), changed),
        pool.drain(deadline)
      )
  })
})

/** The pool of every configured model. */
export const layer = (config: CompanionConfig) => Layer.scoped(ModelPool, make(config))

/** The pool, configured from `CompanionConfig`. */
export const layerConfig = Layer.scoped(ModelPool, Effect.flatMap(readConfig, make))

/**
 * A pool of one over the `RuntimeManager` in context (no budget of its own: the manager's
 * pre-flight is its fit), for the gateway in front of a manager built by hand.
 */
export const fromManager = (model: { readonly name: string; readonly kind?: PoolModel["kind"] | undefined }) =>
  Layer.effect(
    ModelPool,
    Effect.map(RuntimeManager, (manager) =>
      ModelPool.of(assemble([[{ name: model.name, kind: model.kind ?? "chat", preload: true }, manager]], Effect.void, Effect.succeed(0))))
  )
