/**
 * The gateway's own rules on a real loopback socket, over the in-memory manager: routes, Host and
 * Origin refusals, the client token, body limits, and the HTTP answer to each typed failure.
 * (The path to a real llama-server is in test/live/Gateway.test.ts.)
 */
import { request as httpRequest } from "node:http"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Layer, Redacted, Runtime, Schedule, Tracer } from "effect"
import * as Answers from "../../src/http/Answers.js"
import { SpawnerControl } from "../../src/layers/SpawnerTest.js"
import { GatewayError } from "../../src/services/Errors.js"
import { RuntimeManager } from "../../src/services/RuntimeManager.js"
import { call, crashRuntime, errorType, gateway, oneInFlight, portOf, slotsFreed, standIn, start, statusUntil } from "./gatewayHarness.js"

describe("Gateway (in-memory manager, real socket)", () => {
  it.live("answers 404 for every path and method outside the five routes", () =>
    Effect.gen(function*() {
      const port = yield* portOf
      const probes: Array<[string, string]> = [
        ["GET", "/"], ["GET", "/v1/completions"], ["POST", "/health"], ["DELETE", "/v1/models"],
        ["GET", "/v1/embeddings"], ["POST", "/v1/embeddings/"], ["POST", "/embeddings"], ["GET", "/props"], ["POST", "/slots"], ["GET", "/metrics"],
        ["GET", "/v1/models/../../etc/passwd"], ["PUT", "/v1/chat/completions"], ["GET", "/HEALTH"],
        // Exact matches only: no other spelling of a route reaches it.
        ["GET", "/health/"], ["GET", "//health"], ["GET", "/v1/%6dodels"], ["POST", "/v1/chat//completions"],
        ["POST", "/V1/completions"], ["GET", "/v1/models/"], ["HEAD", "/health"], ["HEAD", "/v1/models"],
        ["GET", "/v1/models;x"], ["GET", "/health;x"], ["GET", "/v1/models#x"], ["OPTIONS", "/v1/models"],
        ["GET", "http://127.0.0.1/v1/models"]
      ]
      for (const [method, path] of probes) {
        const answer = yield* call(port, { method, path })
        assert.strictEqual(answer.status, 404, `${method} ${path}`)
        if (method !== "HEAD") assert.strictEqual(errorType(answer), "not_found")
        assert.notInclude(answer.text, path.slice(1) || "/ ")
      }
    }).pipe(Effect.provide(gateway())))

  it.live("/health: 503 with the state until ready, then 200", () =>
    Effect.gen(function*() {
      const port = yield* portOf
      const before = yield* call(port, {})
      assert.strictEqual(before.status, 503)
      assert.strictEqual((JSON.parse(before.text) as { state: string }).state, "stopped")
      yield* start
      const after = yield* call(port, {})
      assert.strictEqual(after.status, 200)
      assert.strictEqual((JSON.parse(after.text) as { state: string }).state, "ready")
    }).pipe(Effect.provide(gateway())))

  it.live("a Host that is not this gateway's loopback address and port is 421 (DNS rebinding)", () =>
    Effect.gen(function*() {
      const port = yield* portOf
      for (const host of ["evil.example", `evil.example:${port}`, `localhost:${port + 1}`, `127.0.0.1:${port + 1}`, "127.0.0.1", "localhost", `localhost.:${port}`, `sub.localhost:${port}`, `[::1]:${port}`]) {
        const answer = yield* call(port, { headers: { host } })
        assert.strictEqual(answer.status, 421, host)
        assert.strictEqual(errorType(answer), "misdirected_request")
        assert.notInclude(answer.text, "evil")
      }
    }).pipe(Effect.provide(gateway())))

  it.live("an Origin outside the allowlist is 403; one in it passes", () =>
    Effect.gen(function*() {
      const port = yield* portOf
      const refused = yield* call(port, { headers: { origin: "https://evil.example" } })
      assert.strictEqual(refused.status, 403)
      assert.strictEqual(errorType(refused), "origin_not_allowed")
      const nullOrigin = yield* call(port, { headers: { origin: "null" } })
      assert.strictEqual(nullOrigin.status, 403)
      const allowed = yield* call(port, { headers: { origin: "app://companion" } })
      assert.strictEqual(allowed.status, 503) // reached /health: not ready yet
    }).pipe(Effect.provide(gateway({ allowedOrigins: ["app://companion"] }))))

  it.live("with a token, every route but /health needs it", () =>
    Effect.gen(function*() {
      const port = yield* portOf
      yield* start
      const body = JSON.stringify({ prompt: "hi" })
      for (const headers of [{}, { authorization: "Bearer wrong" }, { authorization: "Basic c2VjcmV0" }, { authorization: "Bearer s3cret-token-x" }]) {
        const answer = yield* call(port, { method: "POST", path: "/v1/completions", headers, body })
        assert.strictEqual(answer.status, 401)
        assert.strictEqual(errorType(answer), "unauthorized")
      }
      assert.strictEqual((yield* call(port, { method: "GET", path: "/v1/models" })).status, 401)
      assert.strictEqual((yield* call(port, {})).status, 200)
      // With the token the request passes the gateway (and fails upstream: nothing listens there).
      const passed = yield* call(port, { method: "POST", path: "/v1/completions", headers: { authorization: "Bearer s3cret-token" }, body })
      assert.strictEqual(passed.status, 502)
    }).pipe(Effect.provide(gateway({ token: Redacted.make("s3cret-token") }))))

  it.live("a body over the limit is 413, declared or streamed; a body that is not a JSON object is 400", () =>
    Effect.gen(function*() {
      const port = yield* portOf
      yield* start
      const big = "x".repeat(300_000)
      const declared = yield* call(port, { method: "POST", path: "/v1/completions", body: big })
      assert.strictEqual(declared.status, 413)
      assert.strictEqual(errorType(declared), "body_too_large")
      // Without a Content-Length the limit holds while reading: nothing past it is kept, the rest is
      // discarded so the client, still sending, gets its 413 rather than a reset.
      const streamed = yield* call(port, { method: "POST", path: "/v1/completions", body: big, chunked: true })
      assert.strictEqual(streamed.status, 413)
      assert.strictEqual(errorType(streamed), "body_too_large")
      assert.strictEqual(streamed.headers["connection"], "close")
      assert.strictEqual((yield* call(port, {})).status, 200) // still up
      for (const body of ["[1,2]", "\"text\"", "42", "null", "{not json", "", "{\"a\":1}x"]) {
        const answer = yield* call(port, { method: "POST", path: "/v1/chat/completions", body })
        assert.strictEqual(answer.status, 400, body)
        assert.strictEqual(errorType(answer), "invalid_body")
        // The fixed body, whatever was sent.
        assert.deepStrictEqual(JSON.parse(answer.text), Answers.errorBody(new GatewayError({ reason: "invalid_body" })))
      }
    }).pipe(Effect.provide(gateway({ maxBodyBytes: 200_000 }))))

  it.live("not ready is 503 with Retry-After; a runtime that does not answer is 502", () =>
    Effect.gen(function*() {
      const port = yield* portOf
      const body = JSON.stringify({ messages: [{ role: "user", content: "secret question" }] })
      const notReady = yield* call(port, { method: "POST", path: "/v1/chat/completions", body })
      assert.strictEqual(notReady.status, 503)
      assert.strictEqual(errorType(notReady), "not_ready")
      assert.strictEqual(notReady.headers["retry-after"], "1")
      yield* start
      const upstream = yield* call(port, { method: "POST", path: "/v1/chat/completions", body })
      assert.strictEqual(upstream.status, 502)
      assert.strictEqual(errorType(upstream), "upstream_failed")
      assert.notInclude(upstream.text, "secret")
      assert.notInclude(upstream.text, "127.0.0.1")
      // The slot came back.
      assert.strictEqual((yield* (yield* RuntimeManager).status).inFlight, 0)
    }).pipe(Effect.provide(gateway())))

  it.scopedLive("streams the runtime's events as they come, and a client that leaves aborts upstream and frees the slot", () =>
    Effect.gen(function*() {
      const upstream = yield* standIn("sse")
      yield* start
      const port = yield* portOf
      const events = yield* Effect.async<Array<string>, Error>((resume) => {
        const req = httpRequest({ host: "127.0.0.1", port, method: "POST", path: "/v1/chat/completions", headers: { host: `127.0.0.1:${port}` } }, (res) => {
          const seen: Array<string> = []
          res.on("data", (d: Buffer) => {
            seen.push(d.toString())
            // Three events arrived while the upstream is still going: nothing was buffered whole.
            if (seen.join("").split("data:").length > 3) {
              req.destroy()
              resume(Effect.succeed(seen))
            }
          })
        })
        req.on("error", () => {})
        req.end(JSON.stringify({ messages: [{ role: "user", content: "hi" }], stream: true }))
      })
      assert.include(events.join(""), "data: {\"n\":0}")
      // The upstream request is aborted and the slot is back, without waiting for the stream's end.
      yield* Effect.sync(() => upstream.aborted.length === 1 && upstream.aborted[0] === true).pipe(
        Effect.repeat({ schedule: Schedule.spaced("20 millis"), until: (done) => done }),
        Effect.timeout("3 seconds")
      )
      yield* slotsFreed
      // The runtime got the per-spawn key; the client never sent one.
      assert.match(upstream.auth[0] ?? "", /^Bearer test-key-\d+$/)
    }).pipe(Effect.provide(gateway())))

  it.scopedLive("a client that leaves while queued for a slot, or waiting for the first byte, lets go of both", () =>
    Effect.gen(function*() {
      const upstream = yield* standIn("silent")
      yield* start
      const port = yield* portOf
      const send = Effect.sync(() => {
        const req = httpRequest({ host: "127.0.0.1", port, method: "POST", path: "/v1/completions", headers: { host: `127.0.0.1:${port}` } })
        req.on("error", () => {})
        req.end(JSON.stringify({ prompt: "x" }))
        return req
      })
      const first = yield* send
      yield* oneInFlight
      const second = yield* send
      yield* statusUntil((s) => s.queued === 1)
      second.destroy()
      yield* statusUntil((s) => s.queued === 0 && s.inFlight === 1)
      first.destroy()
      yield* slotsFreed
      // The upstream request of the first was aborted; the second never reached the runtime.
      yield* Effect.sync(() => upstream.aborted.length).pipe(
        Effect.repeat({ schedule: Schedule.spaced("10 millis"), until: (n) => n === 1 }),
        Effect.timeout("3 seconds")
      )
      assert.deepStrictEqual(upstream.aborted, [true])
    }).pipe(Effect.provide(gateway({}, { admission: { maxInFlight: 1, queueBound: 4 } }))))

  it.scopedLive("a kept-alive connection the runtime dropped is retried once on a new one", () =>
    Effect.gen(function*() {
      const upstream = yield* standIn("one-per-connection")
      yield* start
      const port = yield* portOf
      const body = JSON.stringify({ prompt: "x" })
      for (let i = 0; i < 3; i++) {
        const answer = yield* call(port, { method: "POST", path: "/v1/completions", body })
        assert.strictEqual(answer.status, 200, `request ${i}`)
      }
      // Each request after the first found its connection dropped, and went again on a new one.
      assert.strictEqual(upstream.auth.length, 5)
      yield* slotsFreed
    }).pipe(Effect.provide(gateway())))

  it.scopedLive("a runtime that exits before answering is 502 runtime_exited", () =>
    Effect.gen(function*() {
      yield* standIn("silent")
      yield* start
      const port = yield* portOf
      const pending = yield* Effect.fork(call(port, { method: "POST", path: "/v1/chat/completions", body: JSON.stringify({ messages: [{ role: "user", content: "hi" }] }) }))
      yield* oneInFlight
      yield* crashRuntime
      const answer = yield* Fiber.join(pending)
      assert.strictEqual(answer.status, 502)
      assert.strictEqual(errorType(answer), "runtime_exited")
      assert.isUndefined(answer.headers["retry-after"])
      yield* slotsFreed
    }).pipe(Effect.provide(gateway())))

  it.scopedLive("a runtime that exits mid-stream: a final error event, then the answer is cut off, never ended cleanly", () =>
    Effect.gen(function*() {
      yield* standIn("sse")
      yield* start
      const port = yield* portOf
      const runtime = yield* Effect.runtime<SpawnerControl>()
      const outcome = yield* Effect.async<{ text: string; ended: boolean }>((resume) => {
        const req = httpRequest({ host: "127.0.0.1", port, method: "POST", path: "/v1/chat/completions", headers: { host: `127.0.0.1:${port}` } }, (res) => {
          let text = ""
          let crashed = false
          res.on("data", (d: Buffer) => {
            text += d.toString()
            if (!crashed && text.includes("data: {\"n\":1}")) {
              crashed = true
              Runtime.runFork(runtime)(crashRuntime)
            }
          })
          res.on("end", () => resume(Effect.succeed({ text, ended: true })))
          res.on("error", () => resume(Effect.succeed({ text, ended: false })))
        })
        req.on("error", () => {})
        req.end(JSON.stringify({ messages: [{ role: "user", content: "hi" }], stream: true }))
      })
      assert.isFalse(outcome.ended, "a cut-off answer must not look complete")
      const last = outcome.text.trim().split("\n\n").at(-1) ?? ""
      assert.deepStrictEqual(JSON.parse(last.replace(/^data: /, "")), {
        error: { message: "The runtime process exited while the request was running.", type: "runtime_exited", param: null, code: "runtime_exited" }
      })
      yield* slotsFreed
    }).pipe(Effect.provide(gateway())))

  it("maps every typed failure to its status", () => {
    assert.deepStrictEqual(Answers.statusOf({ _tag: "RuntimeExitedError", reason: "runtime_exited" } as never), { status: 502, retry: false })
    assert.deepStrictEqual(Answers.statusOf({ _tag: "AdmissionError", reason: "queue_full" } as never), { status: 503, retry: true })
    assert.deepStrictEqual(Answers.statusOf({ _tag: "ResourceError", reason: "ram_over_limit" } as never), { status: 503, retry: true })
    assert.deepStrictEqual(Answers.statusOf({ _tag: "LifecycleError", reason: "not_ready" } as never), { status: 503, retry: true })
  })
})

describe("Gateway tracing", () => {
  /** The names of the spans started under a tracer that records them. */
  const recording = (names: Array<string>) =>
    Layer.unwrapEffect(Effect.map(Effect.tracer, (base) =>
      Layer.setTracer(Tracer.make({
        span: (...args) => {
          names.push(args[0])
          return base.span(...args)
        },
        context: base.context
      }))))

  const served = (options: { readonly tracing?: boolean }, names: Array<string>) =>
    Effect.gen(function*() {
      const port = yield* portOf
      yield* start
      const answer = yield* call(port, {})
      assert.strictEqual(answer.status, 200)
      return names.filter((n) => n.startsWith("http.server"))
    }).pipe(Effect.provide(gateway(options).pipe(Layer.provide(recording(names)))))

  it.live("no server span per request by default (the hot path, and no client-chosen trace parent); one with tracing: true", () =>
    Effect.gen(function*() {
      assert.deepStrictEqual(yield* served({}, []), [])
      const traced = yield* served({ tracing: true }, [])
      assert.deepStrictEqual(traced, ["http.server GET"])
    }))
})
