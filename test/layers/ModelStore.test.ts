/** The model store in memory: download, verification, content-addressed storage, retry, resume, the lock, and hashing once. */
import { FileSystem } from "@effect/platform"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Either, Fiber, Layer, Metric, Option, Stream, TestClock } from "effect"
import * as Integrity from "../../src/domain/Integrity.js"
import { DownloaderControl } from "../../src/layers/DownloaderTest.js"
import { MemoryFileSystem } from "../../src/layers/MemoryFileSystem.js"
import * as ModelStoreTest from "../../src/layers/ModelStoreTest.js"
import { Processes } from "../../src/layers/ModelStoreTest.js"
import * as VerifiedModels from "../../src/layers/internal/VerifiedModels.js"
import { DownloadError } from "../../src/services/Errors.js"
import { metrics, ModelStore, type VerifiedModel } from "../../src/services/ModelStore.js"
import { bytesOf, sha256Hex } from "../domain/fixtures.js"
import { expectFailure, FINAL_PATH, MODEL, PARTIAL_PATH, providerOf, SOURCE, SPEC, STORE, storeLayer } from "./harness.js"

const sameBytes = (a: Uint8Array | undefined, b: Uint8Array) => a !== undefined && Buffer.compare(a, b) === 0
const spec = Either.getOrThrow(Integrity.checkSpec(SPEC))
const source = new URL(SOURCE)

/** `ensure` inside a scope of its own, as `pull` does. */
const ensure = (s: Integrity.ModelSpec = spec, url: URL = source) =>
  Effect.scoped(Effect.flatMap(ModelStore, (store) => store.ensure(s, url)))

const hashed = Metric.value(metrics.hashedBytes).pipe(Effect.map((state) => state.count))

/** What a process handed the model's descriptor reads. */
const servedBytes = (model: VerifiedModel) =>
  Effect.flatMap(MemoryFileSystem, (memory) => Effect.map(memory.bytesOfDescriptor(model.descriptor), Option.getOrUndefined))

describe("ModelStore.ensure", () => {
  it.effect("downloads, verifies and stores the model by its digest, mode 0600, with no partial left and nothing read back", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const memory = yield* MemoryFileSystem
      yield* downloader.serve(SOURCE, MODEL, 32 * 1024)
      const before = yield* hashed

      const model = yield* ensure()
      assert.strictEqual(model.sha256, SPEC.sha256)
      assert.strictEqual(model.sizeBytes, SPEC.sizeBytes)
      const files = yield* memory.files
      assert.isTrue(sameBytes(files.get(FINAL_PATH), MODEL))
      assert.isFalse(files.has(PARTIAL_PATH))
      assert.strictEqual(Option.getOrUndefined(yield* memory.modeOf(FINAL_PATH)), 0o600)
      assert.isAtLeast(yield* memory.syncs, 3) // the file, the partial directory, the store directory
      assert.deepStrictEqual(yield* downloader.requests, [{ url: SOURCE, offset: 0 }])
      assert.strictEqual(yield* downloader.openConnections, 0)
      // Hashed as the bytes arrived; the stored file is not read again.
      assert.strictEqual((yield* hashed) - before, 0)
      // The descriptor closed with the scope.
      assert.strictEqual(yield* memory.openDescriptors, 0)
    }).pipe(Effect.provide(storeLayer())))

  it.effect("hands back an open descriptor of exactly the verified bytes, for the caller's scope", () =>
    Effect.gen(function*() {
      yield* (yield* DownloaderControl).serve(SOURCE, MODEL)
      const store = yield* ModelStore
      const memory = yield* MemoryFileSystem
      yield* Effect.scoped(Effect.gen(function*() {
        const model = yield* store.ensure(spec, source)
        assert.isTrue(sameBytes(yield* servedBytes(model), MODEL))
        assert.strictEqual(yield* memory.openDescriptors, 1)
        assert.isTrue(Object.isFrozen(model))
      }))
      assert.strictEqual(yield* memory.openDescriptors, 0)
    }).pipe(Effect.provide(storeLayer())))

  it.effect("reports progress up to the expected size", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const store = yield* ModelStore
      yield* downloader.serve(SOURCE, MODEL, 100_000)
      const seen = yield* store.progress.pipe(Stream.takeUntil((p) => p.receivedBytes === MODEL.length), Stream.runCollect, Effect.fork)
      yield* ensure()
      const updates = [...(yield* Fiber.join(seen))]
      assert.deepStrictEqual(updates.at(-1), { receivedBytes: MODEL.length, expectedBytes: MODEL.length })
      assert.isTrue(updates.every((p, i) => i === 0 || p.receivedBytes >= (updates[i - 1]?.receivedBytes ?? 0)))
    }).pipe(Effect.provide(storeLayer())))

  it.effect("finds a stored model without downloading it again", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      yield* downloader.serve(SOURCE, MODEL)
      yield* ensure()
      yield* ensure()
      assert.strictEqual((yield* downloader.requests).length, 1)
    }).pipe(Effect.provide(storeLayer())))

  it.effect("replaces a stored model that no longer verifies", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const memory = yield* MemoryFileSystem
      const fs = yield* FileSystem.FileSystem
      yield* downloader.serve(SOURCE, MODEL)
      yield* ensure()
      // Corrupt the stored copy behind the store's back, in place.
      const corrupted = Uint8Array.from(MODEL)
      corrupted[12345] = (corrupted[12345] ?? 0) ^ 0x10
      yield* fs.writeFile(FINAL_PATH, corrupted)
      yield* ensure()
      assert.strictEqual((yield* downloader.requests).length, 2)
      assert.isTrue(sameBytes((yield* memory.files).get(FINAL_PATH), MODEL))
    }).pipe(Effect.provide(storeLayer())))

  it.effect("a source off the allowlist or not https is refused before any request", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      yield* expectFailure(ensure(spec, new URL("https://models.example.com.evil.io/org/tiny/m.gguf")), "IntegrityError", "source_not_allowed")
      yield* expectFailure(ensure(spec, new URL("http://models.example.com/org/tiny/m.gguf")), "IntegrityError", "scheme_not_allowed")
      assert.strictEqual((yield* downloader.requests).length, 0)
    }).pipe(Effect.provide(storeLayer())))

  it.effect("a digest mismatch deletes the partial file, stores nothing, and is not retried", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const memory = yield* MemoryFileSystem
      const flipped = Uint8Array.from(MODEL)
      flipped[77] = (flipped[77] ?? 0) ^ 0x01
      yield* downloader.serve(SOURCE, flipped)
      yield* expectFailure(ensure(), "IntegrityError", "digest_mismatch")
      const files = yield* memory.files
      assert.isFalse(files.has(PARTIAL_PATH))
      assert.isFalse(files.has(FINAL_PATH))
      assert.strictEqual((yield* downloader.requests).length, 1)
    }).pipe(Effect.provide(storeLayer())))

  it.effect("a body one byte too long is refused before the extra byte is written", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const memory = yield* MemoryFileSystem
      const longer = new Uint8Array(MODEL.length + 1)
      longer.set(MODEL)
      yield* downloader.serve(SOURCE, longer)
      yield* expectFailure(ensure(), "IntegrityError", "size_mismatch")
      assert.isFalse((yield* memory.files).has(FINAL_PATH))
      assert.isFalse((yield* memory.files).has(PARTIAL_PATH))
    }).pipe(Effect.provide(storeLayer())))

  it.effect("an endless body is cut at expected + 1 bytes", () =>
    Effect.gen(function*() {
      const small = bytesOf(1000, 5)
      const smallSpec = Either.getOrThrow(Integrity.checkSpec({ sha256: sha256Hex(small), sizeBytes: small.length }))
      const downloader = yield* DownloaderControl
      yield* downloader.script({ body: [], endless: new Uint8Array(1) })
      yield* expectFailure(ensure(smallSpec), "IntegrityError", "size_mismatch")
      assert.strictEqual(yield* downloader.bytesSent, small.length + 1)
      assert.strictEqual(yield* downloader.openConnections, 0)
    }).pipe(Effect.provide(storeLayer())))

  it.effect("a transient failure mid-stream resumes from the partial file after re-hashing it", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const memory = yield* MemoryFileSystem
      yield* downloader.serve(SOURCE, MODEL)
      yield* downloader.script({ body: [MODEL.subarray(0, 100_000), new DownloadError({ reason: "connection_failed" })] })
      const before = yield* hashed
      const fiber = yield* Effect.fork(ensure())
      yield* TestClock.adjust("1 minute")
      yield* Fiber.join(fiber)
      assert.deepStrictEqual(yield* downloader.requests, [{ url: SOURCE, offset: 0 }, { url: SOURCE, offset: 100_000 }])
      assert.isTrue(sameBytes((yield* memory.files).get(FINAL_PATH), MODEL))
      assert.strictEqual((yield* hashed) - before, 100_000, "the bytes on disk were read back once, before the resume")
    }).pipe(Effect.provide(storeLayer())))

  it.effect("a whole-file answer to a ranged request restarts from zero instead of appending", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const memory = yield* MemoryFileSystem
      yield* downloader.script(
        { body: [MODEL.subarray(0, 50_000), new DownloadError({ reason: "stall_timeout" })] },
        { startsAt: 0, body: [MODEL.subarray(0, 150_000), MODEL.subarray(150_000)] }
      )
      const fiber = yield* Effect.fork(ensure())
      yield* TestClock.adjust("1 minute")
      yield* Fiber.join(fiber)
      assert.deepStrictEqual((yield* downloader.requests).map((r) => r.offset), [0, 50_000])
      assert.isTrue(sameBytes((yield* memory.files).get(FINAL_PATH), MODEL))
    }).pipe(Effect.provide(storeLayer())))

  it.effect("a resume answered at the wrong offset is retried, not trusted", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      yield* downloader.serve(SOURCE, MODEL)
      yield* downloader.script(
        { body: [MODEL.subarray(0, 10_000), new DownloadError({ reason: "server_error" })] },
        { startsAt: 5_000, body: [MODEL.subarray(5_000)] }
      )
      const fiber = yield* Effect.fork(ensure())
      yield* TestClock.adjust("1 minute")
      yield* Fiber.join(fiber)
      assert.deepStrictEqual((yield* downloader.requests).map((r) => r.offset), [0, 10_000, 10_000])
    }).pipe(Effect.provide(storeLayer())))

  it.effect("a permanent refusal is not retried and leaves no partial file", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const memory = yield* MemoryFileSystem
      yield* downloader.script({ body: [MODEL.subarray(0, 1000), new DownloadError({ reason: "client_error" })] })
      yield* expectFailure(ensure(), "DownloadError", "client_error")
      assert.strictEqual((yield* downloader.requests).length, 1)
      assert.isFalse((yield* memory.files).has(PARTIAL_PATH))
    }).pipe(Effect.provide(storeLayer())))

  it.effect("gives up after the configured retries with backoff, then deletes the partial file", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const memory = yield* MemoryFileSystem
      const broken = { body: [MODEL.subarray(0, 10), new DownloadError({ reason: "connection_failed" })] }
      yield* downloader.script(broken, broken, broken, broken, broken)
      const fiber = yield* Effect.fork(Effect.exit(ensure()))
      yield* TestClock.adjust("100 millis")
      assert.strictEqual((yield* downloader.requests).length, 1, "the first retry waits for its backoff")
      yield* TestClock.adjust("2 minutes")
      yield* expectFailure(Effect.flatten(Fiber.join(fiber)), "DownloadError", "connection_failed")
      assert.strictEqual((yield* downloader.requests).length, 4) // 1 + 3 retries
      assert.isFalse((yield* memory.files).has(PARTIAL_PATH))
    }).pipe(Effect.provide(storeLayer())))

  it.effect("honours Retry-After as the least delay before the next attempt", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      yield* downloader.serve(SOURCE, MODEL)
      yield* downloader.script({ openError: new DownloadError({ reason: "rate_limited", retryAfterMillis: 7_000 }) })
      const fiber = yield* Effect.fork(ensure())
      yield* TestClock.adjust("6 seconds")
      assert.strictEqual((yield* downloader.requests).length, 1)
      yield* TestClock.adjust("2 seconds")
      yield* Fiber.join(fiber)
      assert.strictEqual((yield* downloader.requests).length, 2)
    }).pipe(Effect.provide(storeLayer())))

  it.effect("does not wait out a Retry-After longer than retryMax", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      yield* downloader.script({ openError: new DownloadError({ reason: "rate_limited", retryAfterMillis: 3_600_000 }) })
      const error = yield* expectFailure(ensure(), "DownloadError", "rate_limited")
      assert.deepStrictEqual(Object.keys(error).sort(), ["_tag", "reason", "retryAfterMillis"])
      assert.strictEqual((yield* downloader.requests).length, 1)
    }).pipe(Effect.provide(storeLayer())))

  it.effect("maps a file-system failure to ModelStoreError io_failed", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const memory = yield* MemoryFileSystem
      yield* downloader.serve(SOURCE, MODEL)
      yield* memory.breakAt("write")
      yield* expectFailure(ensure(), "ModelStoreError", "io_failed")
      yield* memory.repair
      yield* memory.breakAt("rename")
      yield* expectFailure(ensure(), "ModelStoreError", "io_failed")
      yield* memory.repair
      yield* memory.breakAt("sync")
      yield* expectFailure(ensure(), "ModelStoreError", "io_failed")
      assert.isFalse((yield* memory.files).has(FINAL_PATH))
      assert.strictEqual(yield* memory.openDescriptors, 0)
    }).pipe(Effect.provide(storeLayer())))
})

describe("ModelStore.verify", () => {
  it.effect("a model not in the store is not_stored, and nothing is downloaded", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const store = yield* ModelStore
      yield* expectFailure(Effect.scoped(store.verify(spec)), "ModelStoreError", "not_stored")
      assert.strictEqual((yield* downloader.requests).length, 0)
    }).pipe(Effect.provide(storeLayer())))

  it.effect("a stored copy of the wrong size or digest is refused and removed", () =>
    Effect.gen(function*() {
      const store = yield* ModelStore
      const fs = yield* FileSystem.FileSystem
      const memory = yield* MemoryFileSystem
      yield* fs.makeDirectory(STORE, { recursive: true })
      yield* fs.writeFile(FINAL_PATH, MODEL.subarray(1))
      yield* expectFailure(Effect.scoped(store.verify(spec)), "IntegrityError", "size_mismatch")
      assert.isFalse((yield* memory.files).has(FINAL_PATH))
      const flipped = Uint8Array.from(MODEL)
      flipped[3] = (flipped[3] ?? 0) ^ 4
      yield* fs.writeFile(FINAL_PATH, flipped)
      yield* expectFailure(Effect.scoped(store.verify(spec)), "IntegrityError", "digest_mismatch")
      assert.isFalse((yield* memory.files).has(FINAL_PATH))
      yield* fs.writeFile(FINAL_PATH, MODEL)
      const model = yield* Effect.scoped(store.verify(spec))
      assert.strictEqual(model.sha256, SPEC.sha256)
    }).pipe(Effect.provide(storeLayer())))
})

describe("hash once, serve what was hashed", () => {
  it.effect("a stored model is read back once; unchanged, it is not read again", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const downloader = yield* DownloaderControl
      yield* fs.makeDirectory(STORE, { recursive: true })
      yield* fs.writeFile(FINAL_PATH, MODEL)
      const before = yield* hashed
      yield* ensure()
      assert.strictEqual((yield* hashed) - before, MODEL.length)
      yield* ensure()
      yield* ensure()
      assert.strictEqual((yield* hashed) - before, MODEL.length)
      assert.strictEqual((yield* downloader.requests).length, 0)
    }).pipe(Effect.provide(storeLayer())))

  it.effect("a file written since (same bytes, or new ones) is read back again; one that no longer verifies is replaced", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const downloader = yield* DownloaderControl
      yield* downloader.serve(SOURCE, MODEL)
      yield* ensure()
      const before = yield* hashed
      // Rewritten with the very same bytes: its change time moved, so it is read again (and passes).
      yield* fs.writeFile(FINAL_PATH, MODEL)
      yield* ensure()
      assert.strictEqual((yield* hashed) - before, MODEL.length)
      assert.strictEqual((yield* downloader.requests).length, 1)
    }).pipe(Effect.provide(storeLayer())))

  it.effect("a file renamed onto the model's path after verification: the descriptor handed out still reads the verified bytes, and is no longer taken for verified", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const store = yield* ModelStore
      yield* (yield* DownloaderControl).serve(SOURCE, MODEL)
      const impostor = bytesOf(MODEL.length, 99)
      yield* Effect.scoped(Effect.gen(function*() {
        const model = yield* store.ensure(spec, source)
        yield* fs.writeFile(`${STORE}/impostor`, impostor)
        yield* fs.rename(`${STORE}/impostor`, FINAL_PATH)
        // The descriptor still names the verified bytes…
        assert.isTrue(sameBytes(yield* servedBytes(model), MODEL))
        // …but the file lost its name (its ctime moved): neither the spawner's check nor confirm trusts it now.
        assert.isFalse(yield* VerifiedModels.stillVerified(model))
        yield* expectFailure(store.confirm(model), "ModelStoreError", "model_changed")
      }))
      // The next ensure finds a different file at the path, reads it, refuses it and fetches the model again.
      const again = yield* Effect.scoped(Effect.flatMap(store.ensure(spec, source), servedBytes))
      assert.isTrue(sameBytes(again, MODEL))
    }).pipe(Effect.provide(storeLayer())))

  it.effect("confirm fails model_changed once the file behind a descriptor is written in place", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const store = yield* ModelStore
      yield* (yield* DownloaderControl).serve(SOURCE, MODEL)
      yield* Effect.scoped(Effect.gen(function*() {
        const model = yield* store.ensure(spec, source)
        yield* store.confirm(model)
        const altered = Uint8Array.from(MODEL)
        altered[0] = (altered[0] ?? 0) ^ 1
        yield* fs.writeFile(FINAL_PATH, altered)
        yield* expectFailure(store.confirm(model), "ModelStoreError", "model_changed")
      }))
    }).pipe(Effect.provide(storeLayer())))

  it.effect("a model that did not come from the store is not confirmed", () =>
    Effect.gen(function*() {
      const store = yield* ModelStore
      const forged = { sha256: SPEC.sha256, sizeBytes: SPEC.sizeBytes, descriptor: 3 } as unknown as VerifiedModel
      yield* expectFailure(store.confirm(forged), "ModelStoreError", "model_changed")
    }).pipe(Effect.provide(storeLayer())))
})

describe("store lock (in memory, with a scripted process table)", () => {
  const LOCK = `${STORE}/partial/${SPEC.sha256}.lock`
  const OTHER = 77
  const writeLock = (content: string) =>
    Effect.flatMap(FileSystem.FileSystem, (fs) =>
      Effect.zipRight(fs.makeDirectory(`${STORE}/partial`, { recursive: true }), fs.writeFileString(LOCK, content)))
  const lockEntries = Effect.map(Effect.flatten(Effect.map(MemoryFileSystem, (m) => m.entries)), (entries) =>
    [...entries.keys()].filter((p) => p.includes(".lock")))

  it.effect("waits for a live holder, then fails store_locked without downloading and leaves its lock alone", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      yield* (yield* Processes).setAlive([OTHER])
      yield* downloader.serve(SOURCE, MODEL)
      yield* writeLock(`${OTHER} 0a1b-2c\n`)
      const fiber = yield* Effect.fork(Effect.either(ensure()))
      yield* TestClock.adjust("59 seconds")
      assert.isNull(fiber.unsafePoll())
      yield* TestClock.adjust("2 seconds")
      yield* expectFailure(Fiber.join(fiber).pipe(Effect.flatten), "ModelStoreError", "store_locked")
      assert.deepStrictEqual(yield* downloader.requests, [])
      assert.deepStrictEqual(yield* lockEntries, [LOCK])
    }).pipe(Effect.provide(storeLayer({ download: { lockWait: "1 minute" } }))))

  it.effect("proceeds once a live holder releases, and finds its model stored", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const fs = yield* FileSystem.FileSystem
      yield* (yield* Processes).setAlive([OTHER])
      yield* downloader.serve(SOURCE, MODEL)
      yield* writeLock(`${OTHER} 0a1b-2c\n`)
      const fiber = yield* Effect.fork(ensure())
      yield* TestClock.adjust("1 second")
      // The other writer finishes: the model is in place and the lock is gone.
      yield* fs.writeFile(FINAL_PATH, MODEL)
      yield* fs.remove(LOCK)
      yield* TestClock.adjust("1 second")
      const model = yield* Fiber.join(fiber)
      assert.strictEqual(model.sha256, SPEC.sha256)
      assert.deepStrictEqual(yield* downloader.requests, [])
      assert.deepStrictEqual(yield* lockEntries, [])
    }).pipe(Effect.provide(storeLayer())))

  it.effect("takes over a lock whose holder is dead, or that is unreadable, and removes it after", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const fs = yield* FileSystem.FileSystem
      yield* downloader.serve(SOURCE, MODEL)
      for (const stale of [`${OTHER} 0a1b-2c\n`, "", "garbage", `${OTHER} 0a1b-2c\n${"x".repeat(200)}`]) {
        yield* Effect.ignore(fs.remove(FINAL_PATH))
        yield* writeLock(stale)
        const fiber = yield* Effect.fork(ensure())
        yield* TestClock.adjust("1 second")
        assert.strictEqual((yield* Fiber.join(fiber)).sha256, SPEC.sha256)
        assert.deepStrictEqual(yield* lockEntries, [])
      }
      assert.strictEqual((yield* downloader.requests).length, 4)
    }).pipe(Effect.provide(storeLayer())))

  it.effect("a link at the lock's path is a stale lock: the link is removed, its target left alone", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const memory = yield* MemoryFileSystem
      const fs = yield* FileSystem.FileSystem
      yield* downloader.serve(SOURCE, MODEL)
      yield* fs.makeDirectory("/elsewhere", { recursive: true })
      yield* fs.writeFileString("/elsewhere/precious", `${OTHER} 0a1b-2c\n`)
      yield* (yield* Processes).setAlive([OTHER])
      yield* fs.makeDirectory(`${STORE}/partial`, { recursive: true })
      yield* memory.symlink("/elsewhere/precious", LOCK)
      const fiber = yield* Effect.fork(ensure())
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(fiber)
      assert.deepStrictEqual(yield* lockEntries, [])
      assert.strictEqual(Buffer.from((yield* memory.files).get("/elsewhere/precious") ?? []).toString(), `${OTHER} 0a1b-2c\n`)
    }).pipe(Effect.provide(storeLayer())))

  it.effect("a directory with something in it at the lock's path is moved aside and blocks nobody", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      yield* (yield* DownloaderControl).serve(SOURCE, MODEL)
      yield* fs.makeDirectory(`${LOCK}/inside`, { recursive: true })
      const fiber = yield* Effect.fork(ensure())
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* Fiber.join(fiber)).sha256, SPEC.sha256)
      assert.isFalse((yield* lockEntries).includes(LOCK))
    }).pipe(Effect.provide(storeLayer())))

  it.effect("releases its lock when the download fails", () =>
    Effect.gen(function*() {
      const downloader = yield* DownloaderControl
      const flipped = Uint8Array.from(MODEL)
      flipped[9] = (flipped[9] ?? 0) ^ 1
      yield* downloader.serve(SOURCE, flipped)
      yield* expectFailure(ensure(), "IntegrityError", "digest_mismatch")
      assert.deepStrictEqual(yield* lockEntries, [])
    }).pipe(Effect.provide(storeLayer())))
})

describe("ModelStore.ensure, synced as it goes", () => {
  /** The store over memory with a background fsync every 16 KiB (the default is 64 MiB). */
  const syncingStore = ModelStoreTest.layerWith({ syncEveryBytes: 16 * 1024 }).pipe(Layer.provide(Layer.setConfigProvider(providerOf())))

  it.effect("a download is fsynced in the background while it streams, and once more at the end", () =>
    Effect.gen(function*() {
      const memory = yield* MemoryFileSystem
      yield* (yield* DownloaderControl).serve(SOURCE, MODEL, 8 * 1024)
      const before = yield* memory.syncs
      const model = yield* ensure()
      assert.strictEqual(model.sha256, SPEC.sha256)
      // Several in the background (the model is many times 16 KiB), the final one, the directory's.
      assert.isAbove((yield* memory.syncs) - before, 3)
    }).pipe(Effect.provide(syncingStore)))

  it.effect("a background fsync that fails fails the download as io_failed, and nothing is promoted", () =>
    Effect.gen(function*() {
      const memory = yield* MemoryFileSystem
      yield* (yield* DownloaderControl).serve(SOURCE, MODEL, 8 * 1024)
      yield* memory.breakAt("sync")
      yield* expectFailure(ensure(), "ModelStoreError", "io_failed")
      assert.isFalse((yield* memory.files).has(FINAL_PATH))
      assert.strictEqual(yield* memory.openDescriptors, 0)
    }).pipe(Effect.provide(syncingStore)))
})
