/**
 * Review of the batched body reader (`batched` in src/layers/DownloaderLive.ts), driven through
 * DownloaderLive against a local HTTPS origin on 127.0.0.1 that sends bytes in chosen patterns:
 * tiny chunks, pauses around the 20 ms batch wait, exact 1 MiB boundaries, a slow consumer (the
 * readable paused, the queue full), early closes, stalls, and an interrupted consumer.
 */
import type { IncomingMessage, ServerResponse } from "node:http"
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Chunk, Effect, Exit, Fiber, Stream } from "effect"
import { type Origin, serveBytes, startOrigin } from "../../scripts/lib/origin.js"
import { makeTestPki, type TestPki } from "../../scripts/lib/pki.js"
import * as DownloaderLive from "../../src/layers/DownloaderLive.js"
import { Downloader } from "../../src/services/Downloader.js"
import { bytesOf } from "../domain/fixtures.js"
import { expectFailure } from "../layers/harness.js"

const MiB = 1024 * 1024
/** The largest single 'data' chunk the client can see over TLS is a record (16 KiB); leave room. */
const BATCH_CAP = DownloaderLive.READ_CHUNK_BYTES + 64 * 1024

type Step = Uint8Array | { readonly wait: number } | "destroy"

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** Play `steps` on the response: writes (each flushed in its own turn), waits, or a socket cut. */
const play = (steps: () => ReadonlyArray<Step>, headers: Record<string, string | number>) =>
(_req: IncomingMessage, res: ServerResponse) => {
  res.writeHead(200, headers)
  void (async () => {
    for (const step of steps()) {
      if (res.destroyed) return
      if (step === "destroy") {
        res.socket?.destroy()
        return
      }
      if (step instanceof Uint8Array) {
        if (!res.write(Buffer.from(step))) {
          await Promise.race([new Promise((r) => res.once("drain", r)), new Promise((r) => res.once("close", r))])
        }
        await new Promise((r) => setImmediate(r))
      } else await sleep(step.wait)
    }
    res.end()
  })()
}

/** A tiny deterministic PRNG. */
const rng = (seed: number) => () => {
  seed = (seed * 1103515245 + 12345) & 0x7fffffff
  return seed / 0x7fffffff
}

const TINY = bytesOf(160 * 1024, 11)
const tinySteps = (): Array<Step> => {
  const next = rng(42)
  const steps: Array<Step> = []
  for (let at = 0; at < TINY.length;) {
    const size = 1 + Math.floor(next() * 400)
    steps.push(TINY.subarray(at, at + size))
    at += size
    const r = next()
    if (r < 0.02) steps.push({ wait: 25 }) // longer than the batch wait
    else if (r < 0.06) steps.push({ wait: 19 }) // just under it
  }
  return steps
}

const EDGES = bytesOf(4 * MiB + 3, 12)
const edgeSteps = (): Array<Step> => {
  const cut = [MiB, MiB - 1, 1, 1, MiB + 1]
  const steps: Array<Step> = []
  let at = 0
  const waits = [30, 0, 19, 21, 0]
  cut.forEach((n, i) => {
    steps.push(EDGES.subarray(at, at + n))
    at += n
    if (waits[i]! > 0) steps.push({ wait: waits[i]! })
  })
  steps.push(EDGES.subarray(at))
  return steps
}

const BIG = bytesOf(6 * MiB + 5, 13)
const ODD = bytesOf(MiB + 10, 14)
const HALF_OF = bytesOf(3 * MiB, 15)
const STALL1M = bytesOf(3 * MiB, 16)

let pki: TestPki
let origin: Origin
/** When the origin saw each response to these paths close (the client let go). */
const closedAt = new Map<string, number>()

beforeAll(async () => {
  pki = makeTestPki()
  origin = await startOrigin(pki, {
    "/p/tiny": play(tinySteps, { "content-length": TINY.length }),
    "/p/tiny-chunked": play(tinySteps, {}),
    "/p/edges": play(edgeSteps, { "content-length": EDGES.length }),
    "/p/big": serveBytes(BIG),
    "/p/odd": serveBytes(ODD),
    "/p/cut": play(() => [HALF_OF.subarray(0, 1_500_000), { wait: 50 }, "destroy"], { "content-length": HALF_OF.length }),
    "/p/cut-early": play(() => [HALF_OF.subarray(0, 100_000), { wait: 20 }, "destroy"], { "content-length": HALF_OF.length }),
    "/p/stall-1m": play(() => [STALL1M.subarray(0, MiB), { wait: 60_000 }], { "content-length": STALL1M.length }),
    "/p/stall-small": play(() => [STALL1M.subarray(0, 100), { wait: 60_000 }], { "content-length": STALL1M.length }),
    "/p/garbage-after": (_req, res) => {
      res.writeHead(200, { "content-length": ODD.length })
      res.end(Buffer.from(ODD), () => res.socket?.write("HTTP/1.1 200 OK\r\ngarbage\r\n\r\n"))
    },
    "/p/endless": (req, res) => {
      const path = req.url ?? ""
      res.writeHead(200)
      const chunk = Buffer.alloc(16_384, 7)
      const pump = () => {
        while (!res.destroyed && res.write(chunk)) { /* until the socket pushes back */ }
      }
      res.on("drain", pump)
      res.once("close", () => closedAt.set(path, Date.now()))
      pump()
    }
  })
}, 30_000)

afterAll(async () => {
  await origin?.close()
})

const options = (patch: Partial<DownloaderLive.DownloaderOptions> = {}): DownloaderLive.DownloaderOptions => ({
  allowedSources: [`${origin.baseUrl}/p`],
  extraCaCertificates: [pki.caPem],
  connectTimeout: "2 seconds",
  stallTimeout: "3 seconds",
  minRate: 0,
  ...patch
})

const url = (path: string) => new URL(`${origin.baseUrl}${path}`)

/** Collect the body batch by batch, optionally sleeping per batch (a slow disk). */
const collect = (path: string, opts: { perBatch?: number; before?: number; patch?: Partial<DownloaderLive.DownloaderOptions> } = {}) =>
  Effect.scoped(
    Effect.gen(function*() {
      const downloader = yield* Downloader
      const body = yield* downloader.open({ url: url(path), offset: 0 })
      if (opts.before !== undefined) yield* Effect.sleep(opts.before)
      const parts: Array<Uint8Array> = []
      const batches: Array<number> = []
      const exit = yield* Effect.exit(body.bytes.pipe(Stream.runForEachChunk((chunk) =>
        Effect.gen(function*() {
          let n = 0
          for (const c of chunk) {
            parts.push(c)
            n += c.length
          }
          batches.push(n)
          if (opts.perBatch !== undefined) yield* Effect.sleep(opts.perBatch)
        })
      )))
      return { exit, bytes: Buffer.concat(parts), batches }
    })
  ).pipe(Effect.provide(DownloaderLive.layer(options(opts.patch))))

const sameBytes = (a: Uint8Array, b: Uint8Array) => a.length === b.length && Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0
const isPrefix = (part: Uint8Array, whole: Uint8Array) => part.length <= whole.length && Buffer.compare(Buffer.from(part), Buffer.from(whole.subarray(0, part.length))) === 0

describe("review: batched body reader, byte-exact under hostile patterns", () => {
  it.live("tiny chunks with irregular pauses (some just under, some over the 20 ms batch wait) arrive byte-exact, in order", () =>
    Effect.gen(function*() {
      for (const path of ["/p/tiny", "/p/tiny-chunked"]) {
        const { bytes, exit } = yield* collect(path)
        assert.isTrue(Exit.isSuccess(exit), path)
        assert.isTrue(sameBytes(bytes, TINY), `${path}: ${bytes.length} vs ${TINY.length}`)
      }
    }), 30_000)

  it.live("the same tiny pattern with a slow consumer (readable paused while batches wait) is byte-exact", () =>
    Effect.gen(function*() {
      const { bytes, exit } = yield* collect("/p/tiny-chunked", { perBatch: 30 })
      assert.isTrue(Exit.isSuccess(exit))
      assert.isTrue(sameBytes(bytes, TINY))
    }), 30_000)

  it.live("writes at exact 1 MiB boundaries, with pauses just under and over the batch wait: byte-exact, batches bounded", () =>
    Effect.gen(function*() {
      for (const perBatch of [undefined, 40]) {
        const { batches, bytes, exit } = yield* collect("/p/edges", perBatch === undefined ? {} : { perBatch })
        assert.isTrue(Exit.isSuccess(exit))
        assert.isTrue(sameBytes(bytes, EDGES), `perBatch ${perBatch}: ${bytes.length} vs ${EDGES.length}`)
        assert.isAtMost(Math.max(...batches), BATCH_CAP)
      }
    }), 30_000)

  it.live("a slow consumer over a fast body: every byte once, in order; no batch much over 1 MiB", () =>
    Effect.gen(function*() {
      const { batches, bytes, exit } = yield* collect("/p/big", { perBatch: 20 })
      assert.isTrue(Exit.isSuccess(exit))
      assert.isTrue(sameBytes(bytes, BIG))
      assert.isAtMost(Math.max(...batches), BATCH_CAP)
    }), 30_000)

  it.live("'end' arriving while a full batch waits for the consumer: the tail is delivered, then the end", () =>
    Effect.gen(function*() {
      const { bytes, exit } = yield* collect("/p/odd", { perBatch: 150 })
      assert.isTrue(Exit.isSuccess(exit))
      assert.isTrue(sameBytes(bytes, ODD))
    }), 30_000)

  it.live("bytes after a complete body (garbage on the connection) do not corrupt or fail the body", () =>
    Effect.gen(function*() {
      const { bytes, exit } = yield* collect("/p/garbage-after")
      assert.isTrue(Exit.isSuccess(exit))
      assert.isTrue(sameBytes(bytes, ODD))
    }), 30_000)
})

describe("review: batched body reader, failures end the stream (no hang)", () => {
  it.live("a socket cut mid-body fails connection_failed well before the stall timeout, after an in-order prefix", () =>
    Effect.gen(function*() {
      for (const perBatch of [undefined, 200]) {
        const started = Date.now()
        const { bytes, exit } = yield* collect("/p/cut", perBatch === undefined ? {} : { perBatch })
        const took = Date.now() - started
        assert.isTrue(Exit.isFailure(exit), `perBatch ${perBatch}`)
        yield* expectFailure(exit, "DownloadError", "connection_failed")
        assert.isTrue(isPrefix(bytes, HALF_OF))
        assert.isAtMost(bytes.length, 1_500_000)
        assert.isBelow(took, 2_500, `perBatch ${perBatch}: took ${took} ms (stall timeout is 3 s)`)
      }
    }), 30_000)

  it.live("a socket cut before the consumer starts reading fails promptly as connection_failed (not after the stall timeout)", () =>
    Effect.gen(function*() {
      const started = Date.now()
      const { exit } = yield* collect("/p/cut-early", { before: 400 })
      const took = Date.now() - started
      const error = Exit.isFailure(exit) ? JSON.stringify(exit.cause) : "success"
      assert.isBelow(took, 2_000, `took ${took} ms; ${error}`)
      yield* expectFailure(exit, "DownloadError", "connection_failed")
    }), 30_000)

  it.live("a stall right after an exact 1 MiB batch, and after 100 bytes, is stall_timeout within bound", () =>
    Effect.gen(function*() {
      for (const path of ["/p/stall-1m", "/p/stall-small"]) {
        const started = Date.now()
        const { bytes, exit } = yield* collect(path, { patch: { stallTimeout: "400 millis" } })
        const took = Date.now() - started
        yield* expectFailure(exit, "DownloadError", "stall_timeout")
        assert.isTrue(isPrefix(bytes, STALL1M))
        assert.isBelow(took, 2_500, `${path}: ${took} ms`)
      }
    }), 30_000)

  it.live("with the rate floor on, a stalled body still fails (stall_timeout or download_too_slow) within bound", () =>
    Effect.gen(function*() {
      const started = Date.now()
      const { exit } = yield* collect("/p/stall-small", { patch: { stallTimeout: "5 seconds", minRate: 1_000_000, rateWindow: "500 millis" } })
      yield* expectFailure(exit, "DownloadError", "download_too_slow")
      assert.isBelow(Date.now() - started, 3_000)
    }), 30_000)

  it.live("a consumer that stops early (take) destroys the readable: the connection goes while the request's scope is still open", () =>
    Effect.gen(function*() {
      const path = "/p/endless?k=take"
      yield* Effect.scoped(Effect.gen(function*() {
        const body = yield* (yield* Downloader).open({ url: url(path), offset: 0 })
        const got = yield* body.bytes.pipe(Stream.take(3000), Stream.runCollect)
        assert.strictEqual(Chunk.size(got), 3000)
        // Still inside the scope that holds the response: only the stream's own cleanup can let it go.
        const at = Date.now()
        while (!closedAt.has(path) && Date.now() - at < 2_000) yield* Effect.sleep(20)
        assert.isTrue(closedAt.has(path), `the origin never saw the response close: ${JSON.stringify([...closedAt.keys()])}`)
      })).pipe(Effect.provide(DownloaderLive.layer(options())))
    }), 30_000)

  it.live("a consumer interrupted while blocked (readable paused, queue full) destroys the readable while the request's scope is still open", () =>
    Effect.gen(function*() {
      const path = "/p/endless?k=interrupt"
      yield* Effect.scoped(Effect.gen(function*() {
        const body = yield* (yield* Downloader).open({ url: url(path), offset: 0 })
        const fiber = yield* Effect.fork(body.bytes.pipe(Stream.runForEachChunk(() => Effect.never)))
        yield* Effect.sleep(300)
        const at = Date.now()
        yield* Fiber.interrupt(fiber).pipe(Effect.timeout("2 seconds"))
        assert.isBelow(Date.now() - at, 2_000, "interrupt did not complete")
        while (!closedAt.has(path) && Date.now() - at < 2_000) yield* Effect.sleep(20)
        assert.isTrue(closedAt.has(path), `the origin never saw the response close: ${JSON.stringify([...closedAt.keys()])}`)
      })).pipe(Effect.provide(DownloaderLive.layer(options())))
    }), 30_000)
})
