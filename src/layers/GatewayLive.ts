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
import {
  HttpClient,
  HttpClientRequest,
  type HttpClientResponse,
  HttpServer,
  HttpServerRequest,
  HttpServerResponse
} from "@effect/platform"
import { NodeHttpServerRequest } from "@effect/platform-node"
import { Config, Deferred, Effect, Exit, Fiber, Layer, Option, Redacted, Stream } from "effect"
import { timingSafeEqual } from "node:crypto"
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

/** Headers passed from the runtime's answer; hop-by-hop and length headers are the server's business. */
const PASSED_HEADERS = ["content-type", "cache-control"]

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
 * A response whose status has already gone out cannot become a 502. When its upstream fails
 * part-way (the runtime exited, or its connection broke), the client must still see a failure,
 * never a clean but short answer: an event stream gets a final `error` event (what OpenAI-style
 * clients raise), and then the connection is closed without the body's terminating chunk, so every
 * HTTP client reports the answer as cut off.
 */
const cutOff = (request: HttpServerRequest.HttpServerRequest, eventStream: boolean, error: Failure) =>
  Stream.execute(
    Effect.async<void>((resume) => {
      const response = NodeHttpServerRequest.toServerResponse(request)
      const destroy = () => {
        response.socket?.destroy()
        resume(Effect.void)
      }
      if (!eventStream) return destroy()
      const event = JSON.stringify({ error: { type: error.reason, message: error.message } })
      // A blank line first ends any event the runtime left half-written.
      response.write(`\n\ndata: ${event}\n\n`, destroy)
    }).pipe(
      // The closed socket interrupts this request's fiber; the server must not end the body cleanly first.
      Effect.zipRight(Effect.never)
    )
  )

/**
 * Forward one request through the manager and stream the answer back. The manager's slot is held
 * by a fiber that waits until the response stream ends, fails or is interrupted (the client went
 * away); interrupting the handler interrupts that fiber, whose scope aborts the upstream request.
 * If the run fails before the answer's head (the runtime exited, or never answered) that failure
 * is the response; if it fails after, the stream is cut off (see `cutOff`).
 */
const forward = (
  request: HttpServerRequest.HttpServerRequest,
  manager: RuntimeManager["Type"],
  client: HttpClient.HttpClient,
  build: (endpoint: RuntimeEndpoint) => HttpClientRequest.HttpClientRequest
) =>
  Effect.gen(function*() {
    const answer = yield* Deferred.make<HttpClientResponse.HttpClientResponse>()
    const finished = yield* Deferred.make<void>()
    const holder = yield* Effect.forkDaemon(
      manager.run((endpoint) =>
        Effect.gen(function*() {
          const response = yield* client.execute(build(endpoint)).pipe(
            Effect.mapError(() => new GatewayError({ reason: "upstream_failed" }))
          )
          yield* Deferred.succeed(answer, response)
          yield* Deferred.await(finished)
        }).pipe(Effect.scoped)
      )
    )
    const release = Effect.zipRight(Deferred.succeed(finished, undefined), Fiber.await(holder))
    // However the request ends (the response written, or never started because the client left),
    // its scope closes: the slot must come back then at the latest.
    yield* Effect.addFinalizer(() => Effect.zipRight(Deferred.succeed(finished, undefined), Fiber.interrupt(holder)))
    // The run only succeeds once `finished` is set, so joining it here can only fail.
    const failed = Effect.zipRight(Fiber.join(holder), Effect.never)
    const response = yield* Effect.raceFirst(Deferred.await(answer), failed).pipe(
      Effect.onExit((exit) => (Exit.isSuccess(exit) ? Effect.void : Fiber.interrupt(holder)))
    )
    const headers: Record<string, string> = {}
    for (const name of PASSED_HEADERS) {
      const value = response.headers[name]
      if (value !== undefined) headers[name] = value
    }
    const eventStream = (headers["content-type"] ?? "").startsWith("text/event-stream")
    const body = response.stream.pipe(
      Stream.mapError((): Failure => new GatewayError({ reason: "upstream_failed" })),
      // A runtime that exits mid-answer fails the run: end the stream with its reason.
      Stream.interruptWhen(failed),
      Stream.catchAll((error) => cutOff(request, eventStream, error)),
      Stream.ensuring(release)
    )
    return HttpServerResponse.stream(body, { status: response.status, headers })
  })

export const makeApp = (options: GatewayOptions = {}) =>
  Effect.gen(function*() {
    const manager = yield* RuntimeManager
    const client = yield* HttpClient.HttpClient
    const server = yield* HttpServer.HttpServer
    const allowedOrigins = new Set(options.allowedOrigins ?? [])
    const limit = options.maxBodyBytes ?? 8 * 1024 * 1024
    const retryAfter = options.retryAfterSeconds ?? 1
    const address = server.address
    const expectedHost = address._tag === "TcpAddress" ? `${address.hostname}:${address.port}` : undefined

    const refuse = (reason: GatewayError["reason"]) => Effect.fail(new GatewayError({ reason }))

    const inference = (request: HttpServerRequest.HttpServerRequest, path: string) =>
      Effect.gen(function*() {
        const body = yield* parseObject(yield* readBody(request, limit))
        return yield* forward(request, manager, client, (endpoint) =>
          HttpClientRequest.post(`${endpoint.baseUrl}${path}`).pipe(
            HttpClientRequest.bearerToken(Redacted.value(endpoint.apiKey)),
            HttpClientRequest.bodyUnsafeJson(body)
          ))
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
        return yield* forward(request, manager, client, (endpoint) =>
          HttpClientRequest.get(`${endpoint.baseUrl}/v1/models`).pipe(
            HttpClientRequest.bearerToken(Redacted.value(endpoint.apiKey))
          ))
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

