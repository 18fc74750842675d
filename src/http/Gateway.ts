/**
 * The loopback inference gateway: the one door between a companion app and its local model.
 *
 * Routes (`HttpRouter`), and nothing else (404): `POST /v1/chat/completions`, `POST /v1/completions`,
 * `POST /v1/embeddings`, `GET /v1/models` (each model's name and state, answered here), and
 * `GET /health` (each model's state and load; 200 only when every preloaded model is ready). Before any route, the guards (`Guards.ts`): Host (400, 421), Origin (403), token
 * (401). An inference body is read up to its limit (413), must be a JSON object (400) and pass the
 * firewall (`Firewall.ts`: 400, 404), which also picks the model; what the firewall decoded is what
 * the runtime gets. Then the request goes through `ModelPool.run` (that model's manager: loaded on
 * demand, then its gate) to its runtime with the per-spawn key, and the runtime's answer streams back
 * chunk by chunk (`Relay.ts`); the slot is held until the last chunk or the client's disconnect,
 * which also aborts the upstream request. Every other answer comes from `Answers.ts`.
 */
import { HttpMiddleware, HttpRouter, HttpServer, HttpServerRequest, type HttpServerResponse } from "@effect/platform"
import { Duration, Effect, Either, Layer, Option, type Redacted } from "effect"
import type { Agent } from "node:http"
import { type CompanionConfig, readConfig } from "../config/Config.js"
import { GatewayError } from "../services/Errors.js"
import { ModelPool } from "../services/ModelPool.js"
import * as Answers from "./Answers.js"
import * as Firewall from "./Firewall.js"
import { guards, hostsFor } from "./Guards.js"
import * as Relay from "./Relay.js"

export interface GatewayOptions {
  /** The request firewall's limits and mode (see `Firewall.ts`); each has the config's default. */
  readonly unknownFields?: "refuse" | "strip" | undefined
  readonly maxTokens?: number | undefined
  readonly maxMessages?: number | undefined
  readonly maxCharacters?: number | undefined
  readonly maxTools?: number | undefined
  /** Strings in one embeddings request. */
  readonly maxInputs?: number | undefined
  /** From the slot to the answer's last byte. Default 5 minutes. */
  readonly generationTimeout?: Duration.DurationInput | undefined
  /** Origins a browser may call from (exact `scheme://host:port`). Default: none. */
  readonly allowedOrigins?: ReadonlyArray<string> | undefined
  /** When set, every route but `/health` needs `Authorization: Bearer <token>`. */
  readonly token?: Redacted.Redacted<string> | undefined
  /** Default 8 MiB. */
  readonly maxBodyBytes?: number | undefined
  /** Seconds a 503 asks the client to wait. Default 1. */
  readonly retryAfterSeconds?: number | undefined
  /** A server span per request (the platform's HTTP tracer). Default false. */
  readonly tracing?: boolean | undefined
}

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
 * Forward one request through the manager and relay the answer, all inside `RuntimeManager.run`,
 * so the slot is held exactly as long as the relay, and at most `deadline`. Interrupting it (the
 * client left, the deadline passed, or the runtime exited and the manager stopped its requests)
 * closes its scope, which aborts the upstream request. A failure before the answer's head is the
 * answer (502, 503, 504); after it, the answer is cut off.
 */
const forward = (
  pool: ModelPool["Type"],
  model: string,
  agent: Agent,
  deadlineMillis: number,
  method: "GET" | "POST",
  path: string,
  body?: Buffer
) =>
  Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
    const response = Relay.responseOf(request)
    return pool.run(model, (endpoint) =>
      Effect.flatMap(Relay.makeDeadline(deadlineMillis), (deadline) =>
        Effect.flatMap(Relay.send(agent, endpoint, method, path, body, deadline), (answer) => Relay.relay(answer, response, deadline))).pipe(
          Effect.scoped
        )
    ).pipe(
      Effect.catchAll((error) => (response.headersSent ? Relay.cutOff(response, error) : Effect.fail(error))),
      Effect.as(Answers.relayed)
    )
  })

export const makeApp = (options: GatewayOptions = {}) =>
  Effect.gen(function*() {
    const pool = yield* ModelPool
    const agent = yield* Relay.makeAgent
    const server = yield* HttpServer.HttpServer
    const limit = options.maxBodyBytes ?? 8 * 1024 * 1024
    const retryAfter = options.retryAfterSeconds ?? 1
    const deadline = Duration.toMillis(Duration.decode(options.generationTimeout ?? Duration.minutes(5)))
    const firewall: Firewall.FirewallOptions = {
      models: pool.models,
      unknownFields: options.unknownFields ?? "refuse",
      maxTokens: options.maxTokens ?? 2048,
      maxMessages: options.maxMessages ?? 256,
      maxCharacters: options.maxCharacters ?? 256 * 1024,
      maxTools: options.maxTools ?? 64,
      maxInputs: options.maxInputs ?? Firewall.DEFAULT_MAX_INPUTS
    }
    const address = server.address

    /** An inference route: the body is read, parsed, checked by the firewall, and what it decoded goes on. */
    const inference = (path: string, route: Firewall.Route) =>
      Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) =>
        Effect.flatMap(Relay.readBody(request, limit), (body) =>
          Effect.flatMap(parseObject(body), (parsed) =>
            Either.match(Firewall.check(route, parsed, firewall), {
              onLeft: Effect.fail,
              onRight: (checked) => forward(pool, checked.model, agent, deadline, "POST", path, Buffer.from(checked.body))
            }))))

    const routes = yield* HttpRouter.empty.pipe(
      HttpRouter.get("/health", Effect.map(pool.status, Answers.health)),
      // Answered here: the runtime's own list carries the model's path in the store and its sizes.
      HttpRouter.get("/v1/models", Effect.map(pool.status, Answers.models)),
      HttpRouter.post("/v1/chat/completions", inference("/v1/chat/completions", "chat")),
      HttpRouter.post("/v1/completions", inference("/v1/completions", "completion")),
      HttpRouter.post("/v1/embeddings", inference("/v1/embeddings", "embedding")),
      HttpRouter.toHttpApp,
      // The door matches exactly: no other case, no trailing or doubled slash reaches a route.
      HttpRouter.withRouterConfig({ caseSensitive: true, ignoreTrailingSlash: false, ignoreDuplicateSlashes: false })
    )

    const app: Effect.Effect<HttpServerResponse.HttpServerResponse, never, HttpServerRequest.HttpServerRequest> = routes.pipe(
      guards({
        expectedHosts: address._tag === "TcpAddress" ? hostsFor(address.hostname, address.port) : undefined,
        allowedOrigins: new Set(options.allowedOrigins ?? []),
        token: Option.fromNullable(options.token)
      }),
      Effect.catchTags({
        RouteNotFound: () => Effect.succeed(Answers.refusal(new GatewayError({ reason: "not_found" }), retryAfter))
      }),
      Effect.catchAll((error) => Effect.succeed(Answers.refusal(error, retryAfter))),
      // The server runs handlers uninterruptibly; a client that leaves while its request waits for a
      // slot, or for the runtime's first byte, must interrupt it.
      Effect.interruptible
    )
    return app
  })

/**
 * Serve the gateway on the HttpServer in context (with its own routes beside it, if any). Without
 * `tracing`, the platform's per-request server span is off: it is most of the cost of a request
 * here (docs/benchmarks.md), and it would record each request's URL and take its parent from
 * whatever trace headers the client sent.
 */
export const layer = (options: GatewayOptions = {}) => {
  const serve = Layer.scopedDiscard(Effect.flatMap(makeApp(options), (app) => HttpServer.serveEffect(app)))
  return options.tracing === true ? serve : HttpMiddleware.withTracerDisabledWhen(serve, () => true)
}

/** The gateway's options from `CompanionConfig` (`gateway.*`; the port is the server's). */
export const optionsFrom = (config: CompanionConfig): GatewayOptions => ({
  allowedOrigins: config.gateway.allowedOrigins,
  token: Option.getOrUndefined(config.gateway.token),
  maxBodyBytes: config.gateway.maxBodyBytes,
  retryAfterSeconds: config.gateway.retryAfterSeconds,
  unknownFields: config.gateway.unknownFields,
  maxTokens: config.gateway.maxTokens,
  maxMessages: config.gateway.maxMessages,
  maxCharacters: config.gateway.maxCharacters,
  maxTools: config.gateway.maxTools,
  maxInputs: config.gateway.maxInputs,
  generationTimeout: config.gateway.generationTimeout
})

/** The gateway from `CompanionConfig`. */
export const layerConfig = Layer.unwrapEffect(Effect.map(readConfig, (config) => layer(optionsFrom(config))))
