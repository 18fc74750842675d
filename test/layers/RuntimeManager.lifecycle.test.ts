/** start, health polling, drain, supervision, the circuit, idle unload and layer shutdown. */
import { FileSystem } from "@effect/platform"
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Either, Exit, Fiber, Layer, Metric, Option, Redacted, Scope, Stream, TestClock } from "effect"
import * as Integrity from "../../src/domain/Integrity.js"
import { DownloaderControl } from "../../src/layers/DownloaderTest.js"
import { MemoryFileSystem } from "../../src/layers/MemoryFileSystem.js"
import { HealthProbeControl } from "../../src/layers/HealthProbeTest.js"
import { SpawnerControl } from "../../src/layers/SpawnerTest.js"
import { HealthError, SpawnError } from "../../src/services/Errors.js"
import { metrics as storeMetrics, ModelStore, type VerifiedModel } from "../../src/services/ModelStore.js"
import { RuntimeManager } from "../../src/services/RuntimeManager.js"
import { Spawner } from "../../src/services/Spawner.js"
import { expectFailure, FINAL_PATH, managerLayer, MODEL, SOURCE, SPEC, startReady, STORE } from "./harness.js"

const SPEC_CHECKED = Either.getOrThrow(Integrity.checkSpec(SPEC))
const hashed = Effect.map(Metric.value(storeMetrics.hashedBytes), (state) => state.count)

describe("RuntimeManager.start", () => {
  it.scoped("stopped → starting → ready, spawning the verified file", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const spawner = yield* SpawnerControl
      const manager = yield* RuntimeManager
      const seen: Array<string> = []
      yield* Effect.forkScoped(Stream.runForEach(manager.changes, (c) => Effect.sync(() => seen.push(c.state))))
      while (seen.length === 0) yield* Effect.yieldNow()
      assert.isFalse(yield* manager.available)
      yield* downloader.serve(SOURCE, MODEL)
      yield* manager.start
      yield* Effect.yieldNow()
      assert.deepStrictEqual(seen, ["stopped", "starting", "ready"])
      assert.isTrue(yield* manager.available)
      const process = yield* spawner.latest
      // The runtime was handed the descriptor of the verified file.
      const served = yield* (yield* MemoryFileSystem).bytesOfDescriptor(process.model.descriptor)
      assert.isTrue(Option.exists(served, (bytes) => Buffer.compare(bytes, MODEL) === 0))
      assert.deepStrictEqual(yield* manager.status, {
        state: "ready",
        since: 0,
        inFlight: 0,
        queued: 0,
        restarts: 0,
        circuitOpen: false,
        lastActivity: 0,
        ramBytes: 0,
        vramBytes: 0,
        onDemand: false
      })
    }).pipe(Effect.provide(managerLayer())))

  it.effect("probes quickly at first, then backs off up to the maximum interval", () =>
    Effect.gen(function*() {
      const health = yield* HealthProbeControl
      yield* health.answers("loading")
      const manager = yield* RuntimeManager
      const downloader = yield* DownloaderControl
      yield* downloader.serve(SOURCE, MODEL)
      const fiber = yield* Effect.fork(manager.start)
      const counts: Array<number> = []
      // Delays 50, 100, 200, 400, 800 ms, then 1 s each: probes at 0, 50, 150, 350, 750, 1550, 2550.
      for (const step of [0, 50, 100, 200, 400, 800, 1000]) {
        yield* TestClock.adjust(step)
        counts.push(yield* health.probes)
      }
      assert.deepStrictEqual(counts, [1, 2, 3, 4, 5, 6, 7])
      yield* health.answers("ok")
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(fiber)
      assert.isTrue(yield* manager.available)
    }).pipe(Effect.provide(managerLayer())))

  it.effect("a probe that hangs times out and polling goes on", () =>
    Effect.gen(function*() {
      const health = yield* HealthProbeControl
      yield* health.answers("hang", "ok")
      const manager = yield* RuntimeManager
      yield* (yield* DownloaderControl).serve(SOURCE, MODEL)
      const fiber = yield* Effect.fork(manager.start)
      yield* TestClock.adjust("1999 millis")
      assert.strictEqual(yield* health.probes, 1)
      yield* TestClock.adjust("100 millis")
      yield* Fiber.join(fiber)
      assert.strictEqual(yield* health.probes, 2)
    }).pipe(Effect.provide(managerLayer())))

  it.effect("a runtime that never becomes healthy hits the load deadline and is killed", () =>
    Effect.gen(function*() {
      const health = yield* HealthProbeControl
      const spawner = yield* SpawnerControl
      yield* health.answers("loading", new HealthError({ reason: "unreachable" }), "loading")
      const manager = yield* RuntimeManager
      yield* (yield* DownloaderControl).serve(SOURCE, MODEL)
      const fiber = yield* Effect.fork(manager.start)
      yield* TestClock.adjust("31 seconds")
      yield* expectFailure(Fiber.join(fiber), "StartError", "load_deadline_exceeded")
      assert.strictEqual(yield* spawner.alive, 0)
      assert.deepStrictEqual(yield* (yield* spawner.latest).signals, ["SIGTERM"])
      assert.strictEqual((yield* manager.status).state, "stopped")
    }).pipe(Effect.provide(managerLayer())))

  it.effect("a runtime that reports itself unhealthy fails the start at once", () =>
    Effect.gen(function*() {
      const health = yield* HealthProbeControl
      yield* health.answers("loading", new HealthError({ reason: "unhealthy" }))
      const manager = yield* RuntimeManager
      yield* (yield* DownloaderControl).serve(SOURCE, MODEL)
      const fiber = yield* Effect.fork(manager.start)
      yield* TestClock.adjust("50 millis")
      yield* expectFailure(Fiber.join(fiber), "StartError", "health_failed")
      assert.strictEqual(yield* (yield* SpawnerControl).alive, 0)
    }).pipe(Effect.provide(managerLayer())))

  it.effect("a runtime that serves the name from another file (Ollama's wrong blob) fails the start as model_mismatch", () =>
    Effect.gen(function*() {
      const health = yield* HealthProbeControl
      yield* health.answers(new HealthError({ reason: "wrong_model" }))
      const manager = yield* RuntimeManager
      yield* (yield* DownloaderControl).serve(SOURCE, MODEL)
      const fiber = yield* Effect.fork(manager.start)
      yield* TestClock.adjust("50 millis")
      yield* expectFailure(Fiber.join(fiber), "StartError", "model_mismatch")
      assert.strictEqual(yield* (yield* SpawnerControl).alive, 0)
      assert.strictEqual((yield* manager.status).state, "stopped")
    }).pipe(Effect.provide(managerLayer())))

  it.scoped("a process that exits while starting fails the start through `exited`", () =>
    Effect.gen(function*() {
      const health = yield* HealthProbeControl
      const spawner = yield* SpawnerControl
      yield* health.answers("loading")
      const manager = yield* RuntimeManager
      const seen: Array<string> = []
      yield* Effect.forkScoped(Stream.runForEach(manager.changes, (c) => Effect.sync(() => seen.push(c.state))))
      while (seen.length === 0) yield* Effect.yieldNow()
      yield* (yield* DownloaderControl).serve(SOURCE, MODEL)
      const fiber = yield* Effect.fork(manager.start)
      yield* TestClock.adjust("100 millis")
      yield* (yield* spawner.latest).crash()
      yield* expectFailure(Fiber.join(fiber), "StartError", "exited_while_starting")
      assert.strictEqual((yield* manager.status).state, "stopped")
      yield* Effect.yieldNow()
      assert.deepStrictEqual(seen, ["stopped", "starting", "stopped"])
    }).pipe(Effect.provide(managerLayer())))

  it.effect("an interrupted start kills the process and ends stopped, without counting a failure", () =>
    Effect.gen(function*() {
      yield* (yield* HealthProbeControl).answers("loading")
      const manager = yield* RuntimeManager
      yield* (yield* DownloaderControl).serve(SOURCE, MODEL)
      const fiber = yield* Effect.fork(manager.start)
      yield* TestClock.adjust("100 millis")
      yield* Fiber.interrupt(fiber)
      assert.strictEqual((yield* manager.status).state, "stopped")
      assert.strictEqual(yield* (yield* SpawnerControl).alive, 0)
      yield* (yield* HealthProbeControl).answers("ok")
      yield* manager.start
      assert.isTrue(yield* manager.available)
    }).pipe(Effect.provide(managerLayer({ restart: { maxFailures: 1 } }))))

  it.effect("an interrupted drain stops the runtime at once and ends stopped", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      const stuck = yield* Effect.fork(manager.run(() => Effect.never))
      yield* Effect.yieldNow()
      const draining = yield* Effect.fork(manager.drain("1 hour"))
      yield* Effect.yieldNow()
      yield* Fiber.interrupt(draining)
      yield* expectFailure(Fiber.join(stuck), "RuntimeExitedError", "runtime_stopped")
      assert.strictEqual((yield* manager.status).state, "stopped")
      assert.strictEqual(yield* (yield* SpawnerControl).alive, 0)
    }).pipe(Effect.provide(managerLayer())))

  it.effect("a spawn failure leaves the manager stopped", () =>
    Effect.gen(function*() {
      const spawner = yield* SpawnerControl
      yield* spawner.failNextSpawn(new SpawnError({ reason: "spawn_failed" }))
      const manager = yield* RuntimeManager
      yield* (yield* DownloaderControl).serve(SOURCE, MODEL)
      yield* expectFailure(manager.start, "SpawnError", "spawn_failed")
      assert.strictEqual((yield* manager.status).state, "stopped")
      yield* manager.start
      assert.isTrue(yield* manager.available)
    }).pipe(Effect.provide(managerLayer())))

  it.effect("start while already ready is an invalid transition", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      yield* expectFailure(manager.start, "LifecycleError", "invalid_transition")
      assert.strictEqual((yield* (yield* SpawnerControl).spawned).length, 1)
    }).pipe(Effect.provide(managerLayer())))

  it.effect("requests carry the per-spawn endpoint and key", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      const process = yield* (yield* SpawnerControl).latest
      const endpoint = yield* manager.run((e) => Effect.succeed(e))
      assert.strictEqual(endpoint.baseUrl, process.handle.baseUrl)
      assert.strictEqual(Redacted.value(endpoint.apiKey), Redacted.value(process.handle.apiKey))
      assert.notInclude(String(endpoint.apiKey), Redacted.value(process.handle.apiKey))
    }).pipe(Effect.provide(managerLayer())))
})

describe("RuntimeManager.drain", () => {
  it.effect("refuses new and queued work, lets in-flight work finish, then stops the process", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      const spawner = yield* SpawnerControl
      const gates = [yield* Deferred.make<void>(), yield* Deferred.make<void>()]
      const running = yield* Effect.forEach(gates, (gate) => Effect.fork(manager.run(() => Deferred.await(gate))))
      const queued = yield* Effect.fork(manager.run(() => Effect.void))
      yield* Effect.yieldNow()
      assert.strictEqual((yield* manager.status).queued, 1)

      const draining = yield* Effect.fork(manager.drain("30 seconds"))
      yield* Effect.yieldNow()
      assert.strictEqual((yield* manager.status).state, "draining")
      yield* expectFailure(Fiber.join(queued), "LifecycleError", "not_ready")
      yield* expectFailure(manager.run(() => Effect.void), "LifecycleError", "not_ready")
      assert.isTrue(yield* (yield* spawner.latest).alive)

      for (const gate of gates) yield* Deferred.succeed(gate, undefined)
      for (const fiber of running) yield* Fiber.join(fiber)
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(draining)
      assert.strictEqual((yield* manager.status).state, "stopped")
      assert.strictEqual(yield* spawner.alive, 0)
      assert.deepStrictEqual(yield* (yield* spawner.latest).signals, ["SIGTERM"])
    }).pipe(Effect.provide(managerLayer())))

  it.effect("past the deadline, in-flight work fails and a process that ignores SIGTERM is killed", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      const spawner = yield* SpawnerControl
      yield* spawner.setBehaviour({ ignoreSigterm: true })
      const stuck = yield* Effect.fork(manager.run(() => Effect.never))
      yield* Effect.yieldNow()
      const draining = yield* Effect.fork(manager.drain("2 seconds"))
      yield* TestClock.adjust("2 seconds")
      yield* expectFailure(Fiber.join(stuck), "RuntimeExitedError", "runtime_stopped")
      yield* TestClock.adjust("5 seconds")
      yield* Fiber.join(draining)
      assert.deepStrictEqual(yield* (yield* spawner.latest).signals, ["SIGTERM", "SIGKILL"])
      assert.strictEqual((yield* manager.status).inFlight, 0)
      assert.strictEqual((yield* manager.status).state, "stopped")
    }).pipe(Effect.provide(managerLayer())))

  it.effect("drain when not ready is an invalid transition", () =>
    Effect.gen(function*() {
      const manager = yield* RuntimeManager
      yield* expectFailure(manager.drain("1 second"), "LifecycleError", "invalid_transition")
    }).pipe(Effect.provide(managerLayer())))
})

describe("RuntimeManager supervision", () => {
  it.effect("an exit while ready fails in-flight and queued requests, then restarts after backoff", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      const spawner = yield* SpawnerControl
      const inFlight = yield* Effect.forEach([1, 2], () => Effect.fork(manager.run(() => Effect.never)))
      const waiting = yield* Effect.fork(manager.run(() => Effect.void))
      yield* Effect.yieldNow()
      yield* (yield* spawner.latest).crash()
      for (const fiber of inFlight) yield* expectFailure(Fiber.join(fiber), "RuntimeExitedError", "runtime_exited")
      yield* expectFailure(Fiber.join(waiting), "LifecycleError", "not_ready")
      assert.strictEqual((yield* manager.status).state, "stopped")
      assert.deepStrictEqual([(yield* manager.status).inFlight, (yield* manager.status).queued], [0, 0])

      yield* TestClock.adjust("999 millis")
      assert.strictEqual((yield* spawner.spawned).length, 1)
      yield* TestClock.adjust("1 millis")
      yield* Effect.yieldNow()
      assert.strictEqual((yield* spawner.spawned).length, 2)
      assert.isTrue(yield* manager.available)
      assert.strictEqual((yield* manager.status).restarts, 1)
      assert.strictEqual(yield* manager.run(() => Effect.succeed("answer")), "answer")
    }).pipe(Effect.provide(managerLayer())))

  it.effect("start never spawns when verification fails", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const spawner = yield* SpawnerControl
      const manager = yield* RuntimeManager
      // A bit flipped in the weights (one in the header would be refused earlier, by the screen).
      const flipped = Uint8Array.from(MODEL)
      flipped[flipped.length - 1] = (flipped[flipped.length - 1] ?? 0) ^ 0x80
      yield* downloader.serve(SOURCE, flipped)
      yield* expectFailure(manager.start, "IntegrityError", "digest_mismatch")
      assert.strictEqual((yield* spawner.spawned).length, 0)
      assert.strictEqual((yield* manager.status).state, "stopped")
    }).pipe(Effect.provide(managerLayer())))

  it.effect("hash once: serve's verification and the start read the stored model once; a restart of an unchanged file reads nothing", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const spawner = yield* SpawnerControl
      const manager = yield* RuntimeManager
      const store = yield* ModelStore
      yield* fs.makeDirectory(STORE, { recursive: true })
      yield* fs.writeFile(FINAL_PATH, MODEL)
      const before = yield* hashed
      // What `serve` does: verify, report, then start.
      yield* Effect.scoped(store.ensure(SPEC_CHECKED, new URL(SOURCE)))
      yield* manager.start
      assert.strictEqual((yield* hashed) - before, MODEL.length)
      yield* (yield* spawner.latest).crash()
      yield* TestClock.adjust("1 second")
      yield* Effect.yieldNow()
      assert.strictEqual((yield* spawner.spawned).length, 2)
      assert.isTrue(yield* manager.available)
      assert.strictEqual((yield* hashed) - before, MODEL.length, "the restart did not read the file again")
    }).pipe(Effect.provide(managerLayer())))

  it.effect("a restart after the file was written reads it again; a file that no longer verifies is never served", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const memory = yield* MemoryFileSystem
      const spawner = yield* SpawnerControl
      const downloader = yield* DownloaderControl
      const manager = yield* startReady
      const before = yield* hashed
      // Someone writes other bytes into the stored model while the runtime runs; then it crashes.
      const altered = Uint8Array.from(MODEL)
      altered[100] = (altered[100] ?? 0) ^ 0xff
      yield* fs.writeFile(FINAL_PATH, altered)
      yield* (yield* spawner.latest).crash()
      yield* TestClock.adjust("1 second")
      yield* Effect.yieldNow()
      assert.isTrue(yield* manager.available)
      // Read again, refused, and fetched afresh: the new runtime was handed the model's own bytes.
      assert.strictEqual((yield* hashed) - before, MODEL.length)
      assert.strictEqual((yield* downloader.requests).length, 2)
      const served = yield* memory.bytesOfDescriptor((yield* spawner.latest).model.descriptor)
      assert.isTrue(Option.exists(served, (bytes) => Buffer.compare(bytes, MODEL) === 0))
    }).pipe(Effect.provide(managerLayer())))

  it.effect("the model written while the runtime loads: the start fails model_changed, the process is killed, nothing is served", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const health = yield* HealthProbeControl
      const spawner = yield* SpawnerControl
      const downloader = yield* DownloaderControl
      const manager = yield* RuntimeManager
      yield* downloader.serve(SOURCE, MODEL)
      yield* health.answers("loading", "ok")
      const starting = yield* Effect.fork(Effect.either(manager.start))
      for (let i = 0; i < 1000 && (yield* spawner.spawned).length === 0; i++) yield* Effect.yieldNow()
      // Spawned (handed the verified descriptor) and loading: now the file behind it is written.
      assert.strictEqual((yield* spawner.spawned).length, 1)
      assert.strictEqual((yield* manager.status).state, "starting")
      const altered = Uint8Array.from(MODEL)
      altered[1] = (altered[1] ?? 0) ^ 1
      yield* fs.writeFile(FINAL_PATH, altered)
      yield* TestClock.adjust("100 millis")
      yield* expectFailure(Effect.flatten(Fiber.join(starting)), "ModelStoreError", "model_changed")
      assert.isFalse(yield* (yield* spawner.latest).alive)
      assert.strictEqual((yield* manager.status).state, "stopped")
      yield* expectFailure(manager.run(() => Effect.void), "LifecycleError", "not_ready")
    }).pipe(Effect.provide(managerLayer())))

  it.effect("a forged model (not minted by the store) is refused by the spawner", () =>
    Effect.gen(function*() {
      const spawner = yield* Spawner
      const forged = { sha256: SPEC.sha256, sizeBytes: SPEC.sizeBytes, descriptor: 3 } as unknown as VerifiedModel
      yield* expectFailure(Effect.scoped(spawner.spawn(forged)), "SpawnError", "unverified_model")
      assert.strictEqual((yield* (yield* SpawnerControl).spawned).length, 0)
    }).pipe(Effect.provide(managerLayer())))

  it.effect("an exit while draining fails in-flight work and ends stopped", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      const spawner = yield* SpawnerControl
      const stuck = yield* Effect.fork(manager.run(() => Effect.never))
      yield* Effect.yieldNow()
      const draining = yield* Effect.fork(manager.drain("1 minute"))
      yield* Effect.yieldNow()
      yield* (yield* spawner.latest).crash()
      yield* expectFailure(Fiber.join(stuck), "RuntimeExitedError", "runtime_exited")
      yield* Fiber.join(draining)
      assert.strictEqual((yield* manager.status).state, "stopped")
      yield* TestClock.adjust("1 minute")
      assert.strictEqual((yield* spawner.spawned).length, 1, "a drained runtime is not restarted")
    }).pipe(Effect.provide(managerLayer())))

  it.effect("a crash loop opens the circuit; start and run fail until it cools down", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      const spawner = yield* SpawnerControl
      // maxFailures 3 in 1 minute: crash, restart (1 s), crash, restart (2 s), crash → open.
      for (let i = 0; i < 3; i++) {
        yield* (yield* spawner.latest).crash()
        yield* Effect.yieldNow()
        yield* TestClock.adjust("4 seconds")
      }
      const status = yield* manager.status
      assert.isTrue(status.circuitOpen)
      assert.strictEqual(status.state, "stopped")
      assert.strictEqual((yield* spawner.spawned).length, 3)
      yield* expectFailure(manager.start, "CircuitOpenError", "circuit_open")
      yield* expectFailure(manager.run(() => Effect.void), "CircuitOpenError", "circuit_open")
      yield* TestClock.adjust("2 minutes")
      assert.isFalse((yield* manager.status).circuitOpen)
      yield* manager.start
      assert.isTrue(yield* manager.available)
    }).pipe(Effect.provide(managerLayer())))

  it.effect("failed restarts count toward the circuit too", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      const spawner = yield* SpawnerControl
      yield* spawner.failNextSpawn(new SpawnError({ reason: "spawn_failed" }))
      yield* (yield* spawner.latest).crash()
      yield* TestClock.adjust("1 second") // restart 1 fails to spawn
      yield* TestClock.adjust("2 seconds") // restart 2 succeeds
      assert.isTrue(yield* manager.available)
      assert.strictEqual((yield* manager.status).restarts, 2)
    }).pipe(Effect.provide(managerLayer())))

  it.effect("no restart when restarts are disabled", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      const spawner = yield* SpawnerControl
      yield* (yield* spawner.latest).crash()
      yield* TestClock.adjust("1 minute")
      assert.strictEqual((yield* spawner.spawned).length, 1)
      assert.strictEqual((yield* manager.status).state, "stopped")
    }).pipe(Effect.provide(managerLayer({ restart: { enabled: false } }))))
})

describe("RuntimeManager idle unload", () => {
  it.effect("unloads after the TTL with no requests and loads again on the next request", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      const spawner = yield* SpawnerControl
      yield* TestClock.adjust("59 seconds")
      assert.isTrue(yield* manager.available)
      yield* TestClock.adjust("16 seconds")
      assert.strictEqual((yield* manager.status).state, "stopped")
      assert.strictEqual(yield* spawner.alive, 0)
      assert.strictEqual(yield* manager.run(() => Effect.succeed(42)), 42)
      assert.strictEqual((yield* spawner.spawned).length, 2)
    }).pipe(Effect.provide(managerLayer({ idleTtl: "1 minute" }))))

  it.effect("never unloads while a request is in flight", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      const gate = yield* Deferred.make<void>()
      const fiber = yield* Effect.fork(manager.run(() => Deferred.await(gate)))
      yield* TestClock.adjust("10 minutes")
      assert.isTrue(yield* manager.available)
      yield* Deferred.succeed(gate, undefined)
      yield* Fiber.join(fiber)
      yield* TestClock.adjust("2 minutes")
      assert.strictEqual((yield* manager.status).state, "stopped")
    }).pipe(Effect.provide(managerLayer({ idleTtl: "1 minute" }))))

  it.effect("is off by default", () =>
    Effect.gen(function*() {
      const manager = yield* startReady
      yield* TestClock.adjust("1 day")
      const status = yield* manager.status
      const signals = yield* (yield* (yield* SpawnerControl).latest).signals
      assert.deepStrictEqual([status.state, status.restarts, signals.length], ["ready", 0, 0])
    }).pipe(Effect.provide(managerLayer())))
})

describe("RuntimeManager layer", () => {
  it.effect("closing the layer stops the runtime: nothing is left running", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(managerLayer(), scope)
      const manager = context.unsafeMap.get(RuntimeManager.key) as RuntimeManager["Type"]
      const spawner = context.unsafeMap.get(SpawnerControl.key) as SpawnerControl["Type"]
      const downloader = context.unsafeMap.get(DownloaderControl.key) as DownloaderControl["Type"]
      yield* downloader.serve(SOURCE, MODEL)
      yield* manager.start
      assert.strictEqual(yield* spawner.alive, 1)
      const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(closing)
      assert.strictEqual(yield* spawner.alive, 0)
      assert.deepStrictEqual(yield* (yield* spawner.latest).signals, ["SIGTERM"])
    }))
})
