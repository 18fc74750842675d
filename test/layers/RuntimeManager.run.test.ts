/** run: the gate around inference effects — admission, queueing, timeouts, interruption, resources. */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Deferred, Effect, Either, Exit, Fiber, Metric, MetricState, Option, Random, TestClock } from "effect"
import { ResourceStatControl } from "../../src/layers/ResourceStatTest.js"
import { ResourceStatError } from "../../src/services/Errors.js"
import { metrics, RuntimeManager } from "../../src/services/RuntimeManager.js"
import { nameFrom } from "../../src/config/Config.js"
import { expectFailure, managerLayer, SOURCE, startReady } from "./harness.js"

const counter = (metric: Metric.Metric.Counter<number>) =>
  Effect.map(Metric.value(metric), (state: MetricState.MetricState.Counter<number>) => state.count)

describe("RuntimeManager.run", () => {
  it.effect("refuses when the runtime is not ready", () =>
    Effect.gen(function*() {
      const manager = yield* RuntimeManager
      yield* expectFailure(manager.run(() => Effect.void), "LifecycleError", "not_ready")
    }).pipe(Effect.provide(managerLayer())))

  it.effect("returns the effect's value and gives the slot back on success and failure", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      assert.strictEqual(yield* manager.run(() => Effect.succeed("hello")), "hello")
      const failed = yield* Effect.either(manager.run(() => Effect.fail("inference broke" as const)))
      assert.deepStrictEqual(failed._tag === "Left" ? failed.left : undefined, "inference broke")
      const died = yield* Effect.exit(manager.run(() => Effect.die("boom")))
      assert.isTrue(Exit.isFailure(died))
      assert.deepStrictEqual([(yield* manager.status).inFlight, (yield* manager.status).queued], [0, 0])
    }).pipe(Effect.provide(managerLayer())))

  it.effect("runs at most maxInFlight, queues up to queueBound in FIFO order, and refuses beyond", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      const order: Array<string> = []
      const gates = [yield* Deferred.make<void>(), yield* Deferred.make<void>()]
      const running = yield* Effect.forEach(gates, (gate, i) =>
        Effect.fork(manager.run(() => Effect.zipRight(Effect.sync(() => order.push(`run${i}`)), Deferred.await(gate)))))
      yield* Effect.yieldNow()
      const queued = yield* Effect.forEach(["q0", "q1"], (name) =>
        Effect.fork(manager.run(() => Effect.sync(() => void order.push(name)))))
      yield* Effect.yieldNow()
      assert.deepStrictEqual([(yield* manager.status).inFlight, (yield* manager.status).queued], [2, 2])
      yield* expectFailure(manager.run(() => Effect.void), "AdmissionError", "queue_full")

      yield* Deferred.succeed(gates[0]!, undefined)
      for (const fiber of [running[0]!, ...queued]) yield* Fiber.join(fiber)
      yield* Deferred.succeed(gates[1]!, undefined)
      yield* Fiber.join(running[1]!)
      assert.deepStrictEqual(order, ["run0", "run1", "q0", "q1"])
      assert.deepStrictEqual([(yield* manager.status).inFlight, (yield* manager.status).queued], [0, 0])
    }).pipe(Effect.provide(managerLayer())))

  it.effect("a queued request that waits past the queue timeout fails and leaves the queue", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      yield* Effect.forEach([1, 2], () => Effect.fork(manager.run(() => Effect.never)))
      yield* Effect.yieldNow()
      const waiting = yield* Effect.fork(manager.run(() => Effect.void))
      yield* Effect.yieldNow()
      assert.strictEqual((yield* manager.status).queued, 1)
      yield* TestClock.adjust("3 seconds")
      yield* expectFailure(Fiber.join(waiting), "QueueTimeoutError", "queue_timeout")
      assert.deepStrictEqual([(yield* manager.status).inFlight, (yield* manager.status).queued], [2, 0])
    }).pipe(Effect.provide(managerLayer({ admission: { queueTimeout: "3 seconds" } }))))

  it.effect("a request interrupted while queued or while running gives its place back", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      const running = yield* Effect.forEach([1, 2], () => Effect.fork(manager.run(() => Effect.never)))
      yield* Effect.yieldNow()
      const queued = yield* Effect.fork(manager.run(() => Effect.void))
      yield* Effect.yieldNow()
      yield* Fiber.interrupt(queued)
      assert.deepStrictEqual([(yield* manager.status).inFlight, (yield* manager.status).queued], [2, 0])
      yield* Fiber.interrupt(running[0]!)
      assert.deepStrictEqual([(yield* manager.status).inFlight, (yield* manager.status).queued], [1, 0])
      yield* Fiber.interrupt(running[1]!)
      assert.deepStrictEqual([(yield* manager.status).inFlight, (yield* manager.status).queued], [0, 0])
      assert.strictEqual(yield* manager.run(() => Effect.succeed(1)), 1)
    }).pipe(Effect.provide(managerLayer())))

  it.effect("refuses over a resource ceiling and gives the slot back", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      const stat = yield* ResourceStatControl
      yield* stat.observations({ ramBytes: 5 * 1024 ** 3, vramBytes: 0, cpuPercent: 10 })
      yield* expectFailure(manager.run(() => Effect.void), "ResourceError", "ram_over_limit")
      yield* TestClock.adjust("1 second")
      yield* stat.observations({ ramBytes: 0, vramBytes: 0, cpuPercent: 95 })
      yield* expectFailure(manager.run(() => Effect.void), "ResourceError", "cpu_over_limit")
      yield* TestClock.adjust("1 second")
      yield* stat.observations(new ResourceStatError({ reason: "stat_failed" }))
      yield* expectFailure(manager.run(() => Effect.void), "ResourceStatError", "stat_failed")
      yield* TestClock.adjust("1 second")
      // A process that vanished under the probe is, to the caller, a runtime that exited.
      yield* stat.observations(new ResourceStatError({ reason: "process_gone" }))
      yield* expectFailure(manager.run(() => Effect.void), "RuntimeExitedError", "runtime_exited")
      assert.strictEqual((yield* manager.status).inFlight, 0)
    }).pipe(Effect.provide(managerLayer())))

  it.effect("applies a VRAM ceiling when one is configured", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      yield* (yield* ResourceStatControl).observations({ ramBytes: 0, vramBytes: 3 * 1024 ** 3, cpuPercent: 0 })
      yield* expectFailure(manager.run(() => Effect.void), "ResourceError", "vram_over_limit")
    }).pipe(Effect.provide(managerLayer({ resources: { maxVramBytes: 2 * 1024 ** 3 } }))))

  it.effect("reuses an observation up to maxObservationAge, then takes a fresh one", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      const stat = yield* ResourceStatControl
      yield* manager.run(() => Effect.void)
      yield* manager.run(() => Effect.void)
      assert.strictEqual(yield* stat.calls, 1)
      yield* TestClock.adjust("101 millis")
      yield* manager.run(() => Effect.void)
      assert.strictEqual(yield* stat.calls, 2)
    }).pipe(Effect.provide(managerLayer())))

  it.effect("requests arriving while an observation is under way wait for it instead of each taking one", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      const stat = yield* ResourceStatControl
      yield* stat.latency("20 millis")
      const both = yield* Effect.fork(Effect.all([manager.run(() => Effect.succeed(1)), manager.run(() => Effect.succeed(2))], { concurrency: 2 }))
      yield* TestClock.adjust("20 millis")
      assert.deepStrictEqual(yield* Fiber.join(both), [1, 2])
      assert.strictEqual(yield* stat.calls, 1)
      // A failed observation reaches everyone who waited for it, and is not kept.
      yield* TestClock.adjust("101 millis")
      yield* stat.observations(new ResourceStatError({ reason: "stat_failed" }))
      const failing = yield* Effect.fork(Effect.all([Effect.exit(manager.run(() => Effect.void)), Effect.exit(manager.run(() => Effect.void))], { concurrency: 2 }))
      yield* TestClock.adjust("20 millis")
      const exits = yield* Fiber.join(failing)
      assert.isTrue(exits.every(Exit.isFailure))
      assert.strictEqual(yield* stat.calls, 2)
      yield* stat.observations()
      yield* manager.run(() => Effect.void).pipe(Effect.fork, Effect.zipLeft(TestClock.adjust("20 millis")), Effect.flatMap(Fiber.join))
      assert.strictEqual(yield* stat.calls, 3)
      assert.deepStrictEqual([(yield* manager.status).inFlight, (yield* manager.status).queued], [0, 0])
    }).pipe(Effect.provide(managerLayer())))

  it.effect("a request waiting for an observation under way can leave at once; a hung observation times out as stat_failed", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      const stat = yield* ResourceStatControl
      yield* stat.latency("1 hour")
      const first = yield* Effect.fork(Effect.either(manager.run(() => Effect.void)))
      const second = yield* Effect.fork(manager.run(() => Effect.void))
      for (let i = 0; i < 100 && (yield* manager.status).inFlight < 2; i++) yield* Effect.yieldNow()
      assert.strictEqual((yield* manager.status).inFlight, 2)
      // Leaving does not wait for the observation the first request started.
      yield* Fiber.interrupt(second)
      assert.strictEqual((yield* manager.status).inFlight, 1)
      // The observation is bounded by health.probeTimeout (2 s here): fail closed, slot back.
      yield* TestClock.adjust("2 seconds")
      const outcome = yield* Fiber.join(first)
      assert.isTrue(Either.isLeft(outcome) && outcome.left._tag === "ResourceStatError" && outcome.left.reason === "stat_failed")
      assert.strictEqual((yield* manager.status).inFlight, 0)
      assert.strictEqual(yield* stat.calls, 1)
    }).pipe(Effect.provide(managerLayer())))

  it.effect("a request handed a slot from the queue uses the fresh observation", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      const stat = yield* ResourceStatControl
      const gate = yield* Deferred.make<void>()
      const running = yield* Effect.forEach([1, 2], () => Effect.fork(manager.run(() => Deferred.await(gate))))
      yield* Effect.yieldNow()
      const queued = yield* Effect.fork(manager.run(() => Effect.succeed("from the queue")))
      yield* Effect.yieldNow()
      assert.strictEqual((yield* manager.status).queued, 1)
      yield* Deferred.succeed(gate, undefined)
      yield* Fiber.join(Fiber.zip(running[0]!, running[1]!))
      assert.strictEqual(yield* Fiber.join(queued), "from the queue")
      assert.strictEqual(yield* stat.calls, 1)
    }).pipe(Effect.provide(managerLayer())))

  it.effect("counts admissions and rejections by reason, labelled with the model's name", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      const name = nameFrom(new URL(SOURCE))
      const admissions = Metric.tagged(metrics.admissions, "model", name)
      const admitted0 = yield* counter(admissions)
      const untagged0 = yield* counter(metrics.admissions)
      const full = Metric.tagged(Metric.tagged(metrics.rejections, "model", name), "reason", "queue_full")
      const full0 = yield* counter(full)
      yield* manager.run(() => Effect.void)
      yield* Effect.forEach([1, 2, 3, 4], () => Effect.fork(manager.run(() => Effect.never)))
      yield* Effect.yieldNow()
      yield* Effect.exit(manager.run(() => Effect.void))
      assert.strictEqual((yield* counter(admissions)) - admitted0, 3)
      assert.strictEqual((yield* counter(metrics.admissions)) - untagged0, 0)
      assert.strictEqual((yield* counter(full)) - full0, 1)
    }).pipe(Effect.provide(managerLayer())))

  it.effect("a flood of 10,000 requests with random interruptions and failures never passes the bounds and ends empty", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      const bounds = { maxInFlight: 4, queueBound: 16 }
      let samples = 0
      let violations = 0
      const probe = Effect.gen(function*() {
        const s = yield* manager.status
        samples++
        if (s.inFlight > bounds.maxInFlight || s.queued > bounds.queueBound || s.inFlight < 0 || s.queued < 0) violations++
      })
      const prober = yield* Effect.fork(Effect.forever(Effect.zipRight(probe, Effect.yieldNow())))
      const outcomes = { ok: 0, failed: 0, refused: 0, interrupted: 0 }
      yield* Effect.forEach(
        Array.from({ length: 10_000 }, (_, i) => i),
        (i) =>
          Effect.gen(function*() {
            const work = Effect.gen(function*() {
              yield* probe
              yield* Effect.sleep(`${yield* Random.nextIntBetween(1, 20)} millis`)
              if (i % 7 === 0) return yield* Effect.fail("inference failed" as const)
              return i
            })
            const fiber = yield* Effect.fork(manager.run(() => work))
            if (i % 5 === 0) {
              yield* Effect.sleep(`${yield* Random.nextIntBetween(0, 10)} millis`)
              yield* Fiber.interrupt(fiber)
            }
            const exit = yield* Fiber.await(fiber)
            if (Exit.isSuccess(exit)) outcomes.ok++
            else if (Exit.isInterrupted(exit)) outcomes.interrupted++
            else if (Option.exists(Cause.failureOption(exit.cause), (e) => typeof e === "object" && e.reason === "queue_full")) outcomes.refused++
            else outcomes.failed++
          }),
        { concurrency: 64, discard: true }
      ).pipe(Effect.fork, Effect.flatMap((all) =>
        Effect.gen(function*() {
          while (!(yield* Fiber.poll(all)).pipe(Option.isSome)) yield* TestClock.adjust("5 millis")
          yield* Fiber.join(all)
        })))
      yield* Fiber.interrupt(prober)
      assert.strictEqual(outcomes.ok + outcomes.failed + outcomes.refused + outcomes.interrupted, 10_000)
      assert.isAbove(outcomes.ok, 0)
      assert.isAbove(outcomes.interrupted, 0)
      assert.isAbove(samples, 10_000)
      assert.strictEqual(violations, 0)
      assert.deepStrictEqual([(yield* manager.status).inFlight, (yield* manager.status).queued], [0, 0])
    }).pipe(Effect.provide(managerLayer({ admission: { maxInFlight: 4, queueBound: 16 } }))), 60_000)
})
