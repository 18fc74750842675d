/**
 * The checks every request passes before any route runs, as one middleware, in this order:
 *
 * 1. `Host` must be exactly the address the gateway listens on (421): a page in the user's browser
 *    cannot reach it through a DNS name rebound to 127.0.0.1.
 * 2. An `Origin` header must be in the allowlist, empty by default (403): browsers announce cross-site
 *    calls, and no site is trusted unless named.
 * 3. When a token is configured, `Authorization: Bearer <token>` on every route but `/health`
 *    (401), compared in constant time.
 * 4. Only `GET` and `POST`, and a plain path: letters, digits, `.`, `_`, `-` and `/`, then an
 *    optional query. The router would serve `HEAD` as `GET`, decode `%6d` into `m`, ignore what
 *    follows `;` or `#`, and take an absolute URL for its path; here each of those is no route
 *    (404), so every route has exactly one spelling.
 */
import { type HttpApp, HttpServerRequest } from "@effect/platform"
import { Effect, Option, Redacted } from "effect"
import { timingSafeEqual } from "node:crypto"
import { GatewayError } from "../services/Errors.js"

export interface GuardOptions {
  /** `host:port` the gateway listens on; undefined for a server that is not TCP (no check). */
  readonly expectedHost: string | undefined
  readonly allowedOrigins: ReadonlySet<string>
  readonly token: Option.Option<Redacted.Redacted<string>>
}

/** Routes any client may call without the token. */
const OPEN_PATHS = new Set(["/health"])

const sameToken = (given: string, expected: string) => {
  const a = Buffer.from(given)
  const b = Buffer.from(expected)
  return a.length === b.length && timingSafeEqual(a, b)
}

const PLAIN_PATH = /^\/[A-Za-z0-9._\/-]*$/
const METHODS = new Set(["GET", "POST"])

const pathOf = (url: string) => {
  const query = url.indexOf("?")
  return query === -1 ? url : url.slice(0, query)
}

const refuse = (reason: GatewayError["reason"]) => Effect.fail(new GatewayError({ reason }))

/** The guards as a middleware around an app (the router). */
export const guards = (options: GuardOptions) =>
<E, R>(app: HttpApp.Default<E, R>): HttpApp.Default<E | GatewayError, R> =>
  Effect.flatMap(HttpServerRequest.HttpServerRequest, (request): HttpApp.Default<E | GatewayError, R> => {
    if (options.expectedHost !== undefined && request.headers["host"] !== options.expectedHost) return refuse("misdirected_request")
    const origin = request.headers["origin"]
    if (origin !== undefined && !options.allowedOrigins.has(origin)) return refuse("origin_not_allowed")
    if (Option.isSome(options.token) && !OPEN_PATHS.has(pathOf(request.url))) {
      const given = /^Bearer (.+)$/.exec(request.headers["authorization"] ?? "")?.[1]
      if (given === undefined || !sameToken(given, Redacted.value(options.token.value))) return refuse("unauthorized")
    }
    if (!METHODS.has(request.method) || !PLAIN_PATH.test(pathOf(request.url))) return refuse("not_found")
    return app
  })
