/**
 * An in-memory `FileSystem` for tests: files, directories, modes, append and truncate, and
 * scriptable faults. Relative paths resolve against `/`. Operations the manager never uses die
 * loudly rather than pretend.
 */
import { posix } from "node:path"
import { FileSystem } from "@effect/platform"
import { SystemError, type SystemErrorReason } from "@effect/platform/Error"
import { Context, Effect, Layer, Option } from "effect"

interface Node {
  data: Uint8Array
  length: number
  mode: number
}

export type FaultPoint = "open" | "write" | "sync" | "rename" | "remove" | "stat"

export interface MemoryFileSystemControl {
  /** A copy of every file's bytes, by absolute path. */
  readonly files: Effect.Effect<ReadonlyMap<string, Uint8Array>>
  readonly modeOf: (path: string) => Effect.Effect<Option.Option<number>>
  /** Make every call at this point fail with an I/O error until `repair`. */
  readonly breakAt: (point: FaultPoint) => Effect.Effect<void>
  readonly repair: Effect.Effect<void>
  /** How many times `sync` was called on a file or directory. */
  readonly syncs: Effect.Effect<number>
}

export class MemoryFileSystem extends Context.Tag("companion-runtime/MemoryFileSystem")<MemoryFileSystem, MemoryFileSystemControl>() {}

const unsupported = (method: string) => () => Effect.die(new Error(`MemoryFileSystem does not implement ${method}`))

const make = () => {
  const files = new Map<string, Node>()
  const dirs = new Set<string>(["/"])
  const broken = new Set<FaultPoint>()
  let syncs = 0
  let nextFd = 3

  const abs = (p: string) => posix.resolve("/", p)
  const error = (reason: SystemErrorReason, method: string, path: string) =>
    new SystemError({ reason, module: "FileSystem", method, pathOrDescriptor: path })
  const guard = (point: FaultPoint, path: string) =>
    broken.has(point) ? Effect.fail(error("Unknown", point, path)) : Effect.void

  const info = (type: FileSystem.File.Type, size: number, mode: number): FileSystem.File.Info => ({
    type,
    mtime: Option.none(),
    atime: Option.none(),
    birthtime: Option.none(),
    dev: 0,
    ino: Option.none(),
    mode,
    nlink: Option.none(),
    uid: Option.none(),
    gid: Option.none(),
    rdev: Option.none(),
    size: FileSystem.Size(size),
    blksize: Option.none(),
    blocks: Option.none()
  })

  const ensureCapacity = (node: Node, needed: number) => {
    if (node.data.length >= needed) return
    const grown = new Uint8Array(Math.max(needed, node.data.length * 2, 1024))
    grown.set(node.data.subarray(0, node.length))
    node.data = grown
  }

  const openFile = (path: string, flag: string, mode: number): Effect.Effect<FileSystem.File, SystemError> =>
    Effect.gen(function*() {
      yield* guard("open", path)
      if (dirs.has(path)) {
        if (flag !== "r") return yield* error("BadResource", "open", path)
        const dirFile: FileSystem.File = fileHandle(path, { data: new Uint8Array(0), length: 0, mode: 0o700 }, "r", true)
        return dirFile
      }
      if (!dirs.has(posix.dirname(path))) return yield* error("NotFound", "open", path)
      let node = files.get(path)
      if (node !== undefined && flag === "wx") return yield* error("AlreadyExists", "open", path)
      if (node === undefined) {
        if (flag === "r") return yield* error("NotFound", "open", path)
        node = { data: new Uint8Array(0), length: 0, mode }
        files.set(path, node)
      } else if (flag === "w") {
        node.length = 0
      }
      return fileHandle(path, node, flag === "wx" ? "w" : flag, false)
    })

  const fileHandle = (path: string, node: Node, flag: string, directory: boolean): FileSystem.File => {
    let position = flag === "a" ? node.length : 0
    const fd = FileSystem.FileDescriptor(nextFd++)
    const write = (buffer: Uint8Array) =>
      Effect.gen(function*() {
        yield* guard("write", path)
        if (flag === "r") return yield* error("BadResource", "write", path)
        if (flag === "a") position = node.length
        ensureCapacity(node, position + buffer.length)
        node.data.set(buffer, position)
        position += buffer.length
        node.length = Math.max(node.length, position)
        return FileSystem.Size(buffer.length)
      })
    return {
      [FileSystem.FileTypeId]: FileSystem.FileTypeId,
      fd,
      stat: Effect.sync(() => info(directory ? "Directory" : "File", node.length, node.mode)),
      seek: (offset, from) =>
        Effect.sync(() => {
          position = from === "start" ? Number(offset) : position + Number(offset)
        }),
      sync: Effect.zipRight(guard("sync", path), Effect.sync(() => void syncs++)),
      read: (buffer) =>
        Effect.sync(() => {
          const n = Math.max(0, Math.min(buffer.length, node.length - position))
          buffer.set(node.data.subarray(position, position + n))
          position += n
          return FileSystem.Size(n)
        }),
      readAlloc: (size) =>
        Effect.sync(() => {
          const n = Math.max(0, Math.min(Number(size), node.length - position))
          if (n === 0) return Option.none()
          const out = node.data.slice(position, position + n)
          position += n
          return Option.some(out)
        }),
      truncate: (length) =>
        Effect.sync(() => {
          node.length = Math.min(node.length, Number(length ?? 0))
        }),
      write,
      writeAll: (buffer) => Effect.asVoid(write(buffer))
    }
  }

  const fileSystem = FileSystem.make({
    access: (p) => Effect.suspend(() => (files.has(abs(p)) || dirs.has(abs(p)) ? Effect.void : Effect.fail(error("NotFound", "access", p)))),
    chmod: (p, mode) =>
      Effect.suspend(() => {
        const node = files.get(abs(p))
        if (node === undefined) return Effect.fail(error("NotFound", "chmod", p))
        node.mode = mode
        return Effect.void
      }),
    makeDirectory: (p, options) =>
      Effect.suspend(() => {
        const path = abs(p)
        if (dirs.has(path)) return options?.recursive ? Effect.void : Effect.fail(error("AlreadyExists", "makeDirectory", p))
        if (!options?.recursive && !dirs.has(posix.dirname(path))) return Effect.fail(error("NotFound", "makeDirectory", p))
        for (let d = path; !dirs.has(d); d = posix.dirname(d)) dirs.add(d)
        return Effect.void
      }),
    open: (p, options) => Effect.suspend(() => openFile(abs(p), options?.flag ?? "r", options?.mode ?? 0o666)),
    readDirectory: (p) =>
      Effect.sync(() => {
        const path = abs(p)
        return [...files.keys(), ...dirs].filter((f) => f !== path && posix.dirname(f) === path).map((f) => posix.basename(f))
      }),
    readFile: (p) =>
      Effect.suspend(() => {
        const node = files.get(abs(p))
        return node === undefined ? Effect.fail(error("NotFound", "readFile", p)) : Effect.succeed(node.data.slice(0, node.length))
      }),
    remove: (p, options) =>
      Effect.gen(function*() {
        const path = abs(p)
        yield* guard("remove", path)
        if (files.delete(path)) return
        if (!dirs.has(path)) return yield* error("NotFound", "remove", p)
        const children = [...files.keys(), ...dirs].filter((f) => f.startsWith(`${path}/`))
        if (children.length > 0 && !options?.recursive) return yield* error("Busy", "remove", p)
        for (const child of children) files.delete(child) || dirs.delete(child)
        dirs.delete(path)
      }),
    rename: (from, to) =>
      Effect.gen(function*() {
        yield* guard("rename", abs(from))
        const node = files.get(abs(from))
        if (node === undefined) return yield* error("NotFound", "rename", from)
        if (!dirs.has(posix.dirname(abs(to)))) return yield* error("NotFound", "rename", to)
        files.delete(abs(from))
        files.set(abs(to), node)
      }),
    stat: (p) =>
      Effect.gen(function*() {
        const path = abs(p)
        yield* guard("stat", path)
        if (dirs.has(path)) return info("Directory", 0, 0o700)
        const node = files.get(path)
        if (node === undefined) return yield* error("NotFound", "stat", p)
        return info("File", node.length, node.mode)
      }),
    truncate: (p, length) =>
      Effect.suspend(() => {
        const node = files.get(abs(p))
        if (node === undefined) return Effect.fail(error("NotFound", "truncate", p))
        node.length = Math.min(node.length, Number(length ?? 0))
        return Effect.void
      }),
    writeFile: (p, data, options) =>
      Effect.scoped(
        Effect.flatMap(openFile(abs(p), options?.flag ?? "w", options?.mode ?? 0o666), (file) => file.writeAll(data))
      ),
    copy: unsupported("copy"),
    copyFile: unsupported("copyFile"),
    chown: unsupported("chown"),
    link: (from, to) =>
      Effect.gen(function*() {
        const node = files.get(abs(from))
        if (node === undefined) return yield* error("NotFound", "link", from)
        if (files.has(abs(to)) || dirs.has(abs(to))) return yield* error("AlreadyExists", "link", to)
        if (!dirs.has(posix.dirname(abs(to)))) return yield* error("NotFound", "link", to)
        files.set(abs(to), node)
      }),
    makeTempDirectory: unsupported("makeTempDirectory"),
    makeTempDirectoryScoped: unsupported("makeTempDirectoryScoped"),
    makeTempFile: unsupported("makeTempFile"),
    makeTempFileScoped: unsupported("makeTempFileScoped"),
    readLink: unsupported("readLink"),
    realPath: (p) => Effect.succeed(abs(p)),
    symlink: unsupported("symlink"),
    utimes: unsupported("utimes"),
    watch: () => unsupported("watch")() as never
  })

  const control: MemoryFileSystemControl = {
    files: Effect.sync(() => new Map([...files].map(([p, n]) => [p, n.data.slice(0, n.length)]))),
    modeOf: (p) => Effect.sync(() => Option.fromNullable(files.get(abs(p))?.mode)),
    breakAt: (point) => Effect.sync(() => void broken.add(point)),
    repair: Effect.sync(() => broken.clear()),
    syncs: Effect.sync(() => syncs)
  }
  return { fileSystem, control }
}

/** A fresh, empty in-memory file system and its control, per layer build. */
export const layer: Layer.Layer<FileSystem.FileSystem | MemoryFileSystem> = Layer.effectContext(
  Effect.sync(() => {
    const { control, fileSystem } = make()
    return Context.make(FileSystem.FileSystem, fileSystem).pipe(Context.add(MemoryFileSystem, control))
  })
)
