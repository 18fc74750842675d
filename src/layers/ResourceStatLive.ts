/**
 * ResourceStat on Linux: RSS summed over the runtime's process tree from /proc/<pid>/status (the
 * tree walked down the kernel's children lists where it has them, else found by scanning every
 * process: `makeWith({ tree })`); CPU
 * as a percent of the whole machine from /proc/<pid>/stat tick deltas between observations (the
 * first observation of a process averages over its lifetime); VRAM from nvidia-smi when it exists,
 * else 0. Files are read through FileSystem and nvidia-smi runs through Command, so the parsers
 * below are the only logic, and they are pure.
 */
import { Command, CommandExecutor, FileSystem } from "@effect/platform"
import { Clock, Effect, Either, Layer, Option, Ref } from "effect"
import type { ResourceObservation } from "../domain/ResourcePolicy.js"
import { ResourceStatError } from "../services/Errors.js"
import { ResourceStat } from "../services/ResourceStat.js"

const parseFailed = () => new ResourceStatError({ reason: "parse_failed" })

export interface ProcStat {
  readonly pid: number
  readonly ppid: number
  /** utime + stime, in clock ticks. */
  readonly ticks: number
  /** Start time after boot, in clock ticks. */
  readonly starttime: number
}

/**
 * One line of /proc/<pid>/stat. The command name sits in parentheses and may itself contain
 * spaces and parentheses, so fields are counted from the last `)`.
 */
export const parseProcStat = (text: string): Either.Either<ProcStat, ResourceStatError> => {
  const close = text.lastIndexOf(")")
  const open = text.indexOf("(")
  if (open < 1 || close < open) return Either.left(parseFailed())
  const pid = Number(text.slice(0, open).trim())
  // After ")": state(3) ppid(4) ... utime(14) stime(15) ... starttime(22), numbered as in proc(5).
  const fields = text.slice(close + 1).trim().split(/\s+/)
  const field = (n: number) => Number(fields[n - 3])
  const stat = { pid, ppid: field(4), ticks: field(14) + field(15), starttime: field(22) }
  return Object.values(stat).every((n) => Number.isSafeInteger(n) && n >= 0) ? Either.right(stat) : Either.left(parseFailed())
}

/** VmRSS of /proc/<pid>/status, in bytes; a kernel thread has none and uses 0. */
export const parseRssBytes = (text: string): Either.Either<number, ResourceStatError> => {
  const match = /^VmRSS:\s+(\d+)\s+kB\s*$/m.exec(text)
  if (match === null) return /^Name:/m.test(text) ? Either.right(0) : Either.left(parseFailed())
  return Either.right(Number(match[1]) * 1024)
}

/** The number of CPUs, from the `cpuN` lines of /proc/stat. */
export const parseCpuCount = (text: string): Either.Either<number, ResourceStatError> => {
  const count = text.split("\n").filter((line) => /^cpu\d+\s/.test(line)).length
  return count > 0 ? Either.right(count) : Either.left(parseFailed())
}

/** Seconds since boot, the first field of /proc/uptime. */
export const parseUptimeSeconds = (text: string): Either.Either<number, ResourceStatError> => {
  const seconds = Number(text.trim().split(/\s+/)[0])
  return Number.isFinite(seconds) && seconds > 0 ? Either.right(seconds) : Either.left(parseFailed())
}

/**
 * `nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits`: one
 * `pid, MiB` line per process using the GPU. Returns bytes by pid.
 */
export const parseNvidiaSmi = (csv: string): Either.Either<ReadonlyMap<number, number>, ResourceStatError> => {
  const usage = new Map<number, number>()
  for (const line of csv.split("\n").map((l) => l.trim()).filter((l) => l.length > 0)) {
    const match = /^(\d+)\s*,\s*(\d+)$/.exec(line)
    if (match === null) return Either.left(parseFailed())
    const pid = Number(match[1])
    usage.set(pid, (usage.get(pid) ?? 0) + Number(match[2]) * 1024 * 1024)
  }
  return Either.right(usage)
}

/** The pid and every descendant of it, from a parent map of all processes. */
export const processTree = (root: number, stats: ReadonlyArray<ProcStat>): ReadonlyArray<ProcStat> => {
  const children = new Map<number, Array<ProcStat>>()
  for (const s of stats) children.set(s.ppid, [...(children.get(s.ppid) ?? []), s])
  const tree: Array<ProcStat> = []
  const todo = stats.filter((s) => s.pid === root)
  while (todo.length > 0) {
    const next = todo.pop()!
    tree.push(next)
    todo.push(...(children.get(next.pid) ?? []))
  }
  return tree
}

/** CPU percent of the whole machine between two samples of a tree's ticks. */
export const cpuPercent = (deltaTicks: number, deltaSeconds: number, ticksPerSecond: number, cpus: number): number =>
  deltaSeconds <= 0 ? 0 : Math.max(0, (deltaTicks / ticksPerSecond / deltaSeconds / cpus) * 100)

export type GpuSupport = "nvidia" | "none"

/**
 * How a runtime's process tree is found: `children` walks it from the runtime down through
 * `/proc/<pid>/task/<tid>/children` (Linux 3.5+, `CONFIG_PROC_CHILDREN`), reading only its own
 * processes; `scan` reads every process's `stat` and links them by parent (any Linux). `auto`
 * takes `children` when this kernel has it.
 */
export type TreeWalk = "auto" | "children" | "scan"

export const make = makeWith()

export function makeWith(options: { readonly tree?: TreeWalk | undefined } = {}) {
  return Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const executor = yield* CommandExecutor.CommandExecutor
    const read = (path: string) => Effect.mapError(fs.readFileString(path), () => new ResourceStatError({ reason: "stat_failed" }))
    const run = <A, E>(command: Command.Command, f: (c: Command.Command) => Effect.Effect<A, E, CommandExecutor.CommandExecutor>) =>
      Effect.provideService(f(command), CommandExecutor.CommandExecutor, executor)

    const ticksPerSecond = yield* run(Command.make("getconf", "CLK_TCK"), Command.string).pipe(
      Effect.map((out) => Number(out.trim())),
      Effect.filterOrElse((n) => Number.isSafeInteger(n) && n > 0, () => Effect.succeed(100)),
      Effect.orElseSucceed(() => 100)
    )
    const cpus = yield* Effect.flatMap(read("/proc/stat"), parseCpuCount)
    // Probed once: a machine without nvidia-smi has no NVIDIA GPU to account for.
    const nvidia = Command.make("nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")
    const gpu: GpuSupport = yield* run(nvidia, Command.exitCode).pipe(
      Effect.map((code): GpuSupport => (code === 0 ? "nvidia" : "none")),
      Effect.orElseSucceed((): GpuSupport => "none")
    )
    const previous = yield* Ref.make(new Map<number, { readonly ticks: number; readonly at: number }>())

    const allStats = Effect.gen(function*() {
      const entries = yield* Effect.mapError(fs.readDirectory("/proc"), () => new ResourceStatError({ reason: "stat_failed" }))
      const pids = entries.filter((e) => /^\d+$/.test(e))
      // Processes come and go while we read: one that vanished is simply not in the tree.
      const stats = yield* Effect.forEach(pids, (pid) => Effect.option(Effect.flatMap(read(`/proc/${pid}/stat`), parseProcStat)), {
        concurrency: 16
      })
      return stats.flatMap(Option.toArray)
    })

    const childrenFiles = options.tree === "children" ||
      (options.tree !== "scan" && (yield* Effect.orElseSucceed(fs.exists(`/proc/${process.pid}/task/${process.pid}/children`), () => false)))

    /** The tree from `root` down, by the kernel's children lists: O(the tree), not O(every process). */
    const walkStats = (root: number) =>
      Effect.gen(function*() {
        const tree: Array<ProcStat> = []
        const seen = new Set<number>()
        const todo = [root]
        while (todo.length > 0) {
          const pid = todo.pop()!
          if (seen.has(pid)) continue
          seen.add(pid)
          // Processes come and go while we read: one that vanished is simply not in the tree.
          const stat = yield* Effect.option(Effect.flatMap(read(`/proc/${pid}/stat`), parseProcStat))
          if (Option.isNone(stat)) continue
          tree.push(stat.value)
          const tasks = yield* Effect.orElseSucceed(fs.readDirectory(`/proc/${pid}/task`), () => [])
          for (const task of tasks) {
            const children = yield* Effect.orElseSucceed(read(`/proc/${pid}/task/${task}/children`), () => "")
            for (const child of children.split(/\s+/)) if (/^\d+$/.test(child)) todo.push(Number(child))
          }
        }
        return tree
      })

    const treeOf = (root: number) => (childrenFiles ? walkStats(root) : Effect.map(allStats, (stats) => processTree(root, stats)))

    const vramOf = (pids: ReadonlySet<number>) =>
      gpu === "none"
        ? Effect.succeed(0)
        : run(nvidia, Command.string).pipe(
          Effect.mapError(() => new ResourceStatError({ reason: "stat_failed" })),
          Effect.flatMap(parseNvidiaSmi),
          Effect.map((usage) => [...usage].filter(([pid]) => pids.has(pid)).reduce((sum, [, bytes]) => sum + bytes, 0))
        )

    const observe = (pid: number) =>
      Effect.gen(function*() {
        const tree = yield* treeOf(pid)
        if (tree.length === 0) return yield* new ResourceStatError({ reason: "process_gone" })
        const rss = yield* Effect.forEach(tree, (p) =>
          read(`/proc/${p.pid}/status`).pipe(Effect.flatMap(parseRssBytes), Effect.orElseSucceed(() => 0)))
        const ticks = tree.reduce((sum, p) => sum + p.ticks, 0)
        const now = yield* Clock.currentTimeMillis
        const before = (yield* Ref.get(previous)).get(pid)
        let cpu: number
        if (before !== undefined) {
          cpu = cpuPercent(ticks - before.ticks, (now - before.at) / 1000, ticksPerSecond, cpus)
        } else {
          const uptime = yield* Effect.flatMap(read("/proc/uptime"), parseUptimeSeconds)
          const root = tree[0]!
          cpu = cpuPercent(ticks, uptime - root.starttime / ticksPerSecond, ticksPerSecond, cpus)
        }
        yield* Ref.update(previous, (m) => new Map(m).set(pid, { ticks, at: now }))
        const observation: ResourceObservation = {
          ramBytes: rss.reduce((a, b) => a + b, 0),
          vramBytes: yield* vramOf(new Set(tree.map((p) => p.pid))),
          cpuPercent: cpu
        }
        return observation
      })

    return { gpu, observe, tree: childrenFiles ? "children" as const : "scan" as const }
  })
}

/** ResourceStat for Linux, over FileSystem and CommandExecutor (NodeContext.layer provides both). */
export const layer = Layer.effect(
  ResourceStat,
  Effect.map(make, ({ observe }) => ResourceStat.of({ observe: (handle) => observe(handle.pid) }))
)
