/**
 * The request firewall, decision by decision, through the in-memory gateway on a real socket: each
 * body is accepted (and what the runtime received is checked), capped, or refused with its status
 * and fixed body before the runtime sees it. Then the door's other rules: the model's name, Host,
 * the Bearer scheme, `/v1/models`, and the generation deadline.
 */
import { createServer, request as httpRequest } from "node:http"
import { connect } from "node:net"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Either, Redacted } from "effect"
import * as Answers from "../../src/http/Answers.js"
import * as Firewall from "../../src/http/Firewall.js"
import * as Relay from "../../src/http/Relay.js"
import { GatewayError } from "../../src/services/Errors.js"
import { call, type Answer, gateway, portOf, slotsFreed, standIn, start } from "./gatewayHarness.js"

const NAME = "companion-small"
const CAP = 100
const options = { modelName: NAME, models: [{ name: NAME, kind: "chat" as const }], maxTokens: CAP, maxMessages: 4, maxCharacters: 2_000, maxTools: 2 }

const user = (content: unknown) => ({ role: "user", content })
const chat = (extra: Record<string, unknown> = {}) => ({ messages: [user("hi")], ...extra })

type Expect =
  | { readonly refused: GatewayError["reason"]; readonly status: number }
  | { readonly sent: (json: Record<string, unknown>) => void }

const refused = (reason: GatewayError["reason"]): Expect => ({
  refused: reason,
  status: { invalid_body: 400, field_not_allowed: 400, request_too_large: 400, model_not_found: 404 }[reason as string] ?? 0
})
const sent = (check: (json: Record<string, unknown>) => void = () => {}): Expect => ({ sent: check })

const CASES: ReadonlyArray<readonly [string, "chat" | "completion", Record<string, unknown>, Expect]> = [
  // Accepted as clients send them
  ["a plain chat", "chat", chat(), sent((j) => assert.deepStrictEqual(j["messages"], [user("hi")]))],
  ["OpenAI's sampling fields", "chat", chat({ temperature: 0.7, top_p: 0.9, stop: ["\n\n"], seed: 42, presence_penalty: 0.5, frequency_penalty: -0.5, n: 1, user: "u-1", stream: true, stream_options: { include_usage: true }, logprobs: true, top_logprobs: 5 }), sent((j) => assert.strictEqual(j["top_logprobs"], 5))],
  ["text and inline image parts", "chat", chat({ messages: [user([{ type: "text", text: "what is this?" }, { type: "image_url", image_url: { url: "data:image/png;base64,iVBORw0KGgo=", detail: "low" } }])] }), sent()],
  ["tools, a tool call and its answer", "chat", chat({
    messages: [user("weather?"), { role: "assistant", content: null, tool_calls: [{ id: "c1", type: "function", function: { name: "get_weather", arguments: "{\"city\":\"Paris\"}" } }] }, { role: "tool", tool_call_id: "c1", content: "sunny" }],
    tools: [{ type: "function", function: { name: "get_weather", description: "d", parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } } }],
    tool_choice: "auto",
    parallel_tool_calls: false
  }), sent((j) => assert.deepStrictEqual((j["tools"] as Array<{ function: { parameters: unknown } }>)[0]?.function.parameters, { type: "object", properties: { city: { type: "string" } }, required: ["city"] }))],
  ["response_format json_schema", "chat", chat({ response_format: { type: "json_schema", json_schema: { name: "answer", strict: true, schema: { type: "object", properties: { a: { type: "integer" } } } } } }), sent()],
  ["llama.cpp sampling extras", "chat", chat({ top_k: 40, min_p: 0.05, repeat_penalty: 1.1, repeat_last_n: 64, mirostat: 2, dry_multiplier: 0.8, n_probs: 3, cache_prompt: true }), sent((j) => assert.strictEqual(j["top_k"], 40))],
  ["a completion", "completion", { prompt: "Once upon", max_tokens: 8, logprobs: 2, echo: false }, sent((j) => assert.strictEqual(j["max_tokens"], 8))],
  ["the model named by its name", "chat", chat({ model: NAME }), sent((j) => assert.strictEqual(j["model"], NAME))],
  ["no model: the configured one", "chat", chat(), sent((j) => assert.strictEqual(j["model"], NAME))],
  ["a grammar with parentheses in its literals and classes", "completion", { prompt: "x", grammar: `root ::= "(((" [()] ("a" | "b")* # ((((\n` }, sent((j) => assert.isString(j["grammar"]))],
  // Capped
  ["max_tokens far over the cap", "chat", chat({ max_tokens: 1_000_000_000 }), sent((j) => assert.strictEqual(j["max_tokens"], CAP))],
  ["max_completion_tokens over the cap", "chat", chat({ max_completion_tokens: 5_000 }), sent((j) => assert.deepStrictEqual([j["max_tokens"], j["max_completion_tokens"], j["n_predict"]], [CAP, CAP, CAP]))],
  ["n_predict -1 (no limit)", "completion", { prompt: "x", n_predict: -1 }, sent((j) => assert.strictEqual(j["n_predict"], CAP))],
  ["no token count: the cap", "chat", chat(), sent((j) => assert.deepStrictEqual([j["max_tokens"], j["n_predict"]], [CAP, CAP]))],
  ["under the cap: kept", "chat", chat({ max_tokens: 7 }), sent((j) => assert.deepStrictEqual([j["max_tokens"], j["n_predict"]], [7, 7]))],
  // Refused whatever the value: the runtime's internals
  ["n_discard: -5 (CVE-2026-21869)", "completion", { prompt: "x", n_discard: -5 }, refused("field_not_allowed")],
  ["n_keep", "chat", chat({ n_keep: 10 }), refused("field_not_allowed")],
  ["id_slot", "chat", chat({ id_slot: 0 }), refused("field_not_allowed")],
  ["lora", "chat", chat({ lora: [{ id: 0, scale: 1 }] }), refused("field_not_allowed")],
  ["n_cmpl", "completion", { prompt: "x", n_cmpl: 4 }, refused("field_not_allowed")],
  ["response_fields", "chat", chat({ response_fields: ["generation_settings"] }), refused("field_not_allowed")],
  // Refused: not the schema
  ["an unknown top-level field", "chat", chat({ secret_knob: true }), refused("invalid_body")],
  ["an unknown field in a message", "chat", chat({ messages: [{ ...user("hi"), extra: 1 }] }), refused("invalid_body")],
  ["no messages", "chat", {}, refused("invalid_body")],
  ["an empty message list", "chat", chat({ messages: [] }), refused("invalid_body")],
  ["a prompt on the chat route", "chat", chat({ prompt: "x" }), refused("invalid_body")],
  ["an unknown role", "chat", chat({ messages: [{ role: "root", content: "x" }] }), refused("invalid_body")],
  ["a remote image URL (the runtime would fetch it)", "chat", chat({ messages: [user([{ type: "image_url", image_url: { url: "http://169.254.169.254/x.png" } }])] }), refused("invalid_body")],
  ["n_probs over its cap", "chat", chat({ n_probs: Firewall.MAX_PROBS + 1 }), refused("invalid_body")],
  ["top_logprobs over its cap", "chat", chat({ top_logprobs: 1000 }), refused("invalid_body")],
  ["n = 2", "chat", chat({ n: 2 }), refused("invalid_body")],
  ["temperature out of range", "chat", chat({ temperature: 9 }), refused("invalid_body")],
  ["a negative max_tokens other than -1", "chat", chat({ max_tokens: -5 }), refused("invalid_body")],
  ["a fractional max_tokens", "chat", chat({ max_tokens: 1.5 }), refused("invalid_body")],
  ["a logit_bias key that is not a token id", "chat", chat({ logit_bias: { hello: 5 } }), refused("invalid_body")],
  ["a logit_bias out of range", "chat", chat({ logit_bias: { "15": 101 } }), refused("invalid_body")],
  ["echo on a completion", "completion", { prompt: "x", echo: true }, refused("invalid_body")],
  ["response_format on a completion (llama-server reads it on chat only)", "completion", { prompt: "x", response_format: { type: "json_object" } }, refused("invalid_body")],
  ["a model that is not a string", "chat", chat({ model: 7 }), refused("invalid_body")],
  ["a nesting deeper than the limit", "chat", chat({ response_format: { type: "json_object", schema: nest(Firewall.MAX_DEPTH + 2) } }), refused("invalid_body")],
  ["max_tokens 0 (llama-server would generate one anyway)", "chat", chat({ max_tokens: 0 }), refused("invalid_body")],
  ["max_tokens past int32 (it would wrap to -1, no limit)", "chat", chat({ max_tokens: 4_294_967_295 }), refused("invalid_body")],
  ["a grammar nested deeper than the limit", "completion", { prompt: "x", grammar: `root ::= ${"(".repeat(Firewall.MAX_DEPTH + 1)}"a"${")".repeat(Firewall.MAX_DEPTH + 1)}` }, refused("invalid_body")],
  ["a grammar nested deep after a comment ended by \\r (llama's parser ends comments there)", "completion", { prompt: "x", grammar: `root ::= r # \rr ::= ${"(".repeat(Firewall.MAX_DEPTH + 1)}"a"${")".repeat(Firewall.MAX_DEPTH + 1)}\n` }, refused("invalid_body")],
  ["an llguidance grammar (aborts a build without it)", "completion", { prompt: "x", grammar: "%llguidance {}\nstart: \"a\"" }, refused("invalid_body")],
  ["tool_choice naming a function (llama-server would silently read it as auto)", "chat", chat({ tools: [{ type: "function", function: { name: "f" } }], tool_choice: { type: "function", function: { name: "f" } } }), refused("invalid_body")],
  ["repeat_last_n -1 (llama-server refuses negatives)", "chat", chat({ repeat_last_n: -1 }), refused("invalid_body")],
  ["dry_penalty_last_n -1", "chat", chat({ dry_penalty_last_n: -1 }), refused("invalid_body")],
  ["an empty dry_sequence_breakers (llama-server refuses it)", "chat", chat({ dry_sequence_breakers: [] }), refused("invalid_body")],
  ["a __proto__ key inside a tool's parameters (a decoded record would drop it)", "chat", chat({ tools: [{ type: "function", function: { name: "f", parameters: JSON.parse("{\"type\":\"object\",\"properties\":{\"__proto__\":{\"type\":\"string\"}}}") } }] }), refused("invalid_body")],
  ["chat_template_kwargs replacing the messages", "chat", chat({ chat_template_kwargs: { messages: [{ role: "system", content: "x" }] } }), refused("invalid_body")],
  ["unknown chat_template_kwargs", "chat", chat({ chat_template_kwargs: { tools_in_system: "x" } }), refused("invalid_body")],
  // Refused: over the configured limits
  ["more messages than allowed", "chat", chat({ messages: Array.from({ length: 5 }, () => user("m")) }), refused("request_too_large")],
  ["more tools than allowed", "chat", chat({ tools: Array.from({ length: 3 }, (_, i) => ({ type: "function", function: { name: `f${i}` } })) }), refused("request_too_large")],
  ["more characters than allowed", "chat", chat({ messages: [user("x".repeat(2_001))] }), refused("request_too_large")],
  ["characters hidden in a tool's schema", "chat", chat({ tools: [{ type: "function", function: { name: "f", parameters: { description: "y".repeat(2_001) } } }] }), refused("request_too_large")],
  ["a schema's enum of numbers over the characters (each value counts)", "completion", { prompt: "x", json_schema: { enum: Array.from({ length: 2_001 }, (_, i) => i) } }, refused("request_too_large")],
  ["characters hidden under an image_url key inside a tool's schema (only a message's image is exempt)", "chat", chat({ tools: [{ type: "function", function: { name: "f", parameters: { image_url: { url: "y".repeat(2_001) } } } }] }), refused("request_too_large")],
  ["a grammar over the characters", "completion", { prompt: "x", grammar: "g".repeat(2_001) }, refused("request_too_large")],
  // Refused: another model
  ["another model's name", "chat", chat({ model: "gpt-4o" }), refused("model_not_found")],
  ["a path as the model", "completion", { prompt: "x", model: "/home/user/.companion-runtime/models/abc" }, refused("model_not_found")]
]

function nest(depth: number): Record<string, unknown> {
  let node: Record<string, unknown> = { type: "string" }
  for (let i = 0; i < depth; i++) node = { type: "object", properties: { a: node } }
  return node
}

const post = (port: number, route: "chat" | "completion", body: unknown) =>
  call(port, { method: "POST", path: route === "chat" ? "/v1/chat/completions" : "/v1/completions", body: JSON.stringify(body) })

const fixedBody = (reason: GatewayError["reason"]) => Answers.errorBody(new GatewayError({ reason }))

describe("Gateway firewall (in-memory manager, real socket)", () => {
  it("grammarDepth counts groups, not the parentheses inside literals, classes or comments", () => {
    assert.strictEqual(Firewall.grammarDepth(`root ::= ("a" ("b" | "c"))`), 2)
    assert.strictEqual(Firewall.grammarDepth(`root ::= "((((" [(] "\\"(((" # (((((\n x`), 0)
    assert.strictEqual(Firewall.grammarDepth("(".repeat(1000)), 1000)
    assert.strictEqual(Firewall.grammarDepth(`"))))))" ${"(".repeat(40)}`), 40)
    // As llama-grammar.cpp reads it: a comment ends at \r as well as \n, and the text at the first NUL.
    assert.strictEqual(Firewall.grammarDepth("root ::= r # \r r ::= ((((\"a\"))))"), 4)
    assert.strictEqual(Firewall.grammarDepth("root ::= r # \n r ::= ((\"a\"))"), 2)
    assert.strictEqual(Firewall.grammarDepth("root ::= \"a\"\0 ((((("), 0)
    assert.deepStrictEqual(Firewall.grammarShape("root ::= (\"a\") (\"b\" (\"c\"))"), { depth: 2, groups: 3 })
  })

  it("a grammar with more groups than the backstop is refused; at the backstop it passes", () => {
    const wide = { ...options, maxCharacters: 1_000_000, unknownFields: "refuse" as const }
    const grammar = (groups: number) => ({ prompt: "x", grammar: `root ::= ${"(\"a\")".repeat(groups)}` })
    assert.isTrue(Either.isRight(Firewall.check("completion", grammar(Firewall.MAX_GROUPS), wide)))
    const over = Firewall.check("completion", grammar(Firewall.MAX_GROUPS + 1), wide)
    assert.strictEqual(Either.isLeft(over) ? over.left.reason : "accepted", "invalid_body")
  })

  it("measure exempts an inline image's data only at its place in a message", () => {
    const data = "A".repeat(1_000)
    const part = { type: "image_url", image_url: { url: data } }
    assert.isBelow(Firewall.measure({ messages: [{ role: "user", content: [part] }] }).characters, 100)
    assert.isAtLeast(Firewall.measure({ tools: [{ function: { parameters: part } }] }).characters, 1_000)
    assert.isAtLeast(Firewall.measure({ messages: [{ role: "user", content: part }] }).characters, 1_000)
    assert.isAtLeast(Firewall.measure({ image_url: { url: data } }).characters, 1_000)
    assert.isAtLeast(Firewall.measure({ messages: [{ content: [{ image_url: { url: data, detail: data } }] }] }).characters, 1_000)
  })

  it.scopedLive("each schema decision: accepted as sent, capped, or refused before the runtime sees it", () =>
    Effect.gen(function*() {
      const upstream = yield* standIn("json")
      yield* start
      const port = yield* portOf
      for (const [label, route, body, expect] of CASES) {
        const before = upstream.bodies.length
        const answer: Answer = yield* post(port, route, body)
        if ("refused" in expect) {
          assert.strictEqual(answer.status, expect.status, label)
          assert.deepStrictEqual(JSON.parse(answer.text), fixedBody(expect.refused), label)
          assert.strictEqual(upstream.bodies.length, before, `${label}: reached the runtime`)
        } else {
          assert.strictEqual(answer.status, 200, `${label}: ${answer.text}`)
          yield* Effect.sync(() => upstream.bodies.length).pipe(Effect.repeat({ until: (n) => n > before }), Effect.timeout("2 seconds"))
          const json = JSON.parse(upstream.bodies[before]!) as Record<string, unknown>
          assert.strictEqual(json["model"], NAME, label)
          assert.isAtMost(json["max_tokens"] as number, CAP, label)
          expect.sent(json)
        }
      }
      yield* slotsFreed
    }).pipe(Effect.provide(gateway(options))))

  it.scopedLive("with unknownFields \"strip\": unknown fields are dropped at every depth; internal ones are still refused", () =>
    Effect.gen(function*() {
      const upstream = yield* standIn("json")
      yield* start
      const port = yield* portOf
      const answer = yield* post(port, "chat", { messages: [{ role: "user", content: "hi", extra: 1 }], secret_knob: true, top_k: 5 })
      assert.strictEqual(answer.status, 200)
      assert.deepStrictEqual(JSON.parse(upstream.bodies[0]!), { messages: [{ role: "user", content: "hi" }], top_k: 5, max_tokens: CAP, n_predict: CAP, model: NAME })
      for (const field of Firewall.INTERNAL_FIELDS) {
        const internal = yield* post(port, "chat", chat({ [field]: 1 }))
        assert.strictEqual(internal.status, 400, field)
        assert.deepStrictEqual(JSON.parse(internal.text), fixedBody("field_not_allowed"))
      }
      // A value out of range is still refused: strip drops fields, it does not repair them.
      assert.strictEqual((yield* post(port, "chat", chat({ temperature: -1 }))).status, 400)
      assert.strictEqual(upstream.bodies.length, 1)
    }).pipe(Effect.provide(gateway({ ...options, unknownFields: "strip" }))))

  it.live("/v1/models lists the model's name and state only, before the runtime is even up", () =>
    Effect.gen(function*() {
      const port = yield* portOf
      const answer = yield* call(port, { path: "/v1/models" })
      assert.strictEqual(answer.status, 200)
      assert.deepStrictEqual(JSON.parse(answer.text), {
        object: "list",
        data: [{ id: NAME, object: "model", created: 0, owned_by: "companion-runtime", state: "stopped" }]
      })
    }).pipe(Effect.provide(gateway(options))))

  it.live("Host: the listening address or localhost with its port, in any case; none or two is 400", () =>
    Effect.gen(function*() {
      const port = yield* portOf
      for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `LOCALHOST:${port}`, `LocalHost:${port}`]) {
        assert.strictEqual((yield* call(port, { path: "/v1/models", headers: { host } })).status, 200, host)
      }
      const raw = (head: string) =>
        Effect.async<string>((resume) => {
          const socket = connect({ host: "127.0.0.1", port })
          let text = ""
          socket.on("data", (d: Buffer) => (text += d.toString()))
          socket.on("close", () => resume(Effect.succeed(text)))
          socket.on("error", () => {})
          socket.write(head)
        })
      const two = yield* raw(`GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nHost: evil.example\r\nConnection: close\r\n\r\n`)
      assert.match(two, /^HTTP\/1\.1 400 /)
      assert.include(two, "\"invalid_host\"")
      assert.notInclude(two, "evil")
      const twoSame = yield* raw(`GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nhost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`)
      assert.match(twoSame, /^HTTP\/1\.1 400 /)
      const none = yield* raw(`GET /v1/models HTTP/1.0\r\n\r\n`)
      assert.match(none, /^HTTP\/1\.1 400 /)
    }).pipe(Effect.provide(gateway(options))))

  it.live("the Bearer scheme matches in any case (RFC 9110); the token itself does not", () =>
    Effect.gen(function*() {
      const port = yield* portOf
      for (const authorization of ["Bearer tok-123", "bearer tok-123", "BEARER tok-123", "Bearer  tok-123"]) {
        assert.strictEqual((yield* call(port, { path: "/v1/models", headers: { authorization } })).status, 200, authorization)
      }
      for (const authorization of ["Bearer TOK-123", "Bearertok-123", "Basic tok-123", "tok-123"]) {
        assert.strictEqual((yield* call(port, { path: "/v1/models", headers: { authorization } })).status, 401, authorization)
      }
    }).pipe(Effect.provide(gateway({ ...options, token: Redacted.make("tok-123") }))))

  it.scopedLive("past the generation deadline: 504 before any byte, a cut-off stream after, and the slot back at once", () =>
    Effect.gen(function*() {
      yield* standIn("silent")
      yield* start
      const port = yield* portOf
      const started = Date.now()
      const answer = yield* post(port, "chat", chat())
      assert.strictEqual(answer.status, 504)
      assert.deepStrictEqual(JSON.parse(answer.text), fixedBody("generation_timeout"))
      assert.isBelow(Date.now() - started, 3_000)
      yield* slotsFreed
    }).pipe(Effect.provide(gateway({ ...options, generationTimeout: "300 millis" }))))

  it.scopedLive("a deadline longer than a Node timer can hold (24.8 days) is not a deadline of 1 ms", () =>
    Effect.gen(function*() {
      yield* standIn("json")
      yield* start
      const port = yield* portOf
      const answer = yield* post(port, "chat", chat())
      assert.strictEqual(answer.status, 200, answer.text)
    }).pipe(Effect.provide(gateway({ ...options, generationTimeout: "30 days" }))))

  it.scopedLive("a stream past the deadline ends with the error event and no final chunk; the upstream request is aborted", () =>
    Effect.gen(function*() {
      const upstream = yield* standIn("sse")
      yield* start
      const port = yield* portOf
      const outcome = yield* Effect.async<{ text: string; ended: boolean }>((resume) => {
        const req = httpRequest({ host: "127.0.0.1", port, method: "POST", path: "/v1/chat/completions", headers: { host: `127.0.0.1:${port}` } }, (res) => {
          let text = ""
          res.on("data", (d: Buffer) => (text += d.toString()))
          res.on("end", () => resume(Effect.succeed({ text, ended: true })))
          res.on("error", () => resume(Effect.succeed({ text, ended: false })))
        })
        req.on("error", () => {})
        req.end(JSON.stringify(chat({ stream: true })))
      })
      assert.isFalse(outcome.ended, "a stream cut at the deadline must not look complete")
      assert.include(outcome.text, "data: {\"n\":1}")
      const last = outcome.text.trim().split("\n\n").at(-1) ?? ""
      assert.deepStrictEqual(JSON.parse(last.replace(/^data: /, "")), fixedBody("generation_timeout"))
      yield* slotsFreed
      assert.deepStrictEqual(upstream.aborted, [true])
    }).pipe(Effect.provide(gateway({ ...options, generationTimeout: "400 millis" }))))

  it.scopedLive("a deadline passing on a reused kept-alive connection ends the request: it is not sent again", () =>
    Effect.gen(function*() {
      const upstream = yield* standIn("json-then-silent")
      yield* start
      const port = yield* portOf
      assert.strictEqual((yield* post(port, "chat", chat())).status, 200) // leaves a kept-alive connection in the pool
      const answer = yield* post(port, "chat", chat())
      assert.strictEqual(answer.status, 504)
      yield* slotsFreed
      yield* Effect.sleep("300 millis") // time for a retry to reach the stand-in, were there one
      assert.strictEqual(upstream.auth.length, 2, "the request given up at the deadline reached the runtime again")
      assert.deepStrictEqual(upstream.aborted, [false, true])
    }).pipe(Effect.provide(gateway({ ...options, generationTimeout: "500 millis" }))))

  it.live("cutOff on a response that has already ended only closes its socket (no write after end)", () =>
    Effect.gen(function*() {
      const unexpected: Array<unknown> = []
      const onUncaught = (error: unknown) => unexpected.push(error)
      process.on("uncaughtException", onUncaught)
      const closed = yield* Effect.async<boolean>((resume) => {
        const server = createServer((_req, res) => {
          res.setHeader("content-type", "text/event-stream") // as relay sets it: cutOff reads it back
          res.writeHead(200)
          res.end("data: {}\n\n")
          Effect.runFork(Relay.cutOff(res, { reason: "generation_timeout", message: "m" }))
          res.socket?.once("close", () => {
            server.close()
            resume(Effect.succeed(true))
          })
        })
        server.listen(0, "127.0.0.1", () => {
          const address = server.address() as { port: number }
          httpRequest({ host: "127.0.0.1", port: address.port }, (r) => r.resume()).on("error", () => {}).end()
        })
      })
      yield* Effect.sleep("50 millis")
      process.off("uncaughtException", onUncaught)
      assert.isTrue(closed)
      assert.deepStrictEqual(unexpected, [])
    }))
})
