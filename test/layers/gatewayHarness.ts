/**
 * The gateway on a real loopback socket over the in-memory manager, and runtime stand-ins on
 * loopback ports: shared by the gateway's rule tests and its fuzz test.
 */
import { createServer, request as httpRequest } from "node:http"
import { NodeHttpClient, NodeHttpServer } from "@effect/platform-node"
import { HttpServer } from "@effect/platform"
import { Effect, Layer, Schedule } from "effect"
import * as Gateway from "../../src/http/Gateway.js"
import * as ModelPoolLive from "../../src/layers/ModelPoolLive.js"
import { DownloaderControl } from "../../src/layers/DownloaderTest.js"
import { SpawnerControl } from "../../src/layers/SpawnerTest.js"
import { type ManagerStatus, RuntimeManager } from "../../src/services/RuntimeManager.js"
import { managerLayer, MODEL, SOURCE } from "./harness.js"

export interface Answer {
  readonly status: number
  readonly headers: Record<string, string | Array<string> | undefined>
  readonly text: string
}

/** A raw HTTP call, so any Host, Origin or body can be sent. */
export const call = (
  port: number,
  options: { method?: string; path?: string; headers?: Record<string, string>; body?: string | Buffer; chunked?: boolean }
) =>
  Effect.async<Answer, Error>((resume) => {
    const req = httpRequest(
      {
        host: "127.0.0.1",
        port,
        method: options.method ?? "GET",
        path: options.path ?? "/health",
        headers: { host: `127.0.0.1:${port}`, ...options.headers }
      },
      (res) => {
        const parts: Array<Buffer> = []
        res.on("data", (d: Buffer) => parts.push(d))
        res.on("end", () => resume(Effect.succeed({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(parts).toString() })))
      }
    )
    req.on("error", (e) => resume(Effect.fail(e)))
    if (options.body !== undefined) {
      if (options.chunked === true) {
        // No Content-Length: the limit must hold while reading.
        const body = Buffer.from(options.body)
        for (let i = 0; i < body.length; i += 65_536) req.write(body.subarray(i, i + 65_536))
      } else {
        req.setHeader("content-length", Buffer.byteLength(options.body))
        req.write(options.body)
      }
    }
    req.end()
  })

export interface StandIn {
  readonly port: number
  /** One entry per upstream request: whether it was closed before the stand-in finished it. */
  readonly aborted: Array<boolean>
  readonly auth: Array<string | undefined>
  /** Each request's body as the runtime received it. */
  readonly bodies: Array<string>
}

/**
 * A runtime stand-in on a loopback port. `sse` sends one server-sent event every 50 ms and never
 * finishes; `silent` takes the request and never answers; `json` answers `{"ok":true}` at once;
 * `one-per-connection` answers like `json` but drops a kept-alive connection when it is reused,
 * without answering (as a server whose keep-alive timeout just ran out); `json-then-silent`
 * answers its first request like `json` and never answers another.
 */
export const standIn = (mode: "sse" | "silent" | "json" | "one-per-connection" | "json-then-silent") =>
  Effect.acquireRelease(
    Effect.async<StandIn & { close: () => void }>((resume) => {
      const aborted: Array<boolean> = []
      const auth: Array<string | undefined> = []
      const bodies: Array<string> = []
      const server = createServer((req, res) => {
        auth.push(req.headers.authorization)
        const parts: Array<Buffer> = []
        req.on("data", (d: Buffer) => parts.push(d))
        req.on("end", () => bodies.push(Buffer.concat(parts).toString()))
        if (mode === "one-per-connection") {
          const socket = req.socket as typeof req.socket & { served?: boolean }
          if (socket.served === true) return socket.destroy()
          socket.served = true
        }
        let timer: NodeJS.Timeout | undefined
        if (mode === "json" || mode === "one-per-connection" || (mode === "json-then-silent" && auth.length === 1)) {
          res.writeHead(200, { "content-type": "application/json" })
          res.end("{\"ok\":true}")
        } else if (mode === "sse") {
          res.writeHead(200, { "content-type": "text/event-stream" })
          let n = 0
          timer = setInterval(() => res.write(`data: {"n":${n++}}\n\n`), 50)
        }
        res.on("close", () => {
          clearInterval(timer)
          aborted.push(!res.writableFinished)
        })
      })
      server.listen(0, "127.0.0.1", () => {
        const address = server.address()
        resume(Effect.succeed({
          port: typeof address === "object" && address !== null ? address.port : 0,
          aborted,
          auth,
          bodies,
          close: () => {
            server.closeAllConnections()
            server.close()
          }
        }))
      })
    }),
    (u) => Effect.sync(u.close)
  ).pipe(
    Effect.tap((u) => Effect.flatMap(SpawnerControl, (c) => c.setBehaviour({ baseUrl: `http://127.0.0.1:${u.port}` })))
  )

/** Wait (bounded, 3 s) until the manager's status satisfies `ok`. */
export const statusUntil = (ok: (s: ManagerStatus) => boolean) =>
  Effect.flatMap(RuntimeManager, (manager) =>
    Effect.flatMap(manager.status, (s) => (ok(s) ? Effect.void : Effect.fail("not yet"))).pipe(
      Effect.retry(Schedule.spaced("10 millis").pipe(Schedule.upTo("3 seconds")))
    ))

/** No request in flight. */
export const slotsFreed = statusUntil((s) => s.inFlight === 0)

/** One request in flight. */
export const oneInFlight = statusUntil((s) => s.inFlight === 1)

/** The in-memory runtime crashes (as a process exiting on its own). */
export const crashRuntime = Effect.flatMap(Effect.flatMap(SpawnerControl, (c) => c.latest), (runtime) => runtime.crash())

export const serverLayer = NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" })

/** The gateway in front of the in-memory manager, as a pool of one named `modelName` (default `model`). */
export const gateway = (options: Gateway.GatewayOptions & { readonly modelName?: string } = {}, patch: Record<string, unknown> = {}) =>
  Gateway.layer(options).pipe(
    Layer.provideMerge(serverLayer),
    Layer.provideMerge(ModelPoolLive.fromManager({ name: options.modelName ?? "model" })),
    Layer.provideMerge(managerLayer(patch)),
    Layer.provide(NodeHttpClient.layerUndici)
  )

export const portOf = Effect.map(HttpServer.HttpServer, (s) => (s.address._tag === "TcpAddress" ? s.address.port : 0))

export const errorType = (answer: Answer) => (JSON.parse(answer.text) as { error: { type: string; message: string } }).error.type

export const start = Effect.gen(function*() {
  yield* (yield* DownloaderControl).serve(SOURCE, MODEL)
  yield* (yield* RuntimeManager).start
})
