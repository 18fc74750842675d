import { spawn } from "node:child_process"
import { NodeContext } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import * as ResourceStatLive from "../../src/layers/ResourceStatLive.js"
import { assertLeft } from "../domain/fixtures.js"

// Recorded on Linux 6.x; the command name holds spaces and parentheses on purpose.
const STAT = "4242 (llama (server) x) S 4200 4242 1019 0 -1 4194304 100 0 0 0 350 150 0 0 20 0 9 0 803976 3133440 404 18446744073709551615 0 0"
const STATUS = "Name:\tllama-server\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t  900000 kB\nVmRSS:\t  123456 kB\nThreads:\t9\n"
const KTHREAD_STATUS = "Name:\tkworker/0:1\nState:\tI (idle)\nThreads:\t1\n"
// nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits, recorded with two
// apps (one of them with two contexts on two GPUs), and a GPU that does not report usage.
const NVIDIA = "4242, 1536\n5151, 20480\n4242, 512\n"
const NVIDIA_NA = "4242, [N/A]\n"

describe("ResourceStatLive parsers", () => {
  it("reads ppid, utime + stime and starttime past a command name with spaces and parentheses", () => {
    const stat = Either.getOrThrow(ResourceStatLive.parseProcStat(STAT))
    assert.deepStrictEqual(stat, { pid: 4242, ppid: 4200, ticks: 500, starttime: 803976 })
  })

  it("refuses a stat line it cannot read", () => {
    for (const text of ["", "garbage", "12 (x) S", "12 (x) S a b c d e f g h i j k l m n o p q r s t"]) {
      assertLeft(ResourceStatLive.parseProcStat(text), "ResourceStatError", "parse_failed")
    }
  })

  it("reads VmRSS in bytes; a kernel thread without one uses 0", () => {
    assert.strictEqual(Either.getOrThrow(ResourceStatLive.parseRssBytes(STATUS)), 123456 * 1024)
    assert.strictEqual(Either.getOrThrow(ResourceStatLive.parseRssBytes(KTHREAD_STATUS)), 0)
    assertLeft(ResourceStatLive.parseRssBytes("nonsense"), "ResourceStatError", "parse_failed")
  })

  it("sums nvidia-smi usage per pid, accepts no apps, and refuses [N/A]", () => {
    const usage = Either.getOrThrow(ResourceStatLive.parseNvidiaSmi(NVIDIA))
    assert.strictEqual(usage.get(4242), 2048 * 1024 * 1024)
    assert.strictEqual(usage.get(5151), 20480 * 1024 * 1024)
    assert.strictEqual(Either.getOrThrow(ResourceStatLive.parseNvidiaSmi("")).size, 0)
    assertLeft(ResourceStatLive.parseNvidiaSmi(NVIDIA_NA), "ResourceStatError", "parse_failed")
  })

  it("reads the CPU count and the uptime", () => {
    assert.strictEqual(Either.getOrThrow(ResourceStatLive.parseCpuCount("cpu  1 2 3\ncpu0 1 2\ncpu1 3 4\nintr 5\n")), 2)
    assertLeft(ResourceStatLive.parseCpuCount("intr 5\n"), "ResourceStatError", "parse_failed")
    assert.strictEqual(Either.getOrThrow(ResourceStatLive.parseUptimeSeconds("8039.77 13237.52\n")), 8039.77)
    assertLeft(ResourceStatLive.parseUptimeSeconds("-"), "ResourceStatError", "parse_failed")
  })

  it("collects a process and all its descendants, and nothing else", () => {
    const p = (pid: number, ppid: number) => ({ pid, ppid, ticks: pid, starttime: 0 })
    const all = [p(1, 0), p(10, 1), p(11, 10), p(12, 11), p(13, 10), p(20, 1), p(21, 20)]
    assert.deepStrictEqual(ResourceStatLive.processTree(10, all).map((s) => s.pid).sort((a, b) => a - b), [10, 11, 12, 13])
    assert.deepStrictEqual(ResourceStatLive.processTree(99, all), [])
  })

  it("computes CPU as a percent of the whole machine", () => {
    assert.strictEqual(ResourceStatLive.cpuPercent(200, 1, 100, 2), 100) // two cores busy for a second
    assert.strictEqual(ResourceStatLive.cpuPercent(50, 1, 100, 2), 25)
    assert.strictEqual(ResourceStatLive.cpuPercent(50, 0, 100, 2), 0)
  })
})

/** A node process that spins and has a child of its own that holds 64 MiB; killed when the test ends. */
const busyTree = Effect.acquireRelease(
  Effect.async<{ pid: number; kill: () => void }>((resume) => {
    const script = `
      const { spawn } = require("node:child_process")
      const child = spawn(process.execPath, ["-e", "const b = Buffer.alloc(64 * 1024 * 1024, 1); setInterval(() => b[0]++, 1000)"], { stdio: "ignore" })
      process.stdout.write("up\\n")
      const end = Date.now() + 20000
      while (Date.now() < end) {}
      child.kill()`
    const proc = spawn(process.execPath, ["-e", script], { stdio: ["ignore", "pipe", "ignore"] })
    proc.stdout.once("data", () => setTimeout(() => resume(Effect.succeed({ pid: proc.pid!, kill: () => proc.kill("SIGKILL") })), 300))
  }),
  ({ kill }) => Effect.sync(kill)
)

describe("ResourceStatLive on this machine", () => {
  it.scopedLive("observes a real process tree: RSS includes the child, CPU shows the busy parent", () =>
    Effect.gen(function*() {
      const stat = yield* ResourceStatLive.make
      const tree = yield* busyTree
      const first = yield* stat.observe(tree.pid)
      yield* Effect.sleep("1 second")
      const second = yield* stat.observe(tree.pid)
      assert.isAbove(second.ramBytes, 64 * 1024 * 1024, "the child's 64 MiB buffer counts")
      assert.isAbove(first.cpuPercent, 5) // an idle process reads ~0; this one spins
      assert.isAbove(second.cpuPercent, 10)
      assert.isAtMost(second.cpuPercent, 100)
      if (stat.gpu === "none") assert.strictEqual(second.vramBytes, 0)
    }).pipe(Effect.provide(NodeContext.layer)), 30_000)

  it.scopedLive("a process that is gone is a typed error", () =>
    Effect.gen(function*() {
      const stat = yield* ResourceStatLive.make
      const tree = yield* busyTree
      tree.kill()
      yield* Effect.sleep("200 millis")
      const result = yield* Effect.either(stat.observe(tree.pid))
      assert.isTrue(Either.isLeft(result) && result.left.reason === "process_gone")
    }).pipe(Effect.provide(NodeContext.layer)), 30_000)
})
