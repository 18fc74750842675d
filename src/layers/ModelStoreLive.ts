/**
 * The model store over `StoreFileSystem` and a `Downloader`.
 *
 * Layout: `<storeDir>/<sha256>` (verified, 0600), `<storeDir>/partial/<sha256>.partial` (being
 * downloaded, 0600), `<storeDir>/partial/<sha256>.lock` (one writer per model); directories 0700.
 *
 * Nothing in the store is followed through a link or written through anything but a regular file:
 * a link, directory or special file where a model or partial file belongs is removed (the link,
 * never its target) and the path treated as empty; every open refuses a link; the partial file must
 * still be the file written (same device and inode) when it is renamed, and the final path must be
 * that same file when it is opened for the runtime — otherwise `entry_replaced`, and nothing is
 * promoted or served.
 *
 * Hash once: the store remembers the identity (device, inode, size, mtime, ctime) of every file it
 * verified. A stored model whose identity is unchanged is not read again; one that changed is read
 * through the same descriptor that is then handed to the runtime, so the bytes hashed are the bytes
 * served. `confirm` checks later that the file behind a descriptor has not been written since.
 */
import { Path } from "@effect/platform"
import * as Gguf from "../domain/Gguf.js"
import {
  Chunk,
  Duration,
  Effect,
  Either,
  ExecutionStrategy,
  Exit,
  Fiber,
  Layer,
  Metric,
  Option,
  Schedule,
  Scope,
  Stream,
  SubscriptionRef
} from "effect"
import { type CompanionConfig, readConfig } from "../config/Config.js"
import type { IntegrityError } from "../domain/Errors.js"
import * as Integrity from "../domain/Integrity.js"
import { Downloader } from "../services/Downloader.js"
import { DownloadError, ModelStoreError, type StoreFileError } from "../services/Errors.js"
import { type DownloadProgress, metrics, ModelStore, type Screen, type VerifiedModel } from "../services/ModelStore.js"
import { type FileIdentity, sameFile, sameVersion, type StoreFile, StoreFileSystem } from "../services/StoreFileSystem.js"
import * as StoreLock from "./internal/StoreLock.js"
import * as VerifiedModels from "./internal/VerifiedModels.js"

export interface ModelStoreOptions {
  readonly storeDir: string
  /** The source policy: a model's URL must be under one of these. */
  readonly allowedSources: ReadonlyArray<string>
  /** Download retries for transient failures, with jittered exponential backoff. */
  readonly retries: number
  readonly retryBase: Duration.DurationInput
  /** The longest backoff; a server's `Retry-After` beyond it ends the retries. */
  readonly retryMax: Duration.DurationInput
  /** How long to wait for another writer of the same model before `store_locked`. */
  readonly lockWait: Duration.DurationInput
  /** The lock's holder: this process unless given (tests give a scripted one). */
  readonly holder?: StoreLock.LockHolder | undefined
  /** Caps on a model's GGUF header (`header`). Default: `Gguf.defaultCaps`. */
  readonly ggufCaps?: Gguf.GgufCaps | undefined
  /** A download is fsynced in the background every this many bytes. Default 64 MiB. */
  readonly syncEveryBytes?: number | undefined
}

/** The first prefix read for a header; the reader asks for more when the header is longer. */
const HEADER_PREFIX = 1024 * 1024
/** The first prefix a download's screen looks at; it asks for more when the header is longer. */
const SCREEN_FIRST = 64 * 1024

/** A download is fsynced in the background every this many bytes (see `downloadOnce`). */
const SYNC_EVERY_BYTES = 64 * 1024 * 1024
/** The most a download's screen keeps in memory; a header longer than this is judged on disk instead. */
const SCREEN_BYTES = 64 * 1024 * 1024

/** Bytes read back at once when hashing a stored file. */
const READ_BYTES = 1024 * 1024

const storeFailure = (reason: ModelStoreError["reason"]) => new ModelStoreError({ reason })

/** What a writer holds while it downloads: the lock, and the identity of the partial directory it prepared. */
interface Held {
  readonly lock: StoreLock.HeldLock
  readonly partialDirectory: FileIdentity
}

/** What the store holds for a spec: the model, nothing, or a copy that failed (and was removed). */
type Stored =
  | { readonly _tag: "verified"; readonly model: VerifiedModel }
  | { readonly _tag: "absent" }
  | { readonly _tag: "refused"; readonly error: IntegrityError | ModelStoreError }

const absent: Stored = { _tag: "absent" }

const io = (e: StoreFileError) => storeFailure(e.reason === "not_a_file" ? "entry_replaced" : "io_failed")

export const make = Effect.fn("ModelStore.make")(function*(options: ModelStoreOptions) {
  const files = yield* StoreFileSystem
  const path = yield* Path.Path
  const downloader = yield* Downloader
  const holder = options.holder ?? StoreLock.thisProcess()
  const retryMax = Duration.decode(options.retryMax)

  const partialDir = path.join(options.storeDir, "partial")
  const finalPath = (spec: Integrity.ModelSpec) => path.join(options.storeDir, spec.sha256)
  const partialPath = (spec: Integrity.ModelSpec) => path.join(partialDir, `${spec.sha256}.partial`)

  const progress = yield* SubscriptionRef.make<DownloadProgress>({ receivedBytes: 0, expectedBytes: 0 })
  /** The identity of each stored model at its last verification, by digest. */
  const verified = new Map<string, FileIdentity>()
  // One writer at a time in this store within this process; the lock file keeps out other processes.
  const writer = yield* Effect.makeSemaphore(1)

  /**
   * True when a regular file is at `p`. Anything else there (a link, a directory, a FIFO) is never
   * followed, and is removed when `clear` (only under the lock, so a writer's fresh file is not).
   */
  const regularFileAt = (p: string, clear = true) =>
    Effect.flatMap(files.entry(p), (entry) =>
      Option.match(entry, {
        onNone: () => Effect.succeed(false),
        onSome: ({ kind }) => (kind === "file" ? Effect.succeed(true) : clear ? Effect.as(files.remove(p), false) : Effect.succeed(false))
      })).pipe(Effect.mapError(io))

  /**
   * The store and its partial directory exist, are directories, and are private (owned by this
   * user, writable by no one else): a store others can write is no place to verify a model in.
   * The store itself may be a link the user made (its target must be private); the partial
   * directory may not. Returns the partial directory's identity, checked again before anything
   * leaves it.
   */
  const prepareDirectories = Effect.gen(function*() {
    yield* files.makeDirectory(options.storeDir)
    // `<store>/.` is the directory itself, reached through the link if the store is one.
    const store = yield* files.entry(`${options.storeDir}/.`)
    if (!Option.exists(store, (e) => e.kind === "directory" && e.private)) return yield* storeFailure("store_not_private")
    const entry = yield* files.entry(partialDir)
    if (Option.isSome(entry) && entry.value.kind !== "directory") yield* files.remove(partialDir)
    yield* files.makeDirectory(partialDir)
    const made = yield* files.entry(partialDir)
    if (Option.isNone(made) || made.value.kind !== "directory") return yield* storeFailure("entry_replaced")
    if (!made.value.private) return yield* storeFailure("store_not_private")
    return made.value.identity
  }).pipe(Effect.catchTag("StoreFileError", (e) => Effect.fail(io(e))))

  /** The partial directory is still the one prepared: not swapped for a link or another directory. */
  const samePartialDirectory = (prepared: FileIdentity) =>
    Effect.flatMap(Effect.mapError(files.entry(partialDir), io), (now) =>
      Option.exists(now, (e) => e.kind === "directory" && sameFile(e.identity, prepared)) ? Effect.void : Effect.fail(storeFailure("entry_replaced")))

  const holdLock = (spec: Integrity.ModelSpec) =>
    StoreLock.hold(files, path.join(partialDir, `${spec.sha256}.lock`), { ...holder, poll: Duration.millis(250), wait: options.lockWait })

  /** Feed `length` bytes of `file` from `from` through the verifier; one more byte past the spec is refused. */
  const hashFile = (file: StoreFile, verifier: Integrity.Verifier, from: number, length: number) =>
    Effect.iterate(from, {
      while: (at) => at < from + length,
      body: (at) =>
        Effect.flatMap(file.read(at, Math.min(READ_BYTES, from + length - at)), (bytes) =>
          bytes.length === 0
            ? Effect.succeed(from + length) // shorter than it said: finalize judges the size
            : Effect.zipRight(
              Effect.zipRight(verifier.update(bytes), Metric.incrementBy(metrics.hashedBytes, bytes.length)),
              Effect.succeed(at + bytes.length)
            ))
    })

  /**
   * Open the stored copy in `scope` and make sure it is the model: not read again when it is the
   * very file verified before and unchanged since; otherwise (when `mayHash`) hashed through the
   * descriptor that the runtime will be handed. A copy that fails is removed and its failure told.
   */
  const openStored = (spec: Integrity.ModelSpec, scope: Scope.Scope, mayHash: boolean) =>
    Effect.gen(function*() {
      const target = finalPath(spec)
      if (!(yield* regularFileAt(target, mayHash))) return absent
      const local = yield* Scope.fork(scope, ExecutionStrategy.sequential)
      const found: Stored = yield* Effect.gen(function*() {
        const file = yield* Scope.extend(files.openRead(target), local)
        const verifiedAs = (identity: FileIdentity) =>
          Effect.map(VerifiedModels.mintIn(local, spec, identity, file), (model): Stored => ({ _tag: "verified", model }))
        const before = yield* file.identity
        const known = verified.get(spec.sha256)
        if (known !== undefined && sameVersion(known, before)) return yield* verifiedAs(before)
        if (!mayHash) return absent
        // At most one byte past the spec is read: a longer file fails there.
        const verifier = Integrity.makeVerifier(spec)
        yield* hashFile(file, verifier, 0, spec.sizeBytes + 1)
        const verdict = verifier.finalize()
        const after = yield* file.identity
        if (Either.isLeft(verdict)) return { _tag: "refused", error: verdict.left } satisfies Stored
        // Written while it was read: what was hashed is not what is there.
        if (!sameVersion(before, after)) return { _tag: "refused", error: storeFailure("model_changed") } satisfies Stored
        verified.set(spec.sha256, after)
        return yield* verifiedAs(after)
      }).pipe(
        Effect.catchTag("StoreFileError", (e) =>
          // Swapped for a link or a special file between the look and the open: not the model.
          e.reason === "file_io_failed" ? Effect.fail(io(e)) : Effect.succeed(absent)
        ),
        Effect.catchTag("IntegrityError", (error) => Effect.succeed<Stored>({ _tag: "refused", error })),
        Effect.tap((result) =>
          result._tag === "verified"
            ? Effect.void
            : Effect.zipRight(
              Scope.close(local, Exit.void),
              result._tag === "refused"
                ? Effect.zipRight(Effect.logWarning("a stored model failed verification; it is removed"), Effect.ignore(files.remove(target)))
                : Effect.void
            )
        ),
        Effect.onError(() => Scope.close(local, Exit.void))
      )
      return found
    })

  // -------------------------------------------------------------------------------------------
  // Download
  // -------------------------------------------------------------------------------------------

  /** The partial file to append to: a regular file there is resumed, anything else removed first. */
  const openPartial = (p: string) =>
    Effect.flatMap(regularFileAt(p), (exists) =>
      (exists ? files.openAppend(p) : files.create(p)).pipe(
        Effect.catchTag("StoreFileError", (e) =>
          // Swapped for a link or a directory between the look and the open: remove it and start afresh.
          e.reason === "not_a_file" || e.reason === "file_exists" || e.reason === "file_missing"
            ? Effect.zipRight(files.remove(p), files.create(p))
            : Effect.fail(e)
        ),
        Effect.mapError(io)
      ))

  const restartPartial = (p: string) => Effect.zipRight(files.remove(p), files.create(p)).pipe(Effect.mapError(io))

  /** One attempt: resume or start the partial file, stream the rest through the verifier. Returns the identity of the file written. */
  /**
   * The screen's side of a fresh download: the first bytes are kept (at most `SCREEN_BYTES`) until
   * the screen has what it asks for and answers; a refusal ends the download there. Past the cap
   * it stops looking (the verified file's header is judged before any spawn anyway).
   */
  const syncEvery = options.syncEveryBytes ?? SYNC_EVERY_BYTES

  const screening = <S>(screen: Screen<S> | undefined, fileSize: number) => {
    if (screen === undefined) return undefined
    const kept: Array<Uint8Array> = []
    let keptBytes = 0
    let wanted = Math.min(fileSize, SCREEN_FIRST)
    let done = false
    return (bytes: Uint8Array): Effect.Effect<void, S> => {
      if (done) return Effect.void
      kept.push(bytes)
      keptBytes += bytes.length
      if (keptBytes < wanted) return Effect.void
      const verdict = screen(Buffer.concat(kept), fileSize)
      if (Either.isRight(verdict)) done = true
      else if ((verdict.left as { _tag?: string })._tag === "NeedMore") {
        wanted = (verdict.left as Gguf.NeedMore).bytes
        if (wanted > SCREEN_BYTES || wanted <= keptBytes) done = true
      } else return Effect.fail(verdict.left as S)
      if (done) kept.length = 0
      return Effect.void
    }
  }

  const downloadOnce = <S>(spec: Integrity.ModelSpec, url: URL, screen?: Screen<S>) =>
    Effect.scoped(
      Effect.gen(function*() {
        const partial = partialPath(spec)
        let file = yield* openPartial(partial)
        let verifier = Integrity.makeVerifier(spec)
        let offset = (yield* Effect.mapError(file.identity, io)).size
        if (offset > spec.sizeBytes) {
          file = yield* restartPartial(partial)
          offset = 0
        }
        // Re-hash what an earlier attempt left, so the final digest covers every byte on disk.
        if (offset > 0) yield* hashFile(file, verifier, 0, offset).pipe(Effect.mapError((e) => (e._tag === "StoreFileError" ? io(e) : e)))
        yield* SubscriptionRef.set(progress, { receivedBytes: offset, expectedBytes: spec.sizeBytes })
        if (offset < spec.sizeBytes) {
          const body = yield* downloader.open({ url, offset })
          if (body.startsAt !== offset) {
            if (body.startsAt !== 0) return yield* new DownloadError({ reason: "range_mismatch" })
            // The source sent the whole file: start over rather than append it to the partial one.
            file = yield* restartPartial(partial)
            verifier = Integrity.makeVerifier(spec)
            offset = 0
          }
          let received = offset
          const out = file
          // Synced as it goes, in the background, so the final fsync has little left to flush:
          // waiting for a whole model's dirty pages at the end is time a paced link already gave.
          let unsynced = 0
          let syncing: Fiber.RuntimeFiber<void, StoreFileError> | undefined
          // Only a download from the first byte is screened: a resume's head is on disk already.
          const look = offset === 0 ? screening(screen, spec.sizeBytes) : undefined
          const streamed = yield* body.bytes.pipe(
            Stream.runForEachChunk((chunks) =>
              Effect.gen(function*() {
                // The chunks as they came off the socket, never joined (a copy the GC frees late).
                const batch = Chunk.toReadonlyArray(chunks)
                let bytes = 0
                for (const chunk of batch) {
                  // Refused before it is written: the file never holds a byte past the expected size.
                  yield* verifier.update(chunk)
                  if (look !== undefined) yield* look(chunk)
                  bytes += chunk.length
                }
                yield* Effect.mapError(out.appendAll(batch), io)
                unsynced += bytes
                if (unsynced >= syncEvery && (syncing === undefined || syncing.unsafePoll() !== null)) {
                  if (syncing !== undefined) yield* Effect.mapError(Fiber.join(syncing), io)
                  unsynced = 0
                  syncing = yield* Effect.forkScoped(out.sync)
                }
                received += bytes
                yield* Metric.incrementBy(metrics.downloadedBytes, bytes)
                yield* SubscriptionRef.set(progress, { receivedBytes: received, expectedBytes: spec.sizeBytes })
              })
            ),
            Effect.exit
          )
          // The background fsync's verdict first, however the stream ended: a failed one is
          // `io_failed` (not retried, the partial removed). Lost under a transient error, the retry
          // would resume onto bytes that may never have reached the disk, and a new descriptor's
          // fsync does not report the old writeback error.
          if (syncing !== undefined) yield* Effect.mapError(Fiber.join(syncing), io)
          yield* streamed
          yield* Effect.mapError(file.sync, io)
        }
        yield* verifier.finalize()
        const written = yield* Effect.mapError(file.identity, io)
        // Bytes the verifier did not see (another writer's) make the file longer than what was hashed.
        if (written.size !== spec.sizeBytes) return yield* storeFailure("entry_replaced")
        // What is at the partial path must still be the file written, or nothing is promoted.
        const now = yield* Effect.mapError(files.entry(partial), io)
        if (!Option.exists(now, (e) => e.kind === "file" && sameFile(e.identity, written))) {
          return yield* storeFailure("entry_replaced")
        }
        return written
      })
    )

  /** A screen's refusal (any other error) is final; only a transient download failure is retried. */
  const asDownloadError = (error: unknown): DownloadError | undefined => (error instanceof DownloadError ? error : undefined)
  const retryable = (error: unknown) => {
    const download = asDownloadError(error)
    return download !== undefined && download.transient && (download.retryAfterMillis ?? 0) <= Duration.toMillis(retryMax)
  }

  const downloadRetry = Schedule.exponential(options.retryBase, 2).pipe(
    Schedule.jittered,
    Schedule.union(Schedule.spaced(retryMax)),
    Schedule.intersect(Schedule.recurs(options.retries)),
    Schedule.intersect(Schedule.identity<unknown>()),
    // A server's Retry-After is a floor under the backoff (and `retryable` gives up past retryMax).
    Schedule.modifyDelay(([, error], delay) => {
      const retryAfter = asDownloadError(error)?.retryAfterMillis
      return retryAfter !== undefined ? Duration.max(delay, Duration.millis(retryAfter)) : delay
    }),
    Schedule.whileInput(retryable)
  )

  /** Download, verify, and promote the partial file to its final name; open it for `scope`. */
  const download = <S>(spec: Integrity.ModelSpec, url: URL, scope: Scope.Scope, held: Held, screen?: Screen<S>) =>
    Effect.gen(function*() {
      const partial = partialPath(spec)
      const target = finalPath(spec)
      const written = yield* downloadOnce(spec, url, screen).pipe(
        Effect.retry(downloadRetry),
        Effect.tapError(() => Effect.ignore(files.remove(partial)))
      )
      // Still the one writer, in the directory prepared: or nothing is promoted. Then the partial
      // file is not this writer's to remove (it is the new holder's, or in a directory not ours).
      if (!(yield* held.lock.stillHeld)) return yield* storeFailure("store_locked")
      yield* samePartialDirectory(held.partialDirectory)
      yield* Effect.gen(function*() {
        // A link or directory that appeared at the final path is removed, not renamed over or into.
        yield* regularFileAt(target)
        yield* Effect.mapError(files.syncDirectory(partialDir), io)
        yield* Effect.mapError(files.rename(partial, target), io)
        yield* Effect.mapError(files.syncDirectory(options.storeDir), io)
      }).pipe(Effect.tapError(() => Effect.ignore(files.remove(partial))))
      const local = yield* Scope.fork(scope, ExecutionStrategy.sequential)
      return yield* Effect.gen(function*() {
        const file = yield* Scope.extend(Effect.mapError(files.openRead(target), io), local)
        const identity = yield* Effect.mapError(file.identity, io)
        // Another file renamed onto the final path, or written since: it is not what was verified.
        // (The rename moved the change time; the size and modification time must not have moved.)
        if (!sameFile(identity, written) || identity.size !== written.size || identity.mtime !== written.mtime) {
          return yield* storeFailure("entry_replaced")
        }
        verified.set(spec.sha256, identity)
        return yield* VerifiedModels.mintIn(local, spec, identity, file)
      }).pipe(Effect.onError(() => Scope.close(local, Exit.void)))
    })

  // -------------------------------------------------------------------------------------------
  // The service
  // -------------------------------------------------------------------------------------------

  /**
   * The stored copy, verified. The quick look (the very file verified before, unchanged) needs no
   * lock; reading it back takes the lock, so no other writer replaces it meanwhile.
   */
  const storedOrElse = <E>(
    spec: Integrity.ModelSpec,
    orElse: (stored: Stored, scope: Scope.Scope, held: Held) => Effect.Effect<VerifiedModel, E>
  ) =>
    Effect.gen(function*() {
      const scope = yield* Effect.scope
      const quick = yield* openStored(spec, scope, false)
      if (quick._tag === "verified") return quick.model
      return yield* writer.withPermits(1)(Effect.scoped(Effect.gen(function*() {
        const partialDirectory = yield* prepareDirectories
        const lock = yield* holdLock(spec)
        const stored = yield* openStored(spec, scope, true)
        return stored._tag === "verified" ? stored.model : yield* orElse(stored, scope, { lock, partialDirectory })
      })))
    })

  const ensure = <S = never>(spec: Integrity.ModelSpec, source: URL, screen?: Screen<S>) =>
    Effect.flatMap(Integrity.checkSource(source, options.allowedSources), (url) =>
      storedOrElse(spec, (_, scope, held) => download(spec, url, scope, held, screen))).pipe(Effect.withSpan("ModelStore.ensure"))

  const verify = (spec: Integrity.ModelSpec) =>
    storedOrElse(spec, (stored) => Effect.fail(stored._tag === "refused" ? stored.error : storeFailure("not_stored"))).pipe(
      Effect.withSpan("ModelStore.verify")
    )

  const confirm = (model: VerifiedModel) =>
    Effect.gen(function*() {
      const record = VerifiedModels.recordOf(model)
      if (record === undefined) return yield* storeFailure("model_changed")
      const now = yield* Effect.mapError(record.file.identity, io)
      if (!sameVersion(now, record.identity)) return yield* storeFailure("model_changed")
    })

  const caps = options.ggufCaps ?? Gguf.defaultCaps
  const header = (model: VerifiedModel) =>
    Effect.gen(function*() {
      const record = VerifiedModels.recordOf(model)
      if (record === undefined) return yield* storeFailure("model_changed")
      let length = Math.min(model.sizeBytes, HEADER_PREFIX)
      for (;;) {
        const prefix = yield* Effect.mapError(record.file.read(0, length), io)
        const result = Gguf.read(prefix, model.sizeBytes, caps)
        if (Either.isRight(result)) return result.right
        if (result.left._tag !== "NeedMore") return yield* Effect.fail(result.left)
        // The reader asks for more only below the file's size and its header cap: this ends.
        if (result.left.bytes <= prefix.length) return yield* storeFailure("io_failed")
        length = result.left.bytes
      }
    })

  return ModelStore.of({ ensure, verify, confirm, header, progress: progress.changes })
})

export const layer = (options: ModelStoreOptions) => Layer.scoped(ModelStore, make(options))

/** The store from `CompanionConfig` (`storeDir`, `allowedSources`, `download.*`). */
export const layerConfig = Layer.scoped(
  ModelStore,
  Effect.flatMap(readConfig, (config) => make(optionsFrom(config)))
)

export const optionsFrom = (config: CompanionConfig): ModelStoreOptions => ({
  storeDir: config.storeDir,
  allowedSources: config.allowedSources,
  retries: config.download.retries,
  retryBase: config.download.retryBase,
  retryMax: config.download.retryMax,
  lockWait: config.download.lockWait,
  ggufCaps: config.gguf
})
