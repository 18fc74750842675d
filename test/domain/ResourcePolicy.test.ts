import { assert, describe, it } from "@effect/vitest"
import { Either, FastCheck as fc, Option, SchemaAST } from "effect"
import * as ResourcePolicy from "../../src/domain/ResourcePolicy.js"
import { assertLeft, assertRight } from "./fixtures.js"

const GiB = 1024 ** 3
const limits = { maxRamBytes: 8 * GiB, maxVramBytes: 4 * GiB, maxCpuPercent: 80 }
const noGpu = { maxRamBytes: 8 * GiB, maxCpuPercent: 80 }
const calm = { ramBytes: 1 * GiB, vramBytes: 0, cpuPercent: 10 }

describe("ResourcePolicy.checkLimits", () => {
  it("accepts limits with and without a VRAM ceiling", () => {
    assert.deepStrictEqual(assertRight(ResourcePolicy.checkLimits(limits)), limits)
    const without = assertRight(ResourcePolicy.checkLimits(noGpu))
    assert.isFalse("maxVramBytes" in without)
    assertRight(ResourcePolicy.checkLimits({ ...limits, maxCpuPercent: 100 }))
  })

  it("rejects Infinity, NaN, zero, negative values, CPU above 100 and an explicit undefined", () => {
    const bad: ReadonlyArray<unknown> = [
      { ...limits, maxVramBytes: Number.POSITIVE_INFINITY },
      { ...limits, maxRamBytes: Number.POSITIVE_INFINITY },
      { ...limits, maxRamBytes: Number.NaN },
      { ...limits, maxRamBytes: 0 },
      { ...limits, maxVramBytes: 0 },
      { ...limits, maxVramBytes: -1 },
      { ...limits, maxCpuPercent: 0 },
      { ...limits, maxCpuPercent: 100.5 },
      { ...limits, maxCpuPercent: "80" },
      { ...limits, maxVramBytes: undefined },
      { maxRamBytes: GiB },
      null,
      "8GiB"
    ]
    for (const l of bad) assertLeft(ResourcePolicy.checkLimits(l), "ResourceError", "malformed_limits")
  })
})

describe("ResourcePolicy.ResourceLimits", () => {
  it("names what each field expects (the config's messages)", () => {
    const { maxCpuPercent, maxRamBytes, maxVramBytes } = ResourcePolicy.ResourceLimits.fields
    assert.strictEqual(Option.getOrUndefined(SchemaAST.getIdentifierAnnotation(maxRamBytes.ast)), "a positive number")
    assert.strictEqual(Option.getOrUndefined(SchemaAST.getIdentifierAnnotation(maxVramBytes.from.ast)), "a positive number")
    assert.strictEqual(Option.getOrUndefined(SchemaAST.getIdentifierAnnotation(maxCpuPercent.ast)), "a percentage in (0, 100]")
  })
})

describe("ResourcePolicy.evaluateResources", () => {
  it("admits an observation within every ceiling, and one exactly at them", () => {
    assertRight(ResourcePolicy.evaluateResources(calm, limits))
    assertRight(ResourcePolicy.evaluateResources({ ramBytes: limits.maxRamBytes, vramBytes: limits.maxVramBytes, cpuPercent: 80 }, limits))
  })

  it("refuses the first ceiling passed, in the order RAM, VRAM, CPU", () => {
    const over = { ramBytes: limits.maxRamBytes + 1, vramBytes: limits.maxVramBytes + 1, cpuPercent: 81 }
    assertLeft(ResourcePolicy.evaluateResources(over, limits), "ResourceError", "ram_over_limit")
    assertLeft(ResourcePolicy.evaluateResources({ ...over, ramBytes: 0 }, limits), "ResourceError", "vram_over_limit")
    assertLeft(ResourcePolicy.evaluateResources({ ...over, ramBytes: 0, vramBytes: 0 }, limits), "ResourceError", "cpu_over_limit")
    assertLeft(ResourcePolicy.evaluateResources({ ...calm, cpuPercent: 80.01 }, limits), "ResourceError", "cpu_over_limit")
  })

  it("has no VRAM ceiling when maxVramBytes is left out", () => {
    assertRight(ResourcePolicy.evaluateResources({ ...calm, vramBytes: 512 * GiB }, noGpu))
    assertLeft(ResourcePolicy.evaluateResources({ ...calm, vramBytes: 512 * GiB, cpuPercent: 99 }, noGpu), "ResourceError", "cpu_over_limit")
  })

  it("fails closed on a reading that is no number: NaN passes no ceiling", () => {
    assertLeft(ResourcePolicy.evaluateResources({ ...calm, ramBytes: Number.NaN }, limits), "ResourceError", "ram_over_limit")
    assertLeft(ResourcePolicy.evaluateResources({ ...calm, vramBytes: Number.NaN }, limits), "ResourceError", "vram_over_limit")
    assertLeft(ResourcePolicy.evaluateResources({ ...calm, cpuPercent: Number.NaN }, limits), "ResourceError", "cpu_over_limit")
    // Without a VRAM ceiling VRAM is not compared at all.
    assertRight(ResourcePolicy.evaluateResources({ ...calm, vramBytes: Number.NaN }, noGpu))
  })

  it.prop("a verdict names the first ceiling passed, or admits", [
    fc.record({ ramBytes: fc.nat({ max: 16 * GiB }), vramBytes: fc.nat({ max: 8 * GiB }), cpuPercent: fc.double({ min: 0, max: 200, noNaN: true }) }),
    fc.boolean()
  ], ([obs, gpu]) => {
    const l = gpu ? limits : noGpu
    const result = ResourcePolicy.evaluateResources(obs, l)
    const expected = obs.ramBytes > l.maxRamBytes
      ? "ram_over_limit"
      : gpu && obs.vramBytes > limits.maxVramBytes
      ? "vram_over_limit"
      : obs.cpuPercent > l.maxCpuPercent
      ? "cpu_over_limit"
      : "ok"
    assert.strictEqual(Either.isRight(result) ? "ok" : result.left.reason, expected)
  }, { fastCheck: { numRuns: 1000 } })
})
