/**
 * What a model will cost in memory, before any process loads it, and whether that fits the
 * ceiling. Pure: from a GGUF summary and the context size and slots the runtime is started with.
 *
 * llama-server's own arithmetic (this build, llama.cpp de3ff81), read from its code and confirmed by
 * its log on generated models (docs/benchmarks.md):
 * - **KV cache.** `-c C` is the total shared by `-np P` slots; without a unified cache each slot
 *   gets `C / P` cells rounded up to a multiple of 256 (`-c 512 -np 4` allocates 1024 cells,
 *   `-c 2048 -np 4` 2048). Per cell and layer: KV heads × (key + value length) × 2 bytes (f16).
 *   Sliding-window layers would need fewer cells; they are counted in full, erring high.
 * - **Compute buffers** (fitted to the sizes llama-server logs, with flash attention on, its CPU
 *   default): `n_ubatch × 4 × max(4 × feed-forward + embedding, 6.5 × embedding)` for the
 *   activations, plus `n_ubatch × 2` bytes per cell of a slot (the mask), plus the output buffer
 *   (`n_vocab × slots × 4`: one row per slot, so the vocabulary barely counts), all +10 %.
 * - **Weights**: the tensors' bytes, all of them resident after the first answer.
 * - **Overhead**: the runtime's own code and buffers beyond those, about 18–19 MiB here (mostly
 *   shared libraries, measured after long prompts); 20 MiB is counted.
 * - **Context.** Without `-c`, llama-server gives each slot the model's whole training context, so
 *   the default context here is that times the slots.
 */
import { Either } from "effect"
import { type Refusal, refusal, ResourceError } from "./Errors.js"
import type { GgufSummary } from "./Gguf.js"

export const CELL_ROUND = 256
export const UBATCH = 512
export const OVERHEAD_BYTES = 20 * 1024 * 1024
const F16 = 2

export interface Estimate {
  readonly weightsBytes: number
  readonly kvCacheBytes: number
  readonly computeBytes: number
  readonly overheadBytes: number
  readonly totalBytes: number
  readonly contextSize: number
  readonly parallel: number
  /** KV cells allocated, over all slots. */
  readonly cells: number
}

const pad = (n: number) => Math.ceil(n / CELL_ROUND) * CELL_ROUND

/**
 * Cells llama-server allocates for `-c contextSize -np parallel` (non-unified cache), as
 * `llama_context`'s constructor computes them (src/llama-context.cpp): the context padded to 256,
 * divided by the slots (rounding down), that padded to 256, times the slots.
 */
export const cellsFor = (contextSize: number, parallel: number): { readonly perSlot: number; readonly total: number } => {
  const perSlot = Math.max(CELL_ROUND, pad(Math.floor(pad(contextSize) / parallel)))
  return { perSlot, total: perSlot * parallel }
}

/**
 * The estimate for `summary` started with `contextSize` (when not given, the model's own context
 * length for each slot, as llama-server does) and `parallel` slots. Missing shape fields count as their largest plausible value would
 * not be known, so they fall back to what the embedding implies (head length = embedding / heads).
 */
export const estimate = (summary: GgufSummary, options: { readonly contextSize?: number | undefined; readonly parallel: number }): Estimate => {
  const parallel = Math.max(1, options.parallel)
  const contextSize = options.contextSize ?? (summary.contextLength ?? 4096) * parallel
  const { perSlot, total } = cellsFor(contextSize, parallel)
  const layers = summary.blockCount ?? 0
  const embedding = summary.embeddingLength ?? 0
  const heads = summary.headCount ?? 1
  const headLength = heads > 0 ? embedding / heads : embedding
  const keyLength = summary.keyLength ?? headLength
  const valueLength = summary.valueLength ?? headLength
  const kvHeadsPerLayer = summary.headCountKvPerLayer ?? Array.from({ length: layers }, () => summary.headCountKv ?? heads)
  const kvPerCell = kvHeadsPerLayer.reduce((n, kvHeads) => n + kvHeads * (keyLength + valueLength) * F16, 0)
  const kvCacheBytes = total * kvPerCell
  const vocabulary = summary.vocabularySize ?? 0
  const feedForward = summary.feedForwardLength ?? 4 * embedding
  const activations = UBATCH * 4 * Math.max(4 * feedForward + embedding, 6.5 * embedding)
  const computeBytes = Math.ceil(1.1 * (activations + UBATCH * 2 * perSlot + vocabulary * parallel * 4))
  const weightsBytes = summary.weightsBytes
  const totalBytes = weightsBytes + kvCacheBytes + computeBytes + OVERHEAD_BYTES
  return { weightsBytes, kvCacheBytes, computeBytes, overheadBytes: OVERHEAD_BYTES, totalBytes, contextSize, parallel, cells: total }
}

/** Fits under the RAM ceiling, or `model_too_large` (no number in it). A total that is no number fails. */
export const fits = (estimate: Estimate, maxRamBytes: number): Either.Either<void, Refusal<ResourceError, "model_too_large">> =>
  !(estimate.totalBytes <= maxRamBytes) ? Either.left(refusal(ResourceError, "model_too_large")) : Either.right(undefined)
