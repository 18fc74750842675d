import { assert, describe, it } from "@effect/vitest"
import { Either, FastCheck as fc } from "effect"
import * as Integrity from "../../src/domain/Integrity.js"
import { assertLeft, assertRight, bytesOf, chunkAt, sha256Hex, specFor } from "./fixtures.js"

const DIGEST = "a".repeat(64)

describe("Integrity.checkSpec", () => {
  it("accepts 64 lowercase hex chars and a positive safe-integer size", () => {
    const spec = assertRight(Integrity.checkSpec({ sha256: DIGEST, sizeBytes: 1 }))
    assert.strictEqual(spec.sha256, DIGEST)
    assert.strictEqual(spec.sizeBytes, 1)
    assertRight(Integrity.checkSpec({ sha256: "0123456789abcdef".repeat(4), sizeBytes: Number.MAX_SAFE_INTEGER }))
  })

  const badDigests: ReadonlyArray<[string, unknown]> = [
    ["upper case", "A".repeat(64)],
    ["63 chars", "a".repeat(63)],
    ["65 chars", "a".repeat(65)],
    ["non-hex", "g".repeat(64)],
    ["empty", ""],
    ["surrounding space", ` ${"a".repeat(62)} `],
    ["number", 42],
    ["null", null],
    ["missing", undefined],
    ["bytes", new Uint8Array(32)]
  ]
  for (const [name, sha256] of badDigests) {
    it(`rejects a digest that is ${name}`, () => {
      assertLeft(Integrity.checkSpec({ sha256, sizeBytes: 10 }), "IntegrityError", "malformed_spec")
    })
  }

  const badSizes: ReadonlyArray<[string, unknown]> = [
    ["zero", 0],
    ["negative", -1],
    ["fractional", 1.5],
    ["NaN", Number.NaN],
    ["Infinity", Number.POSITIVE_INFINITY],
    ["past the safe range", Number.MAX_SAFE_INTEGER + 1],
    ["a string", "100"],
    ["a bigint", 100n],
    ["missing", undefined]
  ]
  for (const [name, sizeBytes] of badSizes) {
    it(`rejects a size that is ${name}`, () => {
      assertLeft(Integrity.checkSpec({ sha256: DIGEST, sizeBytes }), "IntegrityError", "malformed_spec")
    })
  }

  it("rejects a spec that is not an object", () => {
    for (const input of [null, undefined, "spec", 7, [DIGEST, 10]]) {
      assertLeft(Integrity.checkSpec(input), "IntegrityError", "malformed_spec")
    }
  })
})

describe("Integrity.checkSource", () => {
  const allowlist = ["https://models.example.com/org/repo"]
  const accept = (url: unknown, list: ReadonlyArray<unknown> = allowlist) => assertRight(Integrity.checkSource(url, list))
  const reject = (url: unknown, reason: "source_not_allowed" | "scheme_not_allowed" | "malformed_spec", list: ReadonlyArray<unknown> = allowlist) =>
    assertLeft(Integrity.checkSource(url, list), "IntegrityError", reason)

  it("admits a file below the allowed path and returns the parsed URL", () => {
    const url = accept("https://models.example.com/org/repo/model.gguf")
    assert.instanceOf(url, URL)
    assert.strictEqual(url.pathname, "/org/repo/model.gguf")
  })

  it("admits the allowed path itself, a query string, and an explicit default port", () => {
    accept("https://models.example.com/org/repo")
    accept("https://models.example.com/org/repo/resolve/main/m.gguf?download=true")
    accept("https://models.example.com:443/org/repo/m.gguf")
  })

  it("compares hosts case-insensitively and paths case-sensitively", () => {
    accept("https://MODELS.Example.COM/org/repo/m.gguf")
    accept("https://models.example.com/org/repo/m.gguf", ["https://Models.EXAMPLE.com/org/repo"])
    reject("https://models.example.com/org/Repo/m.gguf", "source_not_allowed")
  })

  it("admits a URL object as well as a string", () => {
    accept(new URL("https://models.example.com/org/repo/m.gguf"))
  })

  it("never admits a sibling path that only shares a string prefix", () => {
    reject("https://models.example.com/org/repo-evil/m.gguf", "source_not_allowed")
    reject("https://models.example.com/org/repository/m.gguf", "source_not_allowed")
    reject("https://models.example.com/org/m.gguf", "source_not_allowed")
    reject("https://models.example.com/", "source_not_allowed")
  })

  it("rejects the look-alike hosts that string-prefix matching admitted", () => {
    reject("https://models.example.com.evil.io/org/repo/m.gguf", "source_not_allowed")
    reject("https://models.example.com@evil.io/org/repo/m.gguf", "source_not_allowed")
    reject("https://evil.io/https://models.example.com/org/repo/m.gguf", "source_not_allowed")
    reject("https://models.example.com./org/repo/m.gguf", "source_not_allowed")
    reject("https://sub.models.example.com/org/repo/m.gguf", "source_not_allowed")
  })

  it("rejects credentials in the URL, even for an allowed host", () => {
    reject("https://user@models.example.com/org/repo/m.gguf", "source_not_allowed")
    reject("https://user:secret@models.example.com/org/repo/m.gguf", "source_not_allowed")
    reject("https://:secret@models.example.com/org/repo/m.gguf", "source_not_allowed")
  })

  it("rejects another effective port", () => {
    reject("https://models.example.com:8443/org/repo/m.gguf", "source_not_allowed")
    accept("https://models.example.com:8443/org/repo/m.gguf", ["https://models.example.com:8443/org/repo"])
    reject("https://models.example.com/org/repo/m.gguf", "source_not_allowed", ["https://models.example.com:8443/org/repo"])
  })

  it("resolves dot segments before matching, so traversal out of the allowed path fails", () => {
    reject("https://models.example.com/org/repo/../repo-evil/m.gguf", "source_not_allowed")
    reject("https://models.example.com/org/repo/%2e%2e/repo-evil/m.gguf", "source_not_allowed")
    reject("https://models.example.com/org/repo/..%2f..%2fetc/passwd", "source_not_allowed")
    reject("https://models.example.com/org/repo/..%5C..%5Cetc", "source_not_allowed")
    accept("https://models.example.com/org/other/../repo/m.gguf")
  })

  it("rejects a fragment", () => {
    reject("https://models.example.com/org/repo/m.gguf#part", "source_not_allowed")
  })

  it("allows only HTTPS", () => {
    reject("http://models.example.com/org/repo/m.gguf", "scheme_not_allowed")
    reject("ftp://models.example.com/org/repo/m.gguf", "scheme_not_allowed")
    reject("file:///org/repo/m.gguf", "scheme_not_allowed")
    reject("ws://models.example.com/org/repo/m.gguf", "scheme_not_allowed")
    reject("data:text/plain,hello", "scheme_not_allowed")
    reject("javascript:alert(1)", "scheme_not_allowed")
  })

  it("treats a URL that does not parse, or is not a string, as malformed", () => {
    for (const url of ["", "not a url", "https://", "//models.example.com/org/repo/m.gguf", 42, null, undefined, {}, ["https://models.example.com/org/repo/m"]]) {
      reject(url, "malformed_spec")
    }
  })

  it("rejects everything with an empty or malformed allowlist", () => {
    const url = "https://models.example.com/org/repo/m.gguf"
    reject(url, "source_not_allowed", [])
    reject(url, "source_not_allowed", null as unknown as ReadonlyArray<unknown>)
    reject(url, "source_not_allowed", "https://models.example.com/org/repo" as unknown as ReadonlyArray<unknown>)
    reject(url, "source_not_allowed", { 0: "https://models.example.com/org/repo", length: 1 } as unknown as ReadonlyArray<unknown>)
  })

  it("isAllowlistEntry says which entries can match at all", () => {
    assert.isTrue(Integrity.isAllowlistEntry("https://models.example.com/org/repo"))
    assert.isTrue(Integrity.isAllowlistEntry("https://models.example.com:8443/"))
    for (const entry of ["http://models.example.com/org", "https://u:p@models.example.com/org", "https://models.example.com/org?x=1", "https://models.example.com/org#f", "https://models.example.com/org%2Fx", "not a url", 42, null]) {
      assert.isFalse(Integrity.isAllowlistEntry(entry), String(entry))
    }
  })

  it("ignores invalid allowlist entries but still honours a valid one beside them", () => {
    const url = "https://models.example.com/org/repo/m.gguf"
    const invalid = [
      "http://models.example.com/org/repo",
      "https://user:pw@models.example.com/org/repo",
      "https://user@models.example.com/org/repo",
      "https://:pw@models.example.com/org/repo",
      "https://models.example.com/org/repo?token=1",
      "https://models.example.com/org/repo#frag",
      "https://models.example.com/org%2Frepo",
      "models.example.com/org/repo",
      "",
      42,
      null,
      {}
    ]
    for (const entry of invalid) reject(url, "source_not_allowed", [entry])
    accept(url, [...invalid, "https://models.example.com/org/repo"])
  })

  it("treats an entry with a trailing slash as the same directory, and a bare origin as the whole host", () => {
    accept("https://models.example.com/org/repo/m.gguf", ["https://models.example.com/org/repo/"])
    reject("https://models.example.com/org/repo-evil/m.gguf", "source_not_allowed", ["https://models.example.com/org/repo/"])
    accept("https://models.example.com/anything/m.gguf", ["https://models.example.com"])
    accept("https://models.example.com/anything/m.gguf", ["https://models.example.com/"])
    reject("https://other.example.com/anything/m.gguf", "source_not_allowed", ["https://models.example.com/"])
  })

  it("normalises internationalised and numeric hosts the same way on both sides", () => {
    accept("https://xn--bcher-kva.example/models/m.gguf", ["https://bücher.example/models"])
    accept("https://127.0.0.1:8443/m/x.gguf", ["https://127.0.0.1:8443/m"])
    accept("https://[::1]:8443/m/x.gguf", ["https://[0:0:0:0:0:0:0:1]:8443/m"])
  })

  // Property: an accepted URL always has the origin of some entry and a path at a segment boundary.
  const segment = fc.constantFrom("org", "repo", "repo-evil", "models", "m.gguf", "a", "A", "..", "%2e%2e", "x%2Fy", "", ".")
  const host = fc.constantFrom("models.example.com", "MODELS.example.com", "models.example.com.evil.io", "evil.io", "example.com", "models.example.com:8443", "models.example.com@evil.io", "u:p@models.example.com")
  const scheme = fc.constantFrom("https://", "http://", "HTTPS://")
  const urlArb = fc.tuple(scheme, host, fc.array(segment, { maxLength: 5 }), fc.constantFrom("", "?q=1", "#f", "/")).map(
    ([s, h, segs, tail]) => `${s}${h}/${segs.join("/")}${tail}`
  )
  it.prop("an accepted URL has an allowlisted origin and a path at a segment boundary", [urlArb, fc.array(urlArb, { maxLength: 4 })], ([url, entries]) => {
    const result = Integrity.checkSource(url, entries)
    if (Either.isLeft(result)) return
    const accepted = result.right
    const witness = entries.some((entry) => {
      let base: URL
      try {
        base = new URL(entry)
      } catch {
        return false
      }
      if (base.protocol !== "https:" || base.username || base.password || base.search || base.hash) return false
      const path = base.pathname.replace(/\/$/, "")
      return base.origin === accepted.origin && (accepted.pathname === path || accepted.pathname.startsWith(`${path}/`))
    })
    assert.isTrue(witness)
    assert.strictEqual(accepted.protocol, "https:")
    assert.strictEqual(accepted.username + accepted.password, "")
  }, { fastCheck: { numRuns: 2000 } })

  it("a wildcard entry admits the domain's subdomains at any depth, never the domain or a look-alike", () => {
    const hub = ["https://*.hf.co/"]
    accept("https://cdn-lfs-us-1.hf.co/repos/ab/cd/file", hub)
    accept("https://cas-bridge.xethub.hf.co/xet-bridge-us/x", hub)
    accept("https://CDN-LFS.HF.CO/x", hub)
    for (const url of ["https://hf.co/x", "https://hf.co.evil.io/x", "https://evilhf.co/x", "https://x.hf.co.evil.io/x", "http://cdn-lfs.hf.co/x", "https://cdn-lfs.hf.co:8443/x", "https://a.hf.co@evil.io/x"]) {
      assert.isTrue(Either.isLeft(Integrity.checkSource(url, hub)), url)
    }
    // The path still bounds it.
    accept("https://a.example.com/models/m.gguf", ["https://*.example.com/models"])
    reject("https://a.example.com/other/m.gguf", "source_not_allowed", ["https://*.example.com/models"])
    // Only a leading `*.` over two labels or more, https only, no IP addresses.
    for (const entry of ["https://*.co/", "https://*/", "https://a.*.hf.co/", "https://*hf.co/", "https://**.hf.co/", "http://*.hf.co/", "https://*.127.0.0.1/", "https://*.[::1]/", "https://*.hf.co/?q", "https://*.*.hf.co/", "https://*.@evil.com/", "https://*..hf.co/", "https://*.a.b%2e/", "https://*.hf..co/", "https://*.-hf.co/"]) {
      assert.isFalse(Integrity.isAllowlistEntry(entry), entry)
    }
    assert.isTrue(Integrity.isAllowlistEntry("https://*.hf.co/"))
  })

  const label = fc.constantFrom("cdn-lfs", "cas-bridge", "xethub", "hf", "co", "evil", "io", "hfco", "x", "HF", "")
  const hostArb = fc.array(label, { minLength: 1, maxLength: 4 }).map((labels) => labels.join("."))
  it.prop("a wildcard admits exactly the hosts that end in `.` + its domain", [hostArb, fc.constantFrom("", ":443", ":8443")], ([host, port]) => {
    const url = `https://${host}${port}/repos/file`
    let parsed: URL
    try {
      parsed = new URL(url)
    } catch {
      return
    }
    const result = Integrity.checkSource(url, ["https://*.hf.co/"])
    assert.strictEqual(Either.isRight(result), parsed.hostname.endsWith(".hf.co") && parsed.port === "", url)
  }, { fastCheck: { numRuns: 2000 } })

  it.prop("a URL on a host that no entry names is always rejected", [fc.webUrl({ validSchemes: ["https"], withQueryParameters: true })], ([url]) => {
    const result = Integrity.checkSource(url, ["https://models.example.invalid/org/repo"])
    assert.isTrue(Either.isLeft(result))
  })
})

describe("Integrity.makeVerifier", () => {
  const data = bytesOf(4096)
  const spec = specFor(data)

  it("accepts the exact bytes, in one chunk or many, and counts them", () => {
    const one = Integrity.makeVerifier(spec)
    assertRight(one.update(data))
    assert.strictEqual(one.receivedBytes, data.length)
    assertRight(one.finalize())

    const many = Integrity.makeVerifier(spec)
    for (const chunk of chunkAt(data, [0, 0, 1, 100, 1000, 4095])) assertRight(many.update(chunk))
    assertRight(many.finalize())
  })

  it("accepts a Buffer and a Uint8Array view with an offset", () => {
    const v = Integrity.makeVerifier(spec)
    assertRight(v.update(Buffer.from(data.subarray(0, 10))))
    const padded = new Uint8Array(data.length + 8)
    padded.set(data, 4)
    assertRight(v.update(new Uint8Array(padded.buffer, 4 + 10, data.length - 10)))
    assertRight(v.finalize())
  })

  it("fails size_mismatch on the chunk that passes the expected size, without counting it", () => {
    const v = Integrity.makeVerifier(spec)
    assertRight(v.update(data.subarray(0, 4000)))
    assertLeft(v.update(new Uint8Array(97)), "IntegrityError", "size_mismatch")
    assert.strictEqual(v.receivedBytes, 4000)
    assertLeft(v.update(new Uint8Array(1)), "IntegrityError", "accumulator_aborted")
    assertLeft(v.finalize(), "IntegrityError", "accumulator_aborted")
  })

  it("cuts an endless stream at expected + 1 bytes", () => {
    const small = bytesOf(1000, 7)
    const v = Integrity.makeVerifier(specFor(small))
    let offered = 0
    for (;;) {
      offered += 1
      if (Either.isLeft(v.update(new Uint8Array(1)))) break
      assert.isBelow(offered, 10_000, "the verifier never cut the stream")
    }
    assert.strictEqual(offered, small.length + 1)
  })

  it("fails size_mismatch on finalize when bytes are missing", () => {
    const v = Integrity.makeVerifier(spec)
    assertRight(v.update(data.subarray(0, data.length - 1)))
    assertLeft(v.finalize(), "IntegrityError", "size_mismatch")
  })

  it("fails digest_mismatch when the size is right but the content is not", () => {
    const v = Integrity.makeVerifier(spec)
    assertRight(v.update(bytesOf(4096, 99)))
    assertLeft(v.finalize(), "IntegrityError", "digest_mismatch")
  })

  it("checks the size before the digest", () => {
    const wrong = assertRight(Integrity.checkSpec({ sha256: DIGEST, sizeBytes: 10 }))
    const v = Integrity.makeVerifier(wrong)
    assertRight(v.update(new Uint8Array(9)))
    assertLeft(v.finalize(), "IntegrityError", "size_mismatch")
  })

  it("aborts on a chunk that is not a Uint8Array (typed away, and still refused at run time)", () => {
    for (const chunk of ["text", [1, 2, 3], null, undefined, 5, new ArrayBuffer(4), new DataView(new ArrayBuffer(4)), new Uint16Array(2)]) {
      const v = Integrity.makeVerifier(spec)
      assertLeft(v.update(chunk as unknown as Uint8Array), "IntegrityError", "accumulator_aborted")
      assertLeft(v.update(data), "IntegrityError", "accumulator_aborted")
      assertLeft(v.finalize(), "IntegrityError", "accumulator_aborted")
    }
  })

  it("is single use after finalize, whatever the verdict", () => {
    const v = Integrity.makeVerifier(spec)
    assertRight(v.update(data))
    assertRight(v.finalize())
    assertLeft(v.finalize(), "IntegrityError", "accumulator_finalized")
    assertLeft(v.update(data), "IntegrityError", "accumulator_finalized")
    v.abort()
    assertLeft(v.finalize(), "IntegrityError", "accumulator_finalized")

    const failed = Integrity.makeVerifier(spec)
    assertLeft(failed.finalize(), "IntegrityError", "size_mismatch")
    assertLeft(failed.finalize(), "IntegrityError", "accumulator_finalized")
  })

  it("answers only accumulator_aborted after abort", () => {
    const v = Integrity.makeVerifier(spec)
    assertRight(v.update(data.subarray(0, 10)))
    v.abort()
    assertLeft(v.update(data.subarray(10)), "IntegrityError", "accumulator_aborted")
    assertLeft(v.finalize(), "IntegrityError", "accumulator_aborted")
    v.abort()
    assertLeft(v.finalize(), "IntegrityError", "accumulator_aborted")
  })
})

describe("Integrity.verifyBytes", () => {
  const data = bytesOf(2048, 3)
  const spec = specFor(data)

  it("accepts matching bytes", () => {
    assertRight(Integrity.verifyBytes(data, spec))
  })

  it("rejects longer, shorter and altered bytes", () => {
    const longer = new Uint8Array(data.length + 1)
    longer.set(data)
    assertLeft(Integrity.verifyBytes(longer, spec), "IntegrityError", "size_mismatch")
    assertLeft(Integrity.verifyBytes(data.subarray(1), spec), "IntegrityError", "size_mismatch")
    const altered = Uint8Array.from(data)
    altered[100] = (altered[100] ?? 0) ^ 0x01
    assertLeft(Integrity.verifyBytes(altered, spec), "IntegrityError", "digest_mismatch")
  })

  it("rejects input that is not bytes as malformed", () => {
    for (const input of [null, "bytes", Array.from(data), data.buffer]) {
      assertLeft(Integrity.verifyBytes(input as unknown as Uint8Array, spec), "IntegrityError", "malformed_spec")
    }
  })
})

describe("Integrity data-integrity properties", () => {
  const payload = fc.uint8Array({ minLength: 1, maxLength: 3000 })

  it.prop("any chunking of the same bytes gives the same verdict", [payload, fc.array(fc.nat({ max: 3000 }), { maxLength: 20 }), fc.boolean()], ([bytes, cuts, honest]) => {
    const spec = honest ? specFor(bytes) : assertRight(Integrity.checkSpec({ sha256: sha256Hex(Uint8Array.of(...bytes, 0)), sizeBytes: bytes.length }))
    const v = Integrity.makeVerifier(spec)
    for (const chunk of chunkAt(bytes, cuts)) assertRight(v.update(chunk))
    const streamed = v.finalize()
    const whole = Integrity.verifyBytes(bytes, spec)
    assert.deepStrictEqual(Either.isRight(streamed), honest)
    assert.deepStrictEqual(streamed, whole)
  }, { fastCheck: { numRuns: 300 } })

  it.prop("any single bit flip is rejected as digest_mismatch", [payload, fc.nat(), fc.integer({ min: 0, max: 7 })], ([bytes, at, bit]) => {
    const spec = specFor(bytes)
    const flipped = Uint8Array.from(bytes)
    const i = at % flipped.length
    flipped[i] = (flipped[i] ?? 0) ^ (1 << bit)
    assertLeft(Integrity.verifyBytes(flipped, spec), "IntegrityError", "digest_mismatch")
  }, { fastCheck: { numRuns: 300 } })

  it.prop("any truncation or extension is rejected as size_mismatch", [payload, fc.integer({ min: 1, max: 64 }), fc.boolean()], ([bytes, by, extend]) => {
    const spec = specFor(bytes)
    const changed = extend ? Uint8Array.of(...bytes, ...new Uint8Array(by)) : bytes.subarray(0, Math.max(0, bytes.length - by))
    assertLeft(Integrity.verifyBytes(changed, spec), "IntegrityError", "size_mismatch")
  }, { fastCheck: { numRuns: 300 } })

  it("verifies a 4 MiB body fed in odd-sized chunks", () => {
    const big = bytesOf(4 * 1024 * 1024, 12345)
    const v = Integrity.makeVerifier(specFor(big))
    for (let at = 0; at < big.length; at += 65_521) assertRight(v.update(big.subarray(at, at + 65_521)))
    assertRight(v.finalize())
  })
})
