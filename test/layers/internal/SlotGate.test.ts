/** The FIFO slot gate alone: hand-over order, leaving, refusal, the drain's idle signal, and its counts. */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Deferred, Effect, Either, Exit, FastCheck as fc, Option } from "effect"
import * as Admission from "../../../src/domain/Admission.js"
import * as SlotGate from "../../../src/layers/internal/SlotGate.js"

type Gate = SlotGate.SlotGate<string, string>

/** Admit by the domain's step, as the manager does through `RequestGate.enter`. */
const admit = (gate: Gate): Gate => ({ ...gate, admission: Either.getOrThrow(Admission.recordAdmit(gate.admission)) })
const enqueue = (gate: Gate) => SlotGate.enqueue(gate, Either.getOrThrow(Admission.recordEnqueue(gate.admission)))

const poll = <A, E>(waiter: SlotGate.Waiter<A, E>) => Effect.map(Deferred.poll(waiter.deferred), Option.map(Effect.runSync))

describe("SlotGate", () => {
  it.effect("hands freed slots to the queue in arrival order, without freeing them", () =>
    Effect.gen(function*() {
      let gate: Gate = SlotGate.make({ maxInFlight: 1, queueBound: 3 })
      gate = admit(gate)
      const waiters: Array<SlotGate.Waiter<string, string>> = []
      for (let i = 0; i < 3; i++) {
        const [waiter, next] = enqueue(gate)
        waiters.push(waiter)
        gate = next
      }
      assert.deepStrictEqual([gate.admission.inFlight, gate.admission.queued], [1, 3])
      gate = SlotGate.release(gate, "runtime-1")
      // The head got the slot; the slot stayed in flight; the others still wait.
      assert.strictEqual(Option.getOrUndefined(yield* poll(waiters[0]!)), "runtime-1")
      assert.isTrue(waiters[0]!.granted)
      assert.isTrue(Option.isNone(yield* Deferred.poll(waiters[1]!.deferred)))
      assert.deepStrictEqual([gate.admission.inFlight, gate.admission.queued], [1, 2])
      gate = SlotGate.release(gate, "runtime-1")
      gate = SlotGate.release(gate, "runtime-1")
      assert.strictEqual(Option.getOrUndefined(yield* poll(waiters[2]!)), "runtime-1")
      assert.deepStrictEqual([gate.admission.inFlight, gate.admission.queued], [1, 0])
      gate = SlotGate.release(gate, "runtime-1")
      assert.deepStrictEqual([gate.admission.inFlight, gate.admission.queued], [0, 0])
    }))

  it.effect("without a runtime to hand over, a freed slot is freed and nobody in the queue is woken", () =>
    Effect.gen(function*() {
      let gate: Gate = admit(SlotGate.make({ maxInFlight: 1, queueBound: 1 }))
      const [waiter, next] = enqueue(gate)
      gate = SlotGate.release(next, undefined)
      assert.isTrue(Option.isNone(yield* Deferred.poll(waiter.deferred)))
      assert.deepStrictEqual([gate.admission.inFlight, gate.admission.queued], [0, 1])
    }))

  it("a waiter that leaves the queue gives its place back; one handed a slot as it left must give the slot back", () => {
    let gate: Gate = admit(SlotGate.make({ maxInFlight: 1, queueBound: 2 }))
    const [first, a] = enqueue(gate)
    const [second, b] = enqueue(a)
    gate = b
    const [giveBack, left] = SlotGate.leave(gate, second)
    assert.isFalse(giveBack)
    assert.deepStrictEqual([left.admission.queued, left.waiters.length], [1, 1])
    gate = SlotGate.release(left, "runtime")
    const [giveBackGranted, after] = SlotGate.leave(gate, first)
    assert.isTrue(giveBackGranted)
    assert.strictEqual(after, gate)
  })

  it.effect("refuseAll fails every waiter with the error and empties the queue; a refused waiter that leaves gives nothing back", () =>
    Effect.gen(function*() {
      let gate: Gate = admit(SlotGate.make({ maxInFlight: 1, queueBound: 2 }))
      const [first, a] = enqueue(gate)
      const [second, b] = enqueue(a)
      gate = SlotGate.refuseAll(b, "not_ready")
      for (const waiter of [first, second]) {
        const exit = yield* Effect.exit(Deferred.await(waiter.deferred))
        // Compared by hand: chai's deep equality does not see every difference between Effect data types.
        assert.isTrue(Exit.isFailure(exit) && Option.getOrUndefined(Cause.failureOption(exit.cause)) === "not_ready")
      }
      assert.deepStrictEqual([gate.admission.inFlight, gate.admission.queued, gate.waiters.length], [1, 0, 0])
      assert.isFalse(SlotGate.leave(gate, first)[0])
    }))

  it.effect("whenIdle completes at once with nothing in flight, else when the last slot is freed", () =>
    Effect.gen(function*() {
      const [idleNow] = SlotGate.whenIdle(SlotGate.make<string, string>({ maxInFlight: 2, queueBound: 0 }))
      assert.isTrue(yield* Deferred.isDone(idleNow))
      let gate: Gate = admit(admit(SlotGate.make({ maxInFlight: 2, queueBound: 0 })))
      const [idle, watched] = SlotGate.whenIdle(gate)
      gate = SlotGate.release(watched, undefined)
      assert.isFalse(yield* Deferred.isDone(idle))
      gate = SlotGate.release(gate, undefined)
      assert.isTrue(yield* Deferred.isDone(idle))
      assert.isUndefined(SlotGate.forgetIdle(gate).idle)
    }))

  it("releasing a slot nobody holds is a bug, not a count below zero", () => {
    assert.throws(() => SlotGate.release(SlotGate.make<string, string>({ maxInFlight: 1, queueBound: 1 }), undefined))
  })

  it.prop("any sequence of steps keeps the counts equal to the gate's own state, within the bounds, and serves in FIFO order", [
    fc.array(fc.constantFrom("arrive", "finish", "leave-head", "leave-tail", "refuse"), { maxLength: 120 })
  ], ([steps]) => {
    let gate: Gate = SlotGate.make({ maxInFlight: 2, queueBound: 3 })
    let arrivals = 0
    const served: Array<number> = []
    const ids = new Map<SlotGate.Waiter<string, string>, number>()
    for (const step of steps) {
      if (step === "arrive") {
        const id = arrivals++
        if (gate.admission.inFlight < gate.admission.maxInFlight) {
          gate = admit(gate)
          served.push(id)
        } else if (gate.admission.queued < gate.admission.queueBound) {
          const [waiter, next] = enqueue(gate)
          ids.set(waiter, id)
          gate = next
        }
      } else if (step === "finish" && gate.admission.inFlight > 0) {
        const head = gate.waiters[0]
        gate = SlotGate.release(gate, "runtime")
        if (head !== undefined) served.push(ids.get(head)!)
      } else if (step === "leave-head" || step === "leave-tail") {
        const waiter = step === "leave-head" ? gate.waiters[0] : gate.waiters.at(-1)
        if (waiter !== undefined) gate = SlotGate.leave(gate, waiter)[1]
      } else if (step === "refuse") {
        gate = SlotGate.refuseAll(gate, "not_ready")
      }
      assert.strictEqual(gate.admission.queued, gate.waiters.length)
      assert.isAtMost(gate.admission.inFlight, 2)
      assert.isAtMost(gate.admission.queued, 3)
      assert.isAtLeast(gate.admission.inFlight, 0)
    }
    // Served in arrival order: those who stayed were never overtaken.
    assert.deepStrictEqual(served, [...served].sort((a, b) => a - b))
  }, { fastCheck: { numRuns: 500 } })
})
