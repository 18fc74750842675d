/**
 * The gateway's edge at `node:http`, fenced here: reading the client's body from Node's request,
 * the request to the runtime, and the relay of its answer into Node's response. Measured in
 * bench:gateway: the platform's HttpClient and Stream cost about five times the CPU per request
 * for the same relay, and its body stream destroys the socket when left early (a 413 would reach
 * the client as a reset).
 */
import { type HttpServerRequest } from "@effect/platform"
import { NodeHttpServerRequest } from "@effect/platform-node"
import { Effect, Redacted, Scope } from "effect"
import { Agent, type ClientRequest, type IncomingMessage, request as httpRequest, type ServerResponse } from "node:http"
import { GatewayError } from "../services/Errors.js"
import type { RuntimeEndpoint } from "../services/RuntimeManager.js"
import { errorBody } from "./Answers.js"

/** The hop to the runtime: loopback HTTP with a kept-alive connection pool of its own, closed with the scope. */
export const makeAgent = Effect.acquireRelease(
  Effect.sync(() => new Agent({ keepAlive: true })),
  (agent) => Effect.sync(() => agent.destroy())
)

/** Node's response under the platform's request: where a relayed answer is written. */
export const responseOf = (request: HttpServerRequest.HttpServerRequest): ServerResponse =>
  NodeHttpServerRequest.toServerResponse(request)

/**
 * Read at most `limit` bytes; one more is `body_too_large`. Past the limit the rest is read and
 * discarded (never kept), so the 413 goes out and the connection then closes cleanly.
 */
export const readBody = (request: HttpServerRequest.HttpServerRequest, limit: number) =>
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

/**
 * A request's generation deadline as one Node timer, cleared with the scope. `Effect.timeoutFail`
 * races a forked sleep fiber per request: measured in bench:gateway, it costs several times this. `send` and `relay` fail with `generation_timeout` when it fires;
 * their scope then aborts the upstream request.
 */
export interface Deadline {
  /** Call `expire` when the deadline passes (at once if it has); returns the unregistration. */
  readonly onExpire: (expire: () => void) => () => void
}

export const makeDeadline = (millis: number) =>
  Effect.flatMap(Effect.scope, (scope) => {
    let expired = false
    const waiting = new Set<() => void>()
    // Node takes at most 2^31 - 1 ms (about 24.8 days) and fires at once beyond it.
    const timer = setTimeout(() => {
      expired = true
      for (const expire of waiting) expire()
      waiting.clear()
    }, Math.min(millis, 2 ** 31 - 1))
    timer.unref()
    const deadline: Deadline = {
      onExpire: (expire) => {
        if (expired) {
          expire()
          return () => {}
        }
        waiting.add(expire)
        return () => void waiting.delete(expire)
      }
    }
    // Scope.addFinalizer, not acquireRelease: about 8 µs less per request (bench:gateway's notes).
    return Effect.as(Scope.addFinalizer(scope, Effect.sync(() => clearTimeout(timer))), deadline)
  })

const timedOut = () => Effect.fail(new GatewayError({ reason: "generation_timeout" }))

/**
 * One request to the runtime; its answer's head, or `upstream_failed`. Scoped: leaving the scope
 * before the answer has been read to its end aborts the request (the runtime stops generating).
 * The wait for the head is interruptible. A kept-alive connection the runtime closed just as it was
 * reused fails before the runtime saw anything: that one case is tried once more on a new one.
 */
export const send = (
  agent: Agent,
  endpoint: RuntimeEndpoint,
  method: "GET" | "POST",
  path: string,
  body?: Buffer,
  deadline?: Deadline
) =>
  Effect.gen(function*() {
    let outgoing: ClientRequest | undefined
    let answer: IncomingMessage | undefined
    // Set once the request is given up (scope closed, or deadline passed): a destroyed request's
    // error is then no reason to try again, or a request nobody waits for would reach the runtime.
    let closed = false
    // Scope.addFinalizer, not Effect.addFinalizer: the latter diffs the fiber's refs, a cost on the hot path.
    yield* Scope.addFinalizer(
      yield* Effect.scope,
      Effect.sync(() => {
        closed = true
        if (answer?.complete !== true) outgoing?.destroy()
      })
    )
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
          if (closed || answer !== undefined || outgoing !== current) return
          if (mayRetry && current.reusedSocket) return attempt(false)
          resume(Effect.fail(new GatewayError({ reason: "upstream_failed" })))
        })
        current.end(body)
      }
      const unregister = deadline?.onExpire(() => {
        closed = true
        resume(timedOut())
      })
      attempt(true)
      return unregister === undefined ? undefined : Effect.sync(unregister)
    })
  })

/**
 * Headers passed from the runtime's answer; hop-by-hop ones are the server's business. The length
 * passes because the bytes pass unchanged: an answer of known length then goes out in one write
 * instead of a chunked body and its terminator, and one cut short is visibly short.
 */
const PASSED_HEADERS = ["content-type", "cache-control", "content-length"]

/**
 * Copy the runtime's answer to the client as it comes, with backpressure both ways: status, the
 * passed headers, then each chunk. Succeeds once the client's response has ended; fails if the
 * runtime's answer stops short.
 */
export const relay = (answer: IncomingMessage, response: ServerResponse, deadline?: Deadline) =>
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
    // Still armed after the answer's end, while the client reads its last bytes: a client that stops
    // reading must not hold the slot. Passing then, the response has ended and `cutOff` only closes.
    const unregister = deadline?.onExpire(() => resume(timedOut()))
    return unregister === undefined ? undefined : Effect.sync(unregister)
  })

/**
 * A response whose status has already gone out cannot become a 502. When its upstream fails
 * part-way (the runtime exited, or its connection broke), the client must still see a failure,
 * never a clean but short answer: an event stream gets a final `error` event (what OpenAI-style
 * clients raise), and then the connection is closed without the body's terminating chunk, so every
 * HTTP client reports the answer as cut off.
 */
export const cutOff = (response: ServerResponse, error: { readonly reason: string; readonly message: string }) =>
  Effect.async<never>(() => {
    const destroy = () => {
      response.socket?.destroy()
    }
    // A write the socket refuses is no crash: the socket is being destroyed anyway.
    response.on("error", () => {})
    const eventStream = String(response.getHeader("content-type") ?? "").startsWith("text/event-stream")
    if (!eventStream || response.destroyed || response.writableEnded) return destroy()
    // A blank line first ends any event the runtime left half-written.
    response.write(`\n\ndata: ${JSON.stringify(errorBody(error))}\n\n`, destroy)
    // Never resumed: the closed socket interrupts this request's fiber.
  })
