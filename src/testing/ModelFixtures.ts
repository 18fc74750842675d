/**
 * Deterministic, valid GGUF (v3) llama models that llama-server loads and serves. `tinyGguf()` is
 * about 0.5 MB: 2 blocks, embedding 64, 4 heads and 4 KV heads, feed-forward 128, context 512, F32
 * tensors, and a `llama` tokenizer of 260 tokens (<unk>, <s>, </s>, the 256 byte tokens, ▁).
 * `makeGguf(shape)` makes any shape (layers, embedding, heads, KV heads, feed-forward, vocabulary,
 * context; F32, F16 or Q8_0 weights; a chat template). Weights are seeded random, so the text it
 * writes is gibberish; the serving path is real.
 *
 * Exported as `companion-runtime/testing`'s `ModelFixtures`, for an app's tests: the in-memory
 * layers check a model's GGUF header like the live ones. `scripts/tiny-gguf.ts <out>` writes one.
 */

/** A model's shape. */
export interface GgufShape {
  readonly layers: number
  readonly embedding: number
  readonly heads: number
  readonly headsKv: number
  readonly feedForward: number
  /** At least 260 (the byte tokens); the rest are filler tokens. */
  readonly vocabulary: number
  readonly context: number
  /** The matrices' type; norms stay F32. Q8_0 needs embedding and feed-forward multiples of 32. */
  readonly weights: "F32" | "F16" | "Q8_0"
  readonly chatTemplate?: string | undefined
  readonly seed?: number | undefined
}

export const TINY: GgufShape = { layers: 2, embedding: 64, heads: 4, headsKv: 4, feedForward: 128, vocabulary: 260, context: 512, weights: "F32" }
const ALIGNMENT = 32

const tokensFor = (vocabulary: number) => [
  "<unk>",
  "<s>",
  "</s>",
  ...Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`),
  "\u2581",
  ...Array.from({ length: Math.max(0, vocabulary - 260) }, (_, i) => `\u2581t${i}`)
]
// llama.cpp token types: 1 normal, 2 unknown, 3 control, 6 byte.
const tokenTypeOf = (i: number) => (i === 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1)

export enum T {
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  STRING = 8,
  ARRAY = 9
}

/** A little-endian GGUF writer (also for tests that craft broken files). */
export class Writer {
  private chunks: Array<Uint8Array> = []
  length = 0
  private push(bytes: Uint8Array) {
    this.chunks.push(bytes)
    this.length += bytes.length
  }
  u32(n: number) {
    const b = Buffer.alloc(4)
    b.writeUInt32LE(n)
    this.push(b)
  }
  i32(n: number) {
    const b = Buffer.alloc(4)
    b.writeInt32LE(n)
    this.push(b)
  }
  u64(n: number | bigint) {
    const b = Buffer.alloc(8)
    b.writeBigUInt64LE(BigInt(n))
    this.push(b)
  }
  f32(n: number) {
    const b = Buffer.alloc(4)
    b.writeFloatLE(n)
    this.push(b)
  }
  str(s: string) {
    const b = Buffer.from(s, "utf8")
    this.u64(b.length)
    this.push(b)
  }
  bytes(b: Uint8Array) {
    this.push(b)
  }
  pad(to: number) {
    const n = (to - (this.length % to)) % to
    if (n > 0) this.push(new Uint8Array(n))
  }
  result() {
    return Buffer.concat(this.chunks)
  }
}

type Value =
  | { readonly type: T.UINT32 | T.INT32 | T.FLOAT32; readonly value: number }
  | { readonly type: T.STRING; readonly value: string }
  | { readonly type: T.ARRAY; readonly of: T.STRING; readonly value: ReadonlyArray<string> }
  | { readonly type: T.ARRAY; readonly of: T.FLOAT32 | T.INT32; readonly value: ReadonlyArray<number> }

const u32 = (value: number): Value => ({ type: T.UINT32, value })
const FILE_TYPE = { F32: 0, F16: 1, Q8_0: 7 } as const
const TYPE_ID = { F32: 0, F16: 1, Q8_0: 8 } as const

const metadataFor = (shape: GgufShape): ReadonlyArray<readonly [string, Value]> => {
  const tokens = tokensFor(shape.vocabulary)
  return [
    ["general.architecture", { type: T.STRING, value: "llama" }],
    ["general.name", { type: T.STRING, value: "companion-runtime tiny test model" }],
    ["general.alignment", u32(ALIGNMENT)],
    ...(shape.weights === "F32" ? [] : [["general.file_type", u32(FILE_TYPE[shape.weights])] as const]),
    ["llama.context_length", u32(shape.context)],
    ["llama.embedding_length", u32(shape.embedding)],
    ["llama.block_count", u32(shape.layers)],
    ["llama.feed_forward_length", u32(shape.feedForward)],
    ["llama.attention.head_count", u32(shape.heads)],
    ["llama.attention.head_count_kv", u32(shape.headsKv)],
    ["llama.attention.layer_norm_rms_epsilon", { type: T.FLOAT32, value: 1e-5 }],
    ["llama.rope.dimension_count", u32(shape.embedding / shape.heads)],
    ["llama.vocab_size", u32(tokens.length)],
    ["tokenizer.ggml.model", { type: T.STRING, value: "llama" }],
    ["tokenizer.ggml.tokens", { type: T.ARRAY, of: T.STRING, value: tokens }],
    ["tokenizer.ggml.scores", { type: T.ARRAY, of: T.FLOAT32, value: tokens.map(() => 0) }],
    ["tokenizer.ggml.token_type", { type: T.ARRAY, of: T.INT32, value: tokens.map((_, i) => tokenTypeOf(i)) }],
    ["tokenizer.ggml.unknown_token_id", u32(0)],
    ["tokenizer.ggml.bos_token_id", u32(1)],
    ["tokenizer.ggml.eos_token_id", u32(2)],
    ...(shape.chatTemplate === undefined ? [] : [["tokenizer.chat_template", { type: T.STRING, value: shape.chatTemplate }] as const])
  ]
}

/** Tensors as ggml sees them: ne[0] (the row length) first. */
const tensorsFor = (shape: GgufShape): ReadonlyArray<readonly [string, ReadonlyArray<number>, "norm" | "weight"]> => {
  const { embedding: e, feedForward: ff, heads, headsKv, layers, vocabulary } = shape
  const kv = (e / heads) * headsKv
  return [
    ["token_embd.weight", [e, vocabulary], "weight"],
    ["output_norm.weight", [e], "norm"],
    ["output.weight", [e, vocabulary], "weight"],
    ...Array.from({ length: layers }, (_, i) =>
      [
        [`blk.${i}.attn_norm.weight`, [e], "norm"],
        [`blk.${i}.attn_q.weight`, [e, e], "weight"],
        [`blk.${i}.attn_k.weight`, [e, kv], "weight"],
        [`blk.${i}.attn_v.weight`, [e, kv], "weight"],
        [`blk.${i}.attn_output.weight`, [e, e], "weight"],
        [`blk.${i}.ffn_norm.weight`, [e], "norm"],
        [`blk.${i}.ffn_gate.weight`, [e, ff], "weight"],
        [`blk.${i}.ffn_up.weight`, [e, ff], "weight"],
        [`blk.${i}.ffn_down.weight`, [ff, e], "weight"]
      ] as const
    ).flat()
  ]
}

/** IEEE 754 half from a float (round to nearest; no NaN or infinity in what is written here). */
const toHalf = (value: number): number => {
  const f = new Float32Array([value])
  const x = new Uint32Array(f.buffer)[0]!
  const sign = (x >>> 16) & 0x8000
  const exp = ((x >>> 23) & 0xff) - 127 + 15
  const mant = x & 0x7fffff
  if (exp <= 0) return sign
  if (exp >= 31) return sign | 0x7bff
  return sign | (exp << 10) | Math.round(mant / 0x2000)
}

/** The tensor's bytes in `type`: F32, F16, or Q8_0 (blocks of 32: an F16 scale, then 32 int8). */
const encode = (values: Float32Array, type: "F32" | "F16" | "Q8_0"): Uint8Array => {
  if (type === "F32") return new Uint8Array(values.buffer)
  if (type === "F16") {
    const out = Buffer.alloc(values.length * 2)
    values.forEach((v, i) => out.writeUInt16LE(Math.min(0xffff, toHalf(v)), i * 2))
    return out
  }
  const out = Buffer.alloc((values.length / 32) * 34)
  for (let b = 0; b < values.length / 32; b++) {
    const block = values.subarray(b * 32, b * 32 + 32)
    const max = block.reduce((m, v) => Math.max(m, Math.abs(v)), 0)
    const d = max / 127
    out.writeUInt16LE(toHalf(d), b * 34)
    for (let i = 0; i < 32; i++) out.writeInt8(d === 0 ? 0 : Math.round(block[i]! / d), b * 34 + 2 + i)
  }
  return out
}

/**
 * The tiny model's bytes. Same bytes on every call and every machine. A longer `contextLength` (a
 * trained context the runtime then allows per slot) lets a test generate for seconds.
 */
export const tinyGguf = (seed = 0x5eed, contextLength = TINY.context): Uint8Array => makeGguf({ ...TINY, seed, context: contextLength })

/** A model of `shape`: deterministic for a seed. */
export const makeGguf = (shape: GgufShape): Uint8Array => {
  const metadata = metadataFor(shape)
  const tensors = tensorsFor(shape)
  let x = (shape.seed ?? 0x5eed) >>> 0 || 1
  const random = () => {
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    return x / 0x1_0000_0000
  }

  const w = new Writer()
  w.bytes(Buffer.from("GGUF", "ascii"))
  w.u32(3)
  w.u64(tensors.length)
  w.u64(metadata.length)
  for (const [key, v] of metadata) {
    w.str(key)
    w.u32(v.type)
    if (v.type === T.STRING) w.str(v.value)
    else if (v.type !== T.ARRAY) {
      if (v.type === T.UINT32) w.u32(v.value)
      else if (v.type === T.INT32) w.i32(v.value)
      else w.f32(v.value)
    } else {
      w.u32(v.of)
      w.u64(v.value.length)
      for (const item of v.value) {
        if (typeof item === "string") w.str(item)
        else if (v.of === T.INT32) w.i32(item)
        else w.f32(item)
      }
    }
  }

  let offset = 0
  const data: Array<Uint8Array> = []
  for (const [name, dims, kind] of tensors) {
    const count = dims.reduce((a, b) => a * b, 1)
    const values = new Float32Array(count)
    for (let i = 0; i < count; i++) values[i] = kind === "norm" ? 1 : (random() - 0.5) * 0.1
    const type = kind === "norm" ? "F32" : shape.weights
    const bytes = encode(values, type)
    data.push(bytes)
    w.str(name)
    w.u32(dims.length)
    for (const d of dims) w.u64(d)
    w.u32(TYPE_ID[type])
    w.u64(offset)
    offset += Math.ceil(bytes.length / ALIGNMENT) * ALIGNMENT
  }
  w.pad(ALIGNMENT)
  for (const bytes of data) {
    w.bytes(bytes)
    w.pad(ALIGNMENT)
  }
  return w.result()
}
