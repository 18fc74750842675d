import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Layer, Option, Scope, TestClock } from "effect"
import { HealthProbeControl } from "../../src/layers/HealthProbeTest.js"
import { ResourceStatControl } from "../../src/layers/ResourceStatTest.js"
import { SpawnerControl } from "../../src/layers/SpawnerTest.js"
import { alive, ESTIMATE, ping, poolLayer, serveAll, settle, stateOf } from "./poolCommon.js"

describe("review: pool wake-ups", () => {
  it.effect("a load waiting for room is woken when a model that was loading becomes ready and idle (no request ends)", () =>
    Effect.gen(function*() {
      yield* serveAll
      const health = yield* HealthProbeControl
      yield* health.answers("loading")
      // a starts loading on demand; its only client leaves before it is ready.
      const clientA = yield* Effect.fork(ping("a"))
      yield* settle
      assert.strictEqual((yield* stateOf("a")).state, "starting")
      yield* Fiber.interrupt(clientA)
      // b needs a's room, but a is loading (not evictable): b's load waits.
      const clientB = yield* Effect.fork(ping("b"))
      yield* settle
      yield* TestClock.adjust("1 second")
      yield* settle
      // a becomes ready, with nothing in flight or queued: idle, evictable.
      yield* health.answers("ok")
      for (let i = 0; i < 10; i++) {
        yield* TestClock.adjust("1 second")
        yield* settle
      }
      // 10 s after a became idle, b has evicted it and run (the load deadline is 30 s).
      const polled = yield* Fiber.poll(clientB)
      assert.isTrue(Option.isSome(polled) && Exit.isSuccess(polled.value), `b still waiting; alive: ${(yield* alive).join(",")}`)
    }).pipe(Effect.provide(poolLayer(1.5))))

  it.effect("no deadlock between the pool's decision lock and a victim's lifecycle lock (victim restarted while an eviction stops another)", () =>
    Effect.gen(function*() {
      // Built in a scope never closed: on the current code closing it would hang forever.
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(
        poolLayer(2.5, { stopGrace: "10 seconds", restart: { backoffBase: "1 second", backoffMax: "8 seconds" } }),
        scope
      )
      return yield* Effect.gen(function*() {
        yield* serveAll
        const spawner = yield* SpawnerControl
        const stat = yield* ResourceStatControl
        yield* ping("a")
        yield* TestClock.adjust("1 second")
        // b measured larger than its estimate (it grew): evicting a alone will not be enough for c.
        yield* stat.observations({ ramBytes: Math.floor(1.6 * ESTIMATE), vramBytes: 0, cpuPercent: 0 })
        yield* ping("b")
        yield* TestClock.adjust("1 second")
        assert.deepStrictEqual(yield* alive, ["a", "b"])
        // a takes 5 s to stop after SIGTERM.
        yield* spawner.setBehaviour({ exitAfterSigterm: "5 seconds" })
        const clientC = yield* Effect.fork(ping("c"))
        yield* settle // c's decision: evict [a, b]; a is stopping, the decision lock held
        const b = (yield* spawner.spawned).find((p) => p.options.alias === "b")!
        yield* b.crash() // b dies on its own; its restart begins after 1 s (holding b's lifecycle lock)
        yield* settle
        for (let i = 0; i < 60; i++) {
          yield* TestClock.adjust("1 second")
          yield* settle
        }
        const polled = yield* Fiber.poll(clientC)
        assert.isTrue(Option.isSome(polled), `c never answered after 60 s; b is ${(yield* stateOf("b")).state}, alive: ${(yield* alive).join(",")}`)
      }).pipe(Effect.provide(context))
    }))
})
