/**
 * An in-memory file system for tests, serving both Effect's `FileSystem` and the store's
 * `StoreFileSystem` over one tree: directories, regular files (inodes that hard links share),
 * symbolic links and special files, with modes, sizes and change counters standing in for mtime
 * and ctime. Effect's `FileSystem` follows links as the real one does; `StoreFileSystem` follows
 * none at the last component, as `O_NOFOLLOW` and `lstat` do. Faults can be scripted per kind of
 * operation. Operations nothing here uses die loudly rather than pretend.
 */
import { posix } from "node:path"
import { FileSystem } from "@effect/platform"
import { SystemError, type SystemErrorReason } from "@effect/platform/Error"
import { Context, Effect, Layer, Option } from "effect"
import { StoreFileError } from "../services/Errors.js"
import { type Entry, type FileIdentity, type StoreFile, StoreFileSystem } from "../services/StoreFileSystem.js"

interface Inode {
  readonly ino: number
  data: Uint8Array
  length: number
  mode: number
  mtime: number
  ctime: number
}

type Node =
  | { readonly _tag: "file"; readonly inode: Inode }
  | { readonly _tag: "directory"; mode: number; readonly ino: number }
  | { readonly _tag: "link"; readonly target: string }
  | { readonly _tag: "other" }

export type FaultPoint = "open" | "write" | "sync" | "rename" | "remove" | "stat"

export interface MemoryFileSystemControl {
  /** A copy of every regular file's bytes, by absolute path (links not included). */
  readonly files: Effect.Effect<ReadonlyMap<string, Uint8Array>>
  /** What is at each path: `file`, `directory`, `link -> <target>` or `other`. */
  readonly entries: Effect.Effect<ReadonlyMap<string, string>>
  readonly modeOf: (path: string) => Effect.Effect<Option.Option<number>>
  /** Plant a symbolic link (its target need not exist). */
  readonly symlink: (target: string, path: string) => Effect.Effect<void>
  /** Plant a special file (a FIFO, say). */
  readonly special: (path: string) => Effect.Effect<void>
  /** The bytes of the file behind an open descriptor: what a process handed that descriptor reads. */
  readonly bytesOfDescriptor: (descriptor: number) => Effect.Effect<Option.Option<Uint8Array>>
  /** Descriptors open now (from either interface). */
  readonly openDescriptors: Effect.Effect<number>
  /** Make every call at this point fail with an I/O error until `repair`. */
  readonly breakAt: (point: FaultPoint) => Effect.Effect<void>
  readonly repair: Effect.Effect<void>
  /** How many times `sync` was called on a file or directory. */
  readonly syncs: Effect.Effect<number>
}

export class MemoryFileSystem extends Context.Tag("companion-runtime/MemoryFileSystem")<MemoryFileSystem, MemoryFileSystemControl>() {}

const unsupported = (method: string) => () => Effect.die(new Error(`MemoryFileSystem does not implement ${method}`))

const MAX_LINKS = 40

const make = () => {
  const nodes = new Map<string, Node>([["/", { _tag: "directory", mode: 0o755, ino: 0 }]])
  const descriptors = new Map<number, Inode>()
  const broken = new Set<FaultPoint>()
  let syncs = 0
  let nextFd = 3
  let nextIno = 1
  // One logical clock for every change, so each write gives a new mtime and ctime.
  let clock = 0

  const touch = (inode: Inode, data: boolean) => {
    clock += 1
    inode.ctime = clock
    if (data) inode.mtime = clock
  }

  /**
   * Resolve `path` through the links in its directories, and through one at its last component
   * only when `followLast`. Undefined when a component is missing or a loop is too deep.
   */
  const resolve = (path: string, followLast: boolean): string | undefined => {
    let parts = posix.resolve("/", path).split("/").filter((p) => p !== "")
    let at = "/"
    let hops = 0
    while (parts.length > 0) {
      const [head, ...rest] = parts as [string, ...Array<string>]
      const next = posix.join(at, head)
      const node = nodes.get(next)
      if (node?._tag === "link" && (rest.length > 0 || followLast)) {
        if (++hops > MAX_LINKS) return undefined
        parts = [...posix.resolve(at, node.target).split("/").filter((p) => p !== ""), ...rest]
        at = "/"
        continue
      }
      if (rest.length > 0 && node?._tag !== "directory") return undefined
      at = next
      parts = rest
    }
    return at
  }

  const systemError = (reason: SystemErrorReason, method: string, path: string) =>
    new SystemError({ reason, module: "FileSystem", method, pathOrDescriptor: path })
  const guard = (point: FaultPoint, path: string) => (broken.has(point) ? Effect.fail(systemError("Unknown", point, path)) : Effect.void)

  const newInode = (mode: number): Inode => {
    clock += 1
    return { ino: nextIno++, data: new Uint8Array(0), length: 0, mode, mtime: clock, ctime: clock }
  }

  const writeAt = (inode: Inode, position: number, bytes: Uint8Array) => {
    const needed = position + bytes.length
    if (inode.data.length < needed) {
      const grown = new Uint8Array(Math.max(needed, inode.data.length * 2, 1024))
      grown.set(inode.data.subarray(0, inode.length))
      inode.data = grown
    }
    inode.data.set(bytes, position)
    inode.length = Math.max(inode.length, needed)
    touch(inode, true)
  }

  const identity = (inode: Inode): FileIdentity => ({
    device: "memory",
    inode: String(inode.ino),
    size: inode.length,
    mtime: String(inode.mtime),
    ctime: String(inode.ctime)
  })

  const parentIsDirectory = (path: string) => nodes.get(posix.dirname(path))?._tag === "directory"

  /** Drop one name; a file losing a name changes (its link count, so its ctime moves, as on disk). */
  const unname = (path: string) => {
    const node = nodes.get(path)
    nodes.delete(path)
    if (node?._tag === "file") touch(node.inode, false)
  }

  /** Remove `path` itself (and, for a directory, everything below it). */
  const removeTree = (path: string) => {
    for (const key of [...nodes.keys()]) if (key === path || key.startsWith(`${path}/`)) unname(key)
  }

  /**
   * `mkdir -p` as the kernel does it: each directory is made inside its parent as resolved through
   * links; false when something that is not a directory (a dangling link included) is in the way.
   */
  const mkdirp = (path: string, mode: number): boolean => {
    const resolved = resolve(path, true)
    if (resolved !== undefined && nodes.get(resolved)?._tag === "directory") return true
    const parentPath = posix.dirname(path)
    if (parentPath !== path && !mkdirp(parentPath, mode)) return false
    const parent = resolve(parentPath, true)
    if (parent === undefined) return false
    const name = posix.join(parent, posix.basename(path))
    if (nodes.has(name)) return nodes.get(name)?._tag === "directory"
    nodes.set(name, { _tag: "directory", mode, ino: nextIno++ })
    return true
  }

  const openDescriptor = (inode: Inode) => {
    const fd = nextFd++
    descriptors.set(fd, inode)
    return fd
  }

  // -------------------------------------------------------------------------------------------
  // Effect's FileSystem: follows links
  // -------------------------------------------------------------------------------------------

  const info = (type: FileSystem.File.Type, inode: Inode | undefined): FileSystem.File.Info => ({
    type,
    mtime: Option.none(),
    atime: Option.none(),
    birthtime: Option.none(),
    dev: 0,
    ino: inode === undefined ? Option.none() : Option.some(inode.ino),
    mode: inode?.mode ?? 0o700,
    nlink: Option.none(),
    uid: Option.none(),
    gid: Option.none(),
    rdev: Option.none(),
    size: FileSystem.Size(inode?.length ?? 0),
    blksize: Option.none(),
    blocks: Option.none()
  })

  const fileHandle = (inode: Inode, flag: string, directory: boolean): FileSystem.File => {
    let position = flag.startsWith("a") ? inode.length : 0
    const fd = openDescriptor(inode)
    const write = (buffer: Uint8Array) =>
      Effect.gen(function*() {
        yield* guard("write", String(fd))
        if (flag === "r") return yield* systemError("BadResource", "write", String(fd))
        if (flag.startsWith("a")) position = inode.length
        writeAt(inode, position, buffer)
        position += buffer.length
        return FileSystem.Size(buffer.length)
      })
    return {
      [FileSystem.FileTypeId]: FileSystem.FileTypeId,
      fd: FileSystem.FileDescriptor(fd),
      stat: Effect.sync(() => info(directory ? "Directory" : "File", directory ? undefined : inode)),
      seek: (offset, from) =>
        Effect.sync(() => {
          position = from === "start" ? Number(offset) : position + Number(offset)
        }),
      sync: Effect.zipRight(guard("sync", String(fd)), Effect.sync(() => void syncs++)),
      read: (buffer) =>
        Effect.sync(() => {
          const n = Math.max(0, Math.min(buffer.length, inode.length - position))
          buffer.set(inode.data.subarray(position, position + n))
          position += n
          return FileSystem.Size(n)
        }),
      readAlloc: (size) =>
        Effect.sync(() => {
          const n = Math.max(0, Math.min(Number(size), inode.length - position))
          if (n === 0) return Option.none()
          const out = inode.data.slice(position, position + n)
          position += n
          return Option.some(out)
        }),
      truncate: (length) =>
        Effect.sync(() => {
          inode.length = Math.min(inode.length, Number(length ?? 0))
          touch(inode, true)
        }),
      write,
      writeAll: (buffer) => Effect.asVoid(write(buffer))
    }
  }

  const openFile = (p: string, flag: string, mode: number): Effect.Effect<FileSystem.File, SystemError, import("effect").Scope.Scope> =>
    Effect.acquireRelease(
      Effect.gen(function*() {
        yield* guard("open", p)
        const path = resolve(p, true)
        if (path === undefined) return yield* systemError("NotFound", "open", p)
        const node = nodes.get(path)
        if (node?._tag === "directory") {
          if (flag !== "r") return yield* systemError("BadResource", "open", p)
          return fileHandle(newInode(0o700), "r", true)
        }
        if (node !== undefined && node._tag !== "file") return yield* systemError("BadResource", "open", p)
        if (node !== undefined && flag.includes("x")) return yield* systemError("AlreadyExists", "open", p)
        if (node === undefined) {
          if (flag.startsWith("r")) return yield* systemError("NotFound", "open", p)
          if (!parentIsDirectory(path)) return yield* systemError("NotFound", "open", p)
          const inode = newInode(mode)
          nodes.set(path, { _tag: "file", inode })
          return fileHandle(inode, flag, false)
        }
        if (flag.startsWith("w")) {
          node.inode.length = 0
          touch(node.inode, true)
        }
        return fileHandle(node.inode, flag, false)
      }),
      (file) => Effect.sync(() => descriptors.delete(file.fd))
    )

  const fileSystem = FileSystem.make({
    access: (p) => Effect.suspend(() => {
      const path = resolve(p, true)
      return path !== undefined && nodes.has(path) ? Effect.void : Effect.fail(systemError("NotFound", "access", p))
    }),
    chmod: (p, mode) =>
      Effect.suspend(() => {
        const path = resolve(p, true)
        const node = path === undefined ? undefined : nodes.get(path)
        if (node?._tag === "directory") {
          node.mode = mode
          return Effect.void
        }
        if (node?._tag !== "file") return Effect.fail(systemError("NotFound", "chmod", p))
        node.inode.mode = mode
        touch(node.inode, false)
        return Effect.void
      }),
    makeDirectory: (p, options) =>
      Effect.suspend(() => {
        const path = posix.resolve("/", p)
        const existing = nodes.get(resolve(path, true) ?? path)
        if (existing?._tag === "directory") {
          return options?.recursive ? Effect.void : Effect.fail(systemError("AlreadyExists", "makeDirectory", p))
        }
        if (existing !== undefined) return Effect.fail(systemError("AlreadyExists", "makeDirectory", p))
        if (!options?.recursive && resolve(posix.dirname(path), true) === undefined) return Effect.fail(systemError("NotFound", "makeDirectory", p))
        return mkdirp(path, options?.mode ?? 0o755) ? Effect.void : Effect.fail(systemError("AlreadyExists", "makeDirectory", p))
      }),
    open: (p, options) => openFile(p, options?.flag ?? "r", options?.mode ?? 0o666),
    readDirectory: (p) =>
      Effect.sync(() => {
        const path = resolve(p, true) ?? posix.resolve("/", p)
        return [...nodes.keys()].filter((f) => f !== path && posix.dirname(f) === path).map((f) => posix.basename(f))
      }),
    readFile: (p) =>
      Effect.suspend(() => {
        const path = resolve(p, true)
        const node = path === undefined ? undefined : nodes.get(path)
        return node?._tag === "file"
          ? Effect.succeed(node.inode.data.slice(0, node.inode.length))
          : Effect.fail(systemError("NotFound", "readFile", p))
      }),
    readLink: (p) =>
      Effect.suspend(() => {
        const node = nodes.get(resolve(p, false) ?? "")
        return node?._tag === "link" ? Effect.succeed(node.target) : Effect.fail(systemError("InvalidData", "readLink", p))
      }),
    remove: (p, options) =>
      Effect.gen(function*() {
        yield* guard("remove", p)
        const path = resolve(p, false)
        const node = path === undefined ? undefined : nodes.get(path)
        if (path === undefined || node === undefined) {
          return options?.force ? undefined : yield* systemError("NotFound", "remove", p)
        }
        const children = [...nodes.keys()].some((f) => f.startsWith(`${path}/`))
        if (node._tag === "directory" && children && !options?.recursive) return yield* systemError("Busy", "remove", p)
        removeTree(path)
      }),
    rename: (from, to) =>
      Effect.gen(function*() {
        yield* guard("rename", from)
        const source = resolve(from, false)
        const target = resolve(to, false)
        const node = source === undefined ? undefined : nodes.get(source)
        if (source === undefined || node === undefined) return yield* systemError("NotFound", "rename", from)
        if (target === undefined || !parentIsDirectory(target)) return yield* systemError("NotFound", "rename", to)
        if (nodes.get(target)?._tag === "directory") return yield* systemError("AlreadyExists", "rename", to)
        if (nodes.has(target)) unname(target)
        // A directory moves with everything below it.
        const moving = [...nodes].filter(([key]) => key === source || key.startsWith(`${source}/`))
        for (const [key] of moving) nodes.delete(key)
        for (const [key, moved] of moving) nodes.set(`${target}${key.slice(source.length)}`, moved)
        if (node._tag === "file") touch(node.inode, false)
      }),
    stat: (p) =>
      Effect.gen(function*() {
        yield* guard("stat", p)
        const path = resolve(p, true)
        const node = path === undefined ? undefined : nodes.get(path)
        if (node === undefined) return yield* systemError("NotFound", "stat", p)
        return node._tag === "file" ? info("File", node.inode) : info(node._tag === "directory" ? "Directory" : "Unknown", undefined)
      }),
    symlink: (target, p) =>
      Effect.suspend(() => {
        const path = posix.resolve("/", p)
        if (nodes.has(path)) return Effect.fail(systemError("AlreadyExists", "symlink", p))
        if (!parentIsDirectory(path)) return Effect.fail(systemError("NotFound", "symlink", p))
        nodes.set(path, { _tag: "link", target })
        return Effect.void
      }),
    truncate: (p, length) =>
      Effect.suspend(() => {
        const path = resolve(p, true)
        const node = path === undefined ? undefined : nodes.get(path)
        if (node?._tag !== "file") return Effect.fail(systemError("NotFound", "truncate", p))
        node.inode.length = Math.min(node.inode.length, Number(length ?? 0))
        touch(node.inode, true)
        return Effect.void
      }),
    writeFile: (p, data, options) =>
      Effect.scoped(Effect.flatMap(openFile(p, options?.flag ?? "w", options?.mode ?? 0o666), (file) => file.writeAll(data))),
    link: (from, to) =>
      Effect.gen(function*() {
        const source = resolve(from, true)
        const node = source === undefined ? undefined : nodes.get(source)
        const target = posix.resolve("/", to)
        if (node?._tag !== "file") return yield* systemError("NotFound", "link", from)
        if (nodes.has(target)) return yield* systemError("AlreadyExists", "link", to)
        if (!parentIsDirectory(target)) return yield* systemError("NotFound", "link", to)
        nodes.set(target, node)
        touch(node.inode, false)
      }),
    realPath: (p) => Effect.succeed(resolve(p, true) ?? posix.resolve("/", p)),
    copy: unsupported("copy"),
    copyFile: unsupported("copyFile"),
    chown: unsupported("chown"),
    makeTempDirectory: unsupported("makeTempDirectory"),
    makeTempDirectoryScoped: unsupported("makeTempDirectoryScoped"),
    makeTempFile: unsupported("makeTempFile"),
    makeTempFileScoped: unsupported("makeTempFileScoped"),
    utimes: unsupported("utimes"),
    watch: () => unsupported("watch")() as never
  })

  // -------------------------------------------------------------------------------------------
  // StoreFileSystem: follows no link at the last component
  // -------------------------------------------------------------------------------------------

  const storeError = (reason: StoreFileError["reason"]) => new StoreFileError({ reason })
  const storeGuard = (point: FaultPoint) => (broken.has(point) ? Effect.fail(storeError("file_io_failed")) : Effect.void)

  const storeFile = (inode: Inode, writable: boolean): Effect.Effect<StoreFile, never, import("effect").Scope.Scope> =>
    Effect.map(
      Effect.acquireRelease(Effect.sync(() => openDescriptor(inode)), (fd) => Effect.sync(() => descriptors.delete(fd))),
      (fd): StoreFile => ({
        descriptor: fd,
        identity: Effect.zipRight(storeGuard("stat"), Effect.sync(() => identity(inode))),
        read: (position, length) =>
          Effect.sync(() => inode.data.slice(Math.min(position, inode.length), Math.min(position + length, inode.length))),
        append: (bytes) =>
          Effect.suspend(() => {
            if (!writable) return Effect.fail(storeError("file_io_failed"))
            return Effect.zipRight(storeGuard("write"), Effect.sync(() => writeAt(inode, inode.length, bytes)))
          }),
        appendAll: (chunks) =>
          Effect.suspend(() => {
            if (!writable) return Effect.fail(storeError("file_io_failed"))
            return Effect.zipRight(storeGuard("write"), Effect.sync(() => chunks.forEach((bytes) => writeAt(inode, inode.length, bytes))))
          }),
        sync: Effect.zipRight(storeGuard("sync"), Effect.sync(() => void syncs++))
      })
    )

  /** The last component, not followed: the node there, or the reason to refuse. */
  const lastComponent = (p: string) => {
    const parent = resolve(posix.dirname(posix.resolve("/", p)), true)
    if (parent === undefined || nodes.get(parent)?._tag !== "directory") return { path: undefined, node: undefined }
    const path = posix.join(parent, posix.basename(posix.resolve("/", p)))
    return { path, node: nodes.get(path) }
  }

  /** How many names the inode has (hard links). */
  const names = (inode: Inode) => [...nodes.values()].filter((n) => n._tag === "file" && n.inode === inode).length

  const openExisting = (p: string, writable: boolean) =>
    Effect.gen(function*() {
      yield* storeGuard("open")
      const { node } = lastComponent(p)
      if (node === undefined) return yield* storeError("file_missing")
      if (node._tag !== "file") return yield* storeError("not_a_file")
      // Appending to a hard link would write into a file elsewhere.
      if (writable && names(node.inode) !== 1) return yield* storeError("not_a_file")
      return yield* storeFile(node.inode, writable)
    })

  const store = StoreFileSystem.of({
    entry: (p) =>
      Effect.gen(function*() {
        yield* storeGuard("stat")
        // `<dir>/.` names the directory itself, reached through a link as lstat does.
        const followed = p.endsWith("/.") ? resolve(p.slice(0, -2), true) : undefined
        const { node } = followed !== undefined ? { node: nodes.get(followed) } : lastComponent(p)
        if (node === undefined) return Option.none()
        const kind: Entry["kind"] = node._tag
        const id = node._tag === "file"
          ? identity(node.inode)
          : { device: "memory", inode: node._tag === "directory" ? String(node.ino) : `${node._tag}:${p}`, size: 0, mtime: "0", ctime: "0" }
        const mode = node._tag === "file" ? node.inode.mode : node._tag === "directory" ? node.mode : 0o777
        return Option.some<Entry>({ kind, identity: id, private: (mode & 0o022) === 0 })
      }),
    makeDirectory: (p) =>
      Effect.mapError(fileSystem.makeDirectory(p, { recursive: true, mode: 0o700 }), (e) =>
        storeError(e._tag === "SystemError" && e.reason === "AlreadyExists" ? "not_a_file" : "file_io_failed")),
    openRead: (p) => openExisting(p, false),
    openAppend: (p) => openExisting(p, true),
    create: (p) =>
      Effect.gen(function*() {
        yield* storeGuard("open")
        const { node, path } = lastComponent(p)
        if (path === undefined) return yield* storeError("file_missing")
        if (node !== undefined) return yield* storeError("file_exists")
        const inode = newInode(0o600)
        nodes.set(path, { _tag: "file", inode })
        return yield* storeFile(inode, true)
      }),
    remove: (p) =>
      Effect.gen(function*() {
        yield* storeGuard("remove")
        const { node, path } = lastComponent(p)
        if (path === undefined || node === undefined) return
        // Never walks into a directory: one with anything in it stays.
        if (node._tag === "directory" && [...nodes.keys()].some((k) => k.startsWith(`${path}/`))) return yield* storeError("not_a_file")
        unname(path)
      }),
    rename: (from, to) =>
      Effect.mapError(fileSystem.rename(from, to), (e) => storeError(e._tag === "SystemError" && e.reason === "NotFound" ? "file_missing" : "file_io_failed")),
    link: (existing, name) =>
      Effect.gen(function*() {
        const source = lastComponent(existing)
        const target = lastComponent(name)
        if (source.node?._tag !== "file") return yield* storeError(source.node === undefined ? "file_missing" : "not_a_file")
        if (target.path === undefined) return yield* storeError("file_missing")
        if (target.node !== undefined) return yield* storeError("file_exists")
        nodes.set(target.path, source.node)
        touch(source.node.inode, false)
      }),
    syncDirectory: (p) =>
      Effect.gen(function*() {
        yield* storeGuard("sync")
        const path = resolve(p, true)
        if (path === undefined || nodes.get(path)?._tag !== "directory") return yield* storeError("file_missing")
        syncs++
      })
  })

  const control: MemoryFileSystemControl = {
    files: Effect.sync(() =>
      new Map([...nodes].flatMap(([p, n]) => (n._tag === "file" ? [[p, n.inode.data.slice(0, n.inode.length)] as const] : [])))
    ),
    entries: Effect.sync(() =>
      new Map([...nodes].map(([p, n]) => [p, n._tag === "link" ? `link -> ${n.target}` : n._tag] as const))
    ),
    modeOf: (p) =>
      Effect.sync(() => {
        const node = nodes.get(posix.resolve("/", p))
        return node?._tag === "file" ? Option.some(node.inode.mode) : Option.none()
      }),
    symlink: (target, p) => Effect.orDie(fileSystem.symlink(target, p)),
    special: (p) => Effect.sync(() => void nodes.set(posix.resolve("/", p), { _tag: "other" })),
    bytesOfDescriptor: (fd) =>
      Effect.sync(() => Option.map(Option.fromNullable(descriptors.get(fd)), (inode) => inode.data.slice(0, inode.length))),
    openDescriptors: Effect.sync(() => descriptors.size),
    breakAt: (point) => Effect.sync(() => void broken.add(point)),
    repair: Effect.sync(() => broken.clear()),
    syncs: Effect.sync(() => syncs)
  }
  return { fileSystem, store, control }
}

/** A fresh, empty in-memory file system (both interfaces) and its control, per layer build. */
export const layer: Layer.Layer<FileSystem.FileSystem | StoreFileSystem | MemoryFileSystem> = Layer.effectContext(
  Effect.sync(() => {
    const { control, fileSystem, store } = make()
    return Context.make(FileSystem.FileSystem, fileSystem).pipe(
      Context.add(StoreFileSystem, store),
      Context.add(MemoryFileSystem, control)
    )
  })
)
