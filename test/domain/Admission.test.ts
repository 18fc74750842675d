import { assert, describe, it } from "@effect/vitest"
import { Either, FastCheck as fc, Option, Schema, SchemaAST } from "effect"
import * as Admission from "../../src/domain/Admission.js"
import { assertLeft, assertRight } from "./fixtures.js"

const state = (maxInFlight: number, queueBound: number, inFlight: number, queued: number): Admission.AdmissionState => ({
  maxInFlight,
  queueBound,
  inFlight,
  queued
})

describe("Admission.makeAdmissionState", () => {
  it("starts empty with the given limits", () => {
    assert.deepStrictEqual(Admission.makeAdmissionState({ maxInFlight: 4, queueBound: 16 }), state(4, 16, 0, 0))
  })

  it("the limits schema (the parse boundary) takes a positive maxInFlight and a non-negative queueBound, nothing else", () => {
    const decode = Schema.decodeUnknownEither(Admission.AdmissionLimits)
    assert.isTrue(Either.isRight(decode({ maxInFlight: 1, queueBound: 0 })))
    const bad: ReadonlyArray<unknown> = [
      { maxInFlight: 0, queueBound: 1 },
      { maxInFlight: 1, queueBound: -1 },
      { maxInFlight: -1, queueBound: 1 },
      { maxInFlight: 1.5, queueBound: 1 },
      { maxInFlight: 1, queueBound: Number.NaN },
      { maxInFlight: Number.POSITIVE_INFINITY, queueBound: 1 },
      { maxInFlight: Number.MAX_SAFE_INTEGER + 1, queueBound: 1 },
      { maxInFlight: "4", queueBound: 1 },
      { maxInFlight: 4 },
      null,
      undefined,
      "4/16"
    ]
    for (const limits of bad) assert.isTrue(Either.isLeft(decode(limits)), JSON.stringify(limits))
  })

  it("the limits schema names what each field expects (the config's messages)", () => {
    assert.strictEqual(Option.getOrUndefined(SchemaAST.getIdentifierAnnotation(Admission.AdmissionLimits.fields.maxInFlight.ast)), "a positive integer")
    assert.strictEqual(Option.getOrUndefined(SchemaAST.getIdentifierAnnotation(Admission.AdmissionLimits.fields.queueBound.ast)), "a non-negative integer")
  })

  it("a queue bound of 0 refuses at once when every slot is taken", () => {
    const s = assertRight(Admission.recordAdmit(Admission.makeAdmissionState({ maxInFlight: 1, queueBound: 0 })))
    assertLeft(Admission.evaluate(s), "AdmissionError", "queue_full")
    assertLeft(Admission.recordEnqueue(s), "AdmissionError", "queue_full")
  })
})

describe("Admission.evaluate", () => {
  it("admits while a slot is free", () => {
    assertRight(Admission.evaluate(state(2, 1, 0, 0)))
    assertRight(Admission.evaluate(state(2, 1, 1, 1)))
  })

  it("answers at_capacity when slots are full and the queue has room", () => {
    assertLeft(Admission.evaluate(state(2, 2, 2, 0)), "AdmissionError", "at_capacity")
    assertLeft(Admission.evaluate(state(2, 2, 2, 1)), "AdmissionError", "at_capacity")
  })

  it("answers queue_full when both are full", () => {
    assertLeft(Admission.evaluate(state(2, 2, 2, 2)), "AdmissionError", "queue_full")
    assertLeft(Admission.evaluate(state(1, 1, 1, 1)), "AdmissionError", "queue_full")
  })
})

describe("Admission steps", () => {
  it("admits up to maxInFlight, then refuses at_capacity", () => {
    let s = state(2, 1, 0, 0)
    s = assertRight(Admission.recordAdmit(s))
    s = assertRight(Admission.recordAdmit(s))
    assert.strictEqual(s.inFlight, 2)
    assertLeft(Admission.recordAdmit(s), "AdmissionError", "at_capacity")
  })

  it("completes down to zero, then refuses no_in_flight_to_complete", () => {
    let s = state(2, 1, 2, 0)
    s = assertRight(Admission.recordComplete(s))
    s = assertRight(Admission.recordComplete(s))
    assert.strictEqual(s.inFlight, 0)
    assertLeft(Admission.recordComplete(s), "AdmissionError", "no_in_flight_to_complete")
  })

  it("enqueues up to queueBound, then refuses queue_full", () => {
    let s = state(1, 2, 1, 0)
    s = assertRight(Admission.recordEnqueue(s))
    s = assertRight(Admission.recordEnqueue(s))
    assert.strictEqual(s.queued, 2)
    assertLeft(Admission.recordEnqueue(s), "AdmissionError", "queue_full")
  })

  it("dequeues down to zero, then refuses nothing_queued", () => {
    let s = state(1, 2, 0, 2)
    s = assertRight(Admission.recordDequeue(s))
    s = assertRight(Admission.recordDequeue(s))
    assert.strictEqual(s.queued, 0)
    assertLeft(Admission.recordDequeue(s), "AdmissionError", "nothing_queued")
  })

  it("never mutates its input and keeps the limits", () => {
    const s = Object.freeze(state(3, 3, 1, 1))
    const steps = [Admission.recordAdmit, Admission.recordComplete, Admission.recordEnqueue, Admission.recordDequeue]
    for (const step of steps) {
      const next = assertRight(step(s))
      assert.strictEqual(next.maxInFlight, 3)
      assert.strictEqual(next.queueBound, 3)
      assert.notStrictEqual(next, s)
    }
    assert.deepStrictEqual(s, state(3, 3, 1, 1))
  })

  it.prop("random admission operations never go below zero or past the bounds", [
    fc.integer({ min: 1, max: 8 }),
    fc.integer({ min: 0, max: 8 }),
    fc.array(fc.constantFrom<"admit" | "complete" | "enqueue" | "dequeue" | "evaluate">("admit", "complete", "enqueue", "dequeue", "evaluate"), { maxLength: 200 })
  ], ([maxInFlight, queueBound, ops]) => {
    let s = Admission.makeAdmissionState({ maxInFlight, queueBound })
    for (const op of ops) {
      if (op === "evaluate") {
        const verdict = Admission.evaluate(s)
        const expected = s.inFlight < maxInFlight ? "ok" : s.queued < queueBound ? "at_capacity" : "queue_full"
        assert.strictEqual(Either.isRight(verdict) ? "ok" : verdict.left.reason, expected)
        continue
      }
      const steps: Record<typeof op, (s: Admission.AdmissionState) => Either.Either<Admission.AdmissionState, unknown>> = {
        admit: Admission.recordAdmit,
        complete: Admission.recordComplete,
        enqueue: Admission.recordEnqueue,
        dequeue: Admission.recordDequeue
      }
      const next = steps[op](s)
      if (Either.isRight(next)) s = next.right
      assert.isAtLeast(s.inFlight, 0)
      assert.isAtMost(s.inFlight, maxInFlight)
      assert.isAtLeast(s.queued, 0)
      assert.isAtMost(s.queued, queueBound)
      assert.strictEqual(s.maxInFlight, maxInFlight)
      assert.strictEqual(s.queueBound, queueBound)
    }
  }, { fastCheck: { numRuns: 500 } })
})
