/**
 * A bounded GGUF reader: the header, the metadata and the tensor infos of a GGUF v2/v3 file
 * (little-endian; ggml's `docs/gguf.md`), checked before any native loader sees the file.
 *
 * Pure. Everything it reads lies at the start of the file, so it works on a *prefix*: `read(prefix,
 * fileSize)` parses what the prefix holds and, when it runs past the prefix's end before the file's
 * end, asks for more (`{ _tag: "NeedMore", bytes }`) rather than guessing; the caller reads a longer
 * prefix (from the store's descriptor, or a `Range` request) and calls again. Nothing is allocated
 * from a count or a length in the file before that count or length has passed its cap, and array
 * elements are walked, not kept (but a few small numeric ones the summary needs).
 *
 * What is refused, each with a fixed reason and no value from the file:
 * - `gguf_bad_magic`, `gguf_unsupported_version` (only 2 and 3);
 * - `gguf_limit_exceeded`: a tensor or key count, a string or array length, an array nesting or
 *   the header's total size over its cap (`GgufCaps`; the defaults admit every real model);
 * - `gguf_truncated`: the file ends inside the header, or before a tensor's data ends;
 * - `gguf_bad_type`: a metadata value type or a tensor type that is not one of ggml's (removed ids
 *   included), or a well-known key of the wrong type;
 * - `gguf_bad_tensor`: dimensions (1 to 4, none zero, the first a multiple of the type's block),
 *   a byte size that overflows, a name empty or too long, an offset that is not where the
 *   previous tensor ends (llama.cpp's own rule: tensors are packed in order, so none overlaps);
 * - `gguf_bad_alignment`: `general.alignment` not a power of two, or an offset not aligned;
 * - `gguf_duplicate_name`: two keys or two tensors with one name;
 * - `gguf_bad_string`: a key or a string value the summary reads that is not UTF-8.
 */
import { createHash } from "node:crypto"
import { Either } from "effect"
import { ReasonError } from "./Errors.js"

const ggufMessages = {
  gguf_bad_magic: "The model file is not a GGUF file.",
  gguf_unsupported_version: "The model file's GGUF version is not supported.",
  gguf_limit_exceeded: "The model file's header exceeds a size limit.",
  gguf_truncated: "The model file is truncated.",
  gguf_bad_type: "The model file has an unknown or misused value or tensor type.",
  gguf_bad_tensor: "The model file describes a tensor that is not valid.",
  gguf_bad_alignment: "The model file's alignment or a tensor offset is not valid.",
  gguf_duplicate_name: "The model file names a key or a tensor twice.",
  gguf_bad_string: "The model file holds a string that is not valid UTF-8."
} as const

export class GgufError extends ReasonError("GgufError", ggufMessages) {}
export type GgufReason = GgufError["reason"]

/** Caps on what a header may hold. The defaults admit every real model (see docs/threat-model.md). */
export interface GgufCaps {
  readonly maxTensors: number
  readonly maxKeys: number
  /** Bytes of one string (key, value, tensor name). */
  readonly maxStringBytes: number
  /** Elements of one array (a vocabulary, its merges). */
  readonly maxArrayLength: number
  /** Levels of arrays: 1 is arrays of scalars or strings (llama.cpp's gguf.cpp refuses nested arrays). */
  readonly maxArrayDepth: number
  /** Bytes from the file's start to the end of the tensor infos. */
  readonly maxHeaderBytes: number
}

export const defaultCaps: GgufCaps = {
  maxTensors: 65_536,
  maxKeys: 65_536,
  maxStringBytes: 16 * 1024 * 1024,
  maxArrayLength: 16 * 1024 * 1024,
  maxArrayDepth: 1,
  maxHeaderBytes: 512 * 1024 * 1024
}

// ---------------------------------------------------------------------------------------------
// ggml's tensor types
// ---------------------------------------------------------------------------------------------

/**
 * ggml's tensor types in GGUF files, as this build's `ggml.h` and `ggml-common.h` define them:
 * id → name, elements per block, bytes per block. Removed ids (4, 5, 31–33, 36–38) are absent.
 */
export const TENSOR_TYPES: ReadonlyMap<number, { readonly name: string; readonly block: number; readonly bytes: number }> = new Map([
  [0, { name: "F32", block: 1, bytes: 4 }],
  [1, { name: "F16", block: 1, bytes: 2 }],
  [2, { name: "Q4_0", block: 32, bytes: 18 }],
  [3, { name: "Q4_1", block: 32, bytes: 20 }],
  [6, { name: "Q5_0", block: 32, bytes: 22 }],
  [7, { name: "Q5_1", block: 32, bytes: 24 }],
  [8, { name: "Q8_0", block: 32, bytes: 34 }],
  [9, { name: "Q8_1", block: 32, bytes: 36 }],
  [10, { name: "Q2_K", block: 256, bytes: 84 }],
  [11, { name: "Q3_K", block: 256, bytes: 110 }],
  [12, { name: "Q4_K", block: 256, bytes: 144 }],
  [13, { name: "Q5_K", block: 256, bytes: 176 }],
  [14, { name: "Q6_K", block: 256, bytes: 210 }],
  [15, { name: "Q8_K", block: 256, bytes: 292 }],
  [16, { name: "IQ2_XXS", block: 256, bytes: 66 }],
  [17, { name: "IQ2_XS", block: 256, bytes: 74 }],
  [18, { name: "IQ3_XXS", block: 256, bytes: 98 }],
  [19, { name: "IQ1_S", block: 256, bytes: 50 }],
  [20, { name: "IQ4_NL", block: 32, bytes: 18 }],
  [21, { name: "IQ3_S", block: 256, bytes: 110 }],
  [22, { name: "IQ2_S", block: 256, bytes: 82 }],
  [23, { name: "IQ4_XS", block: 256, bytes: 136 }],
  [24, { name: "I8", block: 1, bytes: 1 }],
  [25, { name: "I16", block: 1, bytes: 2 }],
  [26, { name: "I32", block: 1, bytes: 4 }],
  [27, { name: "I64", block: 1, bytes: 8 }],
  [28, { name: "F64", block: 1, bytes: 8 }],
  [29, { name: "IQ1_M", block: 256, bytes: 56 }],
  [30, { name: "BF16", block: 1, bytes: 2 }],
  [34, { name: "TQ1_0", block: 256, bytes: 54 }],
  [35, { name: "TQ2_0", block: 256, bytes: 66 }],
  [39, { name: "MXFP4", block: 32, bytes: 17 }],
  [40, { name: "NVFP4", block: 64, bytes: 36 }],
  [41, { name: "Q1_0", block: 128, bytes: 18 }],
  [42, { name: "Q2_0", block: 64, bytes: 18 }]
])

// ---------------------------------------------------------------------------------------------
// What a header holds
// ---------------------------------------------------------------------------------------------

/** A metadata value as kept: scalars and short strings whole; an array as its element type, length and (when short and numeric) values. */
export type GgufValue =
  | { readonly _tag: "number"; readonly value: number }
  | { readonly _tag: "bigint"; readonly value: bigint }
  | { readonly _tag: "bool"; readonly value: boolean }
  | { readonly _tag: "string"; readonly bytes: Uint8Array }
  | { readonly _tag: "array"; readonly itemType: number; readonly length: number; readonly numbers: ReadonlyArray<number> | undefined }

export interface GgufTensor {
  readonly name: string
  readonly dims: ReadonlyArray<number>
  readonly type: number
  /** From the start of the data section. */
  readonly offset: number
  readonly bytes: number
  readonly elements: number
}

export interface GgufFile {
  readonly version: 2 | 3
  readonly metadata: ReadonlyMap<string, GgufValue>
  readonly tensors: ReadonlyArray<GgufTensor>
  readonly alignment: number
  /** Where the tensor data starts. */
  readonly dataOffset: number
  /** Bytes of the header: metadata and tensor infos. */
  readonly headerBytes: number
}

export interface NeedMore {
  readonly _tag: "NeedMore"
  /** A prefix at least this long is needed to go on. */
  readonly bytes: number
}

export type ReadResult = Either.Either<GgufFile, GgufError | NeedMore>

// ---------------------------------------------------------------------------------------------
// The reader
// ---------------------------------------------------------------------------------------------

const T_UINT8 = 0, T_INT8 = 1, T_UINT16 = 2, T_INT16 = 3, T_UINT32 = 4, T_INT32 = 5, T_FLOAT32 = 6, T_BOOL = 7
const T_STRING = 8, T_ARRAY = 9, T_UINT64 = 10, T_INT64 = 11, T_FLOAT64 = 12
const SCALAR_BYTES: ReadonlyMap<number, number> = new Map([
  [T_UINT8, 1], [T_INT8, 1], [T_UINT16, 2], [T_INT16, 2], [T_UINT32, 4], [T_INT32, 4], [T_FLOAT32, 4], [T_BOOL, 1],
  [T_UINT64, 8], [T_INT64, 8], [T_FLOAT64, 8]
])
/** Arrays of numbers up to this length are kept (per-layer head counts and the like). */
const KEPT_NUMBERS = 4096
const MAX_DIMS = 4
/** ggml's GGML_MAX_NAME: a tensor name is shorter. */
const MAX_TENSOR_NAME = 64
const DEFAULT_ALIGNMENT = 32

/** Thrown inside the reader only, and caught at its edge: the result is always an Either. */
class Stop {
  constructor(readonly result: GgufError | NeedMore) {}
}

const utf8 = new TextDecoder("utf-8", { fatal: true })

/**
 * Parse a GGUF header from `prefix`, the first bytes of a file of `fileSize` bytes. Succeeds with
 * the header, fails with a `GgufError`, or with `NeedMore` when the prefix ended before the header
 * did (never when the prefix is the whole file: that is `gguf_truncated`).
 */
export const read = (prefix: Uint8Array, fileSize: number, caps: GgufCaps = defaultCaps): ReadResult => {
  const view = new DataView(prefix.buffer, prefix.byteOffset, prefix.byteLength)
  const whole = prefix.byteLength >= fileSize
  let at = 0
  const fail = (reason: GgufReason): never => {
    throw new Stop(new GgufError({ reason }))
  }
  /** Make sure `n` more bytes are there: in the file, and in the prefix. */
  const need = (n: number) => {
    const end = at + n
    if (end > caps.maxHeaderBytes) fail("gguf_limit_exceeded")
    if (end > fileSize) fail("gguf_truncated")
    if (end > prefix.byteLength) {
      if (whole) fail("gguf_truncated")
      // Ask for at least twice as much, so a caller doubling its prefix converges in a few rounds.
      throw new Stop({ _tag: "NeedMore", bytes: Math.min(fileSize, caps.maxHeaderBytes, Math.max(end, prefix.byteLength * 2)) })
    }
  }
  const u32 = () => {
    need(4)
    const v = view.getUint32(at, true)
    at += 4
    return v
  }
  /** A u64 as a number; past 2^53 it cannot be a real count, size or offset. */
  const u64 = () => {
    need(8)
    const v = view.getBigUint64(at, true)
    at += 8
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail("gguf_limit_exceeded")
    return Number(v)
  }
  const bytesOf = (length: number) => {
    if (length > caps.maxStringBytes) fail("gguf_limit_exceeded")
    need(length)
    const bytes = prefix.subarray(at, at + length)
    at += length
    return bytes
  }
  const string = () => bytesOf(u64())
  const text = (bytes: Uint8Array) => {
    try {
      return utf8.decode(bytes)
    } catch {
      return fail("gguf_bad_string")
    }
  }
  const scalar = (type: number): GgufValue => {
    const size = SCALAR_BYTES.get(type)!
    need(size)
    let value: GgufValue
    switch (type) {
      case T_UINT8: value = { _tag: "number", value: view.getUint8(at) }; break
      case T_INT8: value = { _tag: "number", value: view.getInt8(at) }; break
      case T_UINT16: value = { _tag: "number", value: view.getUint16(at, true) }; break
      case T_INT16: value = { _tag: "number", value: view.getInt16(at, true) }; break
      case T_UINT32: value = { _tag: "number", value: view.getUint32(at, true) }; break
      case T_INT32: value = { _tag: "number", value: view.getInt32(at, true) }; break
      case T_FLOAT32: value = { _tag: "number", value: view.getFloat32(at, true) }; break
      case T_FLOAT64: value = { _tag: "number", value: view.getFloat64(at, true) }; break
      case T_BOOL: {
        const b = view.getUint8(at)
        if (b > 1) fail("gguf_bad_type")
        value = { _tag: "bool", value: b === 1 }
        break
      }
      case T_UINT64: value = { _tag: "bigint", value: view.getBigUint64(at, true) }; break
      default: value = { _tag: "bigint", value: view.getBigInt64(at, true) }
    }
    at += size
    return value
  }
  const value = (type: number, depth: number): GgufValue => {
    if (SCALAR_BYTES.has(type)) return scalar(type)
    if (type === T_STRING) return { _tag: "string", bytes: string() }
    if (type !== T_ARRAY) return fail("gguf_bad_type")
    if (depth >= caps.maxArrayDepth) fail("gguf_limit_exceeded")
    const itemType = u32()
    const length = u64()
    if (length > caps.maxArrayLength) fail("gguf_limit_exceeded")
    const size = SCALAR_BYTES.get(itemType)
    if (size !== undefined) {
      // Numbers: checked at once; kept when few.
      if (length * size > caps.maxHeaderBytes) fail("gguf_limit_exceeded")
      if (itemType === T_BOOL || length <= KEPT_NUMBERS) {
        const numbers: Array<number> = []
        for (let i = 0; i < length; i++) {
          const item = scalar(itemType)
          if (length <= KEPT_NUMBERS) {
            numbers.push(item._tag === "number" ? item.value : item._tag === "bool" ? Number(item.value) : item._tag === "bigint" ? Number(item.value) : NaN)
          }
        }
        return { _tag: "array", itemType, length, numbers: length <= KEPT_NUMBERS ? numbers : undefined }
      }
      need(length * size)
      at += length * size
      return { _tag: "array", itemType, length, numbers: undefined }
    }
    if (itemType !== T_STRING && itemType !== T_ARRAY) fail("gguf_bad_type")
    for (let i = 0; i < length; i++) {
      if (itemType === T_STRING) {
        const n = u64()
        if (n > caps.maxStringBytes) fail("gguf_limit_exceeded")
        need(n)
        at += n
      } else value(T_ARRAY, depth + 1)
    }
    return { _tag: "array", itemType, length, numbers: undefined }
  }

  try {
    need(4)
    if (prefix[0] !== 0x47 || prefix[1] !== 0x47 || prefix[2] !== 0x55 || prefix[3] !== 0x46) fail("gguf_bad_magic")
    at = 4
    const version = u32()
    if (version !== 2 && version !== 3) fail("gguf_unsupported_version")
    const tensorCount = u64()
    const keyCount = u64()
    if (tensorCount > caps.maxTensors || keyCount > caps.maxKeys) fail("gguf_limit_exceeded")

    const metadata = new Map<string, GgufValue>()
    for (let i = 0; i < keyCount; i++) {
      const key = text(string())
      if (key.length === 0) fail("gguf_bad_type")
      if (metadata.has(key)) fail("gguf_duplicate_name")
      metadata.set(key, value(u32(), 0))
    }

    const alignmentValue = metadata.get("general.alignment")
    let alignment = DEFAULT_ALIGNMENT
    if (alignmentValue !== undefined) {
      // gguf.cpp requires a u32; a power of two, as ggml's padding assumes.
      if (alignmentValue._tag !== "number" || !Number.isInteger(alignmentValue.value)) fail("gguf_bad_type")
      alignment = (alignmentValue as { value: number }).value
      if (alignment <= 0 || (alignment & (alignment - 1)) !== 0) fail("gguf_bad_alignment")
    }

    const infos: Array<{ name: string; dims: Array<number>; type: number; offset: number }> = []
    const names = new Set<string>()
    for (let i = 0; i < tensorCount; i++) {
      const nameBytes = string()
      if (nameBytes.length === 0 || nameBytes.length >= MAX_TENSOR_NAME) fail("gguf_bad_tensor")
      const name = text(nameBytes)
      if (names.has(name)) fail("gguf_duplicate_name")
      names.add(name)
      const nDims = u32()
      if (nDims < 1 || nDims > MAX_DIMS) fail("gguf_bad_tensor")
      const dims: Array<number> = []
      for (let d = 0; d < nDims; d++) {
        const n = u64()
        if (n === 0) fail("gguf_bad_tensor")
        dims.push(n)
      }
      const type = u32()
      if (!TENSOR_TYPES.has(type)) fail("gguf_bad_type")
      infos.push({ name, dims, type, offset: u64() })
    }
    const headerBytes = at
    const dataOffset = Math.ceil(headerBytes / alignment) * alignment

    // Sizes without overflow (BigInt), each tensor where the previous one ends, padded.
    const tensors: Array<GgufTensor> = []
    let expected = 0n
    const end = BigInt(fileSize - dataOffset)
    for (const info of infos) {
      const t = TENSOR_TYPES.get(info.type)!
      if (info.dims[0]! % t.block !== 0) fail("gguf_bad_tensor")
      const elements = info.dims.reduce((n, d) => n * BigInt(d), 1n)
      const bytes = (elements / BigInt(t.block)) * BigInt(t.bytes)
      if (elements > BigInt(Number.MAX_SAFE_INTEGER) || bytes > BigInt(Number.MAX_SAFE_INTEGER)) fail("gguf_bad_tensor")
      if (info.offset % alignment !== 0) fail("gguf_bad_alignment")
      if (BigInt(info.offset) !== expected) fail("gguf_bad_tensor")
      if (BigInt(info.offset) + bytes > end) fail("gguf_truncated")
      tensors.push({ ...info, bytes: Number(bytes), elements: Number(elements) })
      const padded = ((bytes + BigInt(alignment) - 1n) / BigInt(alignment)) * BigInt(alignment)
      expected += padded
    }
    if (dataOffset > fileSize && tensors.length > 0) fail("gguf_truncated")
    return Either.right({ version: version as 2 | 3, metadata, tensors, alignment, dataOffset, headerBytes })
  } catch (error) {
    if (error instanceof Stop) return Either.left(error.result)
    throw error
  }
}

// ---------------------------------------------------------------------------------------------
// The summary
// ---------------------------------------------------------------------------------------------

export interface GgufSummary {
  readonly architecture: string
  readonly parameterCount: number
  readonly fileType: number | null
  readonly contextLength: number | null
  readonly blockCount: number | null
  readonly embeddingLength: number | null
  readonly feedForwardLength: number | null
  readonly headCount: number | null
  readonly headCountKv: number | null
  /** Per layer, when the file gives them per layer (else every layer has `headCountKv`). */
  readonly headCountKvPerLayer: ReadonlyArray<number> | null
  readonly keyLength: number | null
  readonly valueLength: number | null
  readonly slidingWindow: number | null
  readonly expertCount: number | null
  /** `<arch>.pooling_type`: llama.cpp's 0 none, 1 mean, 2 cls, 3 last, 4 rank. */
  readonly poolingType: number | null
  readonly vocabularySize: number | null
  readonly tensorCount: number
  readonly weightsBytes: number
  readonly chatTemplateSha256: string | null
  readonly chatTemplateLength: number | null
}

const numberOf = (value: GgufValue | undefined): number | null =>
  value === undefined
    ? null
    : value._tag === "number" && Number.isFinite(value.value)
    ? value.value
    : value._tag === "bigint" && value.value <= BigInt(Number.MAX_SAFE_INTEGER) && value.value >= 0n
    ? Number(value.value)
    : value._tag === "array" && value.numbers !== undefined && value.numbers.length > 0
    ? Math.max(...value.numbers)
    : null

/**
 * What the file says it is, from its metadata and tensors. The architecture must be a string
 * (`gguf_bad_type` otherwise); every other field is null when absent or of an unusable type.
 */
export const summarize = (file: GgufFile): Either.Either<GgufSummary, GgufError> => {
  const arch = file.metadata.get("general.architecture")
  if (arch === undefined || arch._tag !== "string") return Either.left(new GgufError({ reason: "gguf_bad_type" }))
  let architecture: string
  try {
    architecture = utf8.decode(arch.bytes)
  } catch {
    return Either.left(new GgufError({ reason: "gguf_bad_string" }))
  }
  const key = (name: string) => file.metadata.get(`${architecture}.${name}`)
  const headCountKvValue = key("attention.head_count_kv")
  const template = file.metadata.get("tokenizer.chat_template")
  const tokens = file.metadata.get("tokenizer.ggml.tokens")
  const templateBytes = template?._tag === "string" ? template.bytes : undefined
  return Either.right({
    architecture,
    parameterCount: file.tensors.reduce((n, t) => n + t.elements, 0),
    fileType: numberOf(file.metadata.get("general.file_type")),
    contextLength: numberOf(key("context_length")),
    blockCount: numberOf(key("block_count")),
    embeddingLength: numberOf(key("embedding_length")),
    feedForwardLength: numberOf(key("feed_forward_length")),
    headCount: numberOf(key("attention.head_count")),
    headCountKv: numberOf(headCountKvValue),
    headCountKvPerLayer: headCountKvValue?._tag === "array" && headCountKvValue.numbers !== undefined ? headCountKvValue.numbers : null,
    keyLength: numberOf(key("attention.key_length")),
    valueLength: numberOf(key("attention.value_length")),
    slidingWindow: numberOf(key("attention.sliding_window")),
    expertCount: numberOf(key("expert_count")),
    poolingType: numberOf(key("pooling_type")),
    vocabularySize: tokens?._tag === "array" ? tokens.length : null,
    tensorCount: file.tensors.length,
    weightsBytes: file.tensors.reduce((n, t) => n + t.bytes, 0),
    chatTemplateSha256: templateBytes === undefined ? null : createHash("sha256").update(templateBytes).digest("hex"),
    chatTemplateLength: templateBytes === undefined ? null : templateBytes.length
  })
}
