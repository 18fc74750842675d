/**
 * StoreFileSystem on the real file system, through `node:fs` descriptors. Opens carry `O_NOFOLLOW`
 * (a link at the path fails with ELOOP) and `O_NONBLOCK` (a FIFO planted at the path fails instead
 * of blocking), and the descriptor's own `fstat` must say "regular file" (with one name, to write)
 * before it is used. Errors keep only their class: no path or OS message crosses into a
 * `StoreFileError`.
 */
import * as NodeFs from "node:fs"
import { Effect, Layer, Option } from "effect"
import { StoreFileError } from "../services/Errors.js"
import { type Entry, type FileIdentity, type StoreFile, StoreFileSystem } from "../services/StoreFileSystem.js"

const { O_APPEND, O_CREAT, O_DIRECTORY, O_EXCL, O_NOFOLLOW, O_NONBLOCK, O_RDONLY, O_RDWR } = NodeFs.constants

const failure = (error: NodeJS.ErrnoException | null): StoreFileError =>
  new StoreFileError({
    reason: error?.code === "ENOENT"
      ? "file_missing"
      : error?.code === "EEXIST"
      ? "file_exists"
      // ELOOP: a link under O_NOFOLLOW; ENXIO: a FIFO without a writer; EISDIR, ENOTDIR, ENOTEMPTY: a
      // directory (with something in it) where a file belongs.
      : error?.code === "ELOOP" || error?.code === "ENXIO" || error?.code === "EISDIR" || error?.code === "ENOTDIR" ||
          error?.code === "ENOTEMPTY"
      ? "not_a_file"
      : "file_io_failed"
  })

/** A node-style callback call as an effect. */
const call = <A>(f: (done: (error: NodeJS.ErrnoException | null, value: A) => void) => void) =>
  Effect.async<A, StoreFileError>((resume) => {
    f((error, value) => resume(error === null ? Effect.succeed(value) : Effect.fail(failure(error))))
  })

const identityOf = (stats: NodeFs.BigIntStats): FileIdentity => ({
  device: String(stats.dev),
  inode: String(stats.ino),
  size: Number(stats.size),
  mtime: String(stats.mtimeNs),
  ctime: String(stats.ctimeNs)
})

const kindOf = (stats: NodeFs.BigIntStats): Entry["kind"] =>
  stats.isSymbolicLink() ? "link" : stats.isFile() ? "file" : stats.isDirectory() ? "directory" : "other"

const fstat = (fd: number) => call<NodeFs.BigIntStats>((done) => NodeFs.fstat(fd, { bigint: true }, done))

const close = (fd: number) => Effect.async<void>((resume) => NodeFs.close(fd, () => resume(Effect.void)))

const handle = (fd: number): StoreFile => ({
  descriptor: fd,
  identity: Effect.map(fstat(fd), identityOf),
  read: (position, length) =>
    Effect.suspend(() => {
      const buffer = Buffer.allocUnsafe(length)
      return Effect.map(
        call<number>((done) => NodeFs.read(fd, buffer, 0, length, position, done)),
        (n) => (n === length ? buffer : buffer.subarray(0, n))
      )
    }),
  append: (bytes) =>
    Effect.suspend(() => {
      const writeFrom = (offset: number): Effect.Effect<void, StoreFileError> =>
        offset >= bytes.length
          ? Effect.void
          : Effect.flatMap(
            call<number>((done) => NodeFs.write(fd, bytes, offset, bytes.length - offset, null, done)),
            (n) => writeFrom(offset + n)
          )
      return writeFrom(0)
    }),
  appendAll: (chunks) =>
    Effect.suspend(() => {
      // `writev` may write fewer bytes than asked: go on from the first byte it did not write.
      const writeFrom = (rest: ReadonlyArray<Uint8Array>): Effect.Effect<void, StoreFileError> => {
        if (rest.length === 0) return Effect.void
        return Effect.flatMap(call<number>((done) => NodeFs.writev(fd, rest as Array<Uint8Array>, null, done)), (n) => {
          // Nothing written for a non-empty request: fail rather than ask again for ever.
          if (n <= 0) return Effect.fail(new StoreFileError({ reason: "file_io_failed" }))
          let i = 0
          let left = n
          while (i < rest.length && left >= rest[i]!.length) left -= rest[i++]!.length
          return writeFrom(i < rest.length ? [rest[i]!.subarray(left), ...rest.slice(i + 1)] : [])
        })
      }
      return writeFrom(chunks.filter((c) => c.length > 0))
    }),
  sync: call<void>((done) => NodeFs.fsync(fd, done))
})

/**
 * Open with `flags`; the descriptor closes with the scope, and must be a regular file, and (when
 * `sole`) one with no other name: appending to a hard link would write into a file elsewhere.
 */
const open = (path: string, flags: number, sole: boolean) =>
  Effect.acquireRelease(call<number>((done) => NodeFs.open(path, flags | O_NOFOLLOW | O_NONBLOCK, 0o600, done)), close).pipe(
    Effect.tap((fd) =>
      Effect.flatMap(fstat(fd), (stats) =>
        stats.isFile() && (!sole || stats.nlink === 1n) ? Effect.void : Effect.fail(new StoreFileError({ reason: "not_a_file" })))
    ),
    Effect.map(handle)
  )

const uid = process.getuid?.()

/** Owned by this user and writable by no one else. */
const isPrivate = (stats: NodeFs.BigIntStats) => (uid === undefined || stats.uid === BigInt(uid)) && (stats.mode & 0o022n) === 0n

export const make = StoreFileSystem.of({
  entry: (path) =>
    call<NodeFs.BigIntStats>((done) => NodeFs.lstat(path, { bigint: true }, done)).pipe(
      Effect.map((stats) => Option.some({ kind: kindOf(stats), identity: identityOf(stats), private: isPrivate(stats) })),
      Effect.catchIf((e) => e.reason === "file_missing", () => Effect.succeedNone)
    ),
  makeDirectory: (path) => Effect.asVoid(call<string | undefined>((done) => NodeFs.mkdir(path, { recursive: true, mode: 0o700 }, done))),
  openRead: (path) => open(path, O_RDONLY, false),
  create: (path) => open(path, O_RDWR | O_APPEND | O_CREAT | O_EXCL, true),
  openAppend: (path) => open(path, O_RDWR | O_APPEND, true),
  // Never recursive: a directory swapped for a link while a tree was walked would have its target's
  // files removed. unlink removes a link itself and refuses a directory; rmdir refuses anything else.
  remove: (path) =>
    call<void>((done) => NodeFs.unlink(path, done)).pipe(
      Effect.catchIf((e) => e.reason === "not_a_file", () => call<void>((done) => NodeFs.rmdir(path, done))),
      Effect.catchIf((e) => e.reason === "file_missing", () => Effect.void)
    ),
  rename: (from, to) => call<void>((done) => NodeFs.rename(from, to, done)),
  link: (existing, name) => call<void>((done) => NodeFs.link(existing, name, done)),
  syncDirectory: (path) =>
    Effect.scoped(
      Effect.flatMap(
        Effect.acquireRelease(call<number>((done) => NodeFs.open(path, O_RDONLY | O_DIRECTORY, done)), close),
        (fd) => call<void>((done) => NodeFs.fsync(fd, done))
      )
    )
})

export const layer: Layer.Layer<StoreFileSystem> = Layer.succeed(StoreFileSystem, make)
