/**
 * The file operations of the model store, none of which follows a symbolic link. Effect's
 * `FileSystem` has no `lstat`, no `O_NOFOLLOW`, no change time and no descriptor that a child
 * process can be handed; a store written by this user and read by a native parser needs all four.
 *
 * Every open refuses a link and anything but a regular file (`not_a_file`), and an open to write
 * refuses a file with other names (a hard link): writing through it would change a file elsewhere.
 * `entry` reports what is at a path itself; `remove` removes a link, never its target, and never
 * walks into a directory (a directory that is not empty stays, `not_a_file`). Files are created
 * mode 0600 and directories 0700.
 */
import { Context, type Effect, type Option, type Scope } from "effect"
import type { StoreFileError } from "./Errors.js"

export type EntryKind = "file" | "directory" | "link" | "other"

/**
 * Which file, and which version of it: device and inode name the file; size, modification and
 * change time move with every write. The change time cannot be set back by a user, so a write that
 * restores the modification time still shows.
 */
export interface FileIdentity {
  readonly device: string
  readonly inode: string
  readonly size: number
  readonly mtime: string
  readonly ctime: string
}

export const sameFile = (a: FileIdentity, b: FileIdentity): boolean => a.device === b.device && a.inode === b.inode

export const sameVersion = (a: FileIdentity, b: FileIdentity): boolean =>
  sameFile(a, b) && a.size === b.size && a.mtime === b.mtime && a.ctime === b.ctime

export interface Entry {
  readonly kind: EntryKind
  readonly identity: FileIdentity
  /** Owned by this user, and writable by no one else (no group or other write bit). */
  readonly private: boolean
}

/** An open regular file; the descriptor closes with the scope it was opened in. */
export interface StoreFile {
  /** The descriptor, to hand to a child process. */
  readonly descriptor: number
  /** `fstat` of the descriptor. */
  readonly identity: Effect.Effect<FileIdentity, StoreFileError>
  /** Up to `length` bytes from `position`; fewer at the end, none past it. */
  readonly read: (position: number, length: number) => Effect.Effect<Uint8Array, StoreFileError>
  /** Append all of `bytes` (files opened for writing only). */
  readonly append: (bytes: Uint8Array) => Effect.Effect<void, StoreFileError>
  /** Append all of `chunks`, in order, without joining them first (one `writev` where it can). */
  readonly appendAll: (chunks: ReadonlyArray<Uint8Array>) => Effect.Effect<void, StoreFileError>
  readonly sync: Effect.Effect<void, StoreFileError>
}

export class StoreFileSystem extends Context.Tag("companion-runtime/StoreFileSystem")<
  StoreFileSystem,
  {
    /** What is at `path` itself (a link is reported as a link); none when nothing is. */
    readonly entry: (path: string) => Effect.Effect<Option.Option<Entry>, StoreFileError>
    /** Make a directory and its missing parents, mode 0700. */
    readonly makeDirectory: (path: string) => Effect.Effect<void, StoreFileError>
    /** Open an existing regular file to read. */
    readonly openRead: (path: string) => Effect.Effect<StoreFile, StoreFileError, Scope.Scope>
    /** Create a regular file, mode 0600, to read and append; `already_exists` if anything is at `path`. */
    readonly create: (path: string) => Effect.Effect<StoreFile, StoreFileError, Scope.Scope>
    /** Open an existing regular file with no other name, to read and append. */
    readonly openAppend: (path: string) => Effect.Effect<StoreFile, StoreFileError, Scope.Scope>
    /**
     * Remove what is at `path`: a file or a link (the link, not its target), or an empty directory;
     * nothing there is fine. A directory with anything in it is not walked (`not_a_file`).
     */
    readonly remove: (path: string) => Effect.Effect<void, StoreFileError>
    readonly rename: (from: string, to: string) => Effect.Effect<void, StoreFileError>
    /** Hard-link the regular file `existing` as `name`; `already_exists` if anything is at `name`. */
    readonly link: (existing: string, name: string) => Effect.Effect<void, StoreFileError>
    /** fsync a directory, so a rename in it survives a crash. */
    readonly syncDirectory: (path: string) => Effect.Effect<void, StoreFileError>
  }
>() {}
