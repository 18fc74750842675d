/**
 * `npm run demo:domain`: walks the pure decision core through one model and a burst of requests,
 * and prints each decision. No network, no process, no file.
 */
import { createHash } from "node:crypto"
import { Either } from "effect"
import { Admission, Circuit, Integrity, Lifecycle, RequestGate } from "../src/index.js"

const show = (label: string, result: Either.Either<unknown, { _tag: string; reason: string }>) =>
  console.log(`${label.padEnd(58)} ${Either.isRight(result) ? (typeof result.right === "string" ? result.right : "ok") : `${result.left._tag}/${result.left.reason}`}`)

const model = new Uint8Array(512 * 1024).map((_, i) => (i * 31) & 0xff)
const spec = Either.getOrThrow(Integrity.checkSpec({ sha256: createHash("sha256").update(model).digest("hex"), sizeBytes: model.length }))
const allowlist = ["https://huggingface.co/example-org/tiny-model"]

show("source on the allowlist", Integrity.checkSource("https://huggingface.co/example-org/tiny-model/resolve/main/m.gguf", allowlist))
show("look-alike host (string-prefix matching admitted it)", Integrity.checkSource("https://huggingface.co.evil.io/example-org/tiny-model/m.gguf", allowlist))
show("credentials smuggled before the host", Integrity.checkSource("https://huggingface.co@evil.io/example-org/tiny-model/m.gguf", allowlist))
show("plain HTTP", Integrity.checkSource("http://huggingface.co/example-org/tiny-model/m.gguf", allowlist))

const verifier = Integrity.makeVerifier(spec)
for (let at = 0; at < model.length; at += 64 * 1024) verifier.update(model.subarray(at, at + 64 * 1024))
show("512 KiB model streamed in 64 KiB chunks", verifier.finalize())
const flipped = Uint8Array.from(model)
flipped[4242] = (flipped[4242] ?? 0) ^ 1
show("the same model with one bit flipped", Integrity.verifyBytes(flipped, spec))
const longer = new Uint8Array(model.length + 1)
longer.set(model)
show("the same model with one byte too many", Integrity.makeVerifier(spec).update(longer))

let state: Lifecycle.LifecycleState = Lifecycle.initialState
for (const event of ["health_ok", "start", "health_ok"] as const) {
  const next = Lifecycle.transition(state, event)
  show(`lifecycle ${state} --${event}-->`, next)
  if (Either.isRight(next)) state = next.right
}

let admission = Admission.makeAdmissionState({ maxInFlight: 2, queueBound: 1 })
const limits = { maxRamBytes: 2 * 1024 ** 3, maxCpuPercent: 90 }
const gate = (lifecycle: Lifecycle.LifecycleState, ramBytes: number) =>
  Either.flatMap(
    RequestGate.enter({ now: 0, circuit: Circuit.closed, lifecycle, exiting: false, unloadedIdle: false, waking: false, admission }),
    (entry) => {
      if (entry._tag !== "reload") admission = entry.admission
      return entry._tag === "admitted"
        ? Either.map(RequestGate.checkResources({ ramBytes, vramBytes: 0, cpuPercent: 12 }, limits), () => entry._tag)
        : Either.right(entry._tag)
    }
  )
for (let i = 1; i <= 4; i++) show(`request ${i} (2 slots, 1 queue place)`, gate(state, 300e6))
admission = Admission.makeAdmissionState({ maxInFlight: 2, queueBound: 1 })
show("request 5 while over the RAM ceiling", gate(state, 3e9))
show("request 6 while draining", gate("draining", 0))
