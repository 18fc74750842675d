/**
 * A small fuzz of the gateway: a few hundred random requests (methods, paths, headers, bodies,
 * some of them malformed HTTP) written on raw loopback sockets, a few at a time. Each must get a
 * 2xx, a 4xx or a 503 (never a 5xx of the gateway's own making, never silence), no answer may
 * echo what was sent, and the gateway must still be up and have every slot back at the end. Bodies
 * are bent with the firewall's fields; what reaches the runtime must have passed it.
 *
 * The generator is seeded: a fixed seed by default, so the suite is deterministic; `FUZZ_SEED=<n>`
 * explores another corpus, and a failure names its seed and case.
 */
import { connect } from "node:net"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Redacted } from "effect"
import { RuntimeManager } from "../../src/services/RuntimeManager.js"
import { call, gateway, portOf, slotsFreed, standIn, start } from "./gatewayHarness.js"

const TOKEN = "fuzz-token"
/** Put into paths, headers and bodies: no answer may carry it back. */
const MARKER = "zq-marker-7f3a"
const CASES = 400
/** The gateway's model name and token cap in this test. */
const MODEL_NAME = "tiny"
const MAX_TOKENS = 64
const AT_ONCE = 6

/** mulberry32: small, seeded, good enough to pick cases. */
const prng = (seed: number) => () => {
  seed = (seed + 0x6D2B79F5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

/**
 * One case: a request the gateway would serve, with 0 to 3 random mutations (method, path, Host,
 * Origin, token, headers, body, framing, or a broken request line), so that successes and every
 * kind of refusal are reached, not only the first check.
 */
const makeCase = (random: () => number, port: number): { label: string; bytes: Buffer } => {
  const pick = <A>(items: ReadonlyArray<A>): A => items[Math.floor(random() * items.length)]!
  const text = (n: number) => Array.from({ length: n }, () => String.fromCharCode(32 + Math.floor(random() * 95))).join("")
  const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => Math.floor(random() * 256)))

  let [method, path] = pick([["POST", "/v1/chat/completions"], ["POST", "/v1/completions"], ["GET", "/v1/models"], ["GET", "/health"]] as const) as [string, string]
  const headers = new Map<string, Array<string>>([
    ["Host", [`127.0.0.1:${port}`]],
    ["Authorization", [`Bearer ${TOKEN}`]],
    ["Content-Type", ["application/json"]]
  ])
  // A body the firewall accepts for its route, which the mutations below may bend.
  const fields: Record<string, unknown> = path === "/v1/chat/completions"
    ? { messages: [{ role: "user", content: MARKER }] }
    : { prompt: MARKER }
  if (random() < 0.5) fields["model"] = MODEL_NAME
  if (random() < 0.3) fields["stream"] = true
  let body: Buffer | undefined = method === "POST" ? Buffer.from(JSON.stringify(fields)) : undefined
  let framing = body === undefined ? "none" : "length"
  let broken = false

  const mutations: ReadonlyArray<() => string> = [
    () => (method = pick(["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH", "BREW", "get"])),
    () => (path = pick([
      `/v1/chat/completions?x=${MARKER}`, `/v1/${MARKER}`, "/v1/models/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
      "//v1/models", "/v1/completions/", "/props", "/slots/0?action=save", "/metrics", "*", "/HEALTH",
      `/${"a".repeat(4000)}`, `/${encodeURIComponent(text(20))}`, "/v1/chat/completions#frag", "http://evil.example/v1/models"
    ])),
    () => {
      headers.set("Host", [pick([`localhost:${port}`, "evil.example", `${MARKER}.example:${port}`, "", "127.0.0.1", `127.0.0.1:${port + 1}`])])
      return "host"
    },
    () => {
      headers.set("Host", [`127.0.0.1:${port}`, pick(["evil.example", `127.0.0.1:${port}`])])
      return "two hosts"
    },
    () => {
      headers.set("Origin", [pick(["null", "https://evil.example", `app://${MARKER}`, `http://127.0.0.1:${port}`])])
      return "origin"
    },
    () => {
      const value = pick([undefined, `Bearer ${MARKER}`, "Bearer", `Basic ${MARKER}`, "bearer fuzz-token", `Bearer ${TOKEN} `])
      if (value === undefined) headers.delete("Authorization")
      else headers.set("Authorization", [value])
      return "token"
    },
    () => {
      headers.set("Content-Type", [pick(["text/plain", "multipart/form-data; boundary=x", text(12)])])
      for (let i = 0; i < 1 + Math.floor(random() * 3); i++) headers.set(`X-${MARKER}-${i}`, [text(Math.floor(random() * 40))])
      return "headers"
    },
    () => {
      headers.set("X-Big", ["b".repeat(20_000)])
      return "big header"
    },
    () => {
      body = pick([
        Buffer.from(JSON.stringify(pick([[MARKER], MARKER, 42, null, true]))),
        Buffer.from(`{"prompt": "${MARKER}"`),
        Buffer.from("[".repeat(5000) + "]".repeat(5000)),
        Buffer.from(`{${"\"k\":{".repeat(3000)}1${"}".repeat(3000)}}`),
        bytes(Math.floor(random() * 2000)),
        Buffer.from(JSON.stringify({ prompt: "x".repeat(10_000) })), // over the 8 KiB limit below
        Buffer.from(MARKER),
        Buffer.alloc(0)
      ])
      if (framing === "none") framing = "length"
      return "body"
    },
    () => {
      // The firewall's fields: internal ones, out-of-range values, unknown fields (top level and
      // nested), another model, remote images, caps. Each refused, or accepted and capped.
      const bend = pick<() => void>([
        () => (fields[pick(["id_slot", "lora", "n_discard", "n_keep", "n_cmpl", "response_fields"])] = pick([-5, 0, 1, [], MARKER])),
        () => (fields[pick(["max_tokens", "n_predict", "max_completion_tokens"])] = pick([1_000_000_000, -1, 0, 1.5, MARKER, 64, 65])),
        () => (fields[pick(["n_probs", "top_logprobs", "top_k", "temperature", "top_p", "seed", "n", "min_p"])] = pick([-1, 1e9, 0.5, 3, MARKER, null])),
        () => (fields[`x_${MARKER}`] = MARKER),
        () => (fields["model"] = pick([`${MARKER}.gguf`, 42, "", "/home/user/models/x.gguf"])),
        () => (fields["messages"] = [{ role: "user", content: MARKER, [`x_${MARKER}`]: 1 }]),
        () => (fields["messages"] = [{ role: "user", content: [{ type: "image_url", image_url: { url: `http://evil.example/${MARKER}.png` } }] }]),
        () => (fields["messages"] = Array.from({ length: 300 }, () => ({ role: "user", content: "m" }))),
        () => (fields["tools"] = [{ type: "function", function: { name: "f", parameters: { type: "object", properties: { q: { type: "string", description: MARKER } } } } }]),
        () => (fields["response_format"] = pick([{ type: "json_object" }, { type: "json_schema", json_schema: { name: "x", schema: { type: "object" } } }, { type: MARKER }])),
        () => (fields["logit_bias"] = pick([{ "15": 5 }, { [MARKER]: 1 }, { "15": 500 }])),
        () => (fields["grammar"] = pick(["root ::= \"yes\"", "x".repeat(300_000)]))
      ])
      bend()
      body = Buffer.from(JSON.stringify(fields))
      if (framing === "none") framing = "length"
      return "fields"
    },
    () => {
      body = Buffer.from(JSON.stringify({ prompt: MARKER.repeat(1000) })) // over the limit
      framing = pick(["length", "chunked"])
      return "big body"
    },
    () => (framing = body === undefined ? "none" : pick(["chunked", "short-length", "none"])),
    () => {
      broken = true
      return "broken request line"
    }
  ]
  const applied = Array.from({ length: pick([0, 0, 1, 1, 1, 2, 3]) }, () => pick(mutations)())

  if (framing === "length") headers.set("Content-Length", [String(body!.length)])
  if (framing === "short-length") headers.set("Content-Length", [String(Math.floor(body!.length / 2))])
  if (framing === "chunked") headers.set("Transfer-Encoding", ["chunked"])
  headers.set("Connection", ["close"])
  const head = `${method} ${path} HTTP/1.1\r\n${
    [...headers].flatMap(([k, values]) => values.map((v) => `${k}: ${v}`)).join("\r\n")
  }\r\n\r\n`
  const payload = body === undefined || framing === "none"
    ? Buffer.alloc(0)
    : framing === "chunked"
    ? Buffer.concat([Buffer.from(`${body.length.toString(16)}\r\n`), body, Buffer.from("\r\n0\r\n\r\n")])
    : body
  const raw = broken ? Buffer.concat([bytes(30), Buffer.from("\r\n\r\n")]) : Buffer.concat([Buffer.from(head), payload])
  return { label: `${method} ${path.slice(0, 40)} [${applied.join(", ") || "as is"}]`, bytes: raw }
}

/**
 * Write the request and read the whole answer, until the server closes (`Connection: close`);
 * bounded in time. The client does not half-close: Node's server takes that as an abort.
 */
const exchange = (port: number, raw: Buffer) =>
  Effect.async<string, Error>((resume) => {
    const socket = connect({ host: "127.0.0.1", port })
    const parts: Array<Buffer> = []
    socket.setTimeout(10_000, () => {
      socket.destroy()
      resume(Effect.fail(new Error("no answer within 10 s")))
    })
    socket.on("data", (d: Buffer) => parts.push(d))
    socket.on("error", () => {}) // a reset after the answer is fine: what was read is judged
    socket.on("close", () => resume(Effect.succeed(Buffer.concat(parts).toString("latin1"))))
    socket.write(raw)
  })

describe("Gateway fuzz (in-memory manager, real socket)", () => {
  it.scopedLive(`${CASES} random requests: each answered 2xx/4xx/503, nothing echoed, the gateway stays up`, () =>
    Effect.gen(function*() {
      const upstream = yield* standIn("json")
      yield* start
      const port = yield* portOf
      const seed = Number(process.env["FUZZ_SEED"] ?? 20261123)
      const random = prng(seed)
      const cases = Array.from({ length: CASES }, () => makeCase(random, port))
      const statuses = new Map<number, number>()
      const answers = yield* Effect.forEach(cases, (c) => Effect.map(exchange(port, c.bytes), (answer) => ({ c, answer })), {
        concurrency: AT_ONCE
      })
      for (const { answer, c } of answers) {
        const where = `seed ${seed}, ${c.label}`
        const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1] ?? NaN)
        assert.isFalse(Number.isNaN(status), `${where}: not an HTTP answer: ${JSON.stringify(answer.slice(0, 80))}`)
        statuses.set(status, (statuses.get(status) ?? 0) + 1)
        assert.isTrue((status >= 200 && status < 300) || (status >= 400 && status < 500) || status === 503, `${where}: ${status}`)
        assert.notInclude(answer, MARKER, `${where}: echoed input`)
      }
      // Each kind of answer was reached, not only refusals.
      for (const expected of [200, 400, 401, 403, 404, 413, 421]) assert.isAbove(statuses.get(expected) ?? 0, 0, `seed ${seed}: no ${expected}`)
      // What reached the runtime passed the firewall: schema fields only, the model's name, the cap.
      assert.isAbove(upstream.bodies.length, 10, `seed ${seed}: few requests reached the runtime`)
      for (const sent of upstream.bodies) {
        const json = JSON.parse(sent) as Record<string, unknown>
        assert.strictEqual(json["model"], MODEL_NAME)
        assert.isAtMost(json["max_tokens"] as number, MAX_TOKENS)
        assert.isAtMost(json["n_predict"] as number, MAX_TOKENS)
        for (const key of ["id_slot", "lora", "n_discard", "n_keep", "n_cmpl", "response_fields"]) assert.notProperty(json, key)
        assert.notInclude(sent, `x_${MARKER}`)
        assert.notInclude(sent, "http://evil.example")
      }
      // Still up, still ready, every slot back.
      assert.strictEqual((yield* call(port, {})).status, 200)
      yield* slotsFreed
      const status = yield* (yield* RuntimeManager).status
      assert.strictEqual(status.state, "ready")
      assert.strictEqual(status.queued, 0)
    }).pipe(Effect.provide(gateway({ token: Redacted.make(TOKEN), maxBodyBytes: 8 * 1024, modelName: MODEL_NAME, maxTokens: MAX_TOKENS }))), 60_000)
})
