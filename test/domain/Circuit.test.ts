import { assert, describe, it } from "@effect/vitest"
import { Either, FastCheck as fc } from "effect"
import * as Circuit from "../../src/domain/Circuit.js"
import { assertLeft, assertRight } from "./fixtures.js"

const policy: Circuit.CircuitPolicy = { maxFailures: 3, windowMillis: 60_000, cooldownMillis: 120_000 }
const failAt = (state: Circuit.CircuitState, ...times: ReadonlyArray<number>) =>
  times.reduce((s, now) => Circuit.recordFailure(s, policy, now), state)

describe("Circuit", () => {
  it("starts closed, with no failures counted", () => {
    assert.deepStrictEqual(Circuit.closed, { failures: [], openUntil: undefined })
    assert.isFalse(Circuit.isOpen(Circuit.closed, 0))
    assert.isFalse(Circuit.isOpen(Circuit.closed, Number.MIN_SAFE_INTEGER))
    assertRight(Circuit.check(Circuit.closed, 0))
  })

  it("opens at maxFailures inside the window, for the cooldown, then closes", () => {
    const twice = failAt(Circuit.closed, 0, 10_000)
    assert.isFalse(Circuit.isOpen(twice, 10_000))
    const opened = failAt(twice, 20_000)
    assert.deepStrictEqual(opened, { failures: [], openUntil: 140_000 })
    assertLeft(Circuit.check(opened, 139_999), "CircuitOpenError", "circuit_open")
    assertRight(Circuit.check(opened, 140_000))
  })

  it("forgets failures older than the window", () => {
    const spread = failAt(Circuit.closed, 0, 30_000, 60_000)
    // The first one left the window at 60 s exactly: two remain.
    assert.isFalse(Circuit.isOpen(spread, 60_000))
    assert.deepStrictEqual(spread.failures, [30_000, 60_000])
    assert.isTrue(Circuit.isOpen(failAt(spread, 89_999), 89_999))
  })

  it("after a cooldown it takes maxFailures fresh failures to open again", () => {
    const opened = failAt(Circuit.closed, 0, 1, 2)
    const later = failAt(opened, 200_000, 200_001)
    assert.isFalse(Circuit.isOpen(later, 200_001))
    assert.isTrue(Circuit.isOpen(failAt(later, 200_002), 200_002))
  })

  it.prop("open exactly when maxFailures failures fall inside one window (and the cooldown has not passed)", [
    fc.array(fc.integer({ min: 0, max: 500_000 }), { maxLength: 12 }).map((xs) => [...xs].sort((a, b) => a - b))
  ], ([times]) => {
    let state = Circuit.closed
    let openUntil: number | undefined
    let window: Array<number> = []
    for (const now of times) {
      state = Circuit.recordFailure(state, policy, now)
      window = [...window.filter((t) => now - t < policy.windowMillis), now]
      if (window.length >= policy.maxFailures) {
        openUntil = now + policy.cooldownMillis
        window = []
      }
      assert.strictEqual(state.openUntil, openUntil)
      assert.strictEqual(Either.isLeft(Circuit.check(state, now)), openUntil !== undefined && now < openUntil)
    }
  }, { fastCheck: { numRuns: 500 } })
})
