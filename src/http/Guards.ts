/**
 * The checks every request passes before any route runs, as one middleware, in this order:
 *
 * 1. Exactly one `Host` (400 otherwise, RFC 9112 §3.2), naming the address the gateway listens on
 *    or `localhost` with its port, ASCII case-insensitively (421 otherwise): a page in the user's
 *    browser cannot reach it through a DNS name rebound to 127.0.0.1.
 * 2. An `Origin` header must be in the allowlist, empty by default (403): browsers announce cross-site
 *    calls, and no site is trusted unless named.
 * 3. When a token is configured, `Authorization: Bearer <token>` on every route but `/health`
 *    (401; the scheme case-insensitively, RFC 9110 §11.1), compared in constant time.
 * 4. Only `GET` and `POST`, and a plain path: letters, digits, `.`, `_`, `-` and `/`, then an
 *    optional query. The router would serve `HEAD` as `GET`, decode `%6d` into `m`, ignore what
 *    follows `;` or `#`, and take an absolute URL for its path; here each of those is no route
 *    (404), so every route has exactly one spelling.
 */
import { type HttpApp, HttpServerRequest } from "@effect/platform"
import { NodeHttpServerRequest } from "@effect/platform-node"
import { Effect, Option, Redacted } from "effect"
import { timingSafeEqual } from "node:crypto"
import { GatewayError } from "../services/Errors.js"

export interface GuardOptions {
  /** The `host:port` values (lower case) that name the gateway; undefined for a server that is not TCP (no check). */
  readonly expectedHosts: ReadonlySet<string> | undefined
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

/** The `Host` values that name a gateway on this address: the address itself and, on loopback, `localhost`. */
export const hostsFor = (hostname: string, port: number): ReadonlySet<string> => {
  const name = hostname.includes(":") ? `[${hostname}]` : hostname
  const loopback = hostname === "127.0.0.1" || hostname === "::1"
  return new Set([`${name}:${port}`.toLowerCase(), ...(loopback ? [`localhost:${port}`] : [])])
}

/**
 * How many `Host` headers came: Node keeps only the first in `headers`, so count the raw ones.
 * A request that did not come through `node:http` has no raw headers: its one parsed value counts.
 */
const hostCount = (request: HttpServerRequest.HttpServerRequest): number => {
  const raw = (NodeHttpServerRequest.toIncomingMessage(request) as { rawHeaders?: unknown }).rawHeaders
  if (!Array.isArray(raw)) return request.headers["host"] === undefined ? 0 : 1
  let count = 0
  for (let i = 0; i < raw.length; i += 2) if (String(raw[i]).toLowerCase() === "host") count++
  return count
}

const BEARER = /^bearer +(.+)$/i

const refuse = (reason: GatewayError["reason"]) => Effect.fail(new GatewayError({ reason }))

/** The guards as a middleware around an app (the router). */
export const guards = (options: GuardOptions) =>
<E, R>(app: HttpApp.Default<E, R>): HttpApp.Default<E | GatewayError, R> =>
  Effect.flatMap(HttpServerRequest.HttpServerRequest, (request): HttpApp.Default<E | GatewayError, R> => {
    if (options.expectedHosts !== undefined) {
      if (hostCount(request) !== 1) return refuse("invalid_host")
      if (!options.expectedHosts.has((request.headers["host"] ?? "").toLowerCase())) return refuse("misdirected_request")
    }
    const origin = request.headers["origin"]
    if (origin !== undefined && !options.allowedOrigins.has(origin)) return refuse("origin_not_allowed")
    if (Option.isSome(options.token) && !OPEN_PATHS.has(pathOf(request.url))) {
      const given = BEARER.exec(request.headers["authorization"] ?? "")?.[1]
      if (given === undefined || !sameToken(given, Redacted.value(options.token.value))) return refuse("unauthorized")
    }
    if (!METHODS.has(request.method) || !PLAIN_PATH.test(pathOf(request.url))) return refuse("not_found")
    return app
  })
