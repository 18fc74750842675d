import { assert, describe, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import * as Budget from "../../src/domain/Budget.js"

const MiB = 1024 * 1024
const held = (name: string, estimateMiB: number, patch: Partial<Budget.Held> = {}): Budget.Held => ({
  name,
  estimateBytes: estimateMiB * MiB,
  ramBytes: 0,
  vramBytes: 0,
  idle: true,
  lastActivity: 0,
  ...patch
})
const limits = { maxRamBytes: 100 * MiB, maxCpuPercent: 100 }

describe("Budget.plan", () => {
  it("fits when the newcomer's estimate and every held model's cost are within the RAM ceiling (equal is within)", () => {
    assert.deepStrictEqual(Budget.plan([], 100 * MiB, limits), { _tag: "fits" })
    assert.deepStrictEqual(Budget.plan([held("a", 60)], 40 * MiB, limits), { _tag: "fits" })
    assert.deepStrictEqual(Budget.plan([held("a", 60)], 40 * MiB + 1, limits), { _tag: "evict", names: ["a"] })
  })

  it("a held model counts its measured RAM when that is higher than its estimate", () => {
    assert.strictEqual(Budget.cost(held("a", 10, { ramBytes: 30 * MiB })), 30 * MiB)
    assert.strictEqual(Budget.cost(held("a", 10, { ramBytes: 5 * MiB })), 10 * MiB)
    assert.deepStrictEqual(Budget.plan([held("a", 10, { ramBytes: 70 * MiB, idle: false })], 40 * MiB, limits), { _tag: "wait" })
    // A measurement that is no number counts as over any budget.
    assert.strictEqual(Budget.cost(held("a", 10, { ramBytes: Number.NaN })), Infinity)
  })

  it("evicts idle models only, least recently used first, and no more than needed", () => {
    const models = [
      held("busy-old", 30, { idle: false, lastActivity: 1 }),
      held("idle-new", 30, { lastActivity: 30 }),
      held("idle-old", 30, { lastActivity: 10 }),
      held("idle-mid", 5, { lastActivity: 20 })
    ]
    assert.deepStrictEqual(Budget.plan(models, 30 * MiB, limits), { _tag: "evict", names: ["idle-old"] })
    assert.deepStrictEqual(Budget.plan(models, 60 * MiB, limits), { _tag: "evict", names: ["idle-old", "idle-mid", "idle-new"] })
  })

  it("waits when even every idle model gone would not make room, and never when the newcomer alone is over", () => {
    assert.deepStrictEqual(Budget.plan([held("a", 70, { idle: false }), held("b", 20)], 40 * MiB, limits), { _tag: "wait" })
    assert.deepStrictEqual(Budget.plan([], 100 * MiB + 1, limits), { _tag: "never" })
  })

  it("counts measured VRAM against a VRAM ceiling, and evicts for it", () => {
    const gpu = { ...limits, maxVramBytes: 8 * MiB }
    assert.deepStrictEqual(Budget.plan([held("a", 10, { vramBytes: 9 * MiB })], 10 * MiB, gpu), { _tag: "evict", names: ["a"] })
    assert.deepStrictEqual(Budget.plan([held("a", 10, { vramBytes: 9 * MiB, idle: false })], 10 * MiB, gpu), { _tag: "wait" })
    assert.deepStrictEqual(Budget.plan([held("a", 10, { vramBytes: 9 * MiB })], 10 * MiB, limits), { _tag: "fits" })
    // Exactly at the VRAM ceiling is within it (as RAM: equal is within).
    assert.deepStrictEqual(Budget.plan([held("a", 10, { vramBytes: 8 * MiB })], 10 * MiB, gpu), { _tag: "fits" })
    assert.deepStrictEqual(Budget.plan([held("a", 10, { vramBytes: 8 * MiB + 1 })], 10 * MiB, gpu), { _tag: "evict", names: ["a"] })
  })

  it.prop("after the plan, what stays plus the newcomer is within the budget; only idle models go; a wait means no idle set would do", [
    fc.array(fc.record({
      estimate: fc.integer({ min: 1, max: 60 }),
      ram: fc.integer({ min: 0, max: 80 }),
      idle: fc.boolean(),
      lastActivity: fc.integer({ min: 0, max: 1000 })
    }), { maxLength: 8 }),
    fc.integer({ min: 1, max: 120 })
  ], ([models, incoming]) => {
    const all = models.map((m, i) => held(`m${i}`, m.estimate, { ramBytes: m.ram * MiB, idle: m.idle, lastActivity: m.lastActivity }))
    const plan = Budget.plan(all, incoming * MiB, limits)
    const total = (list: ReadonlyArray<Budget.Held>) => list.reduce((n, h) => n + Budget.cost(h), 0)
    switch (plan._tag) {
      case "never":
        assert.isAbove(incoming * MiB, limits.maxRamBytes)
        break
      case "fits":
        assert.isAtMost(total(all) + incoming * MiB, limits.maxRamBytes)
        break
      case "evict": {
        const gone = new Set(plan.names)
        assert.isTrue(all.filter((h) => gone.has(h.name)).every((h) => h.idle))
        assert.isAtMost(total(all.filter((h) => !gone.has(h.name))) + incoming * MiB, limits.maxRamBytes)
        // No more than needed: keeping the last one chosen would not fit.
        const last = all.find((h) => h.name === plan.names.at(-1))!
        assert.isAbove(total(all.filter((h) => !gone.has(h.name))) + Budget.cost(last) + incoming * MiB, limits.maxRamBytes)
        break
      }
      case "wait":
        assert.isAbove(total(all.filter((h) => !h.idle)) + incoming * MiB, limits.maxRamBytes)
    }
  }, { fastCheck: { numRuns: 2000 } })
})
