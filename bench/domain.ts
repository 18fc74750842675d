/**
 * bench:domain — gate decisions per second, and the streaming verifier's throughput as a ratio to
 * bare node:crypto SHA-256 over the same buffer, chunked the same way, alternated in one run.
 */
import { createHash } from "node:crypto"
import { performance } from "node:perf_hooks"
import { Either } from "effect"
import * as Circuit from "../src/domain/Circuit.js"
import * as Integrity from "../src/domain/Integrity.js"
import * as RequestGate from "../src/domain/RequestGate.js"
import { machine, median, today, writeSection } from "./report.js"

const ROUNDS = 7
const MiB = 1024 * 1024
const BUFFER_MIB = 128
const CHUNK = 64 * 1024

// --- gate decisions -------------------------------------------------------------------------
// The whole gate as the manager runs it: circuit, lifecycle, admission, then the resources.
interface GateCase {
  readonly entry: RequestGate.EntryInput
  readonly observation: { readonly ramBytes: number; readonly vramBytes: number; readonly cpuPercent: number }
}
const limits = { maxRamBytes: 8e9, maxCpuPercent: 90 }
const admitted: GateCase = {
  entry: {
    now: 0,
    circuit: Circuit.closed,
    lifecycle: "ready",
    exiting: false,
    unloadedIdle: false,
    waking: false,
    admission: { maxInFlight: 8, queueBound: 64, inFlight: 3, queued: 0 }
  },
  observation: { ramBytes: 2e9, vramBytes: 0, cpuPercent: 20 }
}
const refusedLate: GateCase = { ...admitted, observation: { ...admitted.observation, cpuPercent: 95 } }
const refusedEarly: GateCase = { ...admitted, entry: { ...admitted.entry, lifecycle: "draining" } }

const decide = (c: GateCase) =>
  Either.flatMap(RequestGate.enter(c.entry), (entry) => (entry._tag === "admitted" ? RequestGate.checkResources(c.observation, limits) : Either.right(undefined)))

const decisionsPerSecond = (input: GateCase): number => {
  const n = 200_000
  let admittedCount = 0
  const t0 = performance.now()
  for (let i = 0; i < n; i++) if (Either.isRight(decide(input))) admittedCount++
  const ms = performance.now() - t0
  if (admittedCount !== (input === admitted ? n : 0)) throw new Error("the gate changed its mind during the benchmark")
  return n / (ms / 1000)
}

// --- verifier vs bare crypto ----------------------------------------------------------------
const buffer = new Uint8Array(BUFFER_MIB * MiB)
for (let i = 0; i < buffer.length; i += 4096) buffer[i] = (i * 2654435761) >>> 24
const spec = Either.getOrThrow(Integrity.checkSpec({ sha256: createHash("sha256").update(buffer).digest("hex"), sizeBytes: buffer.length }))

const bare = (): number => {
  const t0 = performance.now()
  const h = createHash("sha256")
  for (let at = 0; at < buffer.length; at += CHUNK) h.update(buffer.subarray(at, at + CHUNK))
  h.digest()
  return performance.now() - t0
}

const verifier = (): number => {
  const t0 = performance.now()
  const v = Integrity.makeVerifier(spec)
  for (let at = 0; at < buffer.length; at += CHUNK) {
    if (Either.isLeft(v.update(buffer.subarray(at, at + CHUNK)))) throw new Error("verifier refused a chunk")
  }
  if (Either.isLeft(v.finalize())) throw new Error("verifier refused the buffer")
  return performance.now() - t0
}

// Warm both paths before measuring.
decisionsPerSecond(admitted)
bare()
verifier()

const gate = { admitted: [] as Array<number>, refusedEarly: [] as Array<number>, refusedLate: [] as Array<number> }
const bareMs: Array<number> = []
const verifierMs: Array<number> = []
const ratios: Array<number> = []
for (let round = 0; round < ROUNDS; round++) {
  gate.admitted.push(decisionsPerSecond(admitted))
  gate.refusedEarly.push(decisionsPerSecond(refusedEarly))
  gate.refusedLate.push(decisionsPerSecond(refusedLate))
  // Alternate which goes first so drift on a shared machine does not favour one side.
  let b: number
  let v: number
  if (round % 2 === 0) {
    b = bare()
    v = verifier()
  } else {
    v = verifier()
    b = bare()
  }
  bareMs.push(b)
  verifierMs.push(v)
  ratios.push(b / v)
}

const mbps = (ms: number) => (BUFFER_MIB * MiB) / 1e6 / (ms / 1000)
const fmt = (n: number, digits = 0) => n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits })
const ratio = median(ratios)

const body = `## Domain (\`npm run bench:domain\`)

${today()} · ${machine()} · ${ROUNDS} rounds, medians.

| gate decision | decisions/s |
|---|---:|
| admitted (all three checks run) | ${fmt(median(gate.admitted))} |
| refused at lifecycle (\`not_ready\`) | ${fmt(median(gate.refusedEarly))} |
| refused at resources (\`cpu_over_limit\`) | ${fmt(median(gate.refusedLate))} |

| SHA-256 over ${BUFFER_MIB} MiB in ${CHUNK / 1024} KiB chunks | MB/s |
|---|---:|
| bare \`node:crypto\` | ${fmt(mbps(median(bareMs)), 1)} |
| \`Integrity.makeVerifier\` (hash + size cap + constant-time check) | ${fmt(mbps(median(verifierMs)), 1)} |
| **ratio verifier / bare** (median of per-round ratios; target ≥ 0.95) | **${fmt(ratio, 3)}** |
`
console.log(body)
writeSection("domain", body)
if (ratio < 0.95) {
  console.error(`verifier ratio ${ratio.toFixed(3)} is under the 0.95 target`)
  process.exitCode = 1
}
