/**
 * The GGUF reader against what an attacker or a broken upload would hand it: random bytes, valid
 * files with random mutations, truncation at every offset of the header, huge counts and lengths,
 * and each structural rule on its own. Every input gets a header or a typed refusal: never a
 * throw, never an allocation past the caps, in bounded time. Generated models of several shapes
 * parse to the fields they were made with.
 */
import { Either, FastCheck as fc } from "effect"
import { describe, expect, it } from "vitest"
import { makeGguf, T, TINY, tinyGguf, Writer } from "../../scripts/tiny-gguf.js"
import * as Gguf from "../../src/domain/Gguf.js"

const TINY_BYTES = tinyGguf()

type Outcome = { readonly ok: Gguf.GgufFile } | { readonly reason: Gguf.GgufReason } | { readonly more: number }

const outcome = (prefix: Uint8Array, size = prefix.length, caps?: Gguf.GgufCaps): Outcome => {
  const result = Gguf.read(prefix, size, caps)
  if (Either.isRight(result)) return { ok: result.right }
  return result.left._tag === "NeedMore" ? { more: result.left.bytes } : { reason: result.left.reason }
}

const reasonOf = (bytes: Uint8Array, caps?: Gguf.GgufCaps) => {
  const o = outcome(bytes, bytes.length, caps)
  return "reason" in o ? o.reason : "ok" in o ? "ok" : "more"
}

/** A header written by hand: magic, version, counts, then whatever `body` writes. */
const header = (body: (w: Writer) => void, options: { version?: number; tensors?: number | bigint; keys?: number | bigint } = {}) => {
  const w = new Writer()
  w.bytes(Buffer.from("GGUF"))
  w.u32(options.version ?? 3)
  w.u64(options.tensors ?? 0)
  w.u64(options.keys ?? 0)
  body(w)
  return new Uint8Array(w.result())
}

const kvU32 = (w: Writer, key: string, value: number) => {
  w.str(key)
  w.u32(T.UINT32)
  w.u32(value)
}

/** One F32 tensor info. */
const tensor = (w: Writer, name: string, dims: ReadonlyArray<number | bigint>, type = 0, offset: number | bigint = 0) => {
  w.str(name)
  w.u32(dims.length)
  for (const d of dims) w.u64(d)
  w.u32(type)
  w.u64(offset)
}

/** A whole file: the header, padded to 32, and `data` bytes of tensor data. */
const file = (head: Uint8Array, data: number) => {
  const padded = Math.ceil(head.length / 32) * 32
  const out = new Uint8Array(padded + data)
  out.set(head)
  return out
}

describe("Gguf.read: valid files", () => {
  it("the tiny model parses to the fields it was made with", () => {
    const o = outcome(TINY_BYTES)
    if (!("ok" in o)) throw new Error(JSON.stringify(o))
    const summary = Either.getOrThrow(Gguf.summarize(o.ok))
    expect(summary).toMatchObject({
      architecture: "llama",
      contextLength: 512,
      blockCount: 2,
      embeddingLength: 64,
      headCount: 4,
      headCountKv: 4,
      vocabularySize: 260,
      tensorCount: 21,
      chatTemplateSha256: null
    })
    expect(summary.weightsBytes).toBe(o.ok.tensors.reduce((n, t) => n + t.bytes, 0))
    expect(o.ok.dataOffset + summary.weightsBytes).toBeLessThanOrEqual(TINY_BYTES.length)
  })

  it("generated shapes (F32, F16, Q8_0; vocabularies, heads, KV heads, a template) parse to their shape", () => {
    const shapes = [
      { ...TINY, weights: "F16" as const, layers: 3, headsKv: 2 },
      { ...TINY, weights: "Q8_0" as const, embedding: 128, heads: 8, headsKv: 1, feedForward: 256, vocabulary: 2048, context: 4096 },
      { ...TINY, layers: 1, vocabulary: 300, chatTemplate: "{{ messages }}" }
    ]
    for (const shape of shapes) {
      const bytes = makeGguf(shape)
      const o = outcome(bytes)
      if (!("ok" in o)) throw new Error(JSON.stringify(o))
      const summary = Either.getOrThrow(Gguf.summarize(o.ok))
      expect(summary).toMatchObject({
        blockCount: shape.layers,
        embeddingLength: shape.embedding,
        headCount: shape.heads,
        headCountKv: shape.headsKv,
        contextLength: shape.context,
        vocabularySize: shape.vocabulary,
        tensorCount: 3 + 9 * shape.layers,
        fileType: shape.weights === "F32" ? null : shape.weights === "F16" ? 1 : 7,
        chatTemplateLength: shape.chatTemplate?.length ?? null
      })
      const types = new Set(o.ok.tensors.filter((t) => t.dims.length === 2).map((t) => Gguf.TENSOR_TYPES.get(t.type)?.name))
      expect([...types]).toEqual([shape.weights])
    }
  })

  it("a prefix asks for more until it holds the header; a caller doubling its prefix gets there in a few rounds", () => {
    let length = 64
    let rounds = 0
    for (;;) {
      const o = outcome(TINY_BYTES.subarray(0, length), TINY_BYTES.length)
      if ("ok" in o) break
      if (!("more" in o)) throw new Error(JSON.stringify(o))
      expect(o.more).toBeGreaterThan(length)
      length = o.more
      rounds++
    }
    expect(rounds).toBeLessThanOrEqual(10)
    expect(length).toBeLessThan(TINY_BYTES.length) // the header only, not the weights
  })
})

describe("Gguf.read: hostile files", () => {
  it("truncated at every offset of the header, and at sampled offsets of the data: gguf_truncated, never a throw", () => {
    const headerEnd = (outcome(TINY_BYTES) as { ok: Gguf.GgufFile }).ok.dataOffset
    for (let at = 0; at < TINY_BYTES.length; at += at < headerEnd + 64 ? 1 : 997) {
      const r = reasonOf(TINY_BYTES.subarray(0, at))
      expect(r, `at ${at}`).toBe("gguf_truncated")
    }
  })

  it("random bytes: a typed refusal, never a throw", () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 4096 }), fc.boolean(), (bytes, magic) => {
        const input = magic && bytes.length >= 4 ? Uint8Array.from([0x47, 0x47, 0x55, 0x46, ...bytes.subarray(4)]) : bytes
        const o = outcome(input)
        expect("reason" in o || "ok" in o).toBe(true)
      }),
      { numRuns: 2000 }
    )
  })

  it("a valid file with random byte mutations in its header: a header or a typed refusal, in bounded time", () => {
    const headerEnd = (outcome(TINY_BYTES) as { ok: Gguf.GgufFile }).ok.headerBytes
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(headerEnd - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }), (edits) => {
        const bytes = Uint8Array.from(TINY_BYTES)
        for (const [at, value] of edits) bytes[at] = value
        const started = performance.now()
        const o = outcome(bytes)
        expect("reason" in o || "ok" in o).toBe(true)
        expect(performance.now() - started).toBeLessThan(2_000)
      }),
      { numRuns: 1500 }
    )
  })

  it("huge counts and lengths are refused before anything is allocated or walked", () => {
    const caps = Gguf.defaultCaps
    expect(reasonOf(header(() => {}, { tensors: caps.maxTensors + 1 }))).toBe("gguf_limit_exceeded")
    expect(reasonOf(header(() => {}, { keys: 2n ** 62n }))).toBe("gguf_limit_exceeded")
    expect(reasonOf(header(() => {}, { tensors: 2n ** 64n - 1n }))).toBe("gguf_limit_exceeded")
    // A key whose length is 2^60: over the string cap, not read.
    expect(reasonOf(header((w) => w.u64(2n ** 60n), { keys: 1 }))).toBe("gguf_limit_exceeded")
    // An array of 2^40 strings, and one of 2^40 u32.
    for (const itemType of [T.STRING, T.UINT32]) {
      expect(reasonOf(header((w) => {
        w.str("k")
        w.u32(T.ARRAY)
        w.u32(itemType)
        w.u64(2n ** 40n)
      }, { keys: 1 }))).toBe("gguf_limit_exceeded")
    }
    // Arrays nested past the cap.
    expect(reasonOf(header((w) => {
      w.str("k")
      w.u32(T.ARRAY)
      w.u32(T.ARRAY)
      w.u64(1)
      w.u32(T.ARRAY)
      w.u64(1)
      w.u32(T.UINT32)
      w.u64(0)
    }, { keys: 1 }))).toBe("gguf_limit_exceeded")
    // A string within its cap but past the file's end: truncated, not allocated.
    expect(reasonOf(header((w) => w.u64(1000), { keys: 1 }))).toBe("gguf_truncated")
    // The header's total size has a cap of its own.
    expect(reasonOf(TINY_BYTES, { ...caps, maxHeaderBytes: 1024 })).toBe("gguf_limit_exceeded")
  })

  it("each structural rule, on its own", () => {
    expect(reasonOf(Uint8Array.from(Buffer.from("GGML\x03\x00\x00\x00")))).toBe("gguf_bad_magic")
    expect(reasonOf(header(() => {}, { version: 1 }))).toBe("gguf_unsupported_version")
    expect(reasonOf(header(() => {}, { version: 4 }))).toBe("gguf_unsupported_version")
    expect(reasonOf(header((w) => {
      w.str("k")
      w.u32(13)
    }, { keys: 1 }))).toBe("gguf_bad_type")
    expect(reasonOf(header((w) => {
      w.str("k")
      w.u32(T.UINT32)
      w.u32(1)
      w.str("k")
      w.u32(T.UINT32)
      w.u32(2)
    }, { keys: 2 }))).toBe("gguf_duplicate_name")
    expect(reasonOf(header((w) => {
      w.u64(2)
      w.bytes(Uint8Array.from([0xc3, 0x28]))
      w.u32(T.UINT32)
      w.u32(1)
    }, { keys: 1 }))).toBe("gguf_bad_string")
    expect(reasonOf(header((w) => {
      w.str("k")
      w.u32(7) // bool
      w.bytes(Uint8Array.from([2]))
    }, { keys: 1 }))).toBe("gguf_bad_type")
    for (const alignment of [0, 3, 48]) {
      expect(reasonOf(file(header((w) => kvU32(w, "general.alignment", alignment), { keys: 1 }), 0)), `alignment ${alignment}`).toBe("gguf_bad_alignment")
    }
    const one = (dims: ReadonlyArray<number | bigint>, type = 0, offset: number | bigint = 0, data = 4096, name = "t") =>
      reasonOf(file(header((w) => tensor(w, name, dims, type, offset), { tensors: 1 }), data))
    expect(one([8])).toBe("ok")
    expect(one([])).toBe("gguf_bad_tensor")
    expect(one([1, 1, 1, 1, 1])).toBe("gguf_bad_tensor")
    expect(one([8, 0])).toBe("gguf_bad_tensor")
    expect(one([8], 4)).toBe("gguf_bad_type") // a removed type id
    expect(one([8], 99)).toBe("gguf_bad_type")
    expect(one([33], 8)).toBe("gguf_bad_tensor") // Q8_0 rows are blocks of 32
    expect(one([2n ** 40n, 2n ** 40n])).toBe("gguf_bad_tensor") // a byte size past 2^53
    expect(one([8], 0, 16)).toBe("gguf_bad_alignment")
    expect(one([8], 0, 32)).toBe("gguf_bad_tensor") // not where the previous tensor ends
    expect(one([2048])).toBe("gguf_truncated") // 8 KiB of data in a 4 KiB section
    expect(one([8], 0, 0, 4096, "x".repeat(64))).toBe("gguf_bad_tensor")
    expect(one([8], 0, 0, 4096, "")).toBe("gguf_bad_tensor")
    // Two tensors: the second must start where the first ends (padded), and have its own name.
    const two = (second: number, name = "b") =>
      reasonOf(file(header((w) => {
        tensor(w, "a", [8], 0, 0)
        tensor(w, name, [8], 0, second)
      }, { tensors: 2 }), 4096))
    expect(two(32)).toBe("ok")
    expect(two(0)).toBe("gguf_bad_tensor") // overlapping
    expect(two(64)).toBe("gguf_bad_tensor") // a gap
    expect(two(32, "a")).toBe("gguf_duplicate_name")
  })

  it("the summary needs a string architecture", () => {
    const noArch = outcome(header(() => {}))
    if (!("ok" in noArch)) throw new Error("expected a header")
    const summary = Gguf.summarize(noArch.ok)
    expect(Either.isLeft(summary) ? summary.left.reason : "summarized").toBe("gguf_bad_type")
  })
})

describe("Gguf.summarize: every field from the metadata types a file may use", () => {
  /** A header of `general.architecture = "arch"` plus `entries` (key, type, write). */
  const withKeys = (entries: ReadonlyArray<readonly [string, number, (w: Writer) => void]>) =>
    header((w) => {
      w.str("general.architecture")
      w.u32(T.STRING)
      w.str("arch")
      for (const [key, type, write] of entries) {
        w.str(key)
        w.u32(type)
        write(w)
      }
    }, { keys: entries.length + 1 })
  const summaryOf = (bytes: Uint8Array) => {
    const o = outcome(bytes)
    if (!("ok" in o)) throw new Error(JSON.stringify(o))
    return Either.getOrThrow(Gguf.summarize(o.ok))
  }
  const u64 = (n: bigint) => (w: Writer) => w.u64(n)
  const u32 = (n: number) => (w: Writer) => w.u32(n)

  it("u32, u64, u8, i16, f32 values, per-layer arrays, bools, and the absent ones", () => {
    const s = summaryOf(withKeys([
      ["arch.context_length", 10, u64(131072n)], // u64
      ["arch.block_count", 4, u32(3)],
      ["arch.embedding_length", 0, (w) => w.bytes(Uint8Array.from([64]))], // u8
      ["arch.feed_forward_length", 3, (w) => w.bytes(Uint8Array.from([0x00, 0x01]))], // i16: 256
      ["arch.attention.head_count", 6, (w) => w.f32(8)], // f32
      ["arch.attention.head_count_kv", 9, (w) => {
        w.u32(T.UINT32)
        w.u64(3)
        w.u32(2)
        w.u32(0)
        w.u32(4)
      }],
      ["arch.attention.key_length", 4, u32(96)],
      ["arch.attention.value_length", 4, u32(80)],
      ["arch.attention.sliding_window", 4, u32(4096)],
      ["arch.expert_count", 5, (w) => w.i32(16)],
      ["general.file_type", 4, u32(15)],
      ["general.flag", 7, (w) => w.bytes(Uint8Array.from([1]))],
      ["tokenizer.ggml.tokens", 9, (w) => {
        w.u32(T.STRING)
        w.u64(2)
        w.str("a")
        w.str("b")
      }],
      ["tokenizer.chat_template", 8, (w) => w.str("{{ x }}")]
    ]))
    expect(s).toMatchObject({
      architecture: "arch",
      contextLength: 131072,
      blockCount: 3,
      embeddingLength: 64,
      feedForwardLength: 256,
      headCount: 8,
      headCountKv: 4, // the largest of the per-layer counts
      headCountKvPerLayer: [2, 0, 4],
      keyLength: 96,
      valueLength: 80,
      slidingWindow: 4096,
      expertCount: 16,
      fileType: 15,
      vocabularySize: 2,
      chatTemplateLength: 7,
      parameterCount: 0,
      tensorCount: 0,
      weightsBytes: 0
    })
    expect(s.chatTemplateSha256).toMatch(/^[0-9a-f]{64}$/)
    const none = summaryOf(withKeys([]))
    expect(none).toMatchObject({ contextLength: null, blockCount: null, headCountKv: null, headCountKvPerLayer: null, vocabularySize: null, chatTemplateSha256: null, chatTemplateLength: null, fileType: null })
  })

  it("a value of an unusable type reads as absent: a string count, a negative i64, a u64 past 2^53, a NaN", () => {
    const s = summaryOf(withKeys([
      ["arch.context_length", 8, (w) => w.str("4096")],
      ["arch.block_count", 11, u64(2n ** 64n - 1n)], // i64 -1
      ["arch.embedding_length", 10, u64(2n ** 60n)],
      ["arch.attention.head_count", 6, (w) => w.f32(NaN)]
    ]))
    expect(s).toMatchObject({ contextLength: null, blockCount: null, embeddingLength: null, headCount: null })
  })

  it("the architecture must be valid UTF-8", () => {
    const bad = header((w) => {
      w.str("general.architecture")
      w.u32(T.STRING)
      w.u64(2)
      w.bytes(Uint8Array.from([0xc3, 0x28]))
    }, { keys: 1 })
    const o = outcome(bad)
    if (!("ok" in o)) throw new Error(JSON.stringify(o))
    const summary = Gguf.summarize(o.ok)
    expect(Either.isLeft(summary) ? summary.left.reason : "summarized").toBe("gguf_bad_string")
  })

  it("tight caps refuse what the defaults admit: the tiny model's vocabulary, its key count, its tensors, its strings", () => {
    const caps = Gguf.defaultCaps
    expect(reasonOf(TINY_BYTES, { ...caps, maxArrayLength: 259 })).toBe("gguf_limit_exceeded")
    expect(reasonOf(TINY_BYTES, { ...caps, maxKeys: 5 })).toBe("gguf_limit_exceeded")
    expect(reasonOf(TINY_BYTES, { ...caps, maxTensors: 20 })).toBe("gguf_limit_exceeded")
    expect(reasonOf(TINY_BYTES, { ...caps, maxStringBytes: 10 })).toBe("gguf_limit_exceeded")
    expect(reasonOf(TINY_BYTES, { ...caps, maxArrayLength: 260, maxKeys: 20, maxTensors: 21 })).toBe("ok")
  })
})

