/**
 * The gateway in front of a pool of several models (in memory, real socket): routing by the
 * request's `model`, the kind each route needs, `/v1/models` and `/health` per model, and the
 * embeddings request schema.
 */
import { createServer } from "node:http"
import { NodeHttpClient, NodeHttpServer } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Effect, Layer } from "effect"
import * as Gateway from "../../src/http/Gateway.js"
import { DownloaderControl } from "../../src/layers/DownloaderTest.js"
import { SpawnerControl } from "../../src/layers/SpawnerTest.js"
import * as TestLayers from "../../src/layers/TestLayers.js"
import { tinyGguf } from "../../src/testing/ModelFixtures.js"
import { sha256Hex } from "../domain/fixtures.js"
import { call, errorType, portOf, standIn } from "./gatewayHarness.js"

const MODELS = { zeta: "chat", alpha: "chat", vec: "embedding" } as const
type Name = keyof typeof MODELS
const FILES = Object.fromEntries(Object.keys(MODELS).map((name, i) => [name, tinyGguf(7 + i)])) as Record<Name, Uint8Array>
const sourceOf = (name: string) => `https://models.example.com/org/${name}/resolve/main/${name}.gguf`

const layer = (options: Gateway.GatewayOptions = {}) =>
  Gateway.layer(options).pipe(
    Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" })),
    Layer.provideMerge(TestLayers.pool),
    Layer.provide(NodeHttpClient.layerUndici),
    Layer.provide(Layer.setConfigProvider(ConfigProvider.fromJson({
      storeDir: "/store",
      models: Object.fromEntries(
        (Object.keys(MODELS) as Array<Name>).map((name) => [name, {
          sha256: sha256Hex(FILES[name]),
          sizeBytes: FILES[name].length,
          source: sourceOf(name),
          kind: MODELS[name]
        }])
      ),
      allowedSources: ["https://models.example.com/org/"]
    })))
  )

const serveAll = Effect.flatMap(DownloaderControl, (d) => Effect.forEach(Object.keys(MODELS) as Array<Name>, (name) => d.serve(sourceOf(name), FILES[name]), { discard: true }))

const post = (port: number, path: string, body: unknown) =>
  call(port, { method: "POST", path, headers: { "content-type": "application/json" }, body: JSON.stringify(body) })

const chat = (model?: string) => ({ ...(model === undefined ? {} : { model }), messages: [{ role: "user", content: "hi" }] })

const spawnedAliases = Effect.map(Effect.flatMap(SpawnerControl, (c) => c.spawned), (all) => all.map((p) => p.options.alias))

describe("Gateway over several models", () => {
  it.scopedLive("routes by model: the runtime gets that model's name; no model goes to the first of the route's kind (by name)", () =>
    Effect.gen(function*() {
      yield* serveAll
      const upstream = yield* standIn("json")
      const port = yield* portOf
      assert.strictEqual((yield* post(port, "/v1/chat/completions", chat("zeta"))).status, 200)
      assert.strictEqual(JSON.parse(upstream.bodies.at(-1)!).model, "zeta")
      assert.strictEqual((yield* post(port, "/v1/completions", { prompt: "hi" })).status, 200)
      assert.strictEqual(JSON.parse(upstream.bodies.at(-1)!).model, "alpha")
      assert.strictEqual((yield* post(port, "/v1/embeddings", { input: ["a", "b"], encoding_format: "base64" })).status, 200)
      assert.deepStrictEqual(JSON.parse(upstream.bodies.at(-1)!), { input: ["a", "b"], encoding_format: "base64", model: "vec" })
      assert.deepStrictEqual(yield* spawnedAliases, ["zeta", "alpha", "vec"])
      const embedder = (yield* (yield* SpawnerControl).spawned).find((p) => p.options.alias === "vec")!
      assert.deepStrictEqual(embedder.options.embeddings, { pooling: "mean" })
    }).pipe(Effect.provide(layer())))

  it.scopedLive("a model of the wrong kind is 400 wrong_model_kind, an unknown one 404 model_not_found; neither loads anything", () =>
    Effect.gen(function*() {
      yield* serveAll
      yield* standIn("json")
      const port = yield* portOf
      for (const [path, body] of [
        ["/v1/chat/completions", chat("vec")],
        ["/v1/completions", { model: "vec", prompt: "hi" }],
        ["/v1/embeddings", { model: "alpha", input: "hi" }]
      ] as const) {
        const answer = yield* post(port, path, body)
        assert.deepStrictEqual([answer.status, errorType(answer)], [400, "wrong_model_kind"], path)
      }
      for (const path of ["/v1/chat/completions", "/v1/embeddings"]) {
        const answer = yield* post(port, path, path.endsWith("embeddings") ? { model: "../vec", input: "x" } : chat("gpt-4o"))
        assert.deepStrictEqual([answer.status, errorType(answer)], [404, "model_not_found"], path)
        assert.notInclude(answer.text, "gpt-4o")
      }
      assert.deepStrictEqual(yield* spawnedAliases, [])
    }).pipe(Effect.provide(layer())))

  it.scopedLive("/v1/models lists every model with its state; /health has each model's state and load, 200 with nothing to preload", () =>
    Effect.gen(function*() {
      yield* serveAll
      yield* standIn("json")
      const port = yield* portOf
      const list = JSON.parse((yield* call(port, { path: "/v1/models" })).text) as { data: Array<{ id: string; state: string }> }
      assert.deepStrictEqual(list.data.map((m) => [m.id, m.state]), [["alpha", "stopped"], ["vec", "stopped"], ["zeta", "stopped"]])
      yield* post(port, "/v1/chat/completions", chat("zeta"))
      const health = yield* call(port, {})
      assert.strictEqual(health.status, 200)
      assert.deepStrictEqual(JSON.parse(health.text), {
        state: "ready",
        inFlight: 0,
        queued: 0,
        models: {
          alpha: { state: "stopped", inFlight: 0, queued: 0 },
          vec: { state: "stopped", inFlight: 0, queued: 0 },
          zeta: { state: "ready", inFlight: 0, queued: 0 }
        }
      })
    }).pipe(Effect.provide(layer())))

  it.scopedLive("embeddings: strings only, none empty, at most maxInputs of them, within the characters; dimensions refused", () =>
    Effect.gen(function*() {
      yield* serveAll
      const upstream = yield* standIn("json")
      const port = yield* portOf
      const refused: Array<readonly [unknown, number, string]> = [
        [{ input: "" }, 400, "invalid_body"],
        [{ input: [] }, 400, "invalid_body"],
        [{ input: ["ok", ""] }, 400, "invalid_body"],
        [{ input: [[1, 2, 3]] }, 400, "invalid_body"],
        [{ input: [1, 2, 3] }, 400, "invalid_body"],
        [{ input: "x", dimensions: 8 }, 400, "invalid_body"],
        [{ input: "x", encoding_format: "binary" }, 400, "invalid_body"],
        [{ input: "x", embd_normalize: -1 }, 400, "invalid_body"],
        [{ content: "x" }, 400, "invalid_body"],
        [{ input: "x", n_discard: 5 }, 400, "field_not_allowed"],
        [{ input: Array.from({ length: 4 }, () => "x") }, 400, "request_too_large"],
        [{ input: "y".repeat(301) }, 400, "request_too_large"]
      ]
      for (const [body, status, type] of refused) {
        const answer = yield* post(port, "/v1/embeddings", body)
        assert.deepStrictEqual([answer.status, errorType(answer)], [status, type], JSON.stringify(body).slice(0, 60))
      }
      assert.strictEqual(upstream.bodies.length, 0)
      assert.strictEqual((yield* post(port, "/v1/embeddings", { input: ["a", "b", "c"], user: "u1" })).status, 200)
      assert.strictEqual(upstream.bodies.length, 1)
    }).pipe(Effect.provide(layer({ maxInputs: 3, maxCharacters: 300 }))))
})
