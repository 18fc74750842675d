import { assert, describe, it } from "@effect/vitest"
import { Either, FastCheck as fc } from "effect"
import type * as Admission from "../../src/domain/Admission.js"
import * as Circuit from "../../src/domain/Circuit.js"
import * as Lifecycle from "../../src/domain/Lifecycle.js"
import * as RequestGate from "../../src/domain/RequestGate.js"
import { assertLeft, assertRight } from "./fixtures.js"

const GiB = 1024 ** 3
const admission = (inFlight: number, queued: number, maxInFlight = 2, queueBound = 2): Admission.AdmissionState => ({
  maxInFlight,
  queueBound,
  inFlight,
  queued
})
const open: Circuit.CircuitState = { failures: [], openUntil: 1_000 }
const good: RequestGate.EntryInput = {
  now: 500,
  circuit: Circuit.closed,
  lifecycle: "ready",
  exiting: false,
  unloadedIdle: false,
  waking: false,
  admission: admission(0, 0)
}
const limits = { maxRamBytes: 4 * GiB, maxCpuPercent: 90 }
const calm = { ramBytes: GiB, vramBytes: 0, cpuPercent: 5 }

describe("RequestGate.enter", () => {
  it("admits a ready runtime with a free slot, counting the slot", () => {
    assert.deepStrictEqual(assertRight(RequestGate.enter(good)), { _tag: "admitted", admission: admission(1, 0) })
  })

  it("queues when every slot is taken and the queue has room, counting the place", () => {
    assert.deepStrictEqual(assertRight(RequestGate.enter({ ...good, admission: admission(2, 1) })), { _tag: "queued", admission: admission(2, 2) })
  })

  it("refuses queue_full when both are full, and with a queue bound of 0 as soon as the slots are", () => {
    assertLeft(RequestGate.enter({ ...good, admission: admission(2, 2) }), "AdmissionError", "queue_full")
    assertLeft(RequestGate.enter({ ...good, admission: admission(1, 0, 1, 0) }), "AdmissionError", "queue_full")
  })

  it("checks the circuit first: an open circuit refuses whatever else holds, and it closes at openUntil", () => {
    for (const lifecycle of Lifecycle.LifecycleState.literals) {
      assertLeft(RequestGate.enter({ ...good, circuit: open, lifecycle, unloadedIdle: true, admission: admission(2, 2) }), "CircuitOpenError", "circuit_open")
    }
    assert.strictEqual(assertRight(RequestGate.enter({ ...good, circuit: open, now: 1_000 }))._tag, "admitted")
  })

  it("then the lifecycle: every state but ready is not_ready, before admission is looked at", () => {
    for (const lifecycle of ["stopped", "starting", "draining"] as const) {
      assertLeft(RequestGate.enter({ ...good, lifecycle }), "LifecycleError", "not_ready")
      assertLeft(RequestGate.enter({ ...good, lifecycle, admission: admission(2, 2) }), "LifecycleError", "not_ready")
    }
  })

  it("a runtime whose exit is not handled yet serves nothing, even in ready", () => {
    assertLeft(RequestGate.enter({ ...good, exiting: true }), "LifecycleError", "not_ready")
  })

  it("a runtime loaded on demand: the first request queues and starts it, the rest queue until it is ready; stopped otherwise is not_ready", () => {
    assert.deepStrictEqual(assertRight(RequestGate.enter({ ...good, lifecycle: "stopped", unloadedIdle: true })), { _tag: "reload", admission: admission(0, 1) })
    // A load already under way, starting, or an eviction draining: wait for it, even with slots free.
    assert.deepStrictEqual(assertRight(RequestGate.enter({ ...good, lifecycle: "stopped", unloadedIdle: true, waking: true })), { _tag: "queued", admission: admission(0, 1) })
    for (const lifecycle of ["starting", "draining"] as const) {
      assert.deepStrictEqual(assertRight(RequestGate.enter({ ...good, lifecycle, unloadedIdle: true, admission: admission(0, 1) })), { _tag: "queued", admission: admission(0, 2) })
    }
    // The wait is bounded by the queue.
    assertLeft(RequestGate.enter({ ...good, lifecycle: "stopped", unloadedIdle: true, admission: admission(0, 2) }), "AdmissionError", "queue_full")
    assertLeft(RequestGate.enter({ ...good, lifecycle: "starting", unloadedIdle: true, admission: admission(0, 2) }), "AdmissionError", "queue_full")
    assertLeft(RequestGate.enter({ ...good, lifecycle: "starting" }), "LifecycleError", "not_ready")
  })

  it.prop("admits only when the circuit is closed, the runtime ready and alive, and a slot free; never past a bound", [
    fc.record({
      now: fc.integer({ min: 0, max: 2_000 }),
      openUntil: fc.option(fc.integer({ min: 0, max: 2_000 }), { nil: undefined }),
      lifecycle: fc.constantFrom(...Lifecycle.LifecycleState.literals),
      exiting: fc.boolean(),
      unloadedIdle: fc.boolean(),
      waking: fc.boolean(),
      maxInFlight: fc.integer({ min: 1, max: 4 }),
      queueBound: fc.integer({ min: 0, max: 4 }),
      inFlightShare: fc.double({ min: 0, max: 1, noNaN: true }),
      queuedShare: fc.double({ min: 0, max: 1, noNaN: true })
    })
  ], ([r]) => {
    const inFlight = Math.round(r.inFlightShare * r.maxInFlight)
    const queued = Math.round(r.queuedShare * r.queueBound)
    const input: RequestGate.EntryInput = {
      now: r.now,
      circuit: { failures: [], openUntil: r.openUntil },
      lifecycle: r.lifecycle,
      exiting: r.exiting,
      unloadedIdle: r.unloadedIdle,
      waking: r.waking,
      admission: admission(inFlight, queued, r.maxInFlight, r.queueBound)
    }
    const result = RequestGate.enter(input)
    const circuitOpen = r.openUntil !== undefined && r.now < r.openUntil
    const expected = circuitOpen
      ? "circuit_open"
      : r.unloadedIdle && r.lifecycle !== "ready"
      ? (queued >= r.queueBound ? "queue_full" : r.lifecycle === "stopped" && !r.waking ? "reload" : "queued")
      : r.lifecycle !== "ready" || r.exiting
      ? "not_ready"
      : inFlight < r.maxInFlight
      ? "admitted"
      : queued < r.queueBound
      ? "queued"
      : "queue_full"
    assert.strictEqual(Either.isRight(result) ? result.right._tag : result.left.reason, expected)
    if (Either.isRight(result)) {
      assert.isAtMost(result.right.admission.inFlight, r.maxInFlight)
      assert.isAtMost(result.right.admission.queued, r.queueBound)
    }
  }, { fastCheck: { numRuns: 2000 } })
})

describe("RequestGate.checkResources", () => {
  it("with a slot held, applies the ceilings in the order RAM, VRAM, CPU", () => {
    assertRight(RequestGate.checkResources(calm, limits))
    assertLeft(RequestGate.checkResources({ ...calm, ramBytes: 5 * GiB, cpuPercent: 95 }, limits), "ResourceError", "ram_over_limit")
    assertLeft(RequestGate.checkResources({ ...calm, vramBytes: 2 * GiB, cpuPercent: 95 }, { ...limits, maxVramBytes: GiB }), "ResourceError", "vram_over_limit")
    assertLeft(RequestGate.checkResources({ ...calm, cpuPercent: 95 }, limits), "ResourceError", "cpu_over_limit")
  })
})
