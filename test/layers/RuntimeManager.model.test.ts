/** ensureModel: download, verification, content-addressed storage, retry and resume. */
import { assert, describe, it } from "@effect/vitest"
import { FileSystem } from "@effect/platform"
import { Effect, Fiber, Option, Stream, TestClock } from "effect"
import { DownloaderControl } from "../../src/layers/DownloaderTest.js"
import { MemoryFileSystem } from "../../src/layers/MemoryFileSystem.js"
import { SpawnerControl } from "../../src/layers/SpawnerTest.js"
import { DownloadError } from "../../src/services/Errors.js"
import { RuntimeManager } from "../../src/services/RuntimeManager.js"
import { bytesOf, sha256Hex } from "../domain/fixtures.js"
import { expectFailure, FINAL_PATH, managerLayer, MODEL, PARTIAL_PATH, SOURCE, SPEC, STORE } from "./harness.js"

const sameBytes = (a: Uint8Array | undefined, b: Uint8Array) => a !== undefined && Buffer.compare(a, b) === 0

describe("RuntimeManager.ensureModel", () => {
  it.effect("downloads, verifies and stores the model by its digest, mode 0600, with no partial left", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const memory = yield* MemoryFileSystem
      const manager = yield* RuntimeManager
      yield* downloader.serve(SOURCE, MODEL, 32 * 1024)

      const model = yield* manager.ensureModel(SPEC, SOURCE)
      assert.strictEqual(model.path, FINAL_PATH)
      assert.strictEqual(model.sha256, SPEC.sha256)
      const files = yield* memory.files
      assert.isTrue(sameBytes(files.get(FINAL_PATH), MODEL))
      assert.isFalse(files.has(PARTIAL_PATH))
      assert.deepStrictEqual(yield* memory.modeOf(FINAL_PATH), Option.some(0o600))
      assert.isAtLeast(yield* memory.syncs, 3) // the file, the partial directory, the store directory
      assert.deepStrictEqual(yield* downloader.requests, [{ url: SOURCE, offset: 0 }])
      assert.strictEqual(yield* downloader.openConnections, 0)
    }).pipe(Effect.provide(managerLayer())))

  it.effect("reports progress up to the expected size", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const manager = yield* RuntimeManager
      yield* downloader.serve(SOURCE, MODEL, 100_000)
      const seen = yield* manager.progress.pipe(Stream.takeUntil((p) => p.receivedBytes === MODEL.length), Stream.runCollect, Effect.fork)
      yield* manager.ensureModel(SPEC, SOURCE)
      const updates = [...(yield* Fiber.join(seen))]
      assert.deepStrictEqual(updates.at(-1), { receivedBytes: MODEL.length, expectedBytes: MODEL.length })
      assert.isTrue(updates.every((p, i) => i === 0 || p.receivedBytes >= (updates[i - 1]?.receivedBytes ?? 0)))
    }).pipe(Effect.provide(managerLayer())))

  it.effect("re-verifies a stored model instead of downloading it again", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const manager = yield* RuntimeManager
      yield* downloader.serve(SOURCE, MODEL)
      yield* manager.ensureModel(SPEC, SOURCE)
      yield* manager.ensureModel(SPEC, SOURCE)
      assert.strictEqual((yield* downloader.requests).length, 1)
    }).pipe(Effect.provide(managerLayer())))

  it.effect("replaces a stored model that no longer verifies", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const memory = yield* MemoryFileSystem
      const manager = yield* RuntimeManager
      yield* downloader.serve(SOURCE, MODEL)
      yield* manager.ensureModel(SPEC, SOURCE)
      // Corrupt the stored copy behind the manager's back.
      const { FileSystem } = yield* Effect.promise(() => import("@effect/platform"))
      const fs = yield* FileSystem.FileSystem
      const corrupted = Uint8Array.from(MODEL)
      corrupted[12345] = (corrupted[12345] ?? 0) ^ 0x10
      yield* fs.writeFile(FINAL_PATH, corrupted)
      yield* manager.ensureModel(SPEC, SOURCE)
      assert.strictEqual((yield* downloader.requests).length, 2)
      assert.isTrue(sameBytes((yield* memory.files).get(FINAL_PATH), MODEL))
    }).pipe(Effect.provide(managerLayer())))

  it.effect("refuses a malformed spec and a source off the allowlist before any request", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const manager = yield* RuntimeManager
      yield* expectFailure(manager.ensureModel({ ...SPEC, sha256: "nope" }, SOURCE), "IntegrityError", "malformed_spec")
      yield* expectFailure(manager.ensureModel(SPEC, "https://models.example.com.evil.io/org/tiny/m.gguf"), "IntegrityError", "source_not_allowed")
      yield* expectFailure(manager.ensureModel(SPEC, "http://models.example.com/org/tiny/m.gguf"), "IntegrityError", "scheme_not_allowed")
      assert.strictEqual((yield* downloader.requests).length, 0)
    }).pipe(Effect.provide(managerLayer())))

  it.effect("a digest mismatch deletes the partial file, stores nothing, and is not retried", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const memory = yield* MemoryFileSystem
      const manager = yield* RuntimeManager
      const flipped = Uint8Array.from(MODEL)
      flipped[77] = (flipped[77] ?? 0) ^ 0x01
      yield* downloader.serve(SOURCE, flipped)
      yield* expectFailure(manager.ensureModel(SPEC, SOURCE), "IntegrityError", "digest_mismatch")
      const files = yield* memory.files
      assert.isFalse(files.has(PARTIAL_PATH))
      assert.isFalse(files.has(FINAL_PATH))
      assert.strictEqual((yield* downloader.requests).length, 1)
    }).pipe(Effect.provide(managerLayer())))

  it.effect("a body one byte too long is refused before the extra byte is written", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const memory = yield* MemoryFileSystem
      const manager = yield* RuntimeManager
      const longer = new Uint8Array(MODEL.length + 1)
      longer.set(MODEL)
      yield* downloader.serve(SOURCE, longer)
      yield* expectFailure(manager.ensureModel(SPEC, SOURCE), "IntegrityError", "size_mismatch")
      assert.isFalse((yield* memory.files).has(FINAL_PATH))
      assert.isFalse((yield* memory.files).has(PARTIAL_PATH))
    }).pipe(Effect.provide(managerLayer())))

  it.effect("an endless body is cut at expected + 1 bytes", () =>
    Effect.gen(function*() {
      const small = bytesOf(1000, 5)
      const spec = { sha256: sha256Hex(small), sizeBytes: small.length }
      const downloader = yield* DownloaderControl
      const manager = yield* RuntimeManager
      yield* downloader.script({ body: [], endless: new Uint8Array(1) })
      yield* expectFailure(manager.ensureModel(spec, SOURCE), "IntegrityError", "size_mismatch")
      assert.strictEqual(yield* downloader.bytesSent, small.length + 1)
      assert.strictEqual(yield* downloader.openConnections, 0)
    }).pipe(Effect.provide(managerLayer())))

  it.effect("a transient failure mid-stream resumes from the partial file after re-hashing it", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const memory = yield* MemoryFileSystem
      const manager = yield* RuntimeManager
      yield* downloader.serve(SOURCE, MODEL)
      yield* downloader.script({ body: [MODEL.subarray(0, 100_000), new DownloadError({ reason: "connection_failed" })] })
      const fiber = yield* Effect.fork(manager.ensureModel(SPEC, SOURCE))
      yield* TestClock.adjust("1 minute")
      yield* Fiber.join(fiber)
      assert.deepStrictEqual(yield* downloader.requests, [{ url: SOURCE, offset: 0 }, { url: SOURCE, offset: 100_000 }])
      assert.isTrue(sameBytes((yield* memory.files).get(FINAL_PATH), MODEL))
    }).pipe(Effect.provide(managerLayer())))

  it.effect("a whole-file answer to a ranged request restarts from zero instead of appending", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const memory = yield* MemoryFileSystem
      const manager = yield* RuntimeManager
      yield* downloader.script(
        { body: [MODEL.subarray(0, 50_000), new DownloadError({ reason: "stall_timeout" })] },
        { startsAt: 0, body: [MODEL.subarray(0, 150_000), MODEL.subarray(150_000)] }
      )
      const fiber = yield* Effect.fork(manager.ensureModel(SPEC, SOURCE))
      yield* TestClock.adjust("1 minute")
      yield* Fiber.join(fiber)
      assert.deepStrictEqual((yield* downloader.requests).map((r) => r.offset), [0, 50_000])
      assert.isTrue(sameBytes((yield* memory.files).get(FINAL_PATH), MODEL))
    }).pipe(Effect.provide(managerLayer())))

  it.effect("a resume answered at the wrong offset is retried, not trusted", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const manager = yield* RuntimeManager
      yield* downloader.serve(SOURCE, MODEL)
      yield* downloader.script(
        { body: [MODEL.subarray(0, 10_000), new DownloadError({ reason: "server_error" })] },
        { startsAt: 5_000, body: [MODEL.subarray(5_000)] }
      )
      const fiber = yield* Effect.fork(manager.ensureModel(SPEC, SOURCE))
      yield* TestClock.adjust("1 minute")
      yield* Fiber.join(fiber)
      assert.deepStrictEqual((yield* downloader.requests).map((r) => r.offset), [0, 10_000, 10_000])
    }).pipe(Effect.provide(managerLayer())))

  it.effect("a permanent refusal is not retried and leaves no partial file", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const memory = yield* MemoryFileSystem
      const manager = yield* RuntimeManager
      yield* downloader.script({ body: [MODEL.subarray(0, 1000), new DownloadError({ reason: "client_error" })] })
      yield* expectFailure(manager.ensureModel(SPEC, SOURCE), "DownloadError", "client_error")
      assert.strictEqual((yield* downloader.requests).length, 1)
      assert.isFalse((yield* memory.files).has(PARTIAL_PATH))
    }).pipe(Effect.provide(managerLayer())))

  it.effect("gives up after the configured retries with backoff, then deletes the partial file", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const memory = yield* MemoryFileSystem
      const manager = yield* RuntimeManager
      const broken = { body: [MODEL.subarray(0, 10), new DownloadError({ reason: "connection_failed" })] }
      yield* downloader.script(broken, broken, broken, broken, broken)
      const fiber = yield* Effect.fork(Effect.exit(manager.ensureModel(SPEC, SOURCE)))
      yield* TestClock.adjust("100 millis")
      assert.strictEqual((yield* downloader.requests).length, 1, "the first retry waits for its backoff")
      yield* TestClock.adjust("2 minutes")
      yield* expectFailure(Effect.flatten(Fiber.join(fiber)), "DownloadError", "connection_failed")
      assert.strictEqual((yield* downloader.requests).length, 4) // 1 + 3 retries
      assert.isFalse((yield* memory.files).has(PARTIAL_PATH))
    }).pipe(Effect.provide(managerLayer())))

  it.effect("honours Retry-After as the least delay before the next attempt", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const manager = yield* RuntimeManager
      yield* downloader.serve(SOURCE, MODEL)
      yield* downloader.script({ openError: new DownloadError({ reason: "rate_limited", retryAfterMillis: 7_000 }) })
      const fiber = yield* Effect.fork(manager.ensureModel(SPEC, SOURCE))
      yield* TestClock.adjust("6 seconds")
      assert.strictEqual((yield* downloader.requests).length, 1)
      yield* TestClock.adjust("2 seconds")
      yield* Fiber.join(fiber)
      assert.strictEqual((yield* downloader.requests).length, 2)
    }).pipe(Effect.provide(managerLayer())))

  it.effect("does not wait out a Retry-After longer than retryMax", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const manager = yield* RuntimeManager
      yield* downloader.script({ openError: new DownloadError({ reason: "rate_limited", retryAfterMillis: 3_600_000 }) })
      const error = yield* expectFailure(manager.ensureModel(SPEC, SOURCE), "DownloadError", "rate_limited")
      assert.deepStrictEqual(Object.keys(error).sort(), ["_tag", "reason", "retryAfterMillis"])
      assert.strictEqual((yield* downloader.requests).length, 1)
    }).pipe(Effect.provide(managerLayer())))

  it.effect("maps a file-system failure to ModelStoreError io_failed", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const memory = yield* MemoryFileSystem
      const manager = yield* RuntimeManager
      yield* downloader.serve(SOURCE, MODEL)
      yield* memory.breakAt("write")
      yield* expectFailure(manager.ensureModel(SPEC, SOURCE), "ModelStoreError", "io_failed")
      yield* memory.repair
      yield* memory.breakAt("rename")
      yield* expectFailure(manager.ensureModel(SPEC, SOURCE), "ModelStoreError", "io_failed")
      assert.isFalse((yield* memory.files).has(FINAL_PATH))
    }).pipe(Effect.provide(managerLayer())))

  it.effect("start never spawns when verification fails", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const spawner = yield* SpawnerControl
      const manager = yield* RuntimeManager
      const flipped = Uint8Array.from(MODEL)
      flipped[0] = (flipped[0] ?? 0) ^ 0x80
      yield* downloader.serve(SOURCE, flipped)
      yield* expectFailure(manager.start, "IntegrityError", "digest_mismatch")
      assert.strictEqual((yield* spawner.spawned).length, 0)
      assert.strictEqual((yield* manager.status).state, "stopped")
    }).pipe(Effect.provide(managerLayer())))

  describe("store lock", () => {
    const LOCK = `${STORE}/partial/${SPEC.sha256}.lock`
    const DEAD_PID = 2_147_483_646 // above any Linux pid_max: kill(pid, 0) answers ESRCH
    const writeLock = (content: string) =>
      Effect.flatMap(FileSystem.FileSystem, (fs) =>
        Effect.zipRight(
          fs.makeDirectory(`${STORE}/partial`, { recursive: true }),
          fs.writeFileString(LOCK, content)
        ))
    const lockFiles = Effect.map(MemoryFileSystem, (m) => m.files).pipe(
      Effect.flatten,
      Effect.map((files) => [...files.keys()].filter((p) => p.includes(".lock")))
    )

    it.effect("waits for a live holder, then fails store_locked without downloading", () =>
      Effect.gen(function*() {
        const downloader = yield* DownloaderControl
        const manager = yield* RuntimeManager
        yield* downloader.serve(SOURCE, MODEL)
        yield* writeLock(`${process.pid} 0a1b-2c\n`)
        const fiber = yield* Effect.fork(Effect.either(manager.ensureModel(SPEC, SOURCE)))
        yield* TestClock.adjust("59 seconds")
        assert.isNull(fiber.unsafePoll())
        yield* TestClock.adjust("2 seconds")
        yield* expectFailure(Fiber.join(fiber).pipe(Effect.flatten), "ModelStoreError", "store_locked")
        assert.deepStrictEqual(yield* downloader.requests, [])
        assert.deepStrictEqual(yield* lockFiles, [LOCK]) // the holder's lock is untouched
      }).pipe(Effect.provide(managerLayer({ download: { lockWait: "1 minute" } }))))

    it.effect("proceeds once a live holder releases, and finds its model stored", () =>
      Effect.gen(function*() {
        const downloader = yield* DownloaderControl
        const manager = yield* RuntimeManager
        const fs = yield* FileSystem.FileSystem
        yield* downloader.serve(SOURCE, MODEL)
        yield* writeLock(`${process.pid} 0a1b-2c\n`)
        const fiber = yield* Effect.fork(manager.ensureModel(SPEC, SOURCE))
        yield* TestClock.adjust("1 second")
        // The other manager finishes: the model is in place and the lock is gone.
        yield* fs.writeFile(FINAL_PATH, MODEL)
        yield* fs.remove(LOCK)
        yield* TestClock.adjust("1 second")
        const model = yield* Fiber.join(fiber)
        assert.strictEqual(model.path, FINAL_PATH)
        assert.deepStrictEqual(yield* downloader.requests, [])
        assert.deepStrictEqual(yield* lockFiles, [])
      }).pipe(Effect.provide(managerLayer())))

    it.effect("takes over a lock left by a dead process, or one that is unreadable, and removes it after", () =>
      Effect.gen(function*() {
        const downloader = yield* DownloaderControl
        const manager = yield* RuntimeManager
        const fs = yield* FileSystem.FileSystem
        yield* downloader.serve(SOURCE, MODEL)
        for (const stale of [`${DEAD_PID} 0a1b-2c\n`, "", "garbage"]) {
          yield* Effect.ignore(fs.remove(FINAL_PATH))
          yield* writeLock(stale)
          const fiber = yield* Effect.fork(manager.ensureModel(SPEC, SOURCE))
          yield* TestClock.adjust("1 second")
          const model = yield* Fiber.join(fiber)
          assert.strictEqual(model.path, FINAL_PATH)
          assert.deepStrictEqual(yield* lockFiles, [])
        }
        assert.strictEqual((yield* downloader.requests).length, 3)
      }).pipe(Effect.provide(managerLayer())))

    it.effect("releases its lock when the download fails", () =>
      Effect.gen(function*() {
        const downloader = yield* DownloaderControl
        const manager = yield* RuntimeManager
        const flipped = Uint8Array.from(MODEL)
        flipped[9] = (flipped[9] ?? 0) ^ 1
        yield* downloader.serve(SOURCE, flipped)
        yield* expectFailure(manager.ensureModel(SPEC, SOURCE), "IntegrityError", "digest_mismatch")
        assert.deepStrictEqual(yield* lockFiles, [])
      }).pipe(Effect.provide(managerLayer())))
  })
})
