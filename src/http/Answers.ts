/**
 * Every answer the gateway makes itself, from one table: a refusal's status, its headers and its
 * body `{ "error": { "type": <reason>, "message": <fixed text> } }` (no input is ever echoed), and
 * the health answer. A relayed answer is the runtime's own bytes (see `Relay.ts`); when one fails
 * part-way its last event carries the same error body.
 */
import { HttpServerResponse } from "@effect/platform"
import type { GatewayError, PoolError } from "../services/Errors.js"
import type { PoolStatus } from "../services/ModelPool.js"
import type { RunFailure } from "../services/RuntimeManager.js"

export type Failure = RunFailure | GatewayError | PoolError

/** The status of each refusal the gateway makes itself. */
const GATEWAY_STATUS: Record<GatewayError["reason"], number> = {
  not_found: 404,
  misdirected_request: 421,
  origin_not_allowed: 403,
  unauthorized: 401,
  body_too_large: 413,
  invalid_body: 400,
  field_not_allowed: 400,
  request_too_large: 400,
  model_not_found: 404,
  wrong_model_kind: 400,
  invalid_host: 400,
  upstream_failed: 502,
  generation_timeout: 504
}

/**
 * The HTTP answer to each typed failure: status, and whether it carries `Retry-After`. Anything
 * from the manager but a runtime exit (not ready, draining, queue full or timed out, resources
 * over limit, circuit open) is "try again shortly".
 */
export const statusOf = (error: Failure): { readonly status: number; readonly retry: boolean } =>
  error._tag === "GatewayError"
    ? { status: GATEWAY_STATUS[error.reason], retry: false }
    : error._tag === "PoolError"
    ? { status: 404, retry: false }
    : error._tag === "RuntimeExitedError"
    ? { status: 502, retry: false }
    : { status: 503, retry: true }

/** OpenAI's error shape (`message`, `type`, `param`, `code`); `type` and `code` are the fixed reason. */
export const errorBody = (error: { readonly reason: string; readonly message: string }) => ({
  error: { message: error.message, type: error.reason, param: null, code: error.reason }
})

export const refusal = (error: Failure, retryAfterSeconds: number) => {
  const { retry, status } = statusOf(error)
  return HttpServerResponse.unsafeJson(errorBody(error), {
    status,
    headers: retry
      ? { "retry-after": String(retryAfterSeconds) }
      // The rest of an oversized body is not worth reading to keep the connection.
      : error._tag === "GatewayError" && error.reason === "body_too_large"
      ? { connection: "close" }
      : {}
  })
}

/**
 * `/health`: each model's lifecycle state and load, and for the whole: `ready` once every preloaded
 * model is (else the first such model's state), the sums of the loads. 200 only when ready.
 */
export const health = (status: PoolStatus) => {
  const waiting = status.models.find((m) => m.preload && m.status.state !== "ready")
  return HttpServerResponse.unsafeJson(
    {
      state: status.ready ? "ready" : waiting?.status.state ?? "stopped",
      inFlight: status.models.reduce((n, m) => n + m.status.inFlight, 0),
      queued: status.models.reduce((n, m) => n + m.status.queued, 0),
      models: Object.fromEntries(status.models.map((m) => [m.name, { state: m.status.state, inFlight: m.status.inFlight, queued: m.status.queued }]))
    },
    { status: status.ready ? 200 : 503 }
  )
}

/** `/v1/models`: every model, by its name, with its state; nothing about where or what it is on disk. */
export const models = (status: PoolStatus) =>
  HttpServerResponse.unsafeJson({
    object: "list",
    data: status.models.map((m) => ({ id: m.name, object: "model", created: 0, owned_by: "companion-runtime", state: m.status.state }))
  })

/** What a handler returns once the relay has written the answer: the server then writes nothing more. */
export const relayed = HttpServerResponse.empty()
