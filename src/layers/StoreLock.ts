/**
 * A lock file per model in the store, so two managers (two processes, or two instances in one)
 * never write the same partial file at once.
 *
 * The lock holds `<pid> <nonce>`. It is written whole to a private file first and then hard-linked
 * to the lock's name, which fails if the name exists: the lock never exists without its content. A holder whose pid
 * is no longer alive left a stale lock: it is taken over by renaming it aside (atomic, so only one
 * contender moves it), checking that what moved is the stale lock that was read, and removing it;
 * if a fresh lock moved instead, it is linked back and the contender waits. A lock whose content
 * cannot be read as `<pid> <nonce>` is stale too (it was never written by a holder). A live holder is
 * waited for, polling, up to a deadline; then `store_locked`.
 *
 * Release removes the lock only if it is still this holder's.
 */
import { randomUUID } from "node:crypto"
import type { FileSystem } from "@effect/platform"
import { Duration, Effect, Schedule } from "effect"
import { ModelStoreError } from "../services/Errors.js"

export interface StoreLockOptions {
  readonly pid: number
  readonly isAlive: (pid: number) => boolean
  readonly poll: Duration.DurationInput
  readonly wait: Duration.DurationInput
}

/** This process, as the lock's holder. */
export const thisProcess = (): Pick<StoreLockOptions, "pid" | "isAlive"> => ({ pid: process.pid, isAlive: processIsAlive })

/** `kill(pid, 0)`: no error or EPERM means a process with that pid exists. */
export const processIsAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

const ioFailed = () => new ModelStoreError({ reason: "io_failed" })

type Attempt = "held" | "busy" | "again"

const holderPid = (content: string): number | undefined => {
  const match = /^(\d+) [0-9a-f-]+\n$/.exec(content)
  const pid = match === null ? undefined : Number(match[1])
  return pid !== undefined && Number.isSafeInteger(pid) && pid > 0 ? pid : undefined
}

const acquire = (fs: FileSystem.FileSystem, lockPath: string, options: StoreLockOptions, mine: string) =>
  Effect.gen(function*() {
    const notFound = <A>(fallback: A) => (e: { _tag: string; reason?: string }) =>
      e._tag === "SystemError" && e.reason === "NotFound" ? Effect.succeed(fallback) : Effect.fail(ioFailed())
    const draft = `${lockPath}.${mine.slice(mine.indexOf(" ") + 1, -1)}.draft`
    const createWith = (content: string) =>
      fs.writeFileString(draft, content, { mode: 0o600 }).pipe(
        Effect.zipRight(fs.link(draft, lockPath)),
        Effect.as(true),
        Effect.catchAll((e) =>
          e._tag === "SystemError" && e.reason === "AlreadyExists" ? Effect.succeed(false) : Effect.fail(ioFailed())
        ),
        Effect.ensuring(Effect.ignore(fs.remove(draft)))
      )

    // Each attempt runs to its end, so a timeout never strands a half-made takeover.
    const attempt: Effect.Effect<Attempt, ModelStoreError> = Effect.uninterruptible(Effect.gen(function*() {
      if (yield* createWith(mine)) return "held"
      const seen = yield* fs.readFileString(lockPath).pipe(Effect.catchAll(notFound<string | undefined>(undefined)))
      if (seen === undefined) return "again"
      const pid = holderPid(seen)
      if (pid !== undefined && options.isAlive(pid)) return "busy"
      const aside = `${lockPath}.stale.${options.pid}`
      const moved = yield* fs.rename(lockPath, aside).pipe(Effect.as(true), Effect.catchAll(notFound(false)))
      if (!moved) return "again"
      const movedContent = yield* fs.readFileString(aside).pipe(Effect.mapError(ioFailed))
      if (movedContent !== seen) {
        // A contender took the stale lock over first and this moved its fresh one: put it back.
        yield* createWith(movedContent)
        yield* Effect.ignore(fs.remove(aside))
        return "busy"
      }
      yield* fs.remove(aside).pipe(Effect.mapError(ioFailed))
      return "again"
    }))

    const deadline = Duration.decode(options.wait)
    yield* attempt.pipe(
      Effect.repeat({
        schedule: Schedule.spaced(options.poll),
        until: (a) => a === "held"
      }),
      Effect.timeoutFail({ duration: deadline, onTimeout: () => new ModelStoreError({ reason: "store_locked" }) })
    )
  })

/**
 * Hold the lock for the scope. The release is registered first and removes the lock only if it
 * holds this holder's nonce, so an interruption at any point leaves no lock of ours behind.
 */
export const hold = (fs: FileSystem.FileSystem, lockPath: string, options: StoreLockOptions) =>
  Effect.gen(function*() {
    const mine = `${options.pid} ${randomUUID()}\n`
    yield* Effect.addFinalizer(() =>
      fs.readFileString(lockPath).pipe(
        Effect.flatMap((content) => (content === mine ? fs.remove(lockPath) : Effect.void)),
        Effect.ignore
      )
    )
    yield* acquire(fs, lockPath, options, mine)
  })
