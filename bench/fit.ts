/**
 * bench:fit — the memory estimate against what llama-server really uses. Generated models of four
 * shapes (up to about 1 GiB), each at two context sizes and two slot counts: llama-server loads it,
 * answers one completion, and its peak RSS (VmHWM) is read beside `MemoryFit.estimate`. Target:
 * estimate ÷ measured between 1.0 and 1.3 for every case. Writes docs/benchmarks.md.
 *
 * BENCH_FIT_SHAPES=small,medium limits the shapes (names below).
 */
import { execFileSync, spawn } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createInterface } from "node:readline"
import { Either } from "effect"
import * as Gguf from "../src/domain/Gguf.js"
import * as MemoryFit from "../src/domain/MemoryFit.js"
import { type GgufShape, makeGguf } from "../src/testing/ModelFixtures.js"
import { machine, today, writeSection } from "./report.js"

const llamaServer = execFileSync(process.execPath, ["scripts/runtime-ensure.mjs"], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] })
  .trim().split("\n").at(-1) ?? ""

const SHAPES: ReadonlyArray<readonly [string, GgufShape]> = [
  ["small (F32)", { layers: 4, embedding: 256, heads: 4, headsKv: 4, feedForward: 768, vocabulary: 4096, context: 4096, weights: "F32" }],
  ["medium (F16)", { layers: 8, embedding: 512, heads: 8, headsKv: 2, feedForward: 1536, vocabulary: 8192, context: 4096, weights: "F16" }],
  ["large (Q8_0)", { layers: 12, embedding: 1024, heads: 16, headsKv: 4, feedForward: 2816, vocabulary: 16384, context: 4096, weights: "Q8_0" }],
  ["1 GiB (Q8_0)", { layers: 16, embedding: 2048, heads: 16, headsKv: 8, feedForward: 5632, vocabulary: 32000, context: 4096, weights: "Q8_0" }]
]
const wanted = process.env["BENCH_FIT_SHAPES"]?.split(",")
const CASES: ReadonlyArray<readonly [number, number]> = [[512, 1], [512, 4], [4096, 1], [4096, 4]]
const MiB = 1024 * 1024

/** llama-server on `file` with `-c C -np P`: its peak RSS after one completion, in bytes. */
const measure = (file: string, context: number, parallel: number) =>
  new Promise<number>((resolve, reject) => {
    const child = spawn(llamaServer, ["-m", file, "--host", "127.0.0.1", "--port", "0", "-c", String(context), "-np", String(parallel), "-t", "2", "--no-webui"], {
      stdio: ["ignore", "pipe", "pipe"]
    })
    const timer = setTimeout(() => child.kill("SIGKILL"), 120_000)
    const lines = createInterface({ input: child.stderr! })
    createInterface({ input: child.stdout! }).on("line", () => {})
    lines.on("line", async (line) => {
      const port = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(line)?.[1]
      if (port === undefined) return
      try {
        for (let i = 0; i < 600; i++) {
          const health = await fetch(`http://127.0.0.1:${port}/health`).then((r) => r.status, () => 0)
          if (health === 200) break
          await new Promise((r) => setTimeout(r, 100))
        }
        const answer = await fetch(`http://127.0.0.1:${port}/v1/completions`, {
          method: "POST",
          // About 200 tokens (the generated vocabulary is byte-level): a prompt batch large enough
          // to touch the compute buffers, inside the smallest slot (256 cells).
          body: JSON.stringify({ prompt: "a".repeat(200), max_tokens: 8, temperature: 0 })
        })
        await answer.text()
        const hwm = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, "utf8"))?.[1]
        child.kill("SIGKILL")
        clearTimeout(timer)
        resolve(Number(hwm) * 1024)
      } catch (error) {
        child.kill("SIGKILL")
        reject(error)
      }
    })
    child.once("exit", (code) => reject(new Error(`llama-server exited (${code})`)))
  })

const work = mkdtempSync(join(tmpdir(), "bench-fit-"))
const rows: Array<string> = []
const ratios: Array<number> = []
try {
  for (const [name, shape] of SHAPES) {
    if (wanted !== undefined && !wanted.some((w) => name.startsWith(w))) continue
    const bytes = makeGguf(shape)
    const file = join(work, "model.gguf")
    writeFileSync(file, bytes)
    const header = Gguf.read(bytes, bytes.length)
    if (Either.isLeft(header)) throw new Error(`${name}: the generated model does not parse`)
    const summary = Either.getOrThrow(Gguf.summarize(header.right))
    for (const [context, parallel] of CASES) {
      const estimate = MemoryFit.estimate(summary, { contextSize: context, parallel })
      const measured = await measure(file, context, parallel)
      const ratio = estimate.totalBytes / measured
      ratios.push(ratio)
      const row = `| ${name}, ${(bytes.length / MiB).toFixed(0)} MiB | -c ${context} -np ${parallel} | ${(estimate.weightsBytes / MiB).toFixed(1)} | ${(estimate.kvCacheBytes / MiB).toFixed(1)} | ${(estimate.computeBytes / MiB).toFixed(1)} | ${(estimate.totalBytes / MiB).toFixed(1)} | ${(measured / MiB).toFixed(1)} | ${ratio.toFixed(2)} | ${ratio >= 1 && ratio <= 1.3 ? "met" : "**not met**"} |`
      console.log(row)
      rows.push(row)
    }
    rmSync(file, { force: true })
  }
} finally {
  rmSync(work, { recursive: true, force: true })
}

writeSection("fit", `
## bench:fit — ${today()}

${machine()}. \`npm run bench:fit\`: generated llama models (\`makeGguf\`), llama-server with
\`-c C -np P -t 2\`, one completion (a ~200-token prompt, 8 tokens), then its peak RSS (\`VmHWM\`) beside
\`MemoryFit.estimate\` (MiB). Target: estimate ÷ measured in [1.0, 1.3].

| model | runtime | weights | KV cache | compute | estimate | measured | ratio | [1.0, 1.3] |
|---|---|---:|---:|---:|---:|---:|---:|---|
${rows.join("\n")}

Ratios from ${Math.min(...ratios).toFixed(2)} to ${Math.max(...ratios).toFixed(2)}. Never below 1.0 means the
estimate never promised a model would fit that then did not. The compute heuristic and the fixed
overhead err high by design; they weigh most on the smallest models.
`)
