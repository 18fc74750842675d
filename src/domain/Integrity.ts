/**
 * Supply-chain integrity: the model spec, the download source policy, and the streaming verifier.
 * Pure computation: SHA-256 is hashing, not I/O.
 */
import { createHash, timingSafeEqual } from "node:crypto"
import { Either, Schema } from "effect"
import { IntegrityError, type IntegrityReason } from "./Errors.js"

const fail = (reason: IntegrityReason) => Either.left(new IntegrityError({ reason }))
const RIGHT_VOID: Either.Either<void, never> = Either.right(undefined)

export const Sha256Hex = Schema.String.pipe(Schema.pattern(/^[0-9a-f]{64}$/), Schema.brand("Sha256Hex"))
export type Sha256Hex = typeof Sha256Hex.Type

export const SizeBytes = Schema.Number.pipe(Schema.int(), Schema.positive(), Schema.lessThanOrEqualTo(Number.MAX_SAFE_INTEGER))

export const ModelSpec = Schema.Struct({ sha256: Sha256Hex, sizeBytes: SizeBytes }).pipe(Schema.brand("ModelSpec"))
/** A spec that passed `checkSpec`: 64 lowercase hex chars and a positive safe-integer size. */
export type ModelSpec = typeof ModelSpec.Type

const isModelSpec = Schema.is(ModelSpec)

export const checkSpec = (input: unknown): Either.Either<ModelSpec, IntegrityError> =>
  isModelSpec(input) ? Either.right(input) : fail("malformed_spec")

// ---------------------------------------------------------------------------------------------
// Source policy
// ---------------------------------------------------------------------------------------------

const parseUrl = (input: unknown): URL | undefined => {
  const text = input instanceof URL ? input.href : input
  return typeof text === "string" && URL.canParse(text) ? new URL(text) : undefined
}

// Encoded separators could let a server that decodes them walk out of an allowed directory
// after the boundary check below has passed.
const ENCODED_SEPARATOR = /%2f|%5c/i

interface AllowedPrefix {
  readonly hostname: string
  readonly port: string
  readonly path: string
  /** `https://*.<domain>/…`: any host strictly below `<domain>`, never `<domain>` itself. */
  readonly subdomains: boolean
}

const WILDCARD = /^https:\/\/\*\./i
/** What may follow `https://*.`: a plain domain name of two labels or more (no empty label, `@`, `%` or port tricks), then `/…` or the end. */
const WILDCARD_ENTRY = /^https:\/\/\*\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+(?::\d{1,5})?(?:\/[^?#]*)?$/i
const IP_HOST = /^(\d+\.){3}\d+$|^\[/

const toAllowedPrefix = (entry: unknown): AllowedPrefix | undefined => {
  // The wildcard form, `https://*.hf.co/`: only a leading `*.`, over a domain name of two labels or
  // more; the rest of the entry is read as any other (the parser alone would keep `*` in the host).
  const subdomains = typeof entry === "string" && WILDCARD.test(entry)
  if (subdomains && !WILDCARD_ENTRY.test(entry as string)) return undefined
  const parsed = parseUrl(subdomains ? `https://${(entry as string).slice("https://*.".length)}` : entry)
  if (
    parsed === undefined ||
    parsed.protocol !== "https:" ||
    parsed.username !== "" ||
    parsed.password !== "" ||
    parsed.search !== "" ||
    parsed.hash !== "" ||
    parsed.hostname.includes("*") ||
    ENCODED_SEPARATOR.test(parsed.pathname)
  ) {
    return undefined
  }
  if (subdomains && (IP_HOST.test(parsed.hostname) || parsed.hostname.split(".").filter((label) => label !== "").length < 2)) {
    return undefined
  }
  // "/org/repo/" and "/org/repo" both mean the directory /org/repo.
  const path = parsed.pathname.endsWith("/") ? parsed.pathname.slice(0, -1) : parsed.pathname
  return { hostname: parsed.hostname, port: parsed.port, path, subdomains }
}

/** An entry `checkSource` can match: HTTPS, no credentials, query, fragment or encoded separator. */
export const isAllowlistEntry = (entry: unknown): boolean => toAllowedPrefix(entry) !== undefined

const admits = (prefix: AllowedPrefix, url: URL): boolean =>
  // The WHATWG parser lower-cases the host and drops a default port, so plain equality compares
  // hosts case-insensitively and effective ports exactly. A wildcard matches at a label boundary:
  // `x.hf.co` ends with `.hf.co`; `evilhf.co` and `hf.co.evil.io` do not.
  (prefix.subdomains
    ? url.hostname.endsWith(`.${prefix.hostname}`) && !IP_HOST.test(url.hostname)
    : prefix.hostname === url.hostname) &&
  prefix.port === url.port &&
  (url.pathname === prefix.path || url.pathname.startsWith(`${prefix.path}/`))

/**
 * Decide whether `url` may be downloaded from. HTTPS only; no credentials; the host and effective
 * port must equal an allowlist entry's (or, for an entry `https://*.<domain>/…`, the host must be a
 * subdomain of `<domain>`, at any depth) and the path must be that entry's path or continue it after
 * a `/`. Never string-prefix matching: that admits `allowed.example.com.evil.io` and
 * `allowed.example.com@evil.io`.
 */
export const checkSource = (url: unknown, allowlist: ReadonlyArray<unknown>): Either.Either<URL, IntegrityError> => {
  const parsed = parseUrl(url)
  if (parsed === undefined) return fail("malformed_spec")
  if (parsed.protocol !== "https:") return fail("scheme_not_allowed")
  if (parsed.username !== "" || parsed.password !== "" || parsed.hash !== "") return fail("source_not_allowed")
  if (ENCODED_SEPARATOR.test(parsed.pathname)) return fail("source_not_allowed")
  if (!Array.isArray(allowlist)) return fail("source_not_allowed")
  for (const entry of allowlist) {
    const prefix = toAllowedPrefix(entry)
    if (prefix !== undefined && admits(prefix, parsed)) return Either.right(parsed)
  }
  return fail("source_not_allowed")
}

// ---------------------------------------------------------------------------------------------
// Streaming verifier
// ---------------------------------------------------------------------------------------------

export interface Verifier {
  /** Bytes accepted so far. */
  readonly receivedBytes: number
  /**
   * Feed the next chunk, in order. Fails with `size_mismatch` as soon as the total passes the
   * expected size, so an endless stream is cut at expected + 1 bytes; the caller must not write
   * a chunk that was refused.
   */
  readonly update: (chunk: Uint8Array) => Either.Either<void, IntegrityError>
  /** Exact size, then the digest in constant time. Single use. */
  readonly finalize: () => Either.Either<void, IntegrityError>
  /** Give up: every later call answers `accumulator_aborted`. */
  readonly abort: () => void
}

export const makeVerifier = (spec: ModelSpec): Verifier => {
  const expected = Buffer.from(spec.sha256, "hex")
  const expectedSize = spec.sizeBytes
  const hash = createHash("sha256")
  let received = 0
  // Once set, the verifier is spent and answers only this.
  let closed: "accumulator_finalized" | "accumulator_aborted" | undefined

  return {
    get receivedBytes() {
      return received
    },
    update(chunk) {
      if (closed !== undefined) return fail(closed)
      // Bytes come from I/O: anything else (a string, a wider typed array) aborts rather than being hashed.
      if (!(chunk instanceof Uint8Array)) {
        closed = "accumulator_aborted"
        return fail(closed)
      }
      if (received + chunk.length > expectedSize) {
        closed = "accumulator_aborted"
        return fail("size_mismatch")
      }
      hash.update(chunk)
      received += chunk.length
      return RIGHT_VOID
    },
    finalize() {
      if (closed !== undefined) return fail(closed)
      closed = "accumulator_finalized"
      if (received !== expectedSize) return fail("size_mismatch")
      // Both sides are 32 bytes (the spec was validated), so timingSafeEqual applies directly.
      return timingSafeEqual(hash.digest(), expected) ? RIGHT_VOID : fail("digest_mismatch")
    },
    abort() {
      closed ??= "accumulator_aborted"
    }
  }
}

/** Verify bytes already in memory against a spec. */
export const verifyBytes = (bytes: Uint8Array, spec: ModelSpec): Either.Either<void, IntegrityError> => {
  if (!(bytes instanceof Uint8Array)) return fail("malformed_spec")
  const verifier = makeVerifier(spec)
  return Either.flatMap(verifier.update(bytes), () => verifier.finalize())
}
