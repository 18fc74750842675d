/**
 * Integration and stress tiers: the pure modules driven together the way the manager drives them,
 * from a verified download through the lifecycle to admitted, queued and refused requests.
 */
import { assert, describe, it } from "@effect/vitest"
import { Either } from "effect"
import * as Admission from "../../src/domain/Admission.js"
import * as Circuit from "../../src/domain/Circuit.js"
import * as Integrity from "../../src/domain/Integrity.js"
import * as Lifecycle from "../../src/domain/Lifecycle.js"
import * as RequestGate from "../../src/domain/RequestGate.js"
import { assertLeft, assertRight, bytesOf, chunkAt, specFor } from "./fixtures.js"

const GiB = 1024 ** 3
const limits = { maxRamBytes: 8 * GiB, maxVramBytes: 2 * GiB, maxCpuPercent: 90 }
const calm = { ramBytes: GiB, vramBytes: 0, cpuPercent: 10 }

/**
 * The whole gate for one request as the manager runs it, without the atomic state around it: the
 * entry decision, then (with a slot) the resources. Returns the decision and the new admission state.
 */
const gate = (
  lifecycle: Lifecycle.LifecycleState,
  admission: Admission.AdmissionState,
  observation = calm
): Either.Either<RequestGate.Entry, RequestGate.GateRefusal> =>
  Either.flatMap(
    RequestGate.enter({ now: 0, circuit: Circuit.closed, lifecycle, exiting: false, unloadedIdle: false, waking: false, admission }),
    (entry): Either.Either<RequestGate.Entry, RequestGate.GateRefusal> =>
      entry._tag === "admitted" ? Either.map(RequestGate.checkResources(observation, limits), () => entry) : Either.right(entry)
  )

/** A miniature manager over the pure core: what the Effect layer does, without effects. */
const simulate = (model: Uint8Array, spec: Integrity.ModelSpec, cuts: ReadonlyArray<number>) => {
  const verifier = Integrity.makeVerifier(spec)
  let written = 0
  for (const chunk of chunkAt(model, cuts)) {
    const step = verifier.update(chunk)
    if (Either.isLeft(step)) return { verdict: step, written, lifecycle: Lifecycle.initialState }
    written += chunk.length
  }
  const verdict = verifier.finalize()
  if (Either.isLeft(verdict)) return { verdict, written, lifecycle: Lifecycle.initialState }
  let lifecycle = assertRight(Lifecycle.transition(Lifecycle.initialState, "start"))
  lifecycle = assertRight(Lifecycle.transition(lifecycle, "health_ok"))
  return { verdict, written, lifecycle }
}

describe("decision core, integrated", () => {
  const model = bytesOf(64 * 1024, 42)
  const spec = specFor(model)

  it("a verified model leads to a ready runtime that serves", () => {
    const run = simulate(model, spec, [1000, 20_000, 50_000])
    assertRight(run.verdict)
    assert.strictEqual(run.written, model.length)
    assert.strictEqual(run.lifecycle, "ready")
    const admission = Admission.makeAdmissionState({ maxInFlight: 1, queueBound: 1 })
    assert.strictEqual(assertRight(gate(run.lifecycle, admission))._tag, "admitted")
  })

  it("a corrupted model never leaves stopped, so nothing can be served", () => {
    const corrupted = Uint8Array.from(model)
    corrupted[31_337] = (corrupted[31_337] ?? 0) ^ 0x80
    const run = simulate(corrupted, spec, [4096])
    assertLeft(run.verdict, "IntegrityError", "digest_mismatch")
    assert.strictEqual(run.lifecycle, "stopped")
    const admission = Admission.makeAdmissionState({ maxInFlight: 1, queueBound: 1 })
    assertLeft(gate(run.lifecycle, admission), "LifecycleError", "not_ready")
  })

  it("an oversized download is cut before its extra byte is written", () => {
    const longer = Uint8Array.of(...model, 0)
    const run = simulate(longer, spec, [65_536])
    assertLeft(run.verdict, "IntegrityError", "size_mismatch")
    assert.strictEqual(run.written, model.length)
    assert.strictEqual(run.lifecycle, "stopped")
  })

  it("a source outside the allowlist is refused before any byte is fetched", () => {
    const allow = ["https://huggingface.co/org/model"]
    assertLeft(Integrity.checkSource("https://huggingface.co.evil.io/org/model/m.gguf", allow), "IntegrityError", "source_not_allowed")
    assertRight(Integrity.checkSource("https://huggingface.co/org/model/resolve/main/m.gguf", allow))
  })

  it("a full request life: admit, queue, refuse, complete, dequeue, drain", () => {
    let lifecycle: Lifecycle.LifecycleState = "ready"
    let admission = Admission.makeAdmissionState({ maxInFlight: 2, queueBound: 1 })
    const step = (expected: "admitted" | "queued") => {
      const entry = assertRight(gate(lifecycle, admission))
      assert.strictEqual(entry._tag, expected)
      if (entry._tag !== "reload") admission = entry.admission
    }

    step("admitted")
    step("admitted")
    step("queued")
    assertLeft(gate(lifecycle, admission), "AdmissionError", "queue_full")

    admission = assertRight(Admission.recordComplete(admission))
    admission = assertRight(Admission.recordDequeue(admission))
    admission = assertRight(Admission.recordAdmit(admission))

    lifecycle = assertRight(Lifecycle.transition(lifecycle, "drain"))
    assertLeft(gate(lifecycle, admission), "LifecycleError", "not_ready")
    admission = assertRight(Admission.recordComplete(admission))
    admission = assertRight(Admission.recordComplete(admission))
    lifecycle = assertRight(Lifecycle.transition(lifecycle, "stopped"))
    assert.deepStrictEqual([lifecycle, admission.inFlight, admission.queued], ["stopped", 0, 0])
  })

  it("a crash while ready stops serving at once", () => {
    const lifecycle = assertRight(Lifecycle.transition("ready", "exited"))
    const admission = Admission.makeAdmissionState({ maxInFlight: 1, queueBound: 1 })
    assertLeft(gate(lifecycle, admission), "LifecycleError", "not_ready")
  })

  it("resources over a ceiling refuse a request that admission would take", () => {
    const admission = Admission.makeAdmissionState({ maxInFlight: 4, queueBound: 4 })
    assertLeft(gate("ready", admission, { ...calm, vramBytes: 3 * GiB }), "ResourceError", "vram_over_limit")
  })
})

describe("decision core, stress", () => {
  it("a 1000-request flood against 100 slots and 100 queue places: exact bounds", () => {
    let admission = Admission.makeAdmissionState({ maxInFlight: 100, queueBound: 100 })
    const tally = { admitted: 0, queued: 0, refused: 0 }
    for (let i = 0; i < 1000; i++) {
      const verdict = gate("ready", admission)
      if (Either.isRight(verdict) && verdict.right._tag !== "reload") {
        admission = verdict.right.admission
        tally[verdict.right._tag]++
      } else {
        assert.strictEqual(Either.isLeft(verdict) && verdict.left.reason, "queue_full")
        tally.refused++
      }
    }
    assert.deepStrictEqual(tally, { admitted: 100, queued: 100, refused: 800 })
    assert.deepStrictEqual([admission.inFlight, admission.queued], [100, 100])
  })

  it("a long random run of arrivals and completions drains to zero and never passes the bounds", () => {
    const bounds = { maxInFlight: 8, queueBound: 16 }
    let admission = Admission.makeAdmissionState(bounds)
    let seed = 7
    const next = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff)
    for (let i = 0; i < 100_000; i++) {
      const r = next() % 4
      if (r < 2) {
        const verdict = Admission.evaluate(admission)
        if (Either.isRight(verdict)) admission = assertRight(Admission.recordAdmit(admission))
        else if (verdict.left.reason === "at_capacity") admission = assertRight(Admission.recordEnqueue(admission))
      } else if (r === 2 && admission.inFlight > 0) {
        admission = assertRight(Admission.recordComplete(admission))
        if (admission.queued > 0) admission = assertRight(Admission.recordAdmit(assertRight(Admission.recordDequeue(admission))))
      } else if (r === 3 && admission.queued > 0) {
        admission = assertRight(Admission.recordDequeue(admission)) // a waiter gave up
      }
      assert.isTrue(admission.inFlight <= bounds.maxInFlight && admission.queued <= bounds.queueBound)
    }
    while (admission.queued > 0) admission = assertRight(Admission.recordDequeue(admission))
    while (admission.inFlight > 0) admission = assertRight(Admission.recordComplete(admission))
    assertLeft(Admission.recordComplete(admission), "AdmissionError", "no_in_flight_to_complete")
  })

  it("10,000 verifier streams of random lengths each reach exactly one verdict", () => {
    const data = bytesOf(257, 5)
    const spec = specFor(data)
    let ok = 0
    let exact = 0
    for (let n = 0; n < 10_000; n++) {
      const v = Integrity.makeVerifier(spec)
      const take = n % 300
      if (take === data.length) exact++
      const step = v.update(take <= data.length ? data.subarray(0, take) : Uint8Array.of(...data, ...new Uint8Array(take - data.length)))
      const verdict = Either.isLeft(step) ? step : v.finalize()
      if (Either.isRight(verdict)) ok++
      assert.isTrue(Either.isLeft(v.finalize()))
    }
    assert.isAbove(exact, 0)
    assert.strictEqual(ok, exact)
  })
})
