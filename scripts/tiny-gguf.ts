/**
 * A tiny, deterministic, valid GGUF (v3) llama model, about 0.5 MB, that llama-server loads and
 * serves: 2 blocks, embedding 64, 4 heads and 4 KV heads, feed-forward 128, context 512, F32
 * tensors, and a `llama` tokenizer of 260 tokens (<unk>, <s>, </s>, the 256 byte tokens, ▁).
 * Weights are seeded random, so the text it writes is gibberish; the serving path is real.
 *
 *   npx tsx scripts/tiny-gguf.ts <out.gguf>    writes the file and prints its SHA-256 and size
 */
import { createHash } from "node:crypto"
import { writeFileSync } from "node:fs"

const N_EMBD = 64
const N_HEAD = 4
const N_HEAD_KV = 4
const N_FF = 128
const N_LAYER = 2
const N_CTX = 512
const ALIGNMENT = 32

const tokens = ["<unk>", "<s>", "</s>", ...Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`), "\u2581"]
// llama.cpp token types: 1 normal, 2 unknown, 3 control, 6 byte.
const tokenTypes = tokens.map((_, i) => (i === 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1))
const N_VOCAB = tokens.length

enum T {
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  STRING = 8,
  ARRAY = 9
}

class Writer {
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
  u64(n: number) {
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
const metadataFor = (contextLength: number): ReadonlyArray<readonly [string, Value]> => [
  ["general.architecture", { type: T.STRING, value: "llama" }],
  ["general.name", { type: T.STRING, value: "companion-runtime tiny test model" }],
  ["general.alignment", u32(ALIGNMENT)],
  ["llama.context_length", u32(contextLength)],
  ["llama.embedding_length", u32(N_EMBD)],
  ["llama.block_count", u32(N_LAYER)],
  ["llama.feed_forward_length", u32(N_FF)],
  ["llama.attention.head_count", u32(N_HEAD)],
  ["llama.attention.head_count_kv", u32(N_HEAD_KV)],
  ["llama.attention.layer_norm_rms_epsilon", { type: T.FLOAT32, value: 1e-5 }],
  ["llama.rope.dimension_count", u32(N_EMBD / N_HEAD)],
  ["llama.vocab_size", u32(N_VOCAB)],
  ["tokenizer.ggml.model", { type: T.STRING, value: "llama" }],
  ["tokenizer.ggml.tokens", { type: T.ARRAY, of: T.STRING, value: tokens }],
  ["tokenizer.ggml.scores", { type: T.ARRAY, of: T.FLOAT32, value: tokens.map(() => 0) }],
  ["tokenizer.ggml.token_type", { type: T.ARRAY, of: T.INT32, value: tokenTypes }],
  ["tokenizer.ggml.unknown_token_id", u32(0)],
  ["tokenizer.ggml.bos_token_id", u32(1)],
  ["tokenizer.ggml.eos_token_id", u32(2)]
]

/** Tensors as ggml sees them: ne[0] (the row length) first. */
const tensors: ReadonlyArray<readonly [string, ReadonlyArray<number>, "norm" | "weight"]> = [
  ["token_embd.weight", [N_EMBD, N_VOCAB], "weight"],
  ["output_norm.weight", [N_EMBD], "norm"],
  ["output.weight", [N_EMBD, N_VOCAB], "weight"],
  ...Array.from({ length: N_LAYER }, (_, i) =>
    [
      [`blk.${i}.attn_norm.weight`, [N_EMBD], "norm"],
      [`blk.${i}.attn_q.weight`, [N_EMBD, N_EMBD], "weight"],
      [`blk.${i}.attn_k.weight`, [N_EMBD, (N_EMBD / N_HEAD) * N_HEAD_KV], "weight"],
      [`blk.${i}.attn_v.weight`, [N_EMBD, (N_EMBD / N_HEAD) * N_HEAD_KV], "weight"],
      [`blk.${i}.attn_output.weight`, [N_EMBD, N_EMBD], "weight"],
      [`blk.${i}.ffn_norm.weight`, [N_EMBD], "norm"],
      [`blk.${i}.ffn_gate.weight`, [N_EMBD, N_FF], "weight"],
      [`blk.${i}.ffn_up.weight`, [N_EMBD, N_FF], "weight"],
      [`blk.${i}.ffn_down.weight`, [N_FF, N_EMBD], "weight"]
    ] as const
  ).flat()
]

/**
 * The model's bytes. Same bytes on every call and every machine. A longer `contextLength` (a
 * trained context the runtime then allows per slot) lets a test generate for seconds.
 */
export const tinyGguf = (seed = 0x5eed, contextLength = N_CTX): Uint8Array => {
  const metadata = metadataFor(contextLength)
  let x = seed >>> 0 || 1
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
  const data: Array<Float32Array> = []
  for (const [name, dims, kind] of tensors) {
    const count = dims.reduce((a, b) => a * b, 1)
    const values = new Float32Array(count)
    for (let i = 0; i < count; i++) values[i] = kind === "norm" ? 1 : (random() - 0.5) * 0.1
    data.push(values)
    w.str(name)
    w.u32(dims.length)
    for (const d of dims) w.u64(d)
    w.u32(0) // GGML_TYPE_F32
    w.u64(offset)
    offset += Math.ceil((count * 4) / ALIGNMENT) * ALIGNMENT
  }
  w.pad(ALIGNMENT)
  for (const values of data) {
    w.bytes(new Uint8Array(values.buffer))
    w.pad(ALIGNMENT)
  }
  return w.result()
}

if (process.argv[1] !== undefined && import.meta.url.endsWith(process.argv[1].split("/").at(-1) ?? "")) {
  const out = process.argv[2]
  if (out === undefined) {
    process.stderr.write("usage: tiny-gguf.ts <out.gguf>\n")
    process.exit(2)
  }
  const bytes = tinyGguf()
  writeFileSync(out, bytes)
  process.stdout.write(`${JSON.stringify({ path: out, sha256: createHash("sha256").update(bytes).digest("hex"), sizeBytes: bytes.length })}\n`)
}
