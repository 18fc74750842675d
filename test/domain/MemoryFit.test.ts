/**
 * The memory estimate against llama-server's own arithmetic: the KV cells and bytes it logged for
 * generated models (this build, `-lv 4`: "llama_kv_cache: size = … (N cells, L layers, P/P seqs)"),
 * and the fit against a ceiling.
 */
import { Either } from "effect"
import { describe, expect, it } from "vitest"
import { makeGguf, TINY } from "../../scripts/tiny-gguf.js"
import * as Gguf from "../../src/domain/Gguf.js"
import * as MemoryFit from "../../src/domain/MemoryFit.js"

const summaryOf = (bytes: Uint8Array) => Either.getOrThrow(Gguf.summarize(Either.getOrThrow(Gguf.read(bytes, bytes.length)) as Gguf.GgufFile))
const MiB = 1024 * 1024

describe("MemoryFit", () => {
  it("cells as llama-server allocates them: C / P per slot, rounded up to 256", () => {
    expect(MemoryFit.cellsFor(512, 4)).toEqual({ perSlot: 256, total: 1024 })
    expect(MemoryFit.cellsFor(2048, 4)).toEqual({ perSlot: 512, total: 2048 })
    expect(MemoryFit.cellsFor(4096, 1)).toEqual({ perSlot: 4096, total: 4096 })
    expect(MemoryFit.cellsFor(1000, 3)).toEqual({ perSlot: 512, total: 1536 })
    // The context is padded first, then divided (rounding down), then padded again (llama-context.cpp).
    expect(MemoryFit.cellsFor(300, 1)).toEqual({ perSlot: 512, total: 512 })
    expect(MemoryFit.cellsFor(1, 4)).toEqual({ perSlot: 256, total: 1024 })
    expect(MemoryFit.cellsFor(2304, 4)).toEqual({ perSlot: 768, total: 3072 })
  })

  it("the KV cache bytes llama-server logged for a 3-layer, 2-KV-head, head-16 model (f16)", () => {
    const summary = summaryOf(makeGguf({ ...TINY, layers: 3, embedding: 128, heads: 8, headsKv: 2, feedForward: 256, vocabulary: 1000, context: 1024, weights: "Q8_0" }))
    // Logged: 0.38 MiB (1024 cells over 4 seqs), 0.75 MiB (2048), 1.50 MiB (4096).
    for (const [context, parallel, logged] of [[512, 4, 0.375], [2048, 4, 0.75], [4096, 1, 1.5]] as const) {
      const e = MemoryFit.estimate(summary, { contextSize: context, parallel })
      expect(e.kvCacheBytes / MiB, `-c ${context} -np ${parallel}`).toBeCloseTo(logged, 5)
    }
  })

  it("weights are the tensors' bytes; the total is the sum of its parts; compute errs above the logged buffer", () => {
    const summary = summaryOf(makeGguf({ ...TINY, layers: 3, embedding: 128, heads: 8, headsKv: 2, feedForward: 256, vocabulary: 1000, context: 1024, weights: "Q8_0" }))
    const e = MemoryFit.estimate(summary, { contextSize: 4096, parallel: 1 })
    expect(e.weightsBytes).toBe(summary.weightsBytes)
    expect(e.totalBytes).toBe(e.weightsBytes + e.kvCacheBytes + e.computeBytes + e.overheadBytes)
    expect(e.computeBytes / MiB).toBeGreaterThan(6.26) // logged: CPU compute buffer size = 6.26 MiB
    // Without a context size, the model's own.
    expect(MemoryFit.estimate(summary, { parallel: 1 }).contextSize).toBe(1024)
    // Without -c, llama-server gives every slot the training context.
    expect(MemoryFit.estimate(summary, { parallel: 4 }).contextSize).toBe(4096)
    // Per-layer KV heads, when the file gives them, are summed layer by layer.
    const perLayer = MemoryFit.estimate({ ...summary, headCountKvPerLayer: [2, 0, 0] }, { contextSize: 256, parallel: 1 })
    expect(perLayer.kvCacheBytes).toBe(256 * 2 * (16 + 16) * 2)
  })

  it("fits: under or at the ceiling; over it, model_too_large with no number in it; NaN never fits", () => {
    const summary = summaryOf(makeGguf(TINY))
    const e = MemoryFit.estimate(summary, { parallel: 1 })
    expect(Either.isRight(MemoryFit.fits(e, e.totalBytes))).toBe(true)
    const over = MemoryFit.fits(e, e.totalBytes - 1)
    expect(Either.isLeft(over) && over.left.reason).toBe("model_too_large")
    expect(Either.isLeft(over) && /\d/.test(over.left.message)).toBe(false)
    expect(Either.isLeft(MemoryFit.fits({ ...e, totalBytes: NaN }, Number.MAX_SAFE_INTEGER))).toBe(true)
  })
})
