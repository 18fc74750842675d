/**
 * `pin` against a stand-in hub over HTTPS (test CA) with its storage host on another loopback port:
 * pin → pull → verified → served by a real llama-server; a hub that lies is refused and nothing is
 * written; the token reaches the hub only; an expired signed URL mid-download ends verified.
 */
import { execFile } from "node:child_process"
import { createHash } from "node:crypto"
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { NodeContext } from "@effect/platform-node"
import { ConfigProvider, Effect, Option } from "effect"
import { afterAll, assert, beforeAll, describe, inject, it } from "vitest"
import { makeTestPki, type TestPki } from "../../scripts/lib/pki.js"
import * as PinCommand from "../../src/cli/pin.js"
import * as Serve from "../../src/cli/serve.js"
import * as LiveLayers from "../../src/layers/LiveLayers.js"
import { RuntimeManager } from "../../src/services/RuntimeManager.js"
import { tinyGguf } from "../../src/testing/ModelFixtures.js"
import { type HubStandIn, type Lie, startHub } from "./fixtures/hubStandIn.js"

const BIN = resolve("bin/companion-runtime.mjs")
const MODEL = tinyGguf()
const SHA = createHash("sha256").update(MODEL).digest("hex")
const REPO = "acme/tiny-GGUF"
const COMMIT = "3c8d0f1e2a4b5c6d7e8f90a1b2c3d4e5f6a7b8c9"
const FILE = "tiny-Q8_0.gguf"
const TOKEN = "hf_standin_secret_token_0123456789"

let pki: TestPki
let work: string
let caFile: string
let hub: HubStandIn
let gatedHub: HubStandIn

beforeAll(async () => {
  pki = makeTestPki()
  work = mkdtempSync(join(tmpdir(), "companion-pin-"))
  caFile = join(work, "ca.pem")
  writeFileSync(caFile, pki.caPem)
  hub = await startHub(pki, { repo: REPO, commit: COMMIT, branch: "main", path: FILE, bytes: MODEL })
  gatedHub = await startHub(pki, { repo: REPO, commit: COMMIT, branch: "main", path: FILE, bytes: MODEL }, { token: TOKEN })
})

afterAll(async () => {
  await hub?.close()
  await gatedHub?.close()
  if (work !== undefined) rmSync(work, { recursive: true, force: true })
})

/** A config file with what a user sets before pinning: the store, the test CA, the storage host. */
const base = (name: string, on: HubStandIn, extra: Record<string, unknown> = {}) => {
  const path = join(work, name)
  writeFileSync(path, JSON.stringify({
    storeDir: join(work, `${name}.store`),
    download: { caFiles: [caFile], retryBase: "10 millis", retryMax: "50 millis" },
    hub: { url: on.hubUrl, storageHosts: [`${on.storageUrl}/`] },
    runtime: { contextSize: 256 },
    ...extra
  }))
  return path
}

const run = (args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
  new Promise<{ code: number | null; stdout: string; stderr: string }>((done) => {
    execFile(process.execPath, [BIN, ...args], { timeout: 60_000, env: { PATH: process.env["PATH"] ?? "", ...env } }, (error, stdout, stderr) =>
      done({ code: error === null ? 0 : typeof error.code === "number" ? error.code : null, stdout, stderr }))
  })

const pinOptions = (config: string, on: HubStandIn) => ({
  repo: REPO,
  file: FILE,
  revision: "main",
  config,
  name: Option.none<string>(),
  hub: Option.some(on.hubUrl)
})

const pinIn = (config: string, on: HubStandIn, env: Record<string, string> = {}) =>
  PinCommand.pin(pinOptions(config, on)).pipe(
    Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env)))),
    Effect.provide(NodeContext.layer),
    Effect.either,
    Effect.runPromise
  )

describe("live: pin from a hub", () => {
  it("the command pins at the commit (cross-checked), writes the config, and pull then verifies through the storage host", async () => {
    const config = base("pinned.json", hub, { gateway: { maxTokens: 64 } })
    const pinned = await run(["pin", REPO, FILE, "--config", config, "--hub", hub.hubUrl, "--name", "tiny"])
    assert.strictEqual(pinned.code, 0, pinned.stderr)
    assert.include(pinned.stdout, `pinned ${REPO} at ${COMMIT}: ${FILE}, ${MODEL.length} bytes`)
    const written = JSON.parse(readFileSync(config, "utf8")) as Record<string, any>
    assert.deepStrictEqual(written["model"], { source: `${hub.hubUrl}/${REPO}/resolve/${COMMIT}/${FILE}`, sha256: SHA, sizeBytes: MODEL.length, name: "tiny" })
    assert.deepStrictEqual(written["allowedSources"], [`${hub.hubUrl}/${REPO}/resolve/${COMMIT}/`])
    // Every other key kept as it was.
    assert.deepStrictEqual(written["gateway"], { maxTokens: 64 })
    assert.deepStrictEqual(written["download"]["caFiles"], [caFile])
    // The header came through a range request at the storage host, not the whole file.
    const ranged = hub.storage.filter((s) => s.method === "GET")
    assert.isAbove(ranged.length, 0)
    // The three answers were asked for: revision, paths-info, HEAD.
    assert.includeMembers(hub.hub.map((s) => s.method), ["GET", "POST", "HEAD"])

    const pulled = await run(["pull", "--config", config])
    assert.strictEqual(pulled.code, 0, pulled.stderr)
    assert.include(pulled.stdout, `model from ${REPO} at ${COMMIT}`)
    assert.include(pulled.stdout, "model verified")
    const stored = join(work, "pinned.json.store", SHA)
    assert.strictEqual(createHash("sha256").update(readFileSync(stored)).digest("hex"), SHA)
  }, 60_000)

  it("pinned, pulled and served by a real llama-server", async () => {
    const config = base("served.json", hub)
    assert.isTrue((await pinIn(config, hub))._tag === "Right")
    const loaded = await Effect.runPromise(Serve.load(config).pipe(Effect.provide(NodeContext.layer)))
    const state = await Effect.gen(function*() {
      const manager = yield* RuntimeManager
      yield* manager.start
      const status = yield* manager.status
      yield* manager.drain("10 seconds")
      return status.state
    }).pipe(
      Effect.provide(LiveLayers.layerFrom({ ...loaded, runtime: { ...loaded.runtime, binary: inject("llamaServer") } })),
      Effect.scoped,
      Effect.runPromise
    )
    assert.strictEqual(state, "ready")
  }, 120_000)

  const lies: ReadonlyArray<readonly [Lie, string]> = [
    ["etag", "hub_disagrees"],
    ["size", "hub_disagrees"],
    ["commit", "hub_disagrees"],
    ["paths-info-sha", "hub_disagrees"],
    ["siblings-sha", "hub_disagrees"],
    ["no-lfs", "not_lfs"],
    ["gated", "auth_required"],
    ["off-hub-redirect", "redirect_off_hub"],
    ["not-json", "hub_error"],
    ["huge-chunked", "hub_error"]
  ]
  for (const [lie, reason] of lies) {
    it(`a hub that lies (${lie}) is refused with ${reason}, and nothing is written`, async () => {
      const config = base(`lie-${lie}.json`, hub)
      const before = readFileSync(config, "utf8")
      hub.lie = lie
      try {
        const result = await pinIn(config, hub)
        assert.strictEqual(result._tag, "Left")
        assert.strictEqual((result as { left: { reason: string } }).left.reason, reason)
        // An answer with no length is counted as it arrives and cut at the cap (16 MiB), not read to its end.
        if (lie === "huge-chunked") assert.isAtMost(hub.hugeSent, 40)
      } finally {
        hub.lie = undefined
      }
      assert.strictEqual(readFileSync(config, "utf8"), before)
    }, 30_000)
  }

  it("a malformed reference, or a hub that does not answer, is refused before anything is written", async () => {
    const config = base("malformed.json", hub)
    for (const [repo, file] of [["../etc", FILE], [REPO, "../../passwd"], [REPO, "a\\b.gguf"]] as const) {
      const result = await PinCommand.pin({ ...pinOptions(config, hub), repo, file }).pipe(Effect.provide(NodeContext.layer), Effect.either, Effect.runPromise)
      assert.strictEqual(result._tag === "Left" ? (result.left as { reason: string }).reason : "pinned", "malformed_reference", `${repo} ${file}`)
    }
    const closed = { ...pinOptions(config, hub), hub: Option.some("https://127.0.0.1:1") }
    const result = await PinCommand.pin(closed).pipe(Effect.provide(NodeContext.layer), Effect.either, Effect.runPromise)
    assert.strictEqual(result._tag === "Left" ? (result.left as { reason: string }).reason : "pinned", "hub_unreachable")
    assert.notProperty(JSON.parse(readFileSync(config, "utf8")), "model")
  }, 30_000)

  it("a file that is not a GGUF, or a model over the RAM ceiling, is refused before anything is written", async () => {
    const notGguf = new Uint8Array(4096).fill(7)
    const liar = await startHub(pki, { repo: REPO, commit: COMMIT, branch: "main", path: FILE, bytes: notGguf })
    try {
      const config = base("not-gguf.json", liar)
      const result = await pinIn(config, liar)
      assert.strictEqual(result._tag, "Left")
      assert.strictEqual((result as { left: { _tag: string; reason: string } }).left.reason, "gguf_bad_magic")
      assert.notProperty(JSON.parse(readFileSync(config, "utf8")), "model")
    } finally {
      await liar.close()
    }
    // The tiny model itself, against a 1 MiB ceiling (its estimate carries the runtime's 20 MiB overhead).
    const config = base("too-big.json", hub, { resources: { maxRamBytes: 1024 * 1024 } })
    const result = await pinIn(config, hub)
    assert.strictEqual(result._tag, "Left")
    assert.strictEqual((result as { left: { reason: string } }).left.reason, "model_too_large")
    assert.notProperty(JSON.parse(readFileSync(config, "utf8")), "model")
  }, 60_000)

  it("a gated repository: the token goes to the hub, never to the storage host, and into no output", async () => {
    // HF_TOKEN is for the default hub only: a config or --hub naming another host does not get it.
    const config = base("gated.json", gatedHub)
    const refused = await run(["pin", REPO, FILE, "--config", config, "--hub", gatedHub.hubUrl], { HF_TOKEN: TOKEN })
    assert.strictEqual(refused.code, 1)
    assert.include(refused.stderr, "requires authorization")
    assert.deepStrictEqual(gatedHub.hub.map((s) => s.authorization).filter((a) => a !== undefined), [])
    // That hub's token goes in its config.
    const withToken = base("gated-token.json", gatedHub)
    const file = JSON.parse(readFileSync(withToken, "utf8")) as { hub: Record<string, unknown> }
    writeFileSync(withToken, JSON.stringify({ ...file, hub: { ...file.hub, token: TOKEN } }))
    const pinned = await run(["pin", REPO, FILE, "--config", withToken])
    assert.strictEqual(pinned.code, 0, pinned.stderr)
    const pulled = await run(["pull", "--config", withToken])
    assert.strictEqual(pulled.code, 0, pulled.stderr)
    // The same pinned config without its token: pull and serve do not take HF_TOKEN for this hub either.
    const pinnedFile = JSON.parse(readFileSync(withToken, "utf8")) as { hub: Record<string, unknown> }
    const tokenless = join(work, "gated-tokenless.json")
    writeFileSync(tokenless, JSON.stringify({ ...pinnedFile, hub: { ...pinnedFile.hub, token: undefined } }))
    const loaded = await Effect.runPromise(Serve.load(tokenless).pipe(
      Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["HF_TOKEN", TOKEN]]))),
      Effect.provide(NodeContext.layer)
    ))
    assert.isTrue(Option.isNone(loaded.hub.token), "HF_TOKEN reached a hub other than the default")
    const carried = gatedHub.hub.filter((s) => s.authorization === `Bearer ${TOKEN}`)
    assert.isAbove(carried.length, 3) // revision, paths-info, HEAD, the header's and the pull's resolves
    assert.isAbove(gatedHub.storage.length, 0)
    assert.deepStrictEqual(gatedHub.storage.map((s) => s.authorization), gatedHub.storage.map(() => undefined))
    for (const output of [refused.stdout, refused.stderr, pinned.stdout, pinned.stderr, pulled.stdout, pulled.stderr]) {
      assert.notInclude(output, TOKEN)
    }
  }, 60_000)

  it("an expired signed URL mid-download: the retry resolves again from the pinned URL and ends verified", async () => {
    const config = base("expiring.json", hub)
    assert.isTrue((await pinIn(config, hub))._tag === "Right")
    const storageBefore = hub.storage.length
    hub.cutNext = true // the first download breaks off half-way ...
    hub.expireNext = false
    const resolvesBefore = hub.hub.filter((s) => s.url.includes("/resolve/")).length
    // ... and the resolve for its resume hands out a signature that has already expired.
    const stale = setInterval(() => {
      if (!hub.cutNext && hub.hub.filter((s) => s.url.includes("/resolve/")).length === resolvesBefore + 1) {
        hub.expireNext = true
        clearInterval(stale)
      }
    }, 1)
    try {
      const loaded = await Effect.runPromise(Serve.load(config).pipe(Effect.provide(NodeContext.layer)))
      await Serve.pull(config).pipe(Effect.provide(NodeContext.layer), Effect.runPromise)
      const seen = hub.storage.slice(storageBefore).map((s) => s.status)
      // The download broken off, the stale link refused (link_expired), then a fresh one.
      assert.strictEqual(seen[0], 200)
      assert.include(seen, 403)
      assert.isAtLeast(hub.hub.filter((s) => s.url.includes("/resolve/")).length - resolvesBefore, 3)
      const stored = join(loaded.storeDir, SHA)
      assert.isTrue(existsSync(stored))
      assert.strictEqual(createHash("sha256").update(readFileSync(stored)).digest("hex"), SHA)
    } finally {
      clearInterval(stale)
    }
  }, 60_000)
})
