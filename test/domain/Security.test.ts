/**
 * Security tier: fail-closed posture, no ambient authority, and the scan for leaked inputs.
 */
import { readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { Either, FastCheck as fc, Schema } from "effect"
import * as Api from "../../src/index.js"
import * as Admission from "../../src/domain/Admission.js"
import * as Circuit from "../../src/domain/Circuit.js"
import type { DomainError } from "../../src/domain/Errors.js"
import * as Integrity from "../../src/domain/Integrity.js"
import * as Lifecycle from "../../src/domain/Lifecycle.js"
import * as RequestGate from "../../src/domain/RequestGate.js"
import * as ResourcePolicy from "../../src/domain/ResourcePolicy.js"
import { assertCarriesNoInput, bytesOf } from "./fixtures.js"

const DOMAIN_DIR = join(import.meta.dirname, "../../src/domain")

/** Everything an error could show: its fields, its JSON, its string form and its message. */
const rendered = (error: DomainError): string =>
  [JSON.stringify(error), String(error), error.message, JSON.stringify(Object.entries(error)), (error as { toJSON?: () => unknown }).toJSON?.() ?? ""]
    .map((x) => (typeof x === "string" ? x : JSON.stringify(x)))
    .join("\n")

const assertNoLeak = (result: Either.Either<unknown, DomainError>, secrets: ReadonlyArray<string>) => {
  assert.isTrue(Either.isLeft(result), "expected a rejection")
  if (Either.isRight(result)) return
  assertCarriesNoInput(result.left)
  const text = rendered(result.left).toLowerCase()
  for (const secret of secrets) {
    assert.notInclude(text, secret.toLowerCase(), `a ${result.left._tag} carried part of its input`)
  }
}

describe("scan: no rejection carries its input", () => {
  const host = "secret-mirror.internal-corp.example"
  const path = "/private/tenant-7731/weights"
  const digest = "d3adb33fd3adb33fd3adb33fd3adb33fd3adb33fd3adb33fd3adb33fd3adb33f"
  const size = 987_654_321

  it("integrity rejections carry no URL, host, path, digest or size", () => {
    const url = `https://${host}${path}/m.gguf?token=hunter2`
    const secrets = [host, path, "hunter2", digest, String(size), "tenant-7731"]
    assertNoLeak(Integrity.checkSource(url, ["https://elsewhere.example/x"]), secrets)
    assertNoLeak(Integrity.checkSource(url.replace("https:", "http:"), [url]), secrets)
    assertNoLeak(Integrity.checkSource(`https://user:hunter2@${host}${path}`, [`https://${host}${path}`]), secrets)
    assertNoLeak(Integrity.checkSource(`${host}${path}`, []), secrets)
    assertNoLeak(Integrity.checkSpec({ sha256: digest.toUpperCase(), sizeBytes: size }), secrets)
    assertNoLeak(Integrity.checkSpec({ sha256: digest, sizeBytes: -size }), secrets)
    const spec = Either.getOrThrow(Integrity.checkSpec({ sha256: digest, sizeBytes: 1024 }))
    assertNoLeak(Integrity.verifyBytes(bytesOf(1024), spec), [...secrets, Buffer.from(bytesOf(1024)).toString("hex").slice(0, 16)])
    assertNoLeak(Integrity.verifyBytes(bytesOf(1025), spec), [...secrets, "1025", "1024"])
    const v = Integrity.makeVerifier(spec)
    assertNoLeak(v.update(bytesOf(2048)), [...secrets, "2048", "1024"])
  })

  it("lifecycle, admission, resource, circuit and gate rejections carry no observed value", () => {
    const odd = ["31337", "4242424242", "77.123"]
    assertNoLeak(Lifecycle.transition("stopped", "drain"), odd)
    assertNoLeak(Admission.evaluate({ maxInFlight: 31337, queueBound: 31337, inFlight: 31337, queued: 31337 }), odd)
    assertNoLeak(Admission.recordEnqueue({ maxInFlight: 31337, queueBound: 31337, inFlight: 31337, queued: 31337 }), odd)
    const limits = { maxRamBytes: 4242424241, maxCpuPercent: 77 }
    assertNoLeak(ResourcePolicy.checkLimits({ maxRamBytes: -31337, maxCpuPercent: 77.123 }), odd)
    assertNoLeak(ResourcePolicy.evaluateResources({ ramBytes: 4242424242, vramBytes: 0, cpuPercent: 1 }, limits), odd)
    assertNoLeak(ResourcePolicy.evaluateResources({ ramBytes: 1, vramBytes: 0, cpuPercent: 77.123 }, limits), odd)
    assertNoLeak(Circuit.check({ failures: [31337], openUntil: 4242424242 }, 31337), odd)
    const admission = { maxInFlight: 31337, queueBound: 31337, inFlight: 31337, queued: 31337 }
    const input = { now: 31337, circuit: Circuit.closed, lifecycle: "ready", exiting: false, unloadedIdle: false, waking: false, admission } as const
    assertNoLeak(RequestGate.enter(input), odd)
    assertNoLeak(RequestGate.enter({ ...input, lifecycle: "draining" }), odd)
    assertNoLeak(RequestGate.checkResources({ ramBytes: 4242424242, vramBytes: 0, cpuPercent: 77.123 }, limits), odd)
  })

  const secretText = fc.stringMatching(/^[a-z]{6,12}$/).map((s) => `zq${s}`)
  it.prop("random source URLs and specs never appear in a rejection", [secretText, secretText, fc.integer({ min: 100_000_000, max: 999_999_999 }), fc.constantFrom("http", "https", "ftp")], ([h, p, size, scheme]) => {
    const url = `${scheme}://${h}.example/${p}/file.gguf`
    // The allowlist names another host, so the URL is always refused (h and p may coincide).
    assertNoLeak(Integrity.checkSource(url, [`https://allowed-${p}.example/${h}`]), [h, p])
    assertNoLeak(Integrity.checkSpec({ sha256: `${h}${p}`, sizeBytes: size }), [h, p, String(size)])
  }, { fastCheck: { numRuns: 300 } })
})

describe("fail-closed posture", () => {
  const hostile: ReadonlyArray<unknown> = [null, undefined, 0, -1, Number.NaN, "", "READY", {}, [], () => "ready", Symbol("x"), 10n, new Proxy({}, { get: () => "ready" })]

  // Past these boundaries the domain takes typed values only (a compile error otherwise); every
  // boundary refuses junk, and none throws.
  it("every parse boundary refuses null, undefined and junk, and none throws", () => {
    const boundaries: ReadonlyArray<(x: unknown) => Either.Either<unknown, unknown>> = [
      Integrity.checkSpec,
      (x) => Integrity.checkSource(x, ["https://models.example.com/"]),
      (x) => Integrity.checkSource("https://models.example.com/m", [x]),
      ResourcePolicy.checkLimits,
      Schema.decodeUnknownEither(Admission.AdmissionLimits),
      Schema.decodeUnknownEither(Lifecycle.LifecycleState),
      Schema.decodeUnknownEither(Lifecycle.LifecycleEvent)
    ]
    for (const boundary of boundaries) {
      for (const input of hostile) {
        const result = boundary(input)
        assert.isTrue(Either.isLeft(result), `boundary ${boundaries.indexOf(boundary)} admitted input ${hostile.indexOf(input)}`)
        const error = Either.isLeft(result) ? result.left : undefined
        if (error instanceof Api.IntegrityError || error instanceof Api.ResourceError) assertCarriesNoInput(error)
      }
    }
  })

  it("a Proxy that answers every field with a plausible value is still refused at the boundaries", () => {
    const liar = new Proxy({}, { get: (_t, key) => (key === "sha256" ? "a".repeat(64) : 1) })
    assert.isTrue(Either.isLeft(Integrity.checkSpec(liar)))
    assert.isTrue(Either.isLeft(ResourcePolicy.checkLimits(liar)))
  })
})

describe("no ambient authority", () => {
  it("the public API is exactly this list: decisions, errors, service tags and layers", () => {
    assert.deepStrictEqual(Object.keys(Api).sort(), [
      "Admission", "AdmissionError", "Budget", "Circuit", "CircuitOpenError", "CompanionConfig", "DownloadError", "Downloader",
      "DownloaderLive", "DownloaderTest", "Gateway", "GatewayError", "Gguf", "GgufError", "HealthError", "HealthProbe", "HealthProbeLive",
      "HealthProbeTest", "Hub", "HubClient", "HubClientLive", "HubError", "Integrity", "IntegrityError", "Lifecycle", "LifecycleError", "LiveLayers", "MemoryFileSystem", "MemoryFit",
      "ModelFixtures", "ModelPolicy", "ModelPool", "ModelPoolLive", "ModelStore", "ModelStoreError", "ModelStoreLive", "ModelStoreTest", "PolicyError", "PoolError",
      "QueueTimeoutError", "RequestGate",
      "ResourceError", "ResourcePolicy", "ResourceStat", "ResourceStatError", "ResourceStatLive", "ResourceStatTest",
      "RuntimeExitedError", "RuntimeManager", "RuntimeManagerLive", "SpawnError", "Spawner", "SpawnerLive", "SpawnerTest",
      "StartError", "StoreFileError", "StoreFileSystem", "StoreFileSystemLive", "TestLayers", "transientDownloadReasons"
    ])
  })

  it("the decision modules export decisions and schemas only, nothing that acts", () => {
    const exported = (m: object) => Object.keys(m).sort()
    assert.deepStrictEqual(exported(Api.Admission), ["AdmissionLimits", "evaluate", "makeAdmissionState", "recordAdmit", "recordComplete", "recordDequeue", "recordEnqueue"])
    assert.deepStrictEqual(exported(Api.Circuit), ["check", "closed", "isOpen", "recordFailure"])
    assert.deepStrictEqual(exported(Api.Integrity), ["ModelSpec", "Sha256Hex", "SizeBytes", "checkSource", "checkSpec", "isAllowlistEntry", "makeVerifier", "verifyBytes"])
    assert.deepStrictEqual(exported(Api.Lifecycle), ["LifecycleEvent", "LifecycleState", "canServe", "initialState", "requireReady", "transition"])
    assert.deepStrictEqual(exported(Api.RequestGate), ["checkResources", "enter"])
    assert.deepStrictEqual(exported(Api.ResourcePolicy), ["ResourceLimits", "checkLimits", "evaluateResources"])
    assert.deepStrictEqual(exported(Api.Gguf), ["GgufError", "TENSOR_TYPES", "defaultCaps", "read", "summarize"])
    assert.deepStrictEqual(exported(Api.MemoryFit), ["CELL_ROUND", "OVERHEAD_BYTES", "UBATCH", "cellsFor", "estimate", "fits"])
    assert.deepStrictEqual(exported(Api.ModelPolicy), ["DEFAULT_ARCHITECTURES", "PolicyError", "check", "embeddingPooling", "preflight"])
    assert.deepStrictEqual(exported(Api.Budget), ["cost", "plan"])
    assert.deepStrictEqual(exported(Api.Hub), [
      "DEFAULT_HUB", "DEFAULT_STORAGE_HOSTS", "applyPin", "commitOf", "crossCheck", "headFacts", "isCommit", "isRepoFile", "isRepoId", "isRevision",
      "lfsOf", "normalizeEtag", "parseHub", "parseResolveUrl", "pathsInfoUrl", "resolvePrefix", "resolveUrl", "revisionUrl", "takesEnvironmentToken"
    ])
  })

  // Under mutation testing the sources on disk are Stryker's instrumented copies, not ours.
  const instrumented = Reflect.has(globalThis, "__stryker__")
  it.skipIf(instrumented)("the domain imports only effect, node:crypto and itself, and touches no clock, environment, randomness or console", () => {
    const files = readdirSync(DOMAIN_DIR).filter((f) => f.endsWith(".ts"))
    assert.isAtLeast(files.length, 6)
    for (const file of files) {
      const source = readFileSync(join(DOMAIN_DIR, file), "utf8")
      const imports = [...source.matchAll(/^import .* from "([^"]+)"/gm)].map((m) => m[1])
      for (const spec of imports) assert.match(spec ?? "", /^(effect|node:crypto|\.\/[A-Za-z]+\.js)$/, `${file} imports ${spec}`)
      assert.notMatch(source, /\bprocess\.\w|Date\.now|new Date|Math\.random|console\.|setTimeout|setInterval|fetch\(|require\(/, file)
    }
  })

  it("every reason code maps to exactly one error class", () => {
    const classes = [
      Api.IntegrityError, Api.LifecycleError, Api.AdmissionError, Api.ResourceError,
      Api.DownloadError, Api.ModelStoreError, Api.SpawnError, Api.HealthError, Api.ResourceStatError,
      Api.StartError, Api.RuntimeExitedError, Api.QueueTimeoutError, Api.CircuitOpenError, Api.GatewayError, Api.StoreFileError,
      Api.GgufError, Api.PolicyError, Api.HubError
    ]
    const seen = new Map<string, string>()
    for (const cls of classes) {
      const literals = (cls.fields.reason as unknown as { literals: ReadonlyArray<string> }).literals
      for (const reason of literals) {
        assert.isFalse(seen.has(reason), `${reason} appears in two classes`)
        seen.set(reason, cls.name)
        // Construct each one: the message is fixed and names no value.
        const error = new (cls as unknown as new (a: { reason: string }) => { _tag: string; reason: string; message: string })({ reason })
        assertCarriesNoInput(error)
        assert.isAbove(error.message.length, 10)
      }
    }
    // The seed's reasons, less the five that only junk input produced (unknown_event, unknown_state,
    // malformed_admission_state, malformed_observation, malformed_request_params): typed inputs cannot
    // be junk, and junk is refused at the parse boundaries above.
    const seedReasons = [
      "malformed_spec", "source_not_allowed", "scheme_not_allowed", "size_mismatch", "digest_mismatch",
      "accumulator_finalized", "accumulator_aborted", "invalid_transition", "not_ready", "at_capacity",
      "queue_full", "malformed_limits", "ram_over_limit", "vram_over_limit", "cpu_over_limit",
      "no_in_flight_to_complete", "circuit_open"
    ]
    for (const reason of seedReasons) assert.isTrue(seen.has(reason), reason)
  })
})
