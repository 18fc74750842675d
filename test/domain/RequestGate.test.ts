import { assert, describe, it } from "@effect/vitest"
import { Either, FastCheck as fc } from "effect"
import * as RequestGate from "../../src/domain/RequestGate.js"
import { assertLeft, assertRight } from "./fixtures.js"

const GiB = 1024 ** 3
const good = {
  lifecycle: "ready",
  admission: { maxInFlight: 2, queueBound: 2, inFlight: 0, queued: 0 },
  observation: { ramBytes: GiB, vramBytes: 0, cpuPercent: 5 },
  limits: { maxRamBytes: 4 * GiB, maxCpuPercent: 90 }
} as const

describe("RequestGate.decide", () => {
  it("admits a ready runtime with room and headroom", () => {
    assertRight(RequestGate.decide(good))
  })

  it("refuses every state but ready with not_ready, before looking at anything else", () => {
    for (const lifecycle of ["stopped", "starting", "draining", "unknown"]) {
      assertLeft(RequestGate.decide({ ...good, lifecycle }), "LifecycleError", "not_ready")
      assertLeft(
        RequestGate.decide({ ...good, lifecycle, admission: { ...good.admission, inFlight: 2, queued: 2 }, observation: { ...good.observation, ramBytes: 8 * GiB } }),
        "LifecycleError",
        "not_ready"
      )
    }
  })

  it("then applies admission", () => {
    const over = { ...good.observation, ramBytes: 8 * GiB }
    assertLeft(RequestGate.decide({ ...good, admission: { ...good.admission, inFlight: 2 }, observation: over }), "AdmissionError", "at_capacity")
    assertLeft(RequestGate.decide({ ...good, admission: { ...good.admission, inFlight: 2, queued: 2 } }), "AdmissionError", "queue_full")
    assertLeft(RequestGate.decide({ ...good, admission: { inFlight: 0 } }), "AdmissionError", "malformed_admission_state")
  })

  it("then applies the resource ceilings", () => {
    assertLeft(RequestGate.decide({ ...good, observation: { ...good.observation, ramBytes: 5 * GiB } }), "ResourceError", "ram_over_limit")
    assertLeft(RequestGate.decide({ ...good, limits: { ...good.limits, maxVramBytes: GiB }, observation: { ...good.observation, vramBytes: 2 * GiB } }), "ResourceError", "vram_over_limit")
    assertLeft(RequestGate.decide({ ...good, observation: { ...good.observation, cpuPercent: 95 } }), "ResourceError", "cpu_over_limit")
    assertLeft(RequestGate.decide({ ...good, observation: { ramBytes: -1 } }), "ResourceError", "malformed_observation")
    assertLeft(RequestGate.decide({ ...good, limits: { maxRamBytes: Number.POSITIVE_INFINITY, maxCpuPercent: 1 } }), "ResourceError", "malformed_limits")
  })

  it("refuses missing or non-object parameters with malformed_request_params", () => {
    const { lifecycle: _l, ...noLifecycle } = good
    const { limits: _m, ...noLimits } = good
    const { admission: _a, ...noAdmission } = good
    const { observation: _o, ...noObservation } = good
    for (const input of [null, undefined, "ready", 42, [], noLifecycle, noAdmission, noObservation, noLimits, { ...good, observation: null }, { ...good, admission: undefined }]) {
      assertLeft(RequestGate.decide(input), "RequestGateError", "malformed_request_params")
    }
  })

  it("refuses hostile inputs that throw when read, without throwing", () => {
    const throwing = Object.defineProperty({ ...good }, "admission", {
      get() {
        throw new Error("https://secret.example/token")
      }
    })
    assertLeft(RequestGate.decide(throwing), "RequestGateError", "malformed_request_params")
    const { proxy, revoke } = Proxy.revocable({ ...good }, {})
    revoke()
    assertLeft(RequestGate.decide(proxy), "RequestGateError", "malformed_request_params")
    const deepThrow = { ...good, observation: Object.defineProperty({}, "ramBytes", { get() { throw new Error("boom") }, enumerable: true }) }
    assertLeft(RequestGate.decide(deepThrow), "RequestGateError", "malformed_request_params")
  })

  it.prop("any input at all yields a decision and never a throw", [fc.anything({ withBigInt: true, withMap: true, withSet: true, withTypedArray: true, withNullPrototype: true })], ([input]) => {
    const result = RequestGate.decide(input)
    assert.isTrue(Either.isEither(result))
  }, { fastCheck: { numRuns: 2000 } })

  it.prop("any field values yield a decision; only a fully valid ready input is admitted", [
    fc.record({
      lifecycle: fc.oneof(fc.constantFrom("ready", "stopped", "starting", "draining"), fc.anything()),
      admission: fc.oneof(fc.record({ maxInFlight: fc.integer({ min: -1, max: 3 }), queueBound: fc.integer({ min: -1, max: 3 }), inFlight: fc.integer({ min: -1, max: 4 }), queued: fc.integer({ min: -1, max: 4 }) }), fc.anything()),
      observation: fc.oneof(fc.record({ ramBytes: fc.double(), vramBytes: fc.double(), cpuPercent: fc.double() }), fc.anything()),
      limits: fc.oneof(fc.record({ maxRamBytes: fc.double(), maxCpuPercent: fc.double() }), fc.anything())
    }, { requiredKeys: [] })
  ], ([input]) => {
    const result = RequestGate.decide(input)
    if (Either.isRight(result)) {
      assert.strictEqual(input.lifecycle, "ready")
      const a = input.admission as { inFlight: number; maxInFlight: number }
      assert.isBelow(a.inFlight, a.maxInFlight)
    }
  }, { fastCheck: { numRuns: 2000 } })
})
