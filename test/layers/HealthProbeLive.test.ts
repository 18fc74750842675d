import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { NodeHttpClient } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Either, Redacted } from "effect"
import * as HealthProbeLive from "../../src/layers/HealthProbeLive.js"
import type { RuntimeHandle } from "../../src/services/Spawner.js"

/** A loopback HTTP server answering from a script (status per request; "hang" never answers). */
const server = (answers: Array<number | "hang">) =>
  Effect.acquireRelease(
    Effect.async<{ server: Server; port: number; paths: Array<string>; headers: Array<string | undefined> }>((resume) => {
      const paths: Array<string> = []
      const headers: Array<string | undefined> = []
      const s = createServer((req, res) => {
        paths.push(req.url ?? "")
        headers.push(req.headers.authorization)
        const answer = answers.length > 1 ? answers.shift()! : answers[0]!
        if (answer === "hang") return
        res.writeHead(answer, { "content-type": "application/json" }).end(answer === 200 ? '{"status":"ok"}' : '{"error":"loading"}')
      })
      s.listen(0, "127.0.0.1", () => resume(Effect.succeed({ server: s, port: (s.address() as AddressInfo).port, paths, headers })))
    }),
    ({ server }) => Effect.async<void>((resume) => {
      server.closeAllConnections()
      server.close(() => resume(Effect.void))
    })
  )

const handleAt = (port: number): RuntimeHandle => ({
  pid: 0,
  baseUrl: `http://127.0.0.1:${port}`,
  apiKey: Redacted.make("never-sent"),
  exited: Effect.never,
  stop: () => Effect.succeed({ code: 0, signal: null }),
  output: Effect.succeed([])
})

describe("HealthProbeLive", () => {
  it.scopedLive("llama.cpp: 503 is loading, 200 is ok, on GET /health, without the key", () =>
    Effect.gen(function*() {
      const s = yield* server([503, 200])
      const probe = yield* HealthProbeLive.make("llama.cpp")
      assert.strictEqual(yield* probe.probe(handleAt(s.port)), "loading")
      assert.strictEqual(yield* probe.probe(handleAt(s.port)), "ok")
      assert.deepStrictEqual(s.paths, ["/health", "/health"])
      assert.deepStrictEqual(s.headers, [undefined, undefined])
    }).pipe(Effect.provide(NodeHttpClient.layerUndici)))

  it.scopedLive("ollama: GET /api/tags; 200 is ok and 503 is unhealthy", () =>
    Effect.gen(function*() {
      const s = yield* server([200, 503])
      const probe = yield* HealthProbeLive.make("ollama")
      assert.strictEqual(yield* probe.probe(handleAt(s.port)), "ok")
      const second = yield* Effect.either(probe.probe(handleAt(s.port)))
      assert.isTrue(Either.isLeft(second) && second.left.reason === "unhealthy")
      assert.deepStrictEqual(s.paths, ["/api/tags", "/api/tags"])
    }).pipe(Effect.provide(NodeHttpClient.layerUndici)))

  it.scopedLive("any other status is unhealthy; a closed port is unreachable; silence is probe_timeout", () =>
    Effect.gen(function*() {
      const probe = yield* HealthProbeLive.make("llama.cpp", "300 millis")
      const failing = yield* server([500])
      const a = yield* Effect.either(probe.probe(handleAt(failing.port)))
      assert.isTrue(Either.isLeft(a) && a.left.reason === "unhealthy")

      const closed = yield* Effect.scoped(Effect.map(server([200]), (s) => s.port))
      const b = yield* Effect.either(probe.probe(handleAt(closed)))
      assert.isTrue(Either.isLeft(b) && b.left.reason === "unreachable")

      const silent = yield* server(["hang"])
      const c = yield* Effect.either(probe.probe(handleAt(silent.port)))
      assert.isTrue(Either.isLeft(c) && c.left.reason === "probe_timeout")
    }).pipe(Effect.provide(NodeHttpClient.layerUndici)))
})
