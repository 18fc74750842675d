/**
 * A local HTTPS origin for tests, the benchmark and the demo: bound to 127.0.0.1 on an ephemeral
 * port, with a certificate from `makeTestPki`. Routes are plain Node handlers; `serveBytes` and
 * `serveFile` answer like a well-behaved model host (ranges, Content-Length, no encoding).
 */
import { createReadStream } from "node:fs"
import type { IncomingMessage, ServerResponse } from "node:http"
import { createServer } from "node:https"
import type { AddressInfo } from "node:net"
import type { Duplex } from "node:stream"
import { Readable } from "node:stream"
import type { TestPki } from "./pki.js"

export type Handler = (req: IncomingMessage, res: ServerResponse) => void

export interface Origin {
  readonly port: number
  /** `https://127.0.0.1:<port>` */
  readonly baseUrl: string
  /** Requests seen per path, and the headers of the last one. */
  readonly hits: Map<string, number>
  readonly lastHeaders: Map<string, IncomingMessage["headers"]>
  readonly close: () => Promise<void>
}

export const startOrigin = (pki: TestPki, routes: Record<string, Handler>): Promise<Origin> =>
  new Promise((resolve, reject) => {
    const hits = new Map<string, number>()
    const lastHeaders = new Map<string, IncomingMessage["headers"]>()
    const sockets = new Set<Duplex>()
    const server = createServer({ cert: pki.certPem, key: pki.keyPem }, (req, res) => {
      const path = (req.url ?? "/").split("?")[0] ?? "/"
      hits.set(path, (hits.get(path) ?? 0) + 1)
      lastHeaders.set(path, req.headers)
      const handler = routes[path]
      if (handler === undefined) {
        res.writeHead(404).end()
        return
      }
      handler(req, res)
    })
    server.on("connection", (socket) => {
      sockets.add(socket)
      socket.on("close", () => sockets.delete(socket))
    })
    server.on("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as AddressInfo
      resolve({
        port,
        baseUrl: `https://127.0.0.1:${port}`,
        hits,
        lastHeaders,
        close: () =>
          new Promise((done) => {
            for (const socket of sockets) socket.destroy()
            server.close(() => done())
          })
      })
    })
  })

/** Parse `Range: bytes=N-` (the only form the Downloader sends). */
const rangeStart = (req: IncomingMessage): number | undefined => {
  const match = /^bytes=(\d+)-$/.exec(req.headers.range ?? "")
  return match === null ? undefined : Number(match[1])
}

/** Answer with a body of `size` bytes, honouring `Range: bytes=N-` with a 206 and Content-Range. */
export const serveBody = (size: number, read: (start: number) => Readable, options: { honourRange?: boolean } = {}): Handler =>
(req, res) => {
  const start = options.honourRange === false ? undefined : rangeStart(req)
  if (start !== undefined && start > 0) {
    if (start >= size) {
      res.writeHead(416, { "content-range": `bytes */${size}` }).end()
      return
    }
    res.writeHead(206, { "content-length": size - start, "content-range": `bytes ${start}-${size - 1}/${size}` })
    read(start).pipe(res)
    return
  }
  res.writeHead(200, { "content-length": size, "accept-ranges": "bytes" })
  read(0).pipe(res)
}

export const serveBytes = (bytes: Uint8Array, options?: { honourRange?: boolean }): Handler => {
  return serveBody(bytes.length, (start) => Readable.from([Buffer.from(bytes.subarray(start))]), options)
}

export const serveFile = (path: string, size: number): Handler =>
  serveBody(size, (start) => createReadStream(path, { start, highWaterMark: 256 * 1024 }))
