import { assert, describe, it } from "@effect/vitest"
import { Either, FastCheck as fc, Schema } from "effect"
import * as Lifecycle from "../../src/domain/Lifecycle.js"
import { assertLeft, assertRight } from "./fixtures.js"

const states = Lifecycle.LifecycleState.literals
const events = Lifecycle.LifecycleEvent.literals

// The whole table, written out once more by hand so that a change to the module shows up here.
const allowed: ReadonlyArray<readonly [Lifecycle.LifecycleState, Lifecycle.LifecycleEvent, Lifecycle.LifecycleState]> = [
  ["stopped", "start", "starting"],
  ["starting", "health_ok", "ready"],
  ["starting", "health_fail", "stopped"],
  ["starting", "exited", "stopped"],
  ["ready", "drain", "draining"],
  ["ready", "exited", "stopped"],
  ["draining", "stopped", "stopped"],
  ["draining", "exited", "stopped"]
]

describe("Lifecycle.transition", () => {
  it("starts stopped", () => {
    assert.strictEqual(Lifecycle.initialState, "stopped")
  })

  for (const [from, event, to] of allowed) {
    it(`${from} --${event}--> ${to}`, () => {
      assert.strictEqual(assertRight(Lifecycle.transition(from, event)), to)
    })
  }

  it("refuses every pair that is not in the table with invalid_transition", () => {
    let refused = 0
    for (const from of states) {
      for (const event of events) {
        if (allowed.some(([f, e]) => f === from && e === event)) continue
        assertLeft(Lifecycle.transition(from, event), "LifecycleError", "invalid_transition")
        refused += 1
      }
    }
    assert.strictEqual(refused, states.length * events.length - allowed.length)
  })

  it("walks the full cycle and a crash", () => {
    const run = (start: Lifecycle.LifecycleState, path: ReadonlyArray<Lifecycle.LifecycleEvent>) =>
      path.reduce<Lifecycle.LifecycleState>((s, e) => assertRight(Lifecycle.transition(s, e)), start)
    assert.strictEqual(run("stopped", ["start", "health_ok", "drain", "stopped"]), "stopped")
    assert.strictEqual(run("stopped", ["start", "health_ok", "exited", "start", "health_fail", "start"]), "starting")
  })

  it("the state and event schemas (the parse boundary) take the table's names and nothing else", () => {
    for (const state of ["running", "READY", "", null, undefined, 1, { state: "ready" }]) assert.isFalse(Schema.is(Lifecycle.LifecycleState)(state))
    for (const event of ["restart", "START", "", null, undefined, 0, ["start"]]) assert.isFalse(Schema.is(Lifecycle.LifecycleEvent)(event))
  })

  it.prop("random event sequences reach ready only through start then health_ok", [fc.array(fc.constantFrom(...events), { maxLength: 40 })], ([sequence]) => {
    let state: Lifecycle.LifecycleState = "stopped"
    let previous: { state: Lifecycle.LifecycleState; event: Lifecycle.LifecycleEvent } | undefined
    for (const event of sequence) {
      const next = Lifecycle.transition(state, event)
      if (Either.isLeft(next)) continue // refused: the state stays as it was
      if (next.right === "ready") {
        assert.strictEqual(event, "health_ok")
        assert.strictEqual(state, "starting")
        assert.strictEqual(previous?.event, "start")
      }
      previous = { state, event }
      state = next.right
    }
    assert.include(states, state)
  }, { fastCheck: { numRuns: 1000 } })
})

describe("Lifecycle.canServe", () => {
  it("is true for ready and for nothing else", () => {
    assert.isTrue(Lifecycle.canServe("ready"))
    for (const s of ["stopped", "starting", "draining"] as const) assert.isFalse(Lifecycle.canServe(s))
  })

  it("requireReady refuses every other state with not_ready", () => {
    assert.strictEqual(assertRight(Lifecycle.requireReady("ready")), "ready")
    for (const s of ["stopped", "starting", "draining"] as const) {
      assertLeft(Lifecycle.requireReady(s), "LifecycleError", "not_ready")
    }
  })
})
