/**
 * The gateway in front of a real llama-server, driven by a client nobody here wrote: the official
 * `openai` npm package, non-streaming and streaming; and a client that disconnects mid-stream.
 */
import { createServer, request as httpRequest } from "node:http"
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { HttpServer } from "@effect/platform"
import { NodeHttpClient, NodeHttpServer } from "@effect/platform-node"
import { afterAll, assert, beforeAll, describe, inject, it } from "@effect/vitest"
import { ConfigProvider, Effect, Layer, Redacted, Schedule } from "effect"
import OpenAI from "openai"
import { type Origin, serveBytes, startOrigin } from "../../scripts/lib/origin.js"
import { makeTestPki, type TestPki } from "../../scripts/lib/pki.js"
import { tinyGguf } from "../../scripts/tiny-gguf.js"
import * as Gateway from "../../src/http/Gateway.js"
import * as LiveLayers from "../../src/layers/LiveLayers.js"
import { RuntimeManager } from "../../src/services/RuntimeManager.js"
import { sha256Hex } from "../domain/fixtures.js"
import { CompanionLive } from "./fixtures/readme-embedding.js"

const MODEL = tinyGguf()
let pki: TestPki
let origin: Origin
let work: string

beforeAll(async () => {
  pki = makeTestPki()
  origin = await startOrigin(pki, { "/models/tiny.gguf": serveBytes(MODEL) })
  work = mkdtempSync(join(tmpdir(), "companion-gateway-"))
})

afterAll(async () => {
  await origin?.close()
  if (work !== undefined) rmSync(work, { recursive: true, force: true })
})

const TOKEN = "client-token-for-tests"

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

/** The live stack's configuration: the tiny model from the local HTTPS origin, the real llama-server. */
const provider = () => {
  const caFile = join(work, "ca.pem")
  writeFileSync(caFile, pki.caPem)
  return ConfigProvider.fromJson({
    storeDir: join(work, "store"),
    model: { sha256: sha256Hex(MODEL), sizeBytes: MODEL.length, source: `${origin.baseUrl}/models/tiny.gguf` },
    allowedSources: [`${origin.baseUrl}/models/`],
    admission: { maxInFlight: 2, queueBound: 4 },
    download: { caFiles: [caFile] },
    runtime: { binary: inject("llamaServer") }
  })
}

/** Gateway + the whole live stack from a ConfigProvider, on an ephemeral loopback port. */
const stack = () =>
  Gateway.layer({ token: Redacted.make(TOKEN) }).pipe(
    Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" })),
    Layer.provideMerge(LiveLayers.layer),
    Layer.provide(NodeHttpClient.layerUndici),
    Layer.provide(Layer.setConfigProvider(provider()))
  )

const baseUrl = Effect.map(HttpServer.HttpServer, (s) =>
  s.address._tag === "TcpAddress" ? `http://127.0.0.1:${s.address.port}` : "")

describe("live: gateway in front of llama-server", () => {
  it.live("the openai client: chat completion, then a streamed one, through the gateway", () =>
    Effect.gen(function*() {
      const manager = yield* RuntimeManager
      yield* manager.start
      const url = yield* baseUrl
      const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: TOKEN, maxRetries: 0, timeout: 30_000 })

      const completion = yield* Effect.promise(() =>
        client.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "Hello" }], max_tokens: 8 }))
      assert.strictEqual(completion.object, "chat.completion")
      assert.isString(completion.choices[0]?.message.content)

      const stream = yield* Effect.promise(() =>
        client.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "Hello" }], max_tokens: 8, stream: true }))
      const chunks = yield* Effect.promise(async () => {
        const all: Array<OpenAI.Chat.Completions.ChatCompletionChunk> = []
        for await (const chunk of stream) all.push(chunk)
        return all
      })
      assert.isAbove(chunks.length, 1)
      assert.isTrue(chunks.every((c) => c.object === "chat.completion.chunk"))

      const models = yield* Effect.promise(() => client.models.list())
      assert.isAbove(models.data.length, 0)

      // The wrong token is refused before the runtime sees anything.
      const wrong = new OpenAI({ baseURL: `${url}/v1`, apiKey: "wrong", maxRetries: 0 })
      const refused = yield* Effect.promise(() =>
        wrong.completions.create({ model: "tiny", prompt: "x", max_tokens: 1 }).then(() => 0, (e: { status?: number }) => e.status ?? -1))
      assert.strictEqual(refused, 401)
      yield* manager.drain("10 seconds")
    }).pipe(Effect.provide(stack())), 120_000)

  it.live("a client that disconnects mid-stream aborts the upstream request and frees its slot", () =>
    Effect.gen(function*() {
      const manager = yield* RuntimeManager
      yield* manager.start
      const url = new URL(yield* baseUrl)
      yield* Effect.async<void, Error>((resume) => {
        const req = httpRequest({
          host: url.hostname,
          port: url.port,
          method: "POST",
          path: "/v1/completions",
          headers: { host: url.host, authorization: `Bearer ${TOKEN}`, "content-type": "application/json" }
        }, (res) => {
          res.once("data", () => {
            // Gone after the first event of a long generation.
            req.destroy()
            resume(Effect.void)
          })
        })
        req.on("error", () => {})
        req.end(JSON.stringify({ prompt: "Once upon a time", max_tokens: 400, stream: true, ignore_eos: true }))
      })
      yield* Effect.flatMap(manager.status, (s) => (s.inFlight === 0 ? Effect.void : Effect.fail("busy"))).pipe(
        Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo("5 seconds")))
      )
      // The runtime is still serving: a new request completes.
      const again = yield* Effect.promise(() =>
        new OpenAI({ baseURL: `${url.origin}/v1`, apiKey: TOKEN, maxRetries: 0 }).completions.create({ model: "tiny", prompt: "x", max_tokens: 2 }))
      assert.strictEqual(again.object, "text_completion")
      yield* manager.drain("10 seconds")
    }).pipe(Effect.provide(stack())), 120_000)
  it.live("the runtime killed mid-stream: the openai client raises an error, never a short but clean answer", () =>
    Effect.gen(function*() {
      const manager = yield* RuntimeManager
      yield* manager.start
      const url = yield* baseUrl
      const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: TOKEN, maxRetries: 0, timeout: 30_000 })
      const outcome = yield* Effect.promise(async () => {
        const stream = await client.completions.create({
          model: "tiny", prompt: "Once upon a time", max_tokens: 2000, stream: true,
          // llama.cpp's own knob: generate to max_tokens.
          ...({ ignore_eos: true } as object)
        })
        let chunks = 0
        try {
          for await (const _ of stream) {
            if (++chunks === 1) for (const pid of runtimePids()) process.kill(pid, "SIGKILL")
          }
          return { chunks, error: undefined }
        } catch (error) {
          return { chunks, error: error as { error?: { type?: string } } }
        }
      })
      assert.isDefined(outcome.error, `the stream ended cleanly after ${outcome.chunks} chunks`)
      // Which is seen first, the process's exit or its connection breaking, is a race; both are typed.
      assert.include(["runtime_exited", "upstream_failed"], outcome.error?.error?.type)
      // The slot is back, and the supervisor brings a new runtime up.
      yield* Effect.flatMap(manager.status, (s) => (s.inFlight === 0 && s.state === "ready" ? Effect.void : Effect.fail("busy"))).pipe(
        Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo("30 seconds")))
      )
      yield* manager.drain("10 seconds")
    }).pipe(Effect.provide(stack())), 120_000)
  it.live("the README's embedding example, verbatim: serves a completion from its config", () =>
    Effect.gen(function*() {
      // The README's block is the consumer app's file (test/consumer/Package.test.ts checks that);
      // this is the same file importing the sources instead of the package.
      const block = readFileSync(join(import.meta.dirname, "../consumer/fixture/src/embedding.ts"), "utf8")
      const fixture = readFileSync(join(import.meta.dirname, "fixtures/readme-embedding.ts"), "utf8")
      assert.strictEqual(block, fixture.replace("\"../../../src/index.js\"", "\"companion-runtime\""))
      yield* Effect.gen(function*() {
        const manager = yield* RuntimeManager
        yield* manager.start
        const url = yield* baseUrl
        const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 30_000 })
        const completion = yield* Effect.promise(() =>
          client.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "Hello" }], max_tokens: 4 }))
        assert.strictEqual(completion.object, "chat.completion")
        yield* manager.drain("10 seconds")
      }).pipe(Effect.provide(CompanionLive(0).pipe(Layer.provide(Layer.setConfigProvider(provider())))))
    }), 120_000)
})
