/**
 * ResourceStatLive on this machine's /proc: a real process tree (a shell and its two children)
 * measured by walking the kernel's children lists and by scanning every process, beside the
 * figures read here directly.
 */
import { spawn } from "node:child_process"
import { readdirSync, readFileSync } from "node:fs"
import { NodeContext } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as ResourceStatLive from "../../src/layers/ResourceStatLive.js"
import { expectFailure } from "../layers/harness.js"

const childrenOf = (pid: number): Array<number> =>
  readdirSync(`/proc/${pid}/task`).flatMap((task) =>
    readFileSync(`/proc/${pid}/task/${task}/children`, "utf8").split(/\s+/).filter((c) => c !== "").map(Number))

const rssOf = (pid: number) => Number(/^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) * 1024

describe("live: ResourceStatLive's process tree", () => {
  it.live("the children walk and the full scan find the same tree and RSS as /proc read directly; a gone process is process_gone", () =>
    Effect.acquireUseRelease(
      Effect.promise(async () => {
        const shell = spawn("/bin/sh", ["-c", "sleep 30 & sleep 30 & wait"], { stdio: "ignore" })
        // Until both children exist.
        for (let i = 0; i < 100 && childrenOf(shell.pid!).length < 2; i++) await new Promise((r) => setTimeout(r, 20))
        return shell
      }),
      (shell) =>
        Effect.gen(function*() {
          const pid = shell.pid!
          const kids = childrenOf(pid)
          assert.strictEqual(kids.length, 2)
          const expected = [pid, ...kids].reduce((sum, p) => sum + rssOf(p), 0)
          const auto = yield* ResourceStatLive.makeWith()
          assert.strictEqual(auto.tree, "children") // this kernel has the lists
          for (const tree of ["children", "scan"] as const) {
            const stat = yield* ResourceStatLive.makeWith({ tree })
            const observed = yield* stat.observe(pid)
            // The tree's RSS, not the shell's alone (sleep's RSS is small but not zero).
            assert.isAbove(observed.ramBytes, rssOf(pid), tree)
            assert.approximately(observed.ramBytes, expected, expected * 0.1, tree)
            yield* expectFailure(stat.observe(2 ** 22 + 12345), "ResourceStatError", "process_gone")
          }
        }),
      (shell) =>
        Effect.sync(() => {
          let pids = [shell.pid!]
          try {
            pids = [...childrenOf(shell.pid!), shell.pid!]
          } catch {
            // the shell is gone already
          }
          for (const pid of pids) {
            try {
              process.kill(pid, "SIGKILL")
            } catch {
              // already gone
            }
          }
        })
    ).pipe(Effect.provide(NodeContext.layer)), 30_000)
})
