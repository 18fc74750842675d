/**
 * Several models in one memory budget, live: a chat model and an embedding model (two generated
 * GGUFs that differ by their seed) behind one gateway, each run by a real llama-server from the
 * `models` config block, through `Gateway.layerConfig` and `LiveLayers.pool`. The official `openai`
 * client asks for embeddings and chat completions; a budget that holds one model at a time makes the
 * pool swap them on demand, and it is sampled throughout: never more than one runtime, never more
 * held than the budget.
 */
import { createServer } from "node:http"
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { HttpServer } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { afterAll, assert, beforeAll, describe, inject, it } from "@effect/vitest"
import { ConfigProvider, Effect, Either, Fiber, Layer, Schedule } from "effect"
import OpenAI from "openai"
import { type Origin, serveBytes, startOrigin } from "../../scripts/lib/origin.js"
import { makeTestPki, type TestPki } from "../../scripts/lib/pki.js"
import * as Gguf from "../../src/domain/Gguf.js"
import * as MemoryFit from "../../src/domain/MemoryFit.js"
import * as Gateway from "../../src/http/Gateway.js"
import * as LiveLayers from "../../src/layers/LiveLayers.js"
import { ModelPool } from "../../src/services/ModelPool.js"
import { TINY, tinyGguf } from "../../src/testing/ModelFixtures.js"
import { sha256Hex } from "../domain/fixtures.js"

/** Two models of the same shape, different weights (so different files and digests). */
const CHAT = tinyGguf()
const EMBED = tinyGguf(0xe4bed)
const CONTEXT = 512

/** What the GGUF reader makes of a generated model. */
const summaryOf = (bytes: Uint8Array): Gguf.GgufSummary => {
  const file = Gguf.read(bytes, bytes.length)
  if (Either.isLeft(file)) throw new Error("the generated model does not parse")
  return Either.getOrThrow(Gguf.summarize(file.right))
}

/** The embedding width the generator wrote into the model. */
const WIDTH = summaryOf(EMBED).embeddingLength!

/** One model's estimate as the pool reckons it, with the context and slots (`maxInFlight` 1) the budget test configures. */
const ESTIMATE = MemoryFit.estimate(summaryOf(CHAT), { contextSize: CONTEXT, parallel: 1 }).totalBytes
/** Room for one model, not two (both have the same shape, so the same estimate). */
const BUDGET = Math.floor(1.5 * ESTIMATE)

let pki: TestPki
let origin: Origin
let work: string

beforeAll(async () => {
  pki = makeTestPki()
  origin = await startOrigin(pki, { "/models/chat.gguf": serveBytes(CHAT), "/models/embed.gguf": serveBytes(EMBED) })
  work = mkdtempSync(join(tmpdir(), "companion-pool-"))
})

afterAll(async () => {
  await origin?.close()
  if (work !== undefined) rmSync(work, { recursive: true, force: true })
})

const TOKEN = "client-token-for-pool-tests"

/** The llama-server processes this test process spawned (its direct children, by name). */
const runtimePids = () =>
  readdirSync("/proc").filter((name) => /^\d+$/.test(name)).map(Number).filter((pid) => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
      const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"))
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1])
      return comm === "llama-server" && ppid === process.pid
    } catch {
      return false
    }
  })

interface Patch {
  readonly admission?: object
  readonly resources?: object
  readonly runtime?: object
}

/** Two models, `chat` and `embed`, from the local HTTPS origin; neither preloaded. */
const provider = (patch: Patch = {}): ConfigProvider.ConfigProvider => {
  const caFile = join(work, "ca.pem")
  writeFileSync(caFile, pki.caPem)
  return ConfigProvider.fromJson({
    storeDir: join(work, "store"),
    models: {
      chat: { sha256: sha256Hex(CHAT), sizeBytes: CHAT.length, source: `${origin.baseUrl}/models/chat.gguf`, kind: "chat" },
      embed: { sha256: sha256Hex(EMBED), sizeBytes: EMBED.length, source: `${origin.baseUrl}/models/embed.gguf`, kind: "embedding" }
    },
    allowedSources: [`${origin.baseUrl}/models/`],
    admission: { maxInFlight: 2, queueBound: 4, ...patch.admission },
    resources: { ...patch.resources },
    download: { caFiles: [caFile] },
    runtime: { binary: inject("llamaServer"), contextSize: CONTEXT, ...patch.runtime },
    gateway: { token: TOKEN }
  })
}

/** The gateway over the pool of every configured model, all from one config, on an ephemeral loopback port. */
const door = (patch: Patch = {}) =>
  Gateway.layerConfig.pipe(
    Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" })),
    Layer.provideMerge(LiveLayers.pool),
    Layer.provide(Layer.setConfigProvider(provider(patch)))
  )

const baseUrl = Effect.map(HttpServer.HttpServer, (s) =>
  s.address._tag === "TcpAddress" ? `http://127.0.0.1:${s.address.port}` : "")

const clientFor = (url: string) => new OpenAI({ baseURL: `${url}/v1`, apiKey: TOKEN, maxRetries: 0, timeout: 60_000 })

/** The status and error type of a request the gateway refuses (status 0 if it was served). */
const refusal = (send: () => Promise<unknown>) =>
  Effect.promise(() =>
    send().then(
      () => ({ status: 0, type: undefined as string | undefined }),
      (e: { status?: number; type?: string }) => ({ status: e.status ?? -1, type: e.type })
    )
  )

/** `/v1/models`: each model's id and state. */
const listed = (client: OpenAI) =>
  Effect.map(
    Effect.promise(() => client.models.list()),
    (page) => Object.fromEntries(page.data.map((m) => [m.id, (m as unknown as { state: string }).state]))
  )

/** `/health`, which needs no token. */
const health = (url: string) =>
  Effect.promise(async () => {
    const response = await fetch(`${url}/health`)
    return {
      status: response.status,
      body: (await response.json()) as { state: string; models: Record<string, { state: string; inFlight: number; queued: number }> }
    }
  })

/** Drain every runtime, then wait for their processes to be gone. */
const drained = Effect.gen(function*() {
  const pool = yield* ModelPool
  yield* pool.drain("10 seconds")
  yield* Effect.suspend(() => (runtimePids().length === 0 ? Effect.void : Effect.fail("still running"))).pipe(
    Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.upTo("10 seconds"))),
    Effect.orDie
  )
})

describe("live: a chat model and an embedding model behind one gateway", () => {
  it.live("routes by model: embeddings from the embedding model, chat from the chat model, the wrong kind 400, an unknown model 404", () =>
    Effect.gen(function*() {
      const pool = yield* ModelPool
      const url = yield* baseUrl
      const client = clientFor(url)
      assert.notStrictEqual(sha256Hex(CHAT), sha256Hex(EMBED))
      assert.strictEqual(WIDTH, TINY.embedding)

      yield* Effect.gen(function*() {
        // Both listed, with their state; nothing preloaded, nothing loaded yet.
        assert.deepStrictEqual(yield* listed(client), { chat: "stopped", embed: "stopped" })
        assert.strictEqual(runtimePids().length, 0)

        // Refused by the firewall, before any model loads.
        const wrongKinds = [
          yield* refusal(() => client.chat.completions.create({ model: "embed", messages: [{ role: "user", content: "Hello" }], max_tokens: 4 })),
          yield* refusal(() => client.completions.create({ model: "embed", prompt: "Hello", max_tokens: 4 })),
          yield* refusal(() => client.embeddings.create({ model: "chat", input: ["hello", "world"] }))
        ]
        for (const answer of wrongKinds) assert.deepStrictEqual(answer, { status: 400, type: "wrong_model_kind" })
        const unknown = [
          yield* refusal(() => client.chat.completions.create({ model: "nope", messages: [{ role: "user", content: "Hello" }], max_tokens: 4 })),
          yield* refusal(() => client.embeddings.create({ model: "nope", input: "hello" }))
        ]
        for (const answer of unknown) assert.deepStrictEqual(answer, { status: 404, type: "model_not_found" })
        assert.deepStrictEqual(yield* listed(client), { chat: "stopped", embed: "stopped" })
        assert.strictEqual(runtimePids().length, 0)

        // The embedding model loads on its first request and answers one vector per input, of its width.
        const embeddings = yield* Effect.promise(() => client.embeddings.create({ model: "embed", input: ["hello", "world"] }))
        assert.strictEqual(embeddings.object, "list")
        assert.strictEqual(embeddings.data.length, 2)
        assert.deepStrictEqual(embeddings.data.map((d) => d.index), [0, 1])
        for (const { embedding } of embeddings.data) {
          assert.strictEqual(embedding.length, WIDTH)
          assert.isTrue(embedding.every(Number.isFinite))
          assert.isTrue(embedding.some((x) => x !== 0))
        }
        // Two inputs, two vectors: not the same one twice.
        assert.notDeepEqual(embeddings.data[0]!.embedding, embeddings.data[1]!.embedding)
        assert.deepStrictEqual(yield* listed(client), { chat: "stopped", embed: "ready" })

        // The chat model loads beside it (the default budget holds both).
        const completion = yield* Effect.promise(() =>
          client.chat.completions.create({ model: "chat", messages: [{ role: "user", content: "Hello" }], max_tokens: 4 }))
        assert.strictEqual(completion.object, "chat.completion")
        assert.isString(completion.choices[0]?.message.content)
        assert.strictEqual(completion.model, "chat")

        // Naming no model: each route takes the first model of its kind.
        const unnamed = yield* Effect.promise(() => client.embeddings.create({ input: "hello" } as OpenAI.EmbeddingCreateParams))
        assert.strictEqual(unnamed.data[0]?.embedding.length, WIDTH)

        // Still refused by kind with both loaded.
        assert.deepStrictEqual(
          yield* refusal(() => client.chat.completions.create({ model: "embed", messages: [{ role: "user", content: "Hello" }], max_tokens: 4 })),
          { status: 400, type: "wrong_model_kind" }
        )
        assert.deepStrictEqual(yield* refusal(() => client.embeddings.create({ model: "chat", input: "hello" })), { status: 400, type: "wrong_model_kind" })

        assert.deepStrictEqual(yield* listed(client), { chat: "ready", embed: "ready" })
        const { body, status } = yield* health(url)
        assert.strictEqual(status, 200)
        assert.deepStrictEqual(body.models, {
          chat: { state: "ready", inFlight: 0, queued: 0 },
          embed: { state: "ready", inFlight: 0, queued: 0 }
        })
        assert.strictEqual(runtimePids().length, 2)
        const pooled = yield* pool.status
        assert.deepStrictEqual(pooled.models.map((m) => [m.name, m.kind, m.status.state]).sort(), [["chat", "chat", "ready"], ["embed", "embedding", "ready"]])
        assert.isAbove(pooled.heldBytes, 0)
      }).pipe(Effect.ensuring(drained))
      assert.strictEqual(runtimePids().length, 0)
    }).pipe(Effect.provide(door())), 120_000)

  it.live("a budget for one model at a time: chat → embed → chat → embed … each served, the other unloaded first, never over the budget", () =>
    Effect.gen(function*() {
      const pool = yield* ModelPool
      const url = yield* baseUrl
      const client = clientFor(url)
      // The setup itself: one model fits the budget, two do not (the same shape, the same estimate).
      assert.strictEqual(MemoryFit.estimate(summaryOf(EMBED), { contextSize: CONTEXT, parallel: 1 }).totalBytes, ESTIMATE)
      assert.isAtMost(ESTIMATE, BUDGET)
      assert.isAbove(2 * ESTIMATE, BUDGET)

      const samples = { count: 0, maxHeld: 0, maxReady: 0, maxRuntimes: 0 }
      const sample = Effect.map(pool.status, (status) => {
        const runtimes = runtimePids().length
        samples.count++
        samples.maxHeld = Math.max(samples.maxHeld, status.heldBytes)
        samples.maxReady = Math.max(samples.maxReady, status.models.filter((m) => m.status.state === "ready").length)
        samples.maxRuntimes = Math.max(samples.maxRuntimes, runtimes)
      })
      const sampler = yield* Effect.fork(Effect.repeat(sample, Schedule.spaced("20 millis")))

      yield* Effect.gen(function*() {
        const order = ["chat", "embed", "chat", "embed", "chat", "embed"] as const
        for (const [i, model] of order.entries()) {
          if (model === "chat") {
            const completion = yield* Effect.promise(() =>
              client.chat.completions.create({ model, messages: [{ role: "user", content: `Hello ${i}` }], max_tokens: 4 }))
            assert.strictEqual(completion.object, "chat.completion", `request ${i}`)
          } else {
            const embeddings = yield* Effect.promise(() => client.embeddings.create({ model, input: [`hello ${i}`, "world"] }))
            assert.strictEqual(embeddings.data.length, 2, `request ${i}`)
            for (const { embedding } of embeddings.data) assert.strictEqual(embedding.length, WIDTH)
          }
          yield* sample
          // The model just used is the one ready; the other was unloaded to make room for it.
          const other = model === "chat" ? "embed" : "chat"
          const { body, status } = yield* health(url)
          assert.strictEqual(status, 200) // nothing preloaded: nothing to wait for
          assert.strictEqual(body.models[model]?.state, "ready", `request ${i}`)
          assert.strictEqual(body.models[other]?.state, "stopped", `request ${i}`)
          assert.deepStrictEqual(yield* listed(client), { [model]: "ready", [other]: "stopped" })
          assert.strictEqual(runtimePids().length, 1, `request ${i}`)
          const pooled = yield* pool.status
          assert.isAbove(pooled.heldBytes, 0)
          assert.isAtMost(pooled.heldBytes, BUDGET, `request ${i}`)
        }
      }).pipe(Effect.ensuring(Effect.zipRight(Fiber.interrupt(sampler), drained)))

      assert.isAbove(samples.count, 6)
      assert.isAtMost(samples.maxHeld, BUDGET)
      assert.strictEqual(samples.maxReady, 1)
      assert.strictEqual(samples.maxRuntimes, 1)
      assert.strictEqual(runtimePids().length, 0)
      assert.strictEqual((yield* pool.status).heldBytes, 0)
    }).pipe(Effect.provide(door({ admission: { maxInFlight: 1, queueBound: 4 }, resources: { maxRamBytes: BUDGET } }))), 120_000)
})
