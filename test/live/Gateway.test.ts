/**
 * The gateway in front of a real llama-server, driven by a client nobody here wrote: the official
 * `openai` npm package, non-streaming and streaming; and a client that disconnects mid-stream.
 */
import { createServer, request as httpRequest } from "node:http"
import { connect } from "node:net"
import { homedir } from "node:os"
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
import * as ModelPoolLive from "../../src/layers/ModelPoolLive.js"
import { RuntimeManager } from "../../src/services/RuntimeManager.js"
import { ModelPool } from "../../src/services/ModelPool.js"
import { sha256Hex } from "../domain/fixtures.js"
import { CompanionLive } from "./fixtures/readme-embedding.js"

const MODEL = tinyGguf()
/** The same tiny model with a 64 Ki-token trained context: it can generate for minutes. */
const LONG_MODEL = tinyGguf(0x5eed, 65_536)
let pki: TestPki
let origin: Origin
let work: string

beforeAll(async () => {
  pki = makeTestPki()
  origin = await startOrigin(pki, { "/models/tiny.gguf": serveBytes(MODEL), "/models/long.gguf": serveBytes(LONG_MODEL) })
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
const provider = (patch: { model?: object; gateway?: object; runtime?: object; admission?: object } = {}): ConfigProvider.ConfigProvider => {
  const caFile = join(work, "ca.pem")
  writeFileSync(caFile, pki.caPem)
  return ConfigProvider.fromJson({
    storeDir: join(work, "store"),
    model: { sha256: sha256Hex(MODEL), sizeBytes: MODEL.length, source: `${origin.baseUrl}/models/tiny.gguf`, ...patch.model },
    allowedSources: [`${origin.baseUrl}/models/`],
    admission: { maxInFlight: 2, queueBound: 4, ...patch.admission },
    download: { caFiles: [caFile] },
    runtime: { binary: inject("llamaServer"), ...patch.runtime },
    gateway: { ...patch.gateway }
  })
}

/** Gateway + the whole live stack from a ConfigProvider, on an ephemeral loopback port. */
const stack = (patch: Parameters<typeof provider>[0] = {}) =>
  Gateway.layer({ token: Redacted.make(TOKEN) }).pipe(
    Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" })),
    Layer.provideMerge(ModelPoolLive.fromManager({ name: "tiny" })),
    Layer.provideMerge(LiveLayers.layer),
    Layer.provide(NodeHttpClient.layerUndici),
    Layer.provide(Layer.setConfigProvider(provider(patch)))
  )

const baseUrl = Effect.map(HttpServer.HttpServer, (s) =>
  s.address._tag === "TcpAddress" ? `http://127.0.0.1:${s.address.port}` : "")

/** The gateway and the live stack, all from one config (the firewall's limits included). */
const door = (patch: NonNullable<Parameters<typeof provider>[0]>) =>
  Gateway.layerConfig.pipe(
    Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" })),
    // A pool of one over the manager, named as the config names the model.
    Layer.provideMerge(ModelPoolLive.fromManager({ name: (patch.model as { name?: string } | undefined)?.name ?? "tiny" })),
    Layer.provideMerge(LiveLayers.layer),
    Layer.provide(Layer.setConfigProvider(provider({ ...patch, gateway: { token: TOKEN, ...patch.gateway } })))
  )

/** One raw request on its own connection; every header as given (two Host headers included). */
const rawCall = (port: number, head: string, body = "") =>
  Effect.async<string>((resume) => {
    const socket = connect({ host: "127.0.0.1", port })
    let text = ""
    socket.on("data", (d: Buffer) => (text += d.toString()))
    socket.on("close", () => resume(Effect.succeed(text)))
    socket.on("error", () => {})
    socket.write(`${head}\r\n${body === "" ? "" : `Content-Length: ${Buffer.byteLength(body)}\r\n`}Connection: close\r\n\r\n${body}`)
  })

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
    }).pipe(Effect.provide(stack({
      // The long-context model: generation runs for minutes, so the kill always lands mid-stream
      // (with the 512-token model it could finish first on a loaded machine).
      model: { sha256: sha256Hex(LONG_MODEL), sizeBytes: LONG_MODEL.length, source: `${origin.baseUrl}/models/long.gguf`, name: "tiny" },
      runtime: { contextSize: 8192 }
    }))), 120_000)
  it.live("the README's embedding example, verbatim: serves a completion from its config", () =>
    Effect.gen(function*() {
      // The README's block is the consumer app's file (test/consumer/Package.test.ts checks that);
      // this is the same file importing the sources instead of the package.
      const block = readFileSync(join(import.meta.dirname, "../consumer/fixture/src/embedding.ts"), "utf8")
      const fixture = readFileSync(join(import.meta.dirname, "fixtures/readme-embedding.ts"), "utf8")
      assert.strictEqual(block, fixture.replace("\"../../../src/index.js\"", "\"companion-runtime\""))
      yield* Effect.gen(function*() {
        const pool = yield* ModelPool
        yield* pool.start
        const url = yield* baseUrl
        const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 30_000 })
        const completion = yield* Effect.promise(() =>
          client.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "Hello" }], max_tokens: 4 }))
        assert.strictEqual(completion.object, "chat.completion")
        yield* pool.drain("10 seconds")
      }).pipe(Effect.provide(CompanionLive(0).pipe(Layer.provide(Layer.setConfigProvider(provider())))))
    }), 120_000)
})

describe("live: the door, in front of a real llama-server", () => {
  const NAME = "companion-tiny"
  const CAP = 6

  it.live("max_tokens far over the cap generates at most the cap; answers name the model by its name, never its path or digest", () =>
    Effect.gen(function*() {
      const manager = yield* RuntimeManager
      yield* manager.start
      const url = yield* baseUrl
      const port = Number(new URL(url).port)
      const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: TOKEN, maxRetries: 0, timeout: 30_000 })
      const seen: Array<string> = []
      const keep = <A>(a: A) => {
        seen.push(JSON.stringify(a))
        return a
      }

      const capped = keep(yield* Effect.promise(() =>
        client.chat.completions.create({
          messages: [{ role: "user", content: "Hello" }],
          max_tokens: 1_000_000_000,
          ...({ ignore_eos: true } as object)
        } as OpenAI.Chat.Completions.ChatCompletionCreateParamsNonStreaming)))
      assert.isAtMost(capped.usage?.completion_tokens ?? Infinity, CAP)
      assert.strictEqual(capped.usage?.completion_tokens, CAP) // ignore_eos: generated up to the cap, not one more
      assert.strictEqual(capped.model, NAME)

      const completion = keep(yield* Effect.promise(() =>
        client.completions.create({ model: NAME, prompt: "Once", max_tokens: 100_000, ...({ ignore_eos: true } as object) })))
      assert.strictEqual(completion.usage?.completion_tokens, CAP)
      assert.strictEqual(completion.model, NAME)

      const stream = yield* Effect.promise(() =>
        client.chat.completions.create({ model: NAME, messages: [{ role: "user", content: "Hi" }], stream: true, stream_options: { include_usage: true } }))
      const chunks = yield* Effect.promise(async () => {
        const all: Array<OpenAI.Chat.Completions.ChatCompletionChunk> = []
        for await (const chunk of stream) all.push(keep(chunk))
        return all
      })
      assert.isTrue(chunks.every((c) => c.model === NAME))
      assert.isAtMost(chunks.at(-1)?.usage?.completion_tokens ?? Infinity, CAP)

      const models = keep(yield* Effect.promise(() => client.models.list()))
      assert.deepStrictEqual(models.data.map((m) => m.id), [NAME])

      // Every route's answer, headers and body: success, refusals, llama-server's own errors.
      const auth = `Authorization: Bearer ${TOKEN}`
      for (const [head, body] of [
        [`GET /health HTTP/1.1\r\nHost: 127.0.0.1:${port}`, ""],
        [`GET /v1/models HTTP/1.1\r\nHost: localhost:${port}\r\n${auth}`, ""],
        [`POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${auth}`, JSON.stringify({ prompt: "x" })],
        [`POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${auth}`, JSON.stringify({ prompt: "x", model: "other" })],
        [`POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${auth}`, JSON.stringify({ messages: [{ role: "user", content: "x" }], stream: true })],
        // The runtime's own refusal (a prompt longer than its context) comes back as it made it.
        [`POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${auth}`, JSON.stringify({ prompt: "word ".repeat(3_000) })],
        [`GET /nowhere HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${auth}`, ""]
      ] as const) {
        seen.push(yield* rawCall(port, head, body))
      }
      const all = seen.join("\n")
      for (const secret of [sha256Hex(MODEL), join(work, "store"), work, homedir(), "/dev/fd/", ".gguf"]) {
        assert.notInclude(all, secret)
      }
      yield* manager.drain("10 seconds")
    }).pipe(Effect.provide(door({ model: { name: NAME }, gateway: { maxTokens: CAP } }))), 120_000)

  it.live("n_discard: -5 is refused before the runtime sees it; the runtime serves on, the same process", () =>
    Effect.gen(function*() {
      const manager = yield* RuntimeManager
      yield* manager.start
      const url = yield* baseUrl
      const port = Number(new URL(url).port)
      const pids = runtimePids()
      for (const body of [{ prompt: "x", n_discard: -5 }, { prompt: "x", n_keep: -1, n_discard: -5 }, { prompt: "x", id_slot: 99 }]) {
        const answer = yield* rawCall(port, `POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${TOKEN}`, JSON.stringify(body))
        assert.match(answer, /^HTTP\/1\.1 400 /)
        assert.include(answer, "\"field_not_allowed\"")
      }
      // A grammar whose comment ends at \r hides 30,000 nested groups from a \n-only reader; sent
      // straight to this llama-server it kills it (found in review). The gateway reads it as llama does.
      const crasher = `root ::= r # \rr ::= ${"(".repeat(30_000)}"a"${")".repeat(30_000)}\n`
      const grammar = yield* rawCall(port, `POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${TOKEN}`, JSON.stringify({ prompt: "x", grammar: crasher }))
      assert.match(grammar, /^HTTP\/1\.1 400 /)
      assert.include(grammar, "\"invalid_body\"")
      assert.deepStrictEqual(runtimePids(), pids)
      const again = yield* Effect.promise(() =>
        new OpenAI({ baseURL: `${url}/v1`, apiKey: TOKEN, maxRetries: 0 }).completions.create({ model: NAME, prompt: "x", max_tokens: 2 }))
      assert.strictEqual(again.object, "text_completion")
      assert.strictEqual((yield* manager.status).state, "ready")
      yield* manager.drain("10 seconds")
    }).pipe(Effect.provide(door({ model: { name: NAME } }))), 120_000)

  it.live("Host: localhost:<port> is served; two Host headers are 400 and never reach the runtime", () =>
    Effect.gen(function*() {
      const manager = yield* RuntimeManager
      yield* manager.start
      const url = yield* baseUrl
      const port = Number(new URL(url).port)
      const viaLocalhost = new OpenAI({ baseURL: `http://localhost:${port}/v1`, apiKey: TOKEN, maxRetries: 0, timeout: 30_000 })
      const answer = yield* Effect.promise(() => viaLocalhost.completions.create({ model: NAME, prompt: "x", max_tokens: 2 }))
      assert.strictEqual(answer.object, "text_completion")
      const two = yield* rawCall(
        port,
        `POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nHost: evil.example\r\nAuthorization: Bearer ${TOKEN}`,
        JSON.stringify({ prompt: "x", max_tokens: 1 })
      )
      assert.match(two, /^HTTP\/1\.1 400 /)
      assert.include(two, "\"invalid_host\"")
      yield* manager.drain("10 seconds")
    }).pipe(Effect.provide(door({ model: { name: NAME } }))), 120_000)

  it.live("a stream past the generation deadline ends with the error event, cut off, and its slot is back at once", () =>
    Effect.gen(function*() {
      const manager = yield* RuntimeManager
      yield* manager.start
      const url = yield* baseUrl
      const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: TOKEN, maxRetries: 0, timeout: 30_000 })
      const started = Date.now()
      const outcome = yield* Effect.promise(async () => {
        const stream = await client.completions.create({
          model: NAME, prompt: "Once upon a time", max_tokens: 20_000, stream: true, ...({ ignore_eos: true } as object)
        })
        let chunks = 0
        try {
          for await (const _ of stream) chunks++
          return { chunks, error: undefined }
        } catch (error) {
          return { chunks, error: error as { error?: { type?: string } } }
        }
      })
      assert.isDefined(outcome.error, `the stream ended cleanly after ${outcome.chunks} chunks`)
      assert.isAbove(outcome.chunks, 0)
      assert.strictEqual(outcome.error?.error?.type, "generation_timeout")
      assert.isBelow(Date.now() - started, 10_000)
      // The slot came back when the deadline passed, not when the runtime would have finished.
      yield* Effect.flatMap(manager.status, (s) => (s.inFlight === 0 ? Effect.void : Effect.fail("busy"))).pipe(
        Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo("2 seconds")))
      )
      const again = yield* Effect.promise(() => client.completions.create({ model: NAME, prompt: "x", max_tokens: 2 }))
      assert.strictEqual(again.object, "text_completion")
      yield* manager.drain("10 seconds")
    }).pipe(Effect.provide(door({
      // 20,000 tokens take about a minute here: far past the deadline.
      model: { name: NAME, sha256: sha256Hex(LONG_MODEL), sizeBytes: LONG_MODEL.length, source: `${origin.baseUrl}/models/long.gguf` },
      admission: { maxInFlight: 1 },
      runtime: { contextSize: 32_768 },
      gateway: { maxTokens: 20_000, generationTimeout: "1500 millis" }
    }))), 120_000)

  it.live("the openai client with tools and response_format, streamed and not", () =>
    Effect.gen(function*() {
      const manager = yield* RuntimeManager
      yield* manager.start
      const url = yield* baseUrl
      const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: TOKEN, maxRetries: 0, timeout: 30_000 })
      const tools: Array<OpenAI.Chat.Completions.ChatCompletionTool> = [{
        type: "function",
        function: { name: "get_weather", description: "The weather in a city", parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } }
      }]
      const response_format = {
        type: "json_schema" as const,
        json_schema: { name: "answer", schema: { type: "object", properties: { ok: { type: "boolean" } }, required: ["ok"] } }
      }
      const messages: Array<OpenAI.Chat.Completions.ChatCompletionMessageParam> = [{ role: "user", content: "Weather in Paris?" }]
      const withTools = yield* Effect.promise(() => client.chat.completions.create({ model: NAME, messages, tools, tool_choice: "auto", max_tokens: 8 }))
      assert.strictEqual(withTools.object, "chat.completion")
      const formatted = yield* Effect.promise(() => client.chat.completions.create({ model: NAME, messages, response_format, max_tokens: 8 }))
      assert.strictEqual(formatted.object, "chat.completion")
      for (const extra of [{ tools, tool_choice: "auto" as const }, { response_format }]) {
        const stream = yield* Effect.promise(() => client.chat.completions.create({ model: NAME, messages, max_tokens: 8, stream: true, ...extra }))
        const chunks = yield* Effect.promise(async () => {
          let n = 0
          for await (const chunk of stream) if (chunk.object === "chat.completion.chunk") n++
          return n
        })
        assert.isAbove(chunks, 0)
      }
      yield* manager.drain("10 seconds")
    }).pipe(Effect.provide(door({ model: { name: NAME } }))), 120_000)
})
