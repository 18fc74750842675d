import { createHash } from "node:crypto"
import { assert } from "@effect/vitest"
import { Either } from "effect"
import type { DomainError } from "../../src/domain/Errors.js"
import * as Integrity from "../../src/domain/Integrity.js"

/** Deterministic pseudo-random bytes (xorshift32), so failures reproduce. */
export const bytesOf = (length: number, seed = 0x9e3779b9): Uint8Array => {
  const out = new Uint8Array(length)
  let x = seed >>> 0 || 1
  for (let i = 0; i < length; i++) {
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    out[i] = x & 0xff
  }
  return out
}

export const sha256Hex = (bytes: Uint8Array): string => createHash("sha256").update(bytes).digest("hex")

/** A validated spec describing exactly `bytes`. */
export const specFor = (bytes: Uint8Array): Integrity.ModelSpec =>
  Either.getOrThrow(Integrity.checkSpec({ sha256: sha256Hex(bytes), sizeBytes: bytes.length }))

export const assertRight = <A>(result: Either.Either<A, DomainError | ReasonCarrier>): A => {
  if (Either.isLeft(result)) assert.fail(`expected right, got ${result.left._tag}/${result.left.reason}`)
  return result.right
}

type ReasonCarrier = { readonly _tag: string; readonly reason: string; readonly message: string }

export const assertLeft = <E extends ReasonCarrier>(
  result: Either.Either<unknown, E>,
  tag: E["_tag"],
  reason: E["reason"]
): E => {
  if (Either.isRight(result)) assert.fail(`expected ${tag}/${reason}, got right`)
  assert.strictEqual(result.left._tag, tag)
  assert.strictEqual(result.left.reason, reason)
  assertCarriesNoInput(result.left)
  return result.left
}

const messageByReason = new Map<string, string>()

/**
 * Every rejection a test produces passes through here: it must serialize to its tag and reason
 * alone, and its message must be the one fixed text of that reason. Nothing else can carry input.
 */
export const assertCarriesNoInput = (error: ReasonCarrier): void => {
  assert.deepStrictEqual(Object.keys(error).sort(), ["_tag", "reason"])
  assert.strictEqual(JSON.stringify(error), JSON.stringify({ reason: error.reason, _tag: error._tag }))
  const fixed = messageByReason.get(error.reason) ?? error.message
  messageByReason.set(error.reason, fixed)
  assert.strictEqual(error.message, fixed)
  assert.strictEqual(String(error), `${error._tag}: ${fixed}`)
}

/** Split `bytes` at the given cut points (sorted, deduplicated, within range). */
export const chunkAt = (bytes: Uint8Array, cuts: ReadonlyArray<number>): Array<Uint8Array> => {
  const points = [...new Set(cuts.map((c) => Math.min(Math.max(c, 0), bytes.length)))].sort((a, b) => a - b)
  const chunks: Array<Uint8Array> = []
  let start = 0
  for (const p of [...points, bytes.length]) {
    chunks.push(bytes.subarray(start, p))
    start = p
  }
  return chunks
}
