/**
 * The loopback inference gateway: the one door between a companion app and its local model.
 *
 * Routes, and nothing else (404): `POST /v1/chat/completions`, `POST /v1/completions`,
 * `GET /v1/models`, and `GET /health` (the lifecycle state; 200 only when ready).
 *
 * Checks, in order, before any work: the `Host` header must name the address the gateway listens
 * on (421: DNS rebinding); an `Origin` header must be in the allowlist, empty by default (403:
 * browsers); the optional client token guards every route but `/health` (401); the body is read up
 * to its limit (413) and must be a JSON object (400). Then the request goes through
 * `RuntimeManager.run` to the runtime with the per-spawn key, and the runtime's answer streams back
 * chunk by chunk; the slot is held until the last chunk or the client's disconnect, which also
 * aborts the upstream request.
 *
 * Every refusal is `{ "error": { "type": <reason>, "message": <fixed text> } }`: no input echoed.
 */
import { HttpServer, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { NodeHttpServerRequest } from "@effect/platform-node"
import { Config, Effect, Layer, Option, Redacted, Scope } from "effect"
import { timingSafeEqual } from "node:crypto"
import { Agent, type ClientRequest, type IncomingMessage, request as httpRequest, type ServerResponse } from "node:http"
import { GatewayError } from "../services/Errors.js"
import { type RunFailure, RuntimeManager, type RuntimeEndpoint } from "../services/RuntimeManager.js"

export interface GatewayOptions {
  /** Origins a browser may call from (exact `scheme://host:port`). Default: none. */
  readonly allowedOrigins?: ReadonlyArray<string> | undefined
  /** When set, every route but `/health` needs `Authorization: Bearer <token>`. */
  readonly token?: Redacted.Redacted<string> | undefined
  /** Default 8 MiB. */
  readonly maxBodyBytes?: number | undefined
  /** Seconds a 503 asks the client to wait. Default 1. */
  readonly retryAfterSeconds?: number | undefined
}

type Failure = RunFailure | GatewayError

/** The status of each refusal the gateway makes itself. */
const GATEWAY_STATUS: Record<GatewayError["reason"], number> = {
  not_found: 404,
  misdirected_request: 421,
  origin_not_allowed: 403,
  unauthorized: 401,
  body_too_large: 413,
  invalid_body: 400,
  upstream_failed: 502
}

/**
 * The HTTP answer to each typed failure: status, and whether it carries `Retry-After`. Anything
 * from the manager but a runtime exit (not ready, draining, queue full or timed out, resources
 * over limit, circuit open) is "try again shortly".
 */
export const statusOf = (error: Failure): { readonly status: number; readonly retry: boolean } =>
  error._tag === "GatewayError"
    ? { status: GATEWAY_STATUS[error.reason], retry: false }
    : error._tag === "RuntimeExitedError"
    ? { status: 502, retry: false }
    : { status: 503, retry: true }

const errorResponse = (error: Failure, retryAfterSeconds: number) => {
  const { retry, status } = statusOf(error)
  return HttpServerResponse.unsafeJson(
    { error: { type: error.reason, message: error.message } },
    {
      status,
      headers: retry
        ? { "retry-after": String(retryAfterSeconds) }
        // The rest of an oversized body is not worth reading to keep the connection.
        : error.reason === "body_too_large"
        ? { connection: "close" }
        : {}
    }
  )
}

/**
 * Headers passed from the runtime's answer; hop-by-hop ones are the server's business. The length
 * passes because the bytes pass unchanged: an answer of known length then goes out in one write
 * instead of a chunked body and its terminator, and one cut short is visibly short.
 */
const PASSED_HEADERS = ["content-type", "cache-control", "content-length"]

const sameToken = (given: string, expected: string) => {
  const a = Buffer.from(given)
  const b = Buffer.from(expected)
  return a.length === b.length && timingSafeEqual(a, b)
}

/**
 * Read at most `limit` bytes; one more is `body_too_large`. Read from Node's request directly:
 * the platform's body stream destroys the socket when it is left early, and the client would see
 * a reset instead of the 413. Past the limit the rest is read and discarded (never kept), so the
 * 413 goes out and the connection then closes cleanly.
 */
const readBody = (request: HttpServerRequest.HttpServerRequest, limit: number) =>
  Effect.suspend(() => {
    const declared = Number(request.headers["content-length"])
    if (Number.isFinite(declared) && declared > limit) return Effect.fail(new GatewayError({ reason: "body_too_large" }))
    const incoming = NodeHttpServerRequest.toIncomingMessage(request)
    return Effect.async<Buffer, GatewayError>((resume) => {
      const parts: Array<Buffer> = []
      let total = 0
      const detach = () => {
        incoming.off("data", onData)
        incoming.off("end", onEnd)
        incoming.off("error", onError)
      }
      const onData = (chunk: Buffer) => {
        total += chunk.length
        if (total <= limit) return void parts.push(chunk)
        detach()
        incoming.resume() // flowing with no listener: discarded
        resume(Effect.fail(new GatewayError({ reason: "body_too_large" })))
      }
      const onEnd = () => {
        detach()
        resume(Effect.succeed(Buffer.concat(parts)))
      }
      const onError = () => {
        detach()
        resume(Effect.fail(new GatewayError({ reason: "invalid_body" })))
      }
      incoming.on("data", onData)
      incoming.once("end", onEnd)
      incoming.once("error", onError)
      return Effect.sync(detach)
    })
  })

const parseObject = (body: Uint8Array) =>
  Effect.try({
    try: () => JSON.parse(Buffer.from(body).toString("utf8")) as unknown,
    catch: () => new GatewayError({ reason: "invalid_body" })
  }).pipe(
    Effect.filterOrFail(
      (value): value is Record<string, unknown> => typeof value === "object" && value !== null && !Array.isArray(value),
      () => new GatewayError({ reason: "invalid_body" })
    )
  )

/**
 * One request to the runtime; its answer's head, or `upstream_failed`. Scoped: leaving the scope
 * before the answer has been read to its end aborts the request (the runtime stops generating).
 * The wait for the head is interruptible. A kept-alive connection the runtime closed just as it was
 * reused fails before the runtime saw anything: that one case is tried once more on a new one.
 */
const send = (agent: Agent, endpoint: RuntimeEndpoint, method: "GET" | "POST", path: string, body?: Buffer) =>
  Effect.gen(function*() {
    let outgoing: ClientRequest | undefined
    let answer: IncomingMessage | undefined
    // Scope.addFinalizer, not Effect.addFinalizer: the latter diffs the fiber's refs, a cost on the hot path.
    yield* Scope.addFinalizer(yield* Effect.scope, Effect.sync(() => answer?.complete === true || outgoing?.destroy()))
    return yield* Effect.async<IncomingMessage, GatewayError>((resume) => {
      const headers: Record<string, string | number> = { authorization: `Bearer ${Redacted.value(endpoint.apiKey)}` }
      if (body !== undefined) {
        headers["content-type"] = "application/json"
        headers["content-length"] = body.length
      }
      const attempt = (mayRetry: boolean) => {
        const current = httpRequest(`${endpoint.baseUrl}${path}`, { method, agent, headers })
        outgoing = current
        current.once("response", (head) => {
          answer = head
          resume(Effect.succeed(head))
        })
        current.on("error", () => {
          if (answer !== undefined || outgoing !== current) return
          if (mayRetry && current.reusedSocket) return attempt(false)
          resume(Effect.fail(new GatewayError({ reason: "upstream_failed" })))
        })
        current.end(body)
      }
      attempt(true)
    })
  })

/**
 * Copy the runtime's answer to the client as it comes, with backpressure both ways: status, the
 * passed headers, then each chunk. Succeeds once the client's response has ended; fails if the
 * runtime's answer stops short.
 */
const relay = (answer: IncomingMessage, response: ServerResponse) =>
  Effect.async<void, GatewayError>((resume) => {
    for (const name of PASSED_HEADERS) {
      const value = answer.headers[name]
      // Set one by one, not in writeHead: `cutOff` reads the content type back.
      if (typeof value === "string") response.setHeader(name, value)
    }
    response.writeHead(answer.statusCode ?? 502)
    answer.on("data", (chunk: Buffer) => {
      if (response.destroyed) return answer.destroy()
      if (!response.write(chunk)) {
        answer.pause()
        response.once("drain", () => answer.resume())
      }
    })
    answer.on("error", () => {}) // judged on close
    answer.once("end", () => response.end(() => resume(Effect.void)))
    answer.once("close", () => answer.complete || resume(Effect.fail(new GatewayError({ reason: "upstream_failed" }))))
  })

/**
 * A response whose status has already gone out cannot become a 502. When its upstream fails
 * part-way (the runtime exited, or its connection broke), the client must still see a failure,
 * never a clean but short answer: an event stream gets a final `error` event (what OpenAI-style
 * clients raise), and then the connection is closed without the body's terminating chunk, so every
 * HTTP client reports the answer as cut off.
 */
const cutOff = (response: ServerResponse, error: Failure) =>
  Effect.async<never>(() => {
    const destroy = () => {
      response.socket?.destroy()
    }
    const eventStream = String(response.getHeader("content-type") ?? "").startsWith("text/event-stream")
    if (!eventStream || response.destroyed) return destroy()
    const event = JSON.stringify({ error: { type: error.reason, message: error.message } })
    // A blank line first ends any event the runtime left half-written.
    response.write(`\n\ndata: ${event}\n\n`, destroy)
    // Never resumed: the closed socket interrupts this request's fiber.
  })

/**
 * Forward one request through the manager and relay the answer, all inside `RuntimeManager.run`,
 * so the slot is held exactly as long as the relay. Interrupting it (the client left, or the
 * runtime exited and the manager stopped its requests) closes its scope, which aborts the upstream
 * request. A failure before the answer's head is the response (502, 503); after it, the answer is
 * cut off.
 */
const forward = (
  request: HttpServerRequest.HttpServerRequest,
  manager: RuntimeManager["Type"],
  agent: Agent,
  method: "GET" | "POST",
  path: string,
  body?: Buffer
) => {
  const response = NodeHttpServerRequest.toServerResponse(request)
  return manager.run((endpoint) =>
    Effect.flatMap(send(agent, endpoint, method, path, body), (answer) => relay(answer, response)).pipe(Effect.scoped)
  ).pipe(
    Effect.catchAll((error) => (response.headersSent ? cutOff(response, error) : Effect.fail(error))),
    // Already sent: the server sees the response ended and writes nothing more.
    Effect.as(HttpServerResponse.empty())
  )
}

export const makeApp = (options: GatewayOptions = {}) =>
  Effect.gen(function*() {
    const manager = yield* RuntimeManager
    // The hop to the runtime: loopback HTTP with a kept-alive connection pool of its own.
    const agent = yield* Effect.acquireRelease(
      Effect.sync(() => new Agent({ keepAlive: true })),
      (agent) => Effect.sync(() => agent.destroy())
    )
    const server = yield* HttpServer.HttpServer
    const allowedOrigins = new Set(options.allowedOrigins ?? [])
    const limit = options.maxBodyBytes ?? 8 * 1024 * 1024
    const retryAfter = options.retryAfterSeconds ?? 1
    const address = server.address
    const expectedHost = address._tag === "TcpAddress" ? `${address.hostname}:${address.port}` : undefined

    const refuse = (reason: GatewayError["reason"]) => Effect.fail(new GatewayError({ reason }))

    const inference = (request: HttpServerRequest.HttpServerRequest, path: string) =>
      Effect.gen(function*() {
        const body = yield* readBody(request, limit)
        yield* parseObject(body)
        // The client's bytes go on as they came, once known to be a JSON object.
        return yield* forward(request, manager, agent, "POST", path, body)
      })

    const health = Effect.map(manager.status, (status) =>
      HttpServerResponse.unsafeJson(
        { state: status.state, inFlight: status.inFlight, queued: status.queued },
        { status: status.state === "ready" ? 200 : 503 }
      ))

    const route = Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      if (expectedHost !== undefined && request.headers["host"] !== expectedHost) return yield* refuse("misdirected_request")
      const origin = request.headers["origin"]
      if (origin !== undefined && !allowedOrigins.has(origin)) return yield* refuse("origin_not_allowed")
      const path = request.url.split("?")[0] ?? ""
      const key = `${request.method} ${path}`
      if (key === "GET /health") return yield* health
      const known = key === "POST /v1/chat/completions" || key === "POST /v1/completions" || key === "GET /v1/models"
      if (!known) return yield* refuse("not_found")
      if (options.token !== undefined) {
        const given = /^Bearer (.+)$/.exec(request.headers["authorization"] ?? "")?.[1]
        if (given === undefined || !sameToken(given, Redacted.value(options.token))) return yield* refuse("unauthorized")
      }
      if (key === "GET /v1/models") {
        return yield* forward(request, manager, agent, "GET", "/v1/models")
      }
      return yield* inference(request, path)
    })

    // The server runs handlers uninterruptibly; a client that leaves while its request waits for a
    // slot, or for the runtime's first byte, must interrupt it.
    return route.pipe(
      Effect.catchAll((error) => Effect.succeed(errorResponse(error, retryAfter))),
      Effect.interruptible
    )
  })

/** Serve the gateway on the HttpServer in context (with its own routes beside it, if any). */
export const layer = (options: GatewayOptions = {}) =>
  Layer.scopedDiscard(Effect.flatMap(makeApp(options), (app) => HttpServer.serveEffect(app)))

/** `gateway.*` keys: `port` (0 picks one), `allowedOrigins`, `token`, `maxBodyBytes`. */
export const GatewayConfig = Config.all({
  // 0 asks the OS for a free port (Config.port refuses 0).
  port: Config.integer("port").pipe(
    Config.withDefault(0),
    Config.validate({ message: "a port number, 0 to 65535", validation: (n) => n >= 0 && n <= 65535 })
  ),
  allowedOrigins: Config.array(Config.string(), "allowedOrigins").pipe(Config.withDefault([])),
  token: Config.option(Config.redacted("token")),
  maxBodyBytes: Config.integer("maxBodyBytes").pipe(Config.withDefault(8 * 1024 * 1024))
}).pipe(Config.nested("gateway"))

export const optionsFrom = (config: Config.Config.Success<typeof GatewayConfig>): GatewayOptions => ({
  allowedOrigins: config.allowedOrigins,
  token: Option.getOrUndefined(config.token),
  maxBodyBytes: config.maxBodyBytes
})

