/**
 * bench:startup — how fast the command starts. The median wall time (and CPU, peak RSS) of
 * `companion-runtime --help` and of `status` against a closed port, beside the floor for any Effect
 * command: a bare `node` that only imports `effect`, `@effect/cli` and `@effect/platform-node`.
 * Candidates alternate run by run in one session; the target is ≤ 1.5 × the floor.
 *
 * BENCH_RUNS (default 11) runs each, after one warm-up. BENCH_BASELINE=<checkout> adds that
 * checkout's command (`--help`) as a "before" row.
 */
import { execFileSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { machine, median, today, writeSection } from "./report.js"

const RUNS = Number(process.env["BENCH_RUNS"] ?? 11)
const BIN = resolve("bin/companion-runtime.mjs")
const TIME = "/usr/bin/time"

const closedPort = await new Promise<number>((done) => {
  const server = createServer().listen(0, "127.0.0.1", () => {
    const address = server.address()
    server.close(() => done(typeof address === "object" && address !== null ? address.port : 9))
  })
})

interface Candidate {
  readonly name: string
  readonly args: ReadonlyArray<string>
  readonly exitCode: number
}

const candidates: Array<Candidate> = [
  {
    name: "floor: node importing effect, @effect/cli, @effect/platform-node",
    args: ["--input-type=module", "-e", "await import('effect'); await import('@effect/cli'); await import('@effect/platform-node')"],
    exitCode: 0
  },
  { name: "`companion-runtime --help`", args: [BIN, "--help"], exitCode: 0 },
  { name: "`companion-runtime status` (closed port)", args: [BIN, "status", "--url", `http://127.0.0.1:${closedPort}`], exitCode: 1 }
]
const baseline = process.env["BENCH_BASELINE"]
if (baseline !== undefined) {
  candidates.push({ name: `before (${process.env["BENCH_BASELINE_LABEL"] ?? "baseline"}): \`--help\``, args: [join(baseline, "bin/companion-runtime.mjs"), "--help"], exitCode: 0 })
}

const scratch = mkdtempSync(join(tmpdir(), "bench-startup-"))
const stats = join(scratch, "time")

interface Sample {
  readonly wallMs: number
  readonly cpuMs: number
  readonly rssMiB: number
}

/** One run under /usr/bin/time (CPU and peak RSS of the child); wall time measured here. */
const once = (candidate: Candidate): Sample => {
  const t0 = performance.now()
  let code = 0
  try {
    execFileSync(TIME, ["-q", "-o", stats, "-f", "%U %S %M", process.execPath, ...candidate.args], { stdio: "ignore" })
  } catch (error) {
    code = (error as { status: number }).status
  }
  const wallMs = performance.now() - t0
  if (code !== candidate.exitCode) throw new Error(`${candidate.name} exited ${code}`)
  const [user, sys, kib] = readFileSync(stats, "utf8").trim().split("\n").at(-1)!.split(" ").map(Number)
  return { wallMs, cpuMs: (user! + sys!) * 1000, rssMiB: kib! / 1024 }
}

const samples = candidates.map(() => [] as Array<Sample>)
for (const candidate of candidates) once(candidate) // warm the file cache
for (let run = 0; run < RUNS; run++) {
  candidates.forEach((candidate, i) => samples[i]!.push(once(candidate)))
}
rmSync(scratch, { recursive: true, force: true })

const rows = candidates.map((candidate, i) => ({
  name: candidate.name,
  wall: median(samples[i]!.map((s) => s.wallMs)),
  cpu: median(samples[i]!.map((s) => s.cpuMs)),
  rss: median(samples[i]!.map((s) => s.rssMiB))
}))
const floor = rows[0]!.wall
const target = 1.5
const verdict = (wall: number, i: number) => (i === 0 ? "" : wall / floor <= target ? "met" : "**not met**")

const table = [
  "| command | wall (median) | × floor | CPU user+sys | peak RSS | ≤ 1.5 × floor |",
  "|---|---:|---:|---:|---:|---|",
  ...rows.map((row, i) =>
    `| ${row.name} | ${row.wall.toFixed(0)} ms | ${(row.wall / floor).toFixed(2)} | ${row.cpu.toFixed(0)} ms | ${row.rss.toFixed(0)} MiB | ${i === 0 || row.name.startsWith("before") ? "" : verdict(row.wall, i)} |`
  )
].join("\n")

const body = `## bench:startup — ${today()}

${machine()}. ${RUNS} runs of each, alternating, after one warm-up each; medians. CPU and peak RSS
from \`/usr/bin/time\`; wall time around the whole child.

${table}

Why below the floor: the floor imports the three barrels, and a barrel loads every module it
names. The command imports \`@effect/cli/Command\`, \`@effect/platform-node/NodeRuntime\` and the like
by path, and each subcommand imports its own work when it runs (\`serve\`'s live stack, \`verify\`'s
verifier, \`status\`'s fetch client), so \`--help\` never loads the store, the gateway or Schema's config.`

console.log(table)
writeSection("startup", body)
