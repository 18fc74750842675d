import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Deferred, Effect, Fiber, Layer, TestClock } from "effect"
import { SpawnerControl } from "../../src/layers/SpawnerTest.js"
import * as TestLayers from "../../src/layers/TestLayers.js"
import { ModelPool } from "../../src/services/ModelPool.js"
import { alive, configOf, hold, ping, poolLayer, serveAll, settle } from "./poolCommon.js"

const spawnedOf = (name: string) => Effect.map(Effect.flatMap(SpawnerControl, (c) => c.spawned), (all) => all.filter((p) => p.options.alias === name).length)

describe("review: pool lifecycle", () => {
  it.effect("preloaded models that do not fit together: pool.start evicts the first to load the second, and /health's `ready` never comes", () =>
    Effect.gen(function*() {
      yield* serveAll
      const pool = yield* ModelPool
      yield* pool.start // succeeds
      const status = yield* pool.status
      // Either start refuses such a config, or every preloaded model stays loaded: not this.
      assert.isTrue(status.ready, `start succeeded but ready=false; alive: ${(yield* alive).join(",")}`)
    }).pipe(Effect.provide(TestLayers.pool.pipe(Layer.provide(Layer.setConfigProvider(ConfigProvider.fromJson(
      configOf(1.5, {}, { a: { preload: true }, b: { preload: true } })
    )))))))

  it.effect("a drained pool does not load models: a request after pool.drain spawns no runtime", () =>
    Effect.gen(function*() {
      yield* serveAll
      const pool = yield* ModelPool
      yield* ping("a")
      yield* pool.drain("1 second")
      assert.deepStrictEqual(yield* alive, [])
      // a (drained) refuses; b, never loaded, is started after the shutdown drain.
      const after = yield* Effect.fork(Effect.exit(ping("b")))
      yield* settle
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(after)
      assert.strictEqual(yield* spawnedOf("b"), 0, "b was spawned after the pool was drained")
    }).pipe(Effect.provide(poolLayer(2.5))))

  it.effect("a drain while a load waits for room: the drain frees the room and the waiting model is spawned during the shutdown", () =>
    Effect.gen(function*() {
      yield* serveAll
      const pool = yield* ModelPool
      const gate = yield* Deferred.make<void>()
      yield* hold("a", gate) // a busy: b's load waits for room
      yield* settle
      yield* Effect.fork(Effect.exit(ping("b")))
      yield* settle
      const drain = yield* Effect.fork(pool.drain("1 second"))
      for (let i = 0; i < 40; i++) {
        yield* settle
        yield* TestClock.adjust("1 second")
      }
      yield* Fiber.join(drain)
      assert.strictEqual(yield* spawnedOf("b"), 0, "b was spawned by the room a's drain gave back")
    }).pipe(Effect.provide(poolLayer(1.5))))
})
