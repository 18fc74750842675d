/**
 * A lock file per model in the store, so two writers (two processes, or two stores in one) never
 * write the same partial file at once.
 *
 * The lock holds `<pid> <nonce>`. It is written whole to a private draft first and then hard-linked
 * to the lock's name, which fails if anything is there: the lock never exists without its content.
 * A holder whose pid is no longer alive left a stale lock: it is taken over by renaming it aside
 * (atomic, so only one contender moves it), checking that what moved is the stale lock that was
 * read, and removing it; if a fresh lock moved instead, it is linked back and the contender waits.
 * A lock that cannot be read as `<pid> <nonce>` (a link, a directory, junk) is stale too: it was
 * never written by a holder. A live holder is waited for, polling, up to a deadline; then
 * `store_locked`. Release removes the lock only if it is still this holder's.
 *
 * The holder's pid and the liveness check are given, not read from the process, so the lock runs
 * the same over the in-memory file system with a scripted set of live processes.
 */
import { randomUUID } from "node:crypto"
import { Duration, Effect, Option, Schedule, type Scope } from "effect"
import { ModelStoreError, type StoreFileError } from "../../services/Errors.js"
import type { StoreFileSystem } from "../../services/StoreFileSystem.js"

export interface LockHolder {
  readonly pid: number
  readonly isAlive: (pid: number) => boolean
}

export interface StoreLockOptions extends LockHolder {
  readonly poll: Duration.DurationInput
  readonly wait: Duration.DurationInput
}

/** `kill(pid, 0)`: no error or EPERM means a process with that pid exists. */
export const processIsAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

/** This process, as the lock's holder. */
export const thisProcess = (): LockHolder => ({ pid: process.pid, isAlive: processIsAlive })

type Files = StoreFileSystem["Type"]
type Attempt = "held" | "busy" | "again"

const ioFailed = () => new ModelStoreError({ reason: "io_failed" })

/** A lock's content is one short line; anything longer is not a lock. */
const MAX_LOCK_BYTES = 128

const holderPid = (content: string): number | undefined => {
  const match = /^(\d+) [0-9a-f-]+\n$/.exec(content)
  const pid = match === null ? undefined : Number(match[1])
  return pid !== undefined && Number.isSafeInteger(pid) && pid > 0 ? pid : undefined
}

/** The lock's content, read without following a link; none when nothing is there, "" when it is no lock file. */
const readLock = (files: Files, path: string): Effect.Effect<Option.Option<string>, ModelStoreError> =>
  Effect.scoped(Effect.flatMap(files.openRead(path), (file) => file.read(0, MAX_LOCK_BYTES + 1))).pipe(
    Effect.map((bytes) => Option.some(bytes.length > MAX_LOCK_BYTES ? "" : Buffer.from(bytes).toString("utf8"))),
    Effect.catchAll((e: StoreFileError) =>
      e.reason === "file_missing" ? Effect.succeedNone : e.reason === "not_a_file" ? Effect.succeed(Option.some("")) : Effect.fail(ioFailed())
    )
  )

const nonceOf = (content: string) => content.slice(content.indexOf(" ") + 1, -1)

const acquire = (files: Files, lockPath: string, options: StoreLockOptions, mine: string) =>
  Effect.gen(function*() {
    const draft = `${lockPath}.${nonceOf(mine)}.draft`
    /** Write `content` to a fresh draft and link it to the lock's name: true if that made the lock. */
    const createWith = (content: string) =>
      Effect.scoped(Effect.flatMap(files.create(draft), (file) => file.append(Buffer.from(content)))).pipe(
        Effect.zipRight(files.link(draft, lockPath)),
        Effect.as(true),
        Effect.catchAll((e) => (e.reason === "file_exists" ? Effect.succeed(false) : Effect.fail(ioFailed()))),
        Effect.ensuring(Effect.ignore(files.remove(draft)))
      )

    // Each attempt runs to its end, so a timeout never strands a half-made takeover.
    const attempt: Effect.Effect<Attempt, ModelStoreError> = Effect.uninterruptible(Effect.gen(function*() {
      if (yield* createWith(mine)) return "held"
      const seen = yield* readLock(files, lockPath)
      if (Option.isNone(seen)) return "again"
      const pid = holderPid(seen.value)
      if (pid !== undefined && options.isAlive(pid)) return "busy"
      // Named by this holder's nonce: no other contender, in this process or another, uses the same aside.
      const aside = `${lockPath}.${nonceOf(mine)}.stale`
      const moved = yield* files.rename(lockPath, aside).pipe(
        Effect.as(true),
        Effect.catchAll((e) => (e.reason === "file_missing" ? Effect.succeed(false) : Effect.fail(ioFailed())))
      )
      if (!moved) return "again"
      const movedContent = yield* readLock(files, aside)
      if (Option.isSome(movedContent) && movedContent.value !== seen.value) {
        // A contender took the stale lock over first and this moved its fresh one: put it back.
        yield* createWith(movedContent.value)
        yield* Effect.ignore(files.remove(aside))
        return "busy"
      }
      // A directory with something in it stays where it was moved: aside, it blocks nobody.
      yield* Effect.ignore(files.remove(aside))
      return "again"
    }))

    yield* attempt.pipe(
      Effect.repeat({ schedule: Schedule.spaced(options.poll), until: (a) => a === "held" }),
      Effect.timeoutFail({ duration: Duration.decode(options.wait), onTimeout: () => new ModelStoreError({ reason: "store_locked" }) })
    )
  })

export interface HeldLock {
  /**
   * Still this holder's? A takeover race can, rarely, leave a holder whose lock was moved and then
   * replaced; before it promotes anything, a holder asks.
   */
  readonly stillHeld: Effect.Effect<boolean, ModelStoreError>
}

/**
 * Hold the lock for the scope. The release is registered first and removes the lock only if it
 * holds this holder's nonce, so an interruption at any point leaves no lock of ours behind.
 */
export const hold = (files: Files, lockPath: string, options: StoreLockOptions): Effect.Effect<HeldLock, ModelStoreError, Scope.Scope> =>
  Effect.gen(function*() {
    const mine = `${options.pid} ${randomUUID()}\n`
    const stillHeld = Effect.map(readLock(files, lockPath), (content) => Option.contains(content, mine))
    yield* Effect.addFinalizer(() =>
      stillHeld.pipe(
        Effect.flatMap((held) => (held ? files.remove(lockPath) : Effect.void)),
        Effect.ignore
      )
    )
    yield* acquire(files, lockPath, options, mine)
    return { stillHeld }
  })
