/**
 * A store that follows no links, tried as an attacker with write access to the store would: a link
 * (to a file outside, or dangling) or a directory or a FIFO planted where the store writes or reads.
 * Each case runs twice: over the in-memory file system, and over the real one (`StoreFileSystemLive`
 * on a temporary directory, real symlinks and FIFOs). Nothing outside the store may be created or
 * changed, nothing planted may be promoted or served, and the download must still end verified.
 */
import { execFileSync } from "node:child_process"
import { readFileSync } from "node:fs"
import { FileSystem, Path } from "@effect/platform"
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Chunk, Context, Effect, Either, Layer, Option, Stream } from "effect"
import * as Integrity from "../../src/domain/Integrity.js"
import * as DownloaderTest from "../../src/layers/DownloaderTest.js"
import * as MemoryFileSystem from "../../src/layers/MemoryFileSystem.js"
import * as ModelStoreLive from "../../src/layers/ModelStoreLive.js"
import * as VerifiedModels from "../../src/layers/internal/VerifiedModels.js"
import * as StoreFileSystemLive from "../../src/layers/StoreFileSystemLive.js"
import { Downloader } from "../../src/services/Downloader.js"
import { ModelStore, type VerifiedModel } from "../../src/services/ModelStore.js"
import { StoreFileSystem } from "../../src/services/StoreFileSystem.js"
import { bytesOf } from "../domain/fixtures.js"
import { expectFailure, MODEL, SOURCE, SPEC } from "./harness.js"

const spec = Either.getOrThrow(Integrity.checkSpec(SPEC))
const source = new URL(SOURCE)
const OUTSIDE_BYTES = bytesOf(1234, 3)

/** Where this backend's store and its "outside" live. */
class Paths extends Context.Tag("test/Paths")<Paths, {
  readonly store: string
  readonly outside: string
  /** Make a FIFO at a path. */
  readonly mkfifo: (path: string) => Effect.Effect<void>
  /** The bytes a process reading this descriptor would read. */
  readonly bytesOf: (model: VerifiedModel) => Effect.Effect<Uint8Array>
}>() {}

const storeOptions = (store: string): ModelStoreLive.ModelStoreOptions => ({
  storeDir: store,
  allowedSources: ["https://models.example.com/org/tiny"],
  retries: 0,
  retryBase: "10 millis",
  retryMax: "1 second",
  lockWait: "1 second",
  holder: { pid: 1, isAlive: (pid) => pid === 1 }
})

const inMemory = Layer.unwrapEffect(Effect.gen(function*() {
  const paths = Layer.effect(
    Paths,
    Effect.map(MemoryFileSystem.MemoryFileSystem, (memory) => ({
      store: "/home/user/store",
      outside: "/home/user/outside",
      mkfifo: memory.special,
      bytesOf: (model: VerifiedModel) => Effect.map(memory.bytesOfDescriptor(model.descriptor), Option.getOrElse(() => new Uint8Array(0)))
    }))
  )
  return ModelStoreLive.layer(storeOptions("/home/user/store")).pipe(
    Layer.provideMerge(Layer.mergeAll(DownloaderTest.layer, Path.layer, paths)),
    Layer.provideMerge(MemoryFileSystem.layer)
  )
}))

const onDisk = Layer.unwrapScoped(Effect.gen(function*() {
  const fs = yield* FileSystem.FileSystem
  const root = yield* fs.makeTempDirectoryScoped({ prefix: "companion-links-" })
  const paths = Layer.succeed(Paths, {
    store: `${root}/store`,
    outside: `${root}/outside`,
    mkfifo: (path: string) => Effect.sync(() => void execFileSync("mkfifo", [path])),
    // What the runtime would see at /dev/fd/3: the file behind the descriptor.
    bytesOf: (model: VerifiedModel) => Effect.sync(() => new Uint8Array(readFileSync(`/proc/self/fd/${model.descriptor}`)))
  })
  return ModelStoreLive.layer(storeOptions(`${root}/store`)).pipe(
    Layer.provideMerge(Layer.mergeAll(DownloaderTest.layer, StoreFileSystemLive.layer, NodePath.layer, NodeFileSystem.layer, paths))
  )
}).pipe(Effect.provide(NodeFileSystem.layer)))

const backends = [
  { name: "in memory", layer: inMemory },
  { name: "on disk", layer: onDisk }
] as const

/** The model served; the outside directory holding one file of known bytes. */
const setUp = Effect.gen(function*() {
  const fs = yield* FileSystem.FileSystem
  const paths = yield* Paths
  yield* (yield* DownloaderTest.DownloaderControl).serve(SOURCE, MODEL)
  yield* fs.makeDirectory(`${paths.outside}`, { recursive: true })
  yield* fs.writeFile(`${paths.outside}/file`, OUTSIDE_BYTES)
  yield* fs.makeDirectory(`${paths.store}/partial`, { recursive: true })
  return {
    fs,
    paths,
    partial: `${paths.store}/partial/${SPEC.sha256}.partial`,
    final: `${paths.store}/${SPEC.sha256}`,
    outsideFile: `${paths.outside}/file`
  }
})

/** The outside directory holds exactly its one file, unchanged. */
const outsideUntouched = Effect.gen(function*() {
  const fs = yield* FileSystem.FileSystem
  const paths = yield* Paths
  assert.deepStrictEqual((yield* fs.readDirectory(paths.outside)).sort(), ["file"])
  assert.strictEqual(Buffer.compare(yield* fs.readFile(`${paths.outside}/file`), OUTSIDE_BYTES), 0)
})

/** The model ends verified: a regular file at its final path with the right bytes, served through the descriptor. */
const endsVerified = Effect.scoped(Effect.gen(function*() {
  const fs = yield* FileSystem.FileSystem
  const paths = yield* Paths
  const model = yield* Effect.flatMap(ModelStore, (store) => store.ensure(spec, source))
  assert.strictEqual(Buffer.compare(yield* paths.bytesOf(model), MODEL), 0)
  const final = `${paths.store}/${SPEC.sha256}`
  assert.isTrue(Either.isLeft(yield* Effect.either(fs.readLink(final))), "the final path is no link")
  assert.strictEqual(Buffer.compare(yield* fs.readFile(final), MODEL), 0)
  return model
}))

for (const backend of backends) {
  describe(`a store that follows no links (${backend.name})`, () => {
    it.scoped("a link at the partial path to an existing file outside: the file is not written, the link not promoted", () =>
      Effect.gen(function*() {
        const { fs, outsideFile, partial } = yield* setUp
        yield* fs.symlink(outsideFile, partial)
        yield* endsVerified
        yield* outsideUntouched
      }).pipe(Effect.provide(backend.layer)))

    it.scoped("a dangling link at the partial path: its target is not created", () =>
      Effect.gen(function*() {
        const { fs, partial, paths } = yield* setUp
        yield* fs.symlink(`${paths.outside}/created-by-the-store`, partial)
        yield* endsVerified
        yield* outsideUntouched
      }).pipe(Effect.provide(backend.layer)))

    it.scoped("a link at the final path to a copy of the model outside: not followed, not served; the model is fetched", () =>
      Effect.gen(function*() {
        const { final, fs, paths } = yield* setUp
        // Even a link to the right bytes is not the store's file: whoever owns the target could change it.
        yield* fs.writeFile(`${paths.outside}/model`, MODEL)
        yield* fs.symlink(`${paths.outside}/model`, final)
        const verify = Effect.scoped(Effect.flatMap(ModelStore, (store) => store.verify(spec)))
        yield* expectFailure(verify, "ModelStoreError", "not_stored")
        const downloader = yield* DownloaderTest.DownloaderControl
        yield* endsVerified
        assert.strictEqual((yield* downloader.requests).length, 1)
        assert.strictEqual(Buffer.compare(yield* fs.readFile(`${paths.outside}/model`), MODEL), 0)
      }).pipe(Effect.provide(backend.layer)))

    it.scoped("an empty directory at the partial path, and one at the final path: removed, never written into or renamed over", () =>
      Effect.gen(function*() {
        const { final, fs, partial } = yield* setUp
        yield* fs.makeDirectory(partial, { recursive: true })
        yield* fs.makeDirectory(final, { recursive: true })
        yield* endsVerified
      }).pipe(Effect.provide(backend.layer)))

    it.scoped("a directory with something in it where a file belongs: entry_replaced, and nothing in it is removed (no tree is walked)", () =>
      Effect.gen(function*() {
        const { fs, partial } = yield* setUp
        yield* fs.makeDirectory(`${partial}/inside`, { recursive: true })
        yield* fs.writeFile(`${partial}/inside/keep`, OUTSIDE_BYTES)
        yield* expectFailure(Effect.scoped(Effect.flatMap(ModelStore, (store) => store.ensure(spec, source))), "ModelStoreError", "entry_replaced")
        assert.strictEqual(Buffer.compare(yield* fs.readFile(`${partial}/inside/keep`), OUTSIDE_BYTES), 0)
      }).pipe(Effect.provide(backend.layer)))

    it.scoped("a hard link at the partial path to a file outside: never appended to, the file outside unchanged", () =>
      Effect.gen(function*() {
        const { fs, outsideFile, partial } = yield* setUp
        yield* fs.link(outsideFile, partial)
        yield* endsVerified
        yield* outsideUntouched
      }).pipe(Effect.provide(backend.layer)))

    it.scoped("a store directory others can write is refused: store_not_private, nothing downloaded", () =>
      Effect.gen(function*() {
        const { fs, paths } = yield* setUp
        yield* fs.chmod(paths.store, 0o777)
        yield* expectFailure(Effect.scoped(Effect.flatMap(ModelStore, (store) => store.ensure(spec, source))), "ModelStoreError", "store_not_private")
        assert.strictEqual((yield* (yield* DownloaderTest.DownloaderControl).requests).length, 0)
        yield* fs.chmod(paths.store, 0o755)
        yield* fs.chmod(`${paths.store}/partial`, 0o770)
        yield* expectFailure(Effect.scoped(Effect.flatMap(ModelStore, (store) => store.ensure(spec, source))), "ModelStoreError", "store_not_private")
        yield* fs.chmod(`${paths.store}/partial`, 0o700)
        yield* endsVerified
      }).pipe(Effect.provide(backend.layer)))

    it.scoped("the store itself a link to a directory others can write: store_not_private; private, it is used", () =>
      Effect.gen(function*() {
        const { fs, paths } = yield* setUp
        yield* fs.remove(paths.store, { recursive: true })
        yield* fs.makeDirectory(`${paths.outside}/shared`, { recursive: true })
        yield* fs.chmod(`${paths.outside}/shared`, 0o777)
        yield* fs.symlink(`${paths.outside}/shared`, paths.store)
        yield* expectFailure(Effect.scoped(Effect.flatMap(ModelStore, (store) => store.ensure(spec, source))), "ModelStoreError", "store_not_private")
        yield* fs.chmod(`${paths.outside}/shared`, 0o700)
        yield* endsVerified
      }).pipe(Effect.provide(backend.layer)))

    it.scoped("a descriptor closed with its scope is no verified model any more: the spawner's check refuses it", () =>
      Effect.gen(function*() {
        yield* setUp
        const stale = yield* Effect.scoped(Effect.flatMap(ModelStore, (store) => store.ensure(spec, source)))
        assert.isFalse(yield* VerifiedModels.stillVerified(stale))
        const live = yield* Effect.flatMap(ModelStore, (store) => store.ensure(spec, source))
        assert.isTrue(yield* VerifiedModels.stillVerified(live))
      }).pipe(Effect.provide(backend.layer)))

    it.scoped("a FIFO at the partial path does not block the store: it is removed", () =>
      Effect.gen(function*() {
        const { partial, paths } = yield* setUp
        yield* paths.mkfifo(partial)
        yield* endsVerified
      }).pipe(Effect.provide(backend.layer)))

    it.scoped("the partial directory itself a link to a directory outside: nothing is written there", () =>
      Effect.gen(function*() {
        const { fs, paths } = yield* setUp
        yield* fs.remove(`${paths.store}/partial`, { recursive: true })
        yield* fs.symlink(paths.outside, `${paths.store}/partial`)
        yield* endsVerified
        yield* outsideUntouched
        assert.isTrue(Either.isLeft(yield* Effect.either(fs.readLink(`${paths.store}/partial`))), "the partial directory is a real directory now")
      }).pipe(Effect.provide(backend.layer)))

    it.scoped("the partial file swapped for a link while it downloads: entry_replaced, nothing promoted, nothing outside changed", () =>
      Effect.gen(function*() {
        const { final, fs, outsideFile, partial } = yield* setUp
        // A source that, half-way, lets the attacker swap the partial file for a link.
        const swapping = Layer.succeed(Downloader, {
          open: () =>
            Effect.succeed({
              startsAt: 0,
              bytes: Stream.fromChunk(Chunk.of(MODEL.subarray(0, 1000))).pipe(
                Stream.concat(Stream.fromEffect(Effect.orDie(Effect.zipRight(fs.remove(partial), fs.symlink(outsideFile, partial)))).pipe(Stream.drain)),
                Stream.concat(Stream.fromChunk(Chunk.of(MODEL.subarray(1000))))
              )
            })
        })
        const store = yield* Layer.build(ModelStoreLive.layer(storeOptions((yield* Paths).store)).pipe(Layer.provide(swapping)))
        yield* expectFailure(Effect.scoped(Context.get(store, ModelStore).ensure(spec, source)), "ModelStoreError", "entry_replaced")
        yield* outsideUntouched
        assert.isTrue(Either.isLeft(yield* Effect.either(fs.readFile(final))), "nothing at the final path")
      }).pipe(Effect.provide(backend.layer)))

    it.scoped("a file renamed onto the final path just after the store's own rename is not served: entry_replaced", () =>
      Effect.gen(function*() {
        const { fs, paths } = yield* setUp
        yield* fs.writeFile(`${paths.outside}/impostor`, bytesOf(MODEL.length, 9))
        const files = yield* StoreFileSystem
        // The attacker wins the race between the store's rename and its open of the final path.
        const racing = Layer.succeed(StoreFileSystem, {
          ...files,
          rename: (from, to) =>
            Effect.zipRight(
              files.rename(from, to),
              to.endsWith(SPEC.sha256) ? Effect.orDie(fs.rename(`${paths.outside}/impostor`, to)) : Effect.void
            )
        })
        const store = yield* Layer.build(ModelStoreLive.layer(storeOptions(paths.store)).pipe(Layer.provide(racing)))
        yield* expectFailure(Effect.scoped(Context.get(store, ModelStore).ensure(spec, source)), "ModelStoreError", "entry_replaced")
      }).pipe(Effect.provide(backend.layer)))

    it.scoped("a clean download still ends verified, and files are private", () =>
      Effect.gen(function*() {
        const { final, fs } = yield* setUp
        yield* endsVerified
        const info = yield* fs.stat(final)
        assert.strictEqual(info.mode & 0o777, 0o600)
      }).pipe(Effect.provide(backend.layer)))
  })
}
