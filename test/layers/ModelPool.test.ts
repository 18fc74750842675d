/**
 * The ModelPool over the in-memory layers, on the TestClock: several models, one budget. The
 * budget is set in units of one model's estimate (every model here has the same shape), so "fits
 * two" means exactly that.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, ConfigProvider, Deferred, Effect, Either, Exit, Fiber, Layer, Option, Random, TestClock } from "effect"
import { preflightOptions } from "../../src/config/Config.js"
import * as Gguf from "../../src/domain/Gguf.js"
import * as MemoryFit from "../../src/domain/MemoryFit.js"
import { DownloaderControl } from "../../src/layers/DownloaderTest.js"
import { SpawnerControl } from "../../src/layers/SpawnerTest.js"
import * as TestLayers from "../../src/layers/TestLayers.js"
import { ModelPool } from "../../src/services/ModelPool.js"
import { tinyGguf } from "../../src/testing/ModelFixtures.js"
import { sha256Hex } from "../domain/fixtures.js"
import { expectFailure } from "./harness.js"

const NAMES = ["a", "b", "c", "d"] as const
type Name = (typeof NAMES)[number]
const FILES = Object.fromEntries(NAMES.map((name, i) => [name, tinyGguf(100 + i)])) as Record<Name, Uint8Array>
const sourceOf = (name: Name) => `https://models.example.com/org/${name}/resolve/main/${name}.gguf`
const PARALLEL = 2

/** One model's estimate, as the manager's pre-flight computes it. */
const ESTIMATE = MemoryFit.estimate(Either.getOrThrow(Gguf.summarize(Either.getOrThrow(Gguf.read(FILES.a, FILES.a.length)))), {
  parallel: PARALLEL
}).totalBytes

const configOf = (budgetModels: number, patch: Record<string, unknown> = {}) => ({
  storeDir: "/store",
  models: Object.fromEntries(NAMES.map((name) => [name, { sha256: sha256Hex(FILES[name]), sizeBytes: FILES[name].length, source: sourceOf(name) }])),
  allowedSources: ["https://models.example.com/org/"],
  admission: { maxInFlight: PARALLEL, queueBound: 64 },
  resources: { maxRamBytes: Math.floor(budgetModels * ESTIMATE), maxCpuPercent: 100 },
  health: { firstProbeInterval: "50 millis", loadDeadline: "30 seconds" },
  stopGrace: "1 second",
  ...patch
})

const poolLayer = (budgetModels: number, patch: Record<string, unknown> = {}) =>
  TestLayers.pool.pipe(Layer.provide(Layer.setConfigProvider(ConfigProvider.fromJson(configOf(budgetModels, patch)))))

const serveAll = Effect.flatMap(DownloaderControl, (d) => Effect.forEach(NAMES, (name) => d.serve(sourceOf(name), FILES[name]), { discard: true }))

/** The models whose fake runtime is alive now, by the alias each was spawned with. */
const alive = Effect.gen(function*() {
  const spawned = yield* (yield* SpawnerControl).spawned
  const running = yield* Effect.filter(spawned, (p) => p.alive)
  return running.map((p) => p.options.alias ?? "?").sort()
})

const spawnedCount = (name: Name) => Effect.map(Effect.flatMap(SpawnerControl, (c) => c.spawned), (all) => all.filter((p) => p.options.alias === name).length)

/** A request that finishes at once. */
const ping = (name: Name) => Effect.flatMap(ModelPool, (pool) => pool.run(name, () => Effect.succeed(name)))

/** A request held until `gate` opens. */
const hold = (name: Name, gate: Deferred.Deferred<void>) => Effect.flatMap(ModelPool, (pool) => Effect.fork(pool.run(name, () => Deferred.await(gate))))

const settle = Effect.repeatN(Effect.yieldNow(), 20)

describe("ModelPool: several models within one budget", () => {
  it.effect("nothing loads until asked; each model's runtime is spawned with its own name and slots", () =>
    Effect.gen(function*() {
      yield* serveAll
      const pool = yield* ModelPool
      yield* pool.start
      assert.deepStrictEqual(yield* alive, [])
      assert.isTrue((yield* pool.status).ready) // nothing is preloaded
      assert.strictEqual(yield* ping("a"), "a")
      const runtime = yield* (yield* SpawnerControl).latest
      assert.deepStrictEqual([runtime.options.alias, runtime.options.parallel, runtime.options.embeddings], ["a", PARALLEL, undefined])
      assert.deepStrictEqual(yield* alive, ["a"])
      assert.strictEqual((yield* pool.status).heldBytes, ESTIMATE)
    }).pipe(Effect.provide(poolLayer(2.5))))

  it.effect("an unknown model is model_not_found, and nothing is spawned", () =>
    Effect.gen(function*() {
      yield* serveAll
      const pool = yield* ModelPool
      yield* expectFailure(pool.run("nope", () => Effect.void), "PoolError", "model_not_found")
      assert.deepStrictEqual(yield* alive, [])
    }).pipe(Effect.provide(poolLayer(2.5))))

  it.effect("over the budget, the least recently used idle model is unloaded; a request to it loads it again", () =>
    Effect.gen(function*() {
      yield* serveAll
      yield* ping("a")
      yield* TestClock.adjust("1 second")
      yield* ping("b")
      yield* TestClock.adjust("1 second")
      assert.deepStrictEqual(yield* alive, ["a", "b"])
      yield* ping("c") // room for two: a, the least recent, goes
      assert.deepStrictEqual(yield* alive, ["b", "c"])
      const pool = yield* ModelPool
      const a = (yield* pool.status).models.find((m) => m.name === "a")!
      assert.deepStrictEqual([a.status.state, a.status.onDemand], ["stopped", true])
      yield* TestClock.adjust("1 second")
      yield* ping("a") // b is now the least recent
      assert.deepStrictEqual(yield* alive, ["a", "c"])
      assert.strictEqual(yield* spawnedCount("a"), 2)
      assert.isAtMost((yield* pool.status).heldBytes, 2.5 * ESTIMATE)
    }).pipe(Effect.provide(poolLayer(2.5))))

  it.effect("a model with work in flight is never evicted; with no idle model the load waits, and goes on once one is idle", () =>
    Effect.gen(function*() {
      yield* serveAll
      const gateA = yield* Deferred.make<void>()
      const gateC = yield* Deferred.make<void>()
      const busyA = yield* hold("a", gateA)
      yield* settle
      yield* TestClock.adjust("1 second")
      yield* ping("b")
      yield* TestClock.adjust("1 second")
      // a is older but busy: b, idle, goes.
      const busyC = yield* hold("c", gateC)
      yield* settle
      assert.deepStrictEqual(yield* alive, ["a", "c"])
      // Both busy: d waits in its queue, nothing is stopped.
      const d = yield* Effect.fork(ping("d"))
      yield* settle
      yield* TestClock.adjust("5 seconds")
      assert.deepStrictEqual(yield* alive, ["a", "c"])
      assert.isNull(yield* Fiber.poll(d).pipe(Effect.map(Option.getOrNull)))
      const pool = yield* ModelPool
      assert.strictEqual((yield* pool.status).models.find((m) => m.name === "d")!.status.queued, 1)
      // a finishes: it is idle now, d's load evicts it.
      yield* Deferred.succeed(gateA, undefined)
      yield* Fiber.join(busyA)
      assert.strictEqual(yield* Fiber.join(d), "d")
      assert.deepStrictEqual(yield* alive, ["c", "d"])
      yield* Deferred.succeed(gateC, undefined)
      yield* Fiber.join(busyC)
    }).pipe(Effect.provide(poolLayer(2.5))))

  it.effect("two loads that cannot both fit are never started together: the second waits for the first to be idle", () =>
    Effect.gen(function*() {
      yield* serveAll
      const gate = yield* Deferred.make<void>()
      const pool = yield* ModelPool
      // Both at once, each holding its slot.
      const first = yield* Effect.fork(pool.run("a", () => Deferred.await(gate)))
      const second = yield* Effect.fork(pool.run("b", () => Effect.succeed("b")))
      for (let i = 0; i < 20; i++) {
        yield* settle
        assert.isAtMost((yield* alive).length, 1)
        yield* TestClock.adjust("100 millis")
      }
      assert.deepStrictEqual(yield* alive, ["a"])
      yield* Deferred.succeed(gate, undefined)
      yield* Fiber.join(first)
      assert.strictEqual(yield* Fiber.join(second), "b")
      assert.deepStrictEqual(yield* alive, ["b"])
    }).pipe(Effect.provide(poolLayer(1.5))))

  it.effect("a load that finds no room within the load deadline fails as insufficient_resources, and so do the requests waiting for it", () =>
    Effect.gen(function*() {
      yield* serveAll
      const gate = yield* Deferred.make<void>()
      const busy = yield* hold("a", gate)
      yield* settle
      const waiting = yield* Effect.fork(Effect.exit(ping("b")))
      for (let i = 0; i < 29; i++) {
        yield* settle
        yield* TestClock.adjust("1 second")
      }
      // Still waiting for room, within the deadline.
      assert.isTrue(Option.isNone(yield* Fiber.poll(waiting)))
      for (let i = 0; i < 5 && Option.isNone(yield* Fiber.poll(waiting)); i++) {
        yield* settle
        yield* TestClock.adjust("1 second")
      }
      const exit = yield* Fiber.join(waiting)
      assert.isTrue(Exit.isFailure(exit))
      yield* expectFailure(exit, "ResourceError", "insufficient_resources")
      assert.deepStrictEqual(yield* alive, ["a"])
      // Not the runtime's fault: the circuit did not count it, and the next request tries again.
      const b = (yield* (yield* ModelPool).status).models.find((m) => m.name === "b")!.status
      assert.deepStrictEqual([b.state, b.circuitOpen, b.onDemand, b.queued], ["stopped", false, true, 0])
      yield* Deferred.succeed(gate, undefined)
      yield* Fiber.join(busy)
      assert.strictEqual(yield* ping("b"), "b")
    }).pipe(Effect.provide(poolLayer(1.5, { health: { loadDeadline: "30 seconds" }, admission: { maxInFlight: PARALLEL, queueBound: 64, queueTimeout: "1 minute" } }))))

  it.effect("preloaded models start with the pool, and /health's readiness waits for them only", () =>
    Effect.gen(function*() {
      yield* serveAll
      const pool = yield* ModelPool
      assert.isFalse((yield* pool.status).ready)
      yield* pool.start
      assert.deepStrictEqual(yield* alive, ["b"])
      assert.isTrue((yield* pool.status).ready)
      yield* pool.drain("1 second")
      assert.deepStrictEqual(yield* alive, [])
    }).pipe(Effect.provide(TestLayers.pool.pipe(Layer.provide(Layer.setConfigProvider(ConfigProvider.fromJson({
      ...configOf(2.5),
      models: { ...configOf(2.5).models, b: { ...configOf(2.5).models["b"], preload: true } }
    })))))))

  it.effect("an embedding model's runtime is spawned to serve embeddings, pooled as the model says (mean when it says nothing)", () =>
    Effect.gen(function*() {
      yield* serveAll
      yield* ping("c")
      const runtime = yield* (yield* SpawnerControl).latest
      assert.deepStrictEqual(runtime.options.embeddings, { pooling: "mean" })
    }).pipe(Effect.provide(TestLayers.pool.pipe(Layer.provide(Layer.setConfigProvider(ConfigProvider.fromJson({
      ...configOf(2.5),
      models: { ...configOf(2.5).models, c: { ...configOf(2.5).models["c"], kind: "embedding" } }
    })))))))

  it.effect("a flood of 10,000 requests to random models, with random durations and interruptions: the started models never pass the budget, and every slot comes back", () =>
    Effect.gen(function*() {
      yield* serveAll
      const pool = yield* ModelPool
      const budget = 2.5 * ESTIMATE
      const check = Effect.gen(function*() {
        const running = yield* alive
        assert.isAtMost(running.length * ESTIMATE, budget, `alive: ${running.join(",")}`)
        assert.isAtMost((yield* pool.status).heldBytes, budget)
      })
      const outcomes = new Map<string, number>()
      const count = (key: string) => outcomes.set(key, (outcomes.get(key) ?? 0) + 1)
      const TOTAL = 10_000
      const BATCH = 100
      for (let sent = 0; sent < TOTAL; sent += BATCH) {
        const fibers = yield* Effect.forEach(Array.from({ length: BATCH }), () =>
          Effect.gen(function*() {
            const name = NAMES[yield* Random.nextIntBetween(0, NAMES.length)]!
            const millis = yield* Random.nextIntBetween(0, 40)
            const fiber = yield* Effect.fork(pool.run(name, () => Effect.sleep(`${millis} millis`)))
            const interruptAt = (yield* Random.nextIntBetween(0, 10)) === 0 ? yield* Random.nextIntBetween(0, 60) : undefined
            return { fiber, interruptAt }
          }))
        for (let t = 0; t < 100 && (yield* Effect.forEach(fibers, (f) => Fiber.poll(f.fiber))).some(Option.isNone); t++) {
          yield* settle
          yield* check
          yield* Effect.forEach(fibers, (f) => (f.interruptAt === t * 10 ? Fiber.interruptFork(f.fiber) : Effect.void))
          yield* TestClock.adjust("10 millis")
        }
        for (const { fiber } of fibers) {
          const exit = yield* Fiber.await(fiber)
          count(
            Exit.isSuccess(exit)
              ? "ok"
              : Option.match(Cause.failureOption(exit.cause), { onNone: () => "interrupted", onSome: (e) => e.reason })
          )
        }
      }
      yield* settle
      yield* check
      const status = yield* pool.status
      for (const m of status.models) assert.deepStrictEqual([m.name, m.status.inFlight, m.status.queued], [m.name, 0, 0])
      assert.strictEqual([...outcomes.values()].reduce((a, b) => a + b, 0), TOTAL)
      assert.isAbove(outcomes.get("ok") ?? 0, TOTAL / 2, JSON.stringify([...outcomes]))
      console.log("flood outcomes", JSON.stringify(Object.fromEntries(outcomes)))
      assert.isAbove(yield* Effect.map(Effect.flatMap(SpawnerControl, (c) => c.spawned), (s) => s.length), NAMES.length, "models were swapped")
    }).pipe(Effect.provide(poolLayer(2.5))), 120_000)
})

// The budget figure the tests rely on is the pre-flight's own.
describe("the estimate the pool counts", () => {
  it("is the manager's pre-flight estimate for these models", () => {
    const options = preflightOptions({
      policy: { architectures: ["llama"], maxChatTemplateBytes: 65_536, chatTemplateSha256s: [], chatTemplateFile: Option.none() },
      runtime: { contextSize: Option.none() },
      admission: { maxInFlight: PARALLEL },
      resources: { maxRamBytes: 2 ** 40 }
    })
    assert.strictEqual(MemoryFit.estimate(Either.getOrThrow(Gguf.summarize(Either.getOrThrow(Gguf.read(FILES.b, FILES.b.length)))), options).totalBytes, ESTIMATE)
  })
})
