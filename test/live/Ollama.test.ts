/**
 * The Ollama adapter against an Ollama stand-in (`fixtures/ollama-standin.mjs`: no Ollama binary can
 * be installed on these machines), a real process on a loopback port that implements Ollama's blob,
 * create, tags, show, generate and OpenAI-compatible routes and hashes every uploaded blob as
 * Ollama does. First the spawner and probe alone (the private directory, the environment, the import,
 * readiness, a wrong blob, a re-pointed name), then a pool of two Ollama models behind the gateway.
 */
import { createServer } from "node:http"
import { createHash } from "node:crypto"
import { chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { HttpServer } from "@effect/platform"
import { NodeContext, NodeHttpClient, NodeHttpServer } from "@effect/platform-node"
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { ConfigProvider, Effect, Either, Layer, Schedule } from "effect"
import OpenAI from "openai"
import { type Origin, serveBytes, startOrigin } from "../../scripts/lib/origin.js"
import { makeTestPki, type TestPki } from "../../scripts/lib/pki.js"
import * as Gguf from "../../src/domain/Gguf.js"
import * as MemoryFit from "../../src/domain/MemoryFit.js"
import * as Gateway from "../../src/http/Gateway.js"
import * as HealthProbeLive from "../../src/layers/HealthProbeLive.js"
import * as LiveLayers from "../../src/layers/LiveLayers.js"
import * as SpawnerLive from "../../src/layers/SpawnerLive.js"
import type { HealthProbe } from "../../src/services/HealthProbe.js"
import { ModelPool } from "../../src/services/ModelPool.js"
import type { RuntimeHandle } from "../../src/services/Spawner.js"
import { tinyGguf } from "../../src/testing/ModelFixtures.js"
import { sha256Hex } from "../domain/fixtures.js"
import { expectFailure } from "../layers/harness.js"
import { verifiedModel } from "./fixtures/verified.js"
import { gone, STANDIN, standinScript } from "./fixtures/processes.js"

/**
 * A long context, so one model's estimate (≈ 237 MB) is above what the stand-in process itself
 * measures: the RAM ceiling of the budget test then holds that process and one model, not two.
 */
const CONTEXT = 131_072
const A = tinyGguf(0x5eed, CONTEXT)
const B = tinyGguf(0xb0b, CONTEXT)

let pki: TestPki
let origin: Origin
let work: string

beforeAll(async () => {
  pki = makeTestPki()
  origin = await startOrigin(pki, { "/models/a.gguf": serveBytes(A), "/models/b.gguf": serveBytes(B) })
  work = mkdtempSync(join(tmpdir(), "companion-ollama-"))
})

afterAll(async () => {
  await origin?.close()
  if (work !== undefined) rmSync(work, { recursive: true, force: true })
})

/** An executable that runs the stand-in in `mode` (the spawner\'s argv follows). */
const standin = (mode: string, extra = "") => standinScript(work, mode, extra)

interface Debug {
  readonly pid: number
  readonly env: Record<string, string>
  readonly modelsMode: string
  readonly blobsMode: string
  readonly requests: ReadonlyArray<{ method: string; path: string; model?: string; keepAlive?: unknown; refused?: boolean; stream?: unknown; files?: unknown; parameters?: unknown }>
  readonly uploads: number
  readonly blobs: ReadonlyArray<string>
}

const debug = (baseUrl: string) => Effect.promise(async () => (await (await fetch(`${baseUrl}/debug`)).json()) as Debug)

/** Live processes whose command line runs the stand-in in `mode`. */
const running = (mode: string) =>
  readdirSync("/proc").filter((name) => /^\d+$/.test(name)).map(Number).filter((pid) => {
    try {
      return !gone(pid) && readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").includes(mode) &&
        readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(STANDIN)
    } catch {
      return false
    }
  })

const waitGone = (pid: number) =>
  Effect.sync(() => gone(pid)).pipe(
    Effect.repeat({ schedule: Schedule.spaced("50 millis"), until: (g) => g }),
    Effect.timeoutFail({ duration: "10 seconds", onTimeout: () => new Error(`pid ${pid} still alive`) })
  )

const live = Layer.merge(NodeContext.layer, NodeHttpClient.layerUndici)

const spawnerOptions = (mode: string, directory: string, extra: Partial<SpawnerLive.SpawnerOptions> = {}): SpawnerLive.SpawnerOptions => ({
  kind: "ollama",
  binary: standin(mode),
  parallel: 2,
  alias: "companion-a",
  modelsDirectory: directory,
  stopGrace: "2 seconds",
  linger: 0,
  ...extra
})

const probeUntilSettled = (probe: HealthProbe["Type"], handle: RuntimeHandle) =>
  probe.probe(handle).pipe(
    Effect.retry({ schedule: Schedule.spaced("20 millis").pipe(Schedule.upTo("10 seconds")), while: (e) => e.reason === "unreachable" })
  )

describe("live: the Ollama adapter (stand-in)", () => {
  it.live("start, import, ready: a private OLLAMA_MODELS, an allowlisted environment, the verified blob uploaded and named", () =>
    Effect.scoped(
      Effect.gen(function*() {
        const directory = join(work, "store-1", "ollama")
        mkdirSync(join(work, "store-1"), { recursive: true, mode: 0o700 })
        const spawner = yield* SpawnerLive.make(spawnerOptions("ollama", directory, {
          contextSize: 2048,
          threads: 3,
          // Allowlisted, yet never handed over: proxies and Ollama's own settings.
          envAllowlist: ["PATH", "LANG", "OLLAMA_ORIGINS", "OLLAMA_HOST", "HTTPS_PROXY", "http_proxy", "ALL_PROXY"],
          environment: {
            PATH: "/usr/bin:/bin",
            LANG: "C.UTF-8",
            OLLAMA_ORIGINS: "*",
            OLLAMA_HOST: "0.0.0.0:11434",
            HTTPS_PROXY: "http://proxy.invalid:3128",
            http_proxy: "http://proxy.invalid:3128",
            ALL_PROXY: "socks5://proxy.invalid:1080",
            SECRET_TOKEN: "hf_not_for_the_runtime"
          }
        }))
        const probe = yield* HealthProbeLive.make("ollama")
        const model = yield* verifiedModel(join(work, "verified-1"), A)
        const handle = yield* spawner.spawn(model)
        assert.strictEqual(yield* probeUntilSettled(probe, handle), "ok")
        assert.strictEqual(handle.serves?.name, "companion-a")
        assert.strictEqual(handle.serves?.blobPath, join(directory, "blobs", `sha256-${sha256Hex(A)}`))
        assert.isTrue(handle.shared)

        const seen = yield* debug(handle.baseUrl)
        const port = Number(/:(\d+)$/.exec(handle.baseUrl)?.[1])
        assert.strictEqual(seen.pid, handle.pid)
        assert.deepStrictEqual(
          Object.fromEntries(Object.entries(seen.env).filter(([name]) => !["PWD", "SHLVL", "_"].includes(name))),
          {
            PATH: "/usr/bin:/bin",
            LANG: "C.UTF-8",
            OLLAMA_HOST: `127.0.0.1:${port}`,
            OLLAMA_MODELS: directory,
            HOME: join(directory, "home"),
            OLLAMA_KEEP_ALIVE: "-1",
            OLLAMA_NUM_PARALLEL: "2",
            OLLAMA_NO_CLOUD: "1"
          }
        )
        // The directory is private; what Ollama makes inside it is its own (0755).
        assert.strictEqual(seen.modelsMode, "700")
        assert.strictEqual(statSync(directory).mode & 0o777, 0o700)
        assert.strictEqual(statSync(join(directory, "home")).mode & 0o777, 0o700)
        assert.strictEqual(seen.blobsMode, "755")
        // HEAD, then the upload, then the name.
        assert.deepStrictEqual(
          seen.requests.filter((r) => r.path.startsWith("/api/")).map((r) => `${r.method} ${r.path}`),
          [
            `HEAD /api/blobs/sha256:${sha256Hex(A)}`,
            `POST /api/blobs/sha256:${sha256Hex(A)}`,
            "POST /api/create",
            // The name as the import made it, kept: any later change is someone else's.
            "POST /api/show",
            "GET /api/tags",
            "POST /api/show"
          ]
        )
        // Named in one answer (streamed, a failure would be a line under 200), from the verified blob.
        const create = seen.requests.find((r) => r.path === "/api/create")!
        assert.deepStrictEqual([create.model, create.stream, create.files], ["companion-a", false, { "model.gguf": `sha256:${sha256Hex(A)}` }])
        // The context and threads the estimate counted, not Ollama's own choice.
        assert.deepStrictEqual(create.parameters, { num_ctx: 2048, num_thread: 3 })
        // What Ollama holds is exactly the verified bytes.
        const blob = readFileSync(join(directory, "blobs", `sha256-${sha256Hex(A)}`))
        assert.strictEqual(createHash("sha256").update(blob).digest("hex"), sha256Hex(A))

        // A second model on the same spawner: the same process, its blob uploaded once.
        const again = yield* spawner.spawn(model, { alias: "companion-a2" })
        assert.strictEqual(again.pid, handle.pid)
        assert.strictEqual(yield* probeUntilSettled(probe, again), "ok")
        assert.strictEqual((yield* debug(handle.baseUrl)).uploads, 1)

        // Stopping a model unloads it; the process serves on for the other.
        yield* handle.stop("2 seconds")
        const unloads = (yield* debug(handle.baseUrl)).requests.filter((r) => r.path === "/api/generate")
        assert.deepStrictEqual(unloads.map((r) => [r.model, r.keepAlive]), [["companion-a", 0]])
        assert.isFalse(gone(handle.pid))
      }).pipe(Effect.provide(live))
    ), 30_000)

  it.live("two names Ollama takes for one cannot both be live: name_in_use", () =>
    Effect.gen(function*() {
      mkdirSync(join(work, "store-9"), { recursive: true, mode: 0o700 })
      const spawner = yield* SpawnerLive.make(spawnerOptions("ollama", join(work, "store-9", "ollama")))
      yield* spawner.spawn(yield* verifiedModel(join(work, "verified-9"), A), { alias: "chat" })
      yield* expectFailure(spawner.spawn(yield* verifiedModel(join(work, "verified-9b"), B), { alias: "Chat:latest" }), "SpawnError", "name_in_use")
      // Once the first is gone, the name is free again.
      const again = yield* Effect.scoped(Effect.flatMap(verifiedModel(join(work, "verified-9c"), B), (m) => Effect.map(spawner.spawn(m, { alias: "other" }), (h) => h.serves?.name)))
      assert.strictEqual(again, "other")
    }).pipe(Effect.scoped, Effect.provide(live)), 30_000)

  it.live("the process stops with the last model's scope, and a new spawn starts a new one", () =>
    Effect.gen(function*() {
      const directory = join(work, "store-2", "ollama")
      mkdirSync(join(work, "store-2"), { recursive: true, mode: 0o700 })
      const spawner = yield* SpawnerLive.make(spawnerOptions("ollama", directory))
      const spawnPid = (alias: string, bytes: Uint8Array, at: string) =>
        Effect.flatMap(verifiedModel(join(work, at), bytes), (model) => Effect.map(spawner.spawn(model, { alias }), (h) => h.pid))
      const first = yield* Effect.scoped(Effect.gen(function*() {
        const one = yield* spawnPid("companion-a", A, "verified-2")
        const two = yield* spawnPid("companion-b", B, "verified-2b")
        assert.strictEqual(one, two)
        return one
      }))
      yield* waitGone(first)
      const second = yield* Effect.scoped(spawnPid("companion-a", A, "verified-2"))
      assert.notStrictEqual(second, first)
      yield* waitGone(second)
    }).pipe(Effect.scoped, Effect.provide(live)), 30_000)

  it.live("with a linger, the process outlives its last model for the next one, then stops", () =>
    Effect.gen(function*() {
      mkdirSync(join(work, "store-6"), { recursive: true, mode: 0o700 })
      const spawner = yield* SpawnerLive.make(spawnerOptions("ollama", join(work, "store-6", "ollama"), { linger: "500 millis" }))
      const spawnPid = Effect.scoped(Effect.flatMap(verifiedModel(join(work, "verified-6"), A), (model) => Effect.map(spawner.spawn(model), (h) => h.pid)))
      const first = yield* spawnPid
      assert.isFalse(gone(first))
      // Taken again within the linger: the same process.
      assert.strictEqual(yield* spawnPid, first)
      yield* Effect.sleep("150 millis")
      assert.isFalse(gone(first))
      yield* waitGone(first)
    }).pipe(Effect.scoped, Effect.provide(live)), 30_000)

  it.live("a model its name was deleted from cannot be unloaded by name: the process is retired, not kept lingering", () =>
    Effect.gen(function*() {
      mkdirSync(join(work, "store-10"), { recursive: true, mode: 0o700 })
      const spawner = yield* SpawnerLive.make(spawnerOptions("ollama", join(work, "store-10", "ollama"), { linger: "30 seconds" }))
      const pid = yield* Effect.scoped(Effect.gen(function*() {
        const handle = yield* spawner.spawn(yield* verifiedModel(join(work, "verified-10"), A))
        // Loaded, then its name deleted by another local process (Ollama takes no key).
        yield* Effect.promise(() => fetch(`${handle.baseUrl}/api/generate`, { method: "POST", body: JSON.stringify({ model: "companion-a" }) }))
        const deleted = yield* Effect.promise(() => fetch(`${handle.baseUrl}/api/delete`, { method: "POST", body: JSON.stringify({ model: "companion-a" }) }))
        assert.strictEqual(deleted.status, 200)
        yield* handle.stop("2 seconds")
        // Still loaded: `keep_alive: 0` named a model Ollama no longer knows.
        const ps = yield* Effect.promise(async () => (await (await fetch(`${handle.baseUrl}/api/ps`)).json()) as { models: ReadonlyArray<unknown> })
        assert.strictEqual(ps.models.length, 1)
        return handle.pid
      }))
      // Its only holder gone: stopped at once, though the linger is 30 s.
      yield* waitGone(pid)
    }).pipe(Effect.scoped, Effect.provide(live)), 30_000)

  it.live("a spawn after the spawner's scope closed starts nothing: spawn_failed", () =>
    Effect.gen(function*() {
      mkdirSync(join(work, "store-11"), { recursive: true, mode: 0o700 })
      const spawner = yield* Effect.scoped(SpawnerLive.make(spawnerOptions("ollama", join(work, "store-11", "ollama"))))
      yield* expectFailure(Effect.scoped(Effect.flatMap(verifiedModel(join(work, "verified-11"), A), (m) => spawner.spawn(m))), "SpawnError", "spawn_failed")
      assert.deepStrictEqual(running("ollama").filter((pid) => readFileSync(`/proc/${pid}/environ`, "utf8").includes("store-11")), [])
    }).pipe(Effect.provide(live)), 30_000)

  it.live("a port taken at spawn is retried on a new one", () =>
    Effect.gen(function*() {
      mkdirSync(join(work, "store-7"), { recursive: true, mode: 0o700 })
      const marker = join(work, "ollama-taken-marker")
      const spawner = yield* SpawnerLive.make({ ...spawnerOptions("ollama", join(work, "store-7", "ollama")), binary: standin("ollama-taken-once", marker) })
      const probe = yield* HealthProbeLive.make("ollama")
      const handle = yield* spawner.spawn(yield* verifiedModel(join(work, "verified-7"), A))
      assert.isTrue(existsSync(marker)) // the first launch ran and failed
      assert.strictEqual(yield* probeUntilSettled(probe, handle), "ok")
    }).pipe(Effect.scoped, Effect.provide(live)), 30_000)

  it.live("a wrong blob is refused: Ollama naming a blob other than the verified one is wrong_model", () =>
    Effect.scoped(
      Effect.gen(function*() {
        mkdirSync(join(work, "store-3"), { recursive: true, mode: 0o700 })
        const spawner = yield* SpawnerLive.make(spawnerOptions("ollama-rewrite", join(work, "store-3", "ollama")))
        const probe = yield* HealthProbeLive.make("ollama")
        const handle = yield* spawner.spawn(yield* verifiedModel(join(work, "verified-3"), A))
        yield* expectFailure(probeUntilSettled(probe, handle), "HealthError", "wrong_model")
      }).pipe(Effect.provide(live))
    ), 30_000)

  it.live("an import that fails is a typed error, and the process is stopped: bytes refused, a create refused, too slow", () =>
    Effect.gen(function*() {
      mkdirSync(join(work, "store-8"), { recursive: true, mode: 0o700 })
      const attempt = (mode: string, extra: Partial<SpawnerLive.SpawnerOptions> = {}) =>
        Effect.scoped(Effect.gen(function*() {
          const spawner = yield* SpawnerLive.make(spawnerOptions(mode, join(work, "store-8", mode), extra))
          return yield* spawner.spawn(yield* verifiedModel(join(work, "verified-8"), A))
        }))
      yield* expectFailure(attempt("ollama-corrupt"), "SpawnError", "blob_refused")
      yield* expectFailure(attempt("ollama-create-fails"), "SpawnError", "import_failed")
      yield* expectFailure(attempt("ollama", { importTimeout: "1 millis" }), "SpawnError", "import_timeout")
      // No stand-in of these modes is left running.
      for (const mode of ["ollama-corrupt", "ollama-create-fails"]) assert.deepStrictEqual(running(mode), [])
      // A refused upload left nothing behind under the digest.
      assert.isFalse(existsSync(join(work, "store-8", "ollama-corrupt", "blobs", `sha256-${sha256Hex(A)}`)))
    }).pipe(Effect.provide(live)), 30_000)

  it.live("a name another local process re-points to its own blob ends the handle as an exit would", () =>
    Effect.scoped(
      Effect.gen(function*() {
        mkdirSync(join(work, "store-4"), { recursive: true, mode: 0o700 })
        const spawner = yield* SpawnerLive.make(spawnerOptions("ollama", join(work, "store-4", "ollama"), { verifyInterval: "100 millis" }))
        const probe = yield* HealthProbeLive.make("ollama")
        const handle = yield* spawner.spawn(yield* verifiedModel(join(work, "verified-4"), A))
        assert.strictEqual(yield* probeUntilSettled(probe, handle), "ok")
        // Ollama takes no key: anyone on the machine can upload a blob and re-point the name.
        yield* Effect.promise(async () => {
          const digest = `sha256:${sha256Hex(B)}`
          assert.strictEqual((await fetch(`${handle.baseUrl}/api/blobs/${digest}`, { method: "POST", body: B })).status, 201)
          const created = await fetch(`${handle.baseUrl}/api/create`, {
            method: "POST",
            body: JSON.stringify({ model: "companion-a", files: { "evil.gguf": digest }, stream: false })
          })
          assert.strictEqual(created.status, 200)
        })
        const exited = yield* handle.exited.pipe(Effect.timeout("5 seconds"), Effect.either)
        assert.isTrue(Either.isRight(exited))
        yield* expectFailure(probe.probe(handle), "HealthError", "wrong_model")
      }).pipe(Effect.provide(live))
    ), 30_000)

  it.live("the private directory: a link, a directory others can write, or a file is refused; a readable one is made 0700", () =>
    Effect.scoped(
      Effect.gen(function*() {
        const base = join(work, "store-5")
        mkdirSync(base, { recursive: true, mode: 0o700 })
        const spawnWith = (directory: string) =>
          Effect.flatMap(SpawnerLive.make(spawnerOptions("ollama", directory)), (spawner) =>
            Effect.flatMap(verifiedModel(join(work, "verified-5"), A), (model) => spawner.spawn(model)))
        const elsewhere = join(base, "elsewhere")
        mkdirSync(elsewhere, { mode: 0o700 })
        symlinkSync(elsewhere, join(base, "link"))
        yield* expectFailure(spawnWith(join(base, "link")), "SpawnError", "models_dir_unsafe")
        mkdirSync(join(base, "open"), { mode: 0o700 })
        chmodSync(join(base, "open"), 0o777)
        yield* expectFailure(spawnWith(join(base, "open")), "SpawnError", "models_dir_unsafe")
        writeFileSync(join(base, "file"), "not a directory")
        yield* expectFailure(spawnWith(join(base, "file")), "SpawnError", "models_dir_unsafe")
        yield* expectFailure(
          Effect.flatMap(SpawnerLive.make({ ...spawnerOptions("ollama", base), modelsDirectory: undefined }), () => Effect.void),
          "SpawnError",
          "models_dir_unsafe"
        )
        // Nothing was started for any of them, and the link's target was left alone.
        assert.isTrue(lstatSync(join(base, "link")).isSymbolicLink())
        assert.isFalse(existsSync(join(elsewhere, "blobs")))
        mkdirSync(join(base, "readable"), { mode: 0o700 })
        chmodSync(join(base, "readable"), 0o755)
        const handle = yield* spawnWith(join(base, "readable"))
        assert.strictEqual(statSync(join(base, "readable")).mode & 0o777, 0o700)
        yield* handle.stop("1 second")
      }).pipe(Effect.provide(live))
    ), 30_000)
})

// ---------------------------------------------------------------------------------------------
// A pool of Ollama models behind the gateway
// ---------------------------------------------------------------------------------------------

const TOKEN = "client-token-for-ollama-tests"

const summaryOf = (bytes: Uint8Array): Gguf.GgufSummary => Either.getOrThrow(Gguf.summarize(Either.getOrThrow(Gguf.read(bytes, bytes.length))))
const ESTIMATE = MemoryFit.estimate(summaryOf(A), { contextSize: CONTEXT, parallel: 1 }).totalBytes

const provider = (store: string, resources: object = {}, mode = "ollama"): ConfigProvider.ConfigProvider => {
  const caFile = join(work, "ca.pem")
  writeFileSync(caFile, pki.caPem)
  return ConfigProvider.fromJson({
    storeDir: store,
    models: {
      a: { sha256: sha256Hex(A), sizeBytes: A.length, source: `${origin.baseUrl}/models/a.gguf`, preload: true },
      b: { sha256: sha256Hex(B), sizeBytes: B.length, source: `${origin.baseUrl}/models/b.gguf` }
    },
    allowedSources: [`${origin.baseUrl}/models/`],
    admission: { maxInFlight: 1, queueBound: 4 },
    resources,
    download: { caFiles: [caFile] },
    runtime: { kind: "ollama", binary: standin(mode), contextSize: CONTEXT },
    gateway: { token: TOKEN }
  })
}

const door = (store: string, resources: object = {}, mode = "ollama") =>
  Gateway.layerConfig.pipe(
    Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" })),
    Layer.provideMerge(LiveLayers.pool),
    Layer.provide(Layer.setConfigProvider(provider(store, resources, mode)))
  )

const gatewayUrl = Effect.map(HttpServer.HttpServer, (s) => (s.address._tag === "TcpAddress" ? `http://127.0.0.1:${s.address.port}` : ""))

/** The stand-in's own report, reached through a model's runtime endpoint (never through the gateway). */
const runtimeDebug = (name: string) =>
  Effect.flatMap(ModelPool, (pool) => pool.run(name, (endpoint) => debug(endpoint.baseUrl)))

const ask = (url: string, body: object, path = "/v1/chat/completions") =>
  Effect.promise(async () => {
    const response = await fetch(`${url}${path}`, {
      method: "POST",
      headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
      body: JSON.stringify(body)
    })
    return { status: response.status, body: (await response.text()) }
  })

describe("live: a pool of Ollama models behind the gateway (stand-in)", () => {
  it.live("start, import, chat under the alias, a second model imported on demand, another name refused, /api/* never exposed", () => {
    const store = join(work, "pool-store")
    return Effect.gen(function*() {
      const pool = yield* ModelPool
      const url = yield* gatewayUrl
      yield* pool.start
      assert.strictEqual((yield* pool.status).models.find((m) => m.name === "a")?.status.state, "ready")
      assert.strictEqual((yield* pool.status).models.find((m) => m.name === "b")?.status.state, "stopped")
      const before = yield* runtimeDebug("a")
      assert.deepStrictEqual(before.requests.filter((r) => r.path === "/api/create").map((r) => r.model), ["a"])
      assert.strictEqual(before.env["OLLAMA_MODELS"], join(store, "ollama"))

      // A chat completion through the gateway, under the alias, with the official client.
      const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: TOKEN, maxRetries: 0, timeout: 30_000 })
      const completion = yield* Effect.promise(() => client.chat.completions.create({ model: "a", messages: [{ role: "user", content: "Hello" }], max_tokens: 8 }))
      assert.strictEqual(completion.choices[0]?.message.content, "stand-in answer from a")
      // Streamed too.
      const stream = yield* Effect.promise(async () => {
        const chunks: Array<string> = []
        for await (const chunk of await client.chat.completions.create({ model: "a", messages: [{ role: "user", content: "Hi" }], stream: true })) {
          chunks.push(chunk.choices[0]?.delta.content ?? "")
        }
        return chunks.join("")
      })
      assert.strictEqual(stream.trim(), "stand-in answer from a")

      // Another name: refused at the gateway, never sent on. Ollama's own API is not a route.
      assert.strictEqual((yield* ask(url, { model: "llama3", messages: [{ role: "user", content: "Hi" }] })).status, 404)
      assert.strictEqual((yield* ask(url, { model: "a:latest", messages: [{ role: "user", content: "Hi" }] })).status, 404)
      for (const [method, path] of [["GET", "/api/tags"], ["POST", "/api/pull"], ["POST", "/api/create"], ["POST", "/api/generate"], ["HEAD", "/api/blobs/x"]] as const) {
        const answer = yield* Effect.promise(() => fetch(`${url}${path}`, { method, headers: { authorization: `Bearer ${TOKEN}` }, ...(method === "POST" ? { body: "{}" } : {}) }))
        assert.strictEqual(answer.status, 404, `${method} ${path}`)
      }

      // The second model: imported when first needed, into the same process.
      const second = yield* ask(url, { model: "b", messages: [{ role: "user", content: "Hi" }], max_tokens: 8 })
      assert.strictEqual(second.status, 200)
      assert.include(second.body, "stand-in answer from b")
      const after = yield* runtimeDebug("b")
      assert.strictEqual(after.pid, before.pid)
      assert.deepStrictEqual(after.requests.filter((r) => r.path === "/api/create").map((r) => r.model), ["a", "b"])
      const chats = after.requests.filter((r) => r.path.startsWith("/v1/"))
      assert.deepStrictEqual(chats.map((r) => r.model), ["a", "a", "b"])
      // Nothing the gateway refused reached the runtime.
      assert.isFalse(after.requests.some((r) => r.model === "llama3" || r.model === "a:latest" || r.path === "/api/pull"))

      yield* pool.drain("5 seconds")
      return before.pid
    }).pipe(
      Effect.provide(door(store)),
      // The pool closed: the one process is gone (it lingers for the next model only while the pool lives).
      Effect.flatMap(waitGone)
    )
  }, 60_000)

  it.live("a budget that holds one model: the pool unloads the idle one through Ollama (keep_alive 0) to import the other", () => {
    const store = join(work, "pool-budget")
    return Effect.gen(function*() {
      const pool = yield* ModelPool
      const url = yield* gatewayUrl
      yield* pool.start
      const pid = (yield* runtimeDebug("a")).pid
      assert.strictEqual((yield* ask(url, { model: "b", messages: [{ role: "user", content: "Hi" }], max_tokens: 8 })).status, 200)
      const seen = yield* runtimeDebug("b")
      // `a` was unloaded to make room, then `b` imported, in the same process (kept between them).
      assert.strictEqual(seen.pid, pid)
      assert.deepStrictEqual(
        seen.requests.filter((r) => r.path === "/api/generate" || r.path === "/api/create").map((r) => [r.path, r.model, r.keepAlive ?? null]),
        [["/api/create", "a", null], ["/api/generate", "a", 0], ["/api/create", "b", null]]
      )
      const states = Object.fromEntries((yield* pool.status).models.map((m) => [m.name, m.status.state]))
      assert.deepStrictEqual(states, { a: "stopped", b: "ready" })
      // One process serves both: its measurement is no one model's, so each counts at its estimate.
      assert.strictEqual((yield* pool.status).heldBytes, ESTIMATE)
      assert.isTrue((yield* pool.status).models.every((m) => m.status.ramBytes === 0))
      // And back: `b` unloaded for `a`, whose blob is held, so only named again.
      assert.strictEqual((yield* ask(url, { model: "a", messages: [{ role: "user", content: "Hi" }], max_tokens: 8 })).status, 200)
      const back = yield* runtimeDebug("a")
      assert.deepStrictEqual(back.requests.filter((r) => r.path === "/api/generate").map((r) => [r.model, r.keepAlive]), [["a", 0], ["b", 0]])
      assert.strictEqual(back.uploads, 2)
      yield* pool.drain("5 seconds")
      return pid
    }).pipe(Effect.provide(door(store, { maxRamBytes: Math.floor(1.5 * ESTIMATE) })), Effect.flatMap(waitGone))
  }, 60_000)

  it.live("an Ollama that serves another blob under the name: the model never becomes ready, its requests are refused", () => {
    const store = join(work, "pool-rewrite")
    return Effect.gen(function*() {
      const pool = yield* ModelPool
      const url = yield* gatewayUrl
      yield* expectFailure(pool.start, "StartError", "model_mismatch")
      assert.strictEqual((yield* pool.status).models.find((m) => m.name === "a")?.status.state, "stopped")
      const answer = yield* ask(url, { model: "b", messages: [{ role: "user", content: "Hi" }], max_tokens: 8 })
      assert.strictEqual(answer.status, 503)
      assert.notInclude(answer.body, "stand-in answer")
    }).pipe(Effect.provide(door(store, {}, "ollama-rewrite")))
  }, 60_000)

  it.live("the Ollama process dies: the models' managers see it and the next request starts and imports again", () => {
    const store = join(work, "pool-crash")
    return Effect.gen(function*() {
      const pool = yield* ModelPool
      const url = yield* gatewayUrl
      yield* pool.start
      const first = yield* runtimeDebug("a")
      process.kill(first.pid, "SIGKILL")
      yield* waitGone(first.pid)
      const answer = yield* ask(url, { model: "a", messages: [{ role: "user", content: "Hi" }], max_tokens: 8 }).pipe(
        Effect.filterOrFail((a) => a.status === 200),
        Effect.retry(Schedule.spaced("100 millis").pipe(Schedule.upTo("10 seconds")))
      )
      assert.strictEqual(answer.status, 200)
      const second = yield* runtimeDebug("a")
      assert.notStrictEqual(second.pid, first.pid)
      // The blob was kept in the private directory: only named again, not uploaded again.
      assert.strictEqual(second.uploads, 0)
      assert.deepStrictEqual(second.requests.filter((r) => r.path === "/api/create").map((r) => r.model), ["a"])
      yield* pool.drain("5 seconds")
      return second.pid
    }).pipe(Effect.provide(door(store)), Effect.flatMap(waitGone))
  }, 60_000)
})
