/**
 * bench:pull — `companion-runtime pull` of a 1 GiB model from a local HTTPS origin, end to end as a
 * user runs it (a fresh process: start-up, config, download, verification, fsync, rename), against
 * `curl -o` followed by `sha256sum` of the same file, alternated, 3 rounds, medians. The origin is
 * bench/download-origin.ts in its own process. Writes docs/benchmarks.md.
 */
import { execFileSync, spawn } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { performance } from "node:perf_hooks"
import { makeRandomFile } from "./random-file.js"
import { machine, median, today, writeSection } from "./report.js"

const MiB = 1024 * 1024
const SIZE = Number(process.env.BENCH_PULL_MIB ?? 1024) * MiB
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
const work = mkdtempSync(join(tmpdir(), "companion-pull-"))

const file = join(work, "model.bin")
const sha256 = makeRandomFile(file, SIZE)
const caFile = join(work, "ca.pem")

const origin = spawn(process.execPath, ["--import", "tsx", "bench/download-origin.ts", file, caFile], { stdio: ["ignore", "pipe", "inherit"] })
const port = await new Promise<number>((done) => origin.stdout.once("data", (d: Buffer) => done(Number(d.toString().trim()))))
const url = `https://127.0.0.1:${port}/bench/model.bin`

const config = join(work, "config.json")
writeFileSync(config, JSON.stringify({
  storeDir: join(work, "store"),
  model: { sha256, sizeBytes: SIZE, source: url },
  allowedSources: [`https://127.0.0.1:${port}/bench/`],
  download: { caFiles: [caFile] }
}))
const bin = resolve("bin/companion-runtime.mjs")

const timed = (run: () => void) => {
  const t0 = performance.now()
  run()
  return performance.now() - t0
}
const candidates: Record<string, () => number> = {
  pull: () => {
    rmSync(join(work, "store"), { recursive: true, force: true })
    return timed(() => execFileSync(process.execPath, [bin, "pull", "--config", config], { stdio: "ignore" }))
  },
  "curl + sha256sum": () => {
    const out = join(work, "curl.bin")
    rmSync(out, { force: true })
    return timed(() => {
      execFileSync("curl", ["-sS", "--fail", "--cacert", caFile, "-o", out, url])
      const sum = execFileSync("sha256sum", [out], { encoding: "utf8" }).split(" ")[0]
      if (sum !== sha256) throw new Error("curl: digest mismatch")
    })
  }
}

const results: Record<string, Array<number>> = {}
try {
  candidates["curl + sha256sum"]!() // warm the page cache and the origin
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 === 0 ? ["pull", "curl + sha256sum"] : ["curl + sha256sum", "pull"]
    for (const name of order) {
      const ms = candidates[name]!()
      ;(results[name] ??= []).push(ms)
      console.log(`${name}: ${ms.toFixed(0)} ms`)
    }
  }
} finally {
  origin.kill("SIGTERM")
  rmSync(work, { recursive: true, force: true })
}

const ms = (name: string) => median(results[name] ?? [])
const ratio = ms("curl + sha256sum") / ms("pull")
const mbs = (name: string) => (SIZE / 1e6 / (ms(name) / 1000)).toFixed(0)
writeSection(
  "pull",
  `## bench:pull — ${today()}

${machine()}. A ${SIZE / MiB} MiB model from an HTTPS origin on 127.0.0.1 (its own process), ${ROUNDS} rounds alternated, medians; each run a
fresh process, timed from launch to exit: \`companion-runtime pull --config …\` (download, SHA-256 and size while streaming,
fsync, rename) against \`curl -sS -o\` then \`sha256sum\` (no fsync).

| candidate | wall (median) | MB/s |
|---|---:|---:|
| \`companion-runtime pull\` | ${ms("pull").toFixed(0)} ms | ${mbs("pull")} |
| \`curl -o\` + \`sha256sum\` | ${ms("curl + sha256sum").toFixed(0)} ms | ${mbs("curl + sha256sum")} |

pull ÷ curl + sha256sum (speed): ${ratio.toFixed(2)}×; target ≥ 0.9×: ${ratio >= 0.9 ? "met" : "**not met**"}.`
)
