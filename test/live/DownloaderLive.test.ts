/**
 * DownloaderLive against a real HTTPS origin on loopback (test CA made at test time), and through
 * ModelStore.ensure onto a real file system, for every hostile case the issue names.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, mkdirSync, existsSync, statSync } from "node:fs"
import { createServer, type Server, type Socket } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { gzipSync } from "node:zlib"
import { NodePath } from "@effect/platform-node"
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Chunk, Effect, Either, Layer, type Scope, Stream } from "effect"
import { type Origin, serveBytes, startOrigin } from "../../scripts/lib/origin.js"
import { makeTestPki, type TestPki } from "../../scripts/lib/pki.js"
import * as Integrity from "../../src/domain/Integrity.js"
import * as DownloaderLive from "../../src/layers/DownloaderLive.js"
import * as ModelStoreLive from "../../src/layers/ModelStoreLive.js"
import * as StoreFileSystemLive from "../../src/layers/StoreFileSystemLive.js"
import { Downloader } from "../../src/services/Downloader.js"
import { ModelStore, type VerifiedModel } from "../../src/services/ModelStore.js"
import { bytesOf, sha256Hex } from "../domain/fixtures.js"
import { expectFailure } from "../layers/harness.js"

const MODEL = bytesOf(3 * 1024 * 1024, 7) // several read chunks (DownloaderLive.READ_CHUNK_BYTES)
const SPEC = { sha256: sha256Hex(MODEL), sizeBytes: MODEL.length }
const HALF = 1_500_000

let pki: TestPki
let origin: Origin
let silent: Server
let silentPort: number
const silentSockets = new Set<Socket>()
let resetServed = 0
let dripServed = 0

const redirect = (location: () => string, status = 302) => (_req: unknown, res: import("node:http").ServerResponse) => {
  res.writeHead(status, { location: location() }).end()
}

beforeAll(async () => {
  pki = makeTestPki()
  const corrupt = Uint8Array.from(MODEL)
  corrupt[123_456] = corrupt[123_456]! ^ 0x10
  origin = await startOrigin(pki, {
    "/m/model": serveBytes(MODEL),
    "/m/long": serveBytes(Uint8Array.from([...MODEL, 0])),
    "/m/corrupt": serveBytes(corrupt),
    "/m/no-range": serveBytes(MODEL, { honourRange: false }),
    "/m/endless": (_req, res) => {
      res.writeHead(200)
      const chunk = Buffer.alloc(16_384, 1)
      const pump = () => {
        while (res.write(chunk)) { /* until the socket pushes back */ }
      }
      res.on("drain", pump)
      pump()
    },
    "/m/hop": redirect(() => "/m/model", 301),
    "/m/to-unlisted": redirect(() => `https://localhost:${origin.port}/m/model`),
    "/m/to-http": redirect(() => `http://127.0.0.1:${origin.port}/m/model`),
    "/m/loop": redirect(() => "/m/loop", 307),
    "/m/gzip": (_req, res) => {
      const body = gzipSync(MODEL)
      res.writeHead(200, { "content-encoding": "gzip", "content-length": body.length }).end(body)
    },
    "/m/stall": (_req, res) => {
      res.writeHead(200, { "content-length": MODEL.length })
      res.write(Buffer.from(MODEL.subarray(0, 1000)))
    },
    "/m/stall-headers": () => {},
    "/m/trickle": (_req, res) => {
      // Slow but steady for a second (longer than the stall timeout), then the rest at once.
      res.writeHead(200, { "content-length": MODEL.length })
      let sent = 0
      const timer = setInterval(() => {
        if (sent < 40_000) {
          res.write(Buffer.from(MODEL.subarray(sent, sent + 2_000)))
          sent += 2_000
          return
        }
        clearInterval(timer)
        res.end(Buffer.from(MODEL.subarray(sent)))
      }, 50)
    },
    "/m/drip": (req, res) => {
      // 2 MB at once (more than one read chunk, so the store has bytes to resume from), then one
      // byte every 100 ms, each inside the stall timeout, for ever; later requests (the retry's
      // resume) are served properly.
      if (dripServed++ > 0) return serveBytes(MODEL)(req, res)
      res.writeHead(200, { "content-length": MODEL.length })
      let sent = 2_000_000
      res.write(Buffer.from(MODEL.subarray(0, sent)))
      const timer = setInterval(() => res.write(Buffer.from(MODEL.subarray(sent, ++sent))), 100)
      res.once("close", () => clearInterval(timer))
    },
    "/m/bad-range": (req, res) => {
      if (req.headers.range === undefined) return serveBytes(MODEL)(req, res)
      res.writeHead(206, { "content-range": `bytes 0-${MODEL.length - 1}/${MODEL.length}` }).end(Buffer.from(MODEL))
    },
    "/m/reset": (req, res) => {
      // The first answer dies mid-stream; later ones serve ranges properly.
      if (resetServed++ > 0) return serveBytes(MODEL)(req, res)
      res.writeHead(200, { "content-length": MODEL.length })
      res.write(Buffer.from(MODEL.subarray(0, HALF)), () => setTimeout(() => res.socket?.destroy(), 50))
    },
    "/m/429": (_req, res) => res.writeHead(429, { "retry-after": "3" }).end(),
    "/m/503": (_req, res) => res.writeHead(503).end(),
    "/m/408": (_req, res) => res.writeHead(408).end(),
    "/m/404": (_req, res) => res.writeHead(404).end()
  })
  // Accepts TCP and then says nothing, so the TLS handshake never completes.
  silent = createServer((socket) => {
    silentSockets.add(socket)
    socket.on("close", () => silentSockets.delete(socket))
  })
  await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve))
  silentPort = (silent.address() as import("node:net").AddressInfo).port
})

afterAll(async () => {
  await origin?.close()
  for (const socket of silentSockets) socket.destroy()
  await new Promise<void>((resolve) => silent ? silent.close(() => resolve()) : resolve())
})

const options = (patch: Partial<DownloaderLive.DownloaderOptions> = {}): DownloaderLive.DownloaderOptions => ({
  allowedSources: [`${origin.baseUrl}/m`, `https://127.0.0.1:${silentPort}/m`],
  extraCaCertificates: [pki.caPem],
  connectTimeout: "300 millis",
  stallTimeout: "300 millis",
  ...patch
})

const url = (path: string) => new URL(`${origin.baseUrl}${path}`)

/** Open `path` with the live downloader and collect the body. */
const fetchAll = (path: string, offset = 0, target = url(path), patch: Partial<DownloaderLive.DownloaderOptions> = {}) =>
  Effect.scoped(
    Effect.gen(function*() {
      const downloader = yield* Downloader
      const body = yield* downloader.open({ url: target, offset })
      const chunks = yield* Stream.runCollect(body.bytes)
      return { startsAt: body.startsAt, bytes: Buffer.concat(Chunk.toArray(chunks)) }
    })
  ).pipe(Effect.provide(DownloaderLive.layer(options(patch))))

const expectDownloadError = (path: string, reason: string) =>
  expectFailure(fetchAll(path), "DownloadError", reason)

describe("DownloaderLive", () => {
  it.live("downloads over TLS with the extra CA, asking for identity encoding", () =>
    Effect.gen(function*() {
      const { bytes, startsAt } = yield* fetchAll("/m/model")
      assert.strictEqual(startsAt, 0)
      assert.strictEqual(sha256Hex(bytes), SPEC.sha256)
      assert.strictEqual(origin.lastHeaders.get("/m/model")?.["accept-encoding"], "identity")
    }))

  it.live("without the extra CA, the test origin is not trusted", () =>
    expectFailure(
      Effect.scoped(Effect.flatMap(Downloader, (d) => d.open({ url: url("/m/model"), offset: 0 }))).pipe(
        Effect.provide(DownloaderLive.layer({ allowedSources: [`${origin.baseUrl}/m`] }))
      ),
      "DownloadError",
      "connection_failed"
    ))

  it.live("resumes with Range and accepts a 206 whose Content-Range starts at the offset", () =>
    Effect.gen(function*() {
      const { bytes, startsAt } = yield* fetchAll("/m/model", HALF)
      assert.strictEqual(startsAt, HALF)
      assert.strictEqual(origin.lastHeaders.get("/m/model")?.range, `bytes=${HALF}-`)
      assert.deepStrictEqual(new Uint8Array(bytes), MODEL.subarray(HALF))
    }))

  it.live("a 200 answer to a ranged request is reported as starting at 0", () =>
    Effect.gen(function*() {
      const { bytes, startsAt } = yield* fetchAll("/m/no-range", HALF)
      assert.strictEqual(startsAt, 0)
      assert.strictEqual(bytes.length, MODEL.length)
    }))

  it.live("a 206 with a Content-Range that does not start at the offset is range_mismatch", () =>
    expectFailure(fetchAll("/m/bad-range", HALF), "DownloadError", "range_mismatch"))

  it.live("follows an allowed redirect hop", () =>
    Effect.gen(function*() {
      const { bytes } = yield* fetchAll("/m/hop")
      assert.strictEqual(sha256Hex(bytes), SPEC.sha256)
    }))

  it.live("a redirect to an unlisted host is refused before connecting to it", () =>
    Effect.gen(function*() {
      const before = origin.hits.get("/m/model") ?? 0
      yield* expectDownloadError("/m/to-unlisted", "redirect_not_allowed")
      // localhost is this very server: it was never asked for the model.
      assert.strictEqual(origin.hits.get("/m/model") ?? 0, before)
    }))

  it.live("a redirect to http: is refused", () => expectDownloadError("/m/to-http", "redirect_not_allowed"))

  it.live("a redirect loop ends after 5 hops", () =>
    Effect.gen(function*() {
      const before = origin.hits.get("/m/loop") ?? 0
      yield* expectDownloadError("/m/loop", "too_many_redirects")
      assert.strictEqual((origin.hits.get("/m/loop") ?? 0) - before, 6)
    }))

  it.live("a gzip content-encoding is refused", () => expectDownloadError("/m/gzip", "content_encoding_not_allowed"))

  it.live("no bytes for the stall timeout mid-body is stall_timeout", () => expectDownloadError("/m/stall", "stall_timeout"))

  it.live("a slow but steady body is not a stall, though a read chunk takes longer than the timeout to fill", () =>
    Effect.gen(function*() {
      const { bytes } = yield* fetchAll("/m/trickle")
      assert.strictEqual(sha256Hex(bytes), SPEC.sha256)
    }))

  it.live("a source that trickles a byte inside each stall interval fails under the rate floor as a transient download_too_slow", () =>
    Effect.gen(function*() {
      dripServed = 0
      const started = Date.now()
      const error = yield* expectFailure(
        fetchAll("/m/drip", 0, url("/m/drip"), { minRate: 10_000, rateWindow: "1 second" }),
        "DownloadError",
        "download_too_slow"
      )
      assert.isTrue((error as unknown as { transient: boolean }).transient)
      // Judged after one whole window, and not long after it.
      assert.isAtLeast(Date.now() - started, 1_000)
      assert.isBelow(Date.now() - started, 5_000)
    }))

  it.live("a slow but steady source above the floor completes; with the floor off, the drip is only bounded by the stall timeout", () =>
    Effect.gen(function*() {
      // /m/trickle: about 40 KB/s for a second, then the rest.
      const { bytes } = yield* fetchAll("/m/trickle", 0, url("/m/trickle"), { minRate: 20_000, rateWindow: "400 millis" })
      assert.strictEqual(sha256Hex(bytes), SPEC.sha256)
      dripServed = 0
      const dripped = yield* fetchAll("/m/drip", 0, url("/m/drip"), { minRate: 0, rateWindow: "200 millis" }).pipe(
        Effect.timeout("1500 millis"),
        Effect.option
      )
      assert.isTrue(dripped._tag === "None", "the drip is still running: no floor judged it")
    }))

  it("the rate floor over its sliding window", () => {
    const floor = DownloaderLive.rateFloor(1000, 1000)
    assert.isFalse(floor(0, 0))
    assert.isFalse(floor(500, 100)) // not a whole window yet
    assert.isFalse(floor(1000, 1000)) // exactly 1000 B/s: not below
    assert.isFalse(floor(1500, 1500))
    assert.isTrue(floor(2000, 1900)) // 900 B over the last second
    const off = DownloaderLive.rateFloor(0, 1000)
    assert.isFalse(off(0, 0))
    assert.isFalse(off(10_000, 0))
    // Bounded memory: off keeps nothing; on keeps one window's ticks (and the one before it).
    for (let t = 0; t < 100_000; t += 10) off(t, t)
    assert.strictEqual(off.held(), 0)
    const on = DownloaderLive.rateFloor(1, 1000)
    for (let t = 0; t < 100_000; t += 10) on(t, t)
    assert.isAtMost(on.held(), 1000 / 10 + 1)
  })

  it.live("no headers for the stall timeout is stall_timeout", () => expectDownloadError("/m/stall-headers", "stall_timeout"))

  it.live("a TLS handshake that never completes is connect_timeout", () =>
    expectFailure(fetchAll("/m/model", 0, new URL(`https://127.0.0.1:${silentPort}/m/model`), { connectTimeout: "200 millis", stallTimeout: "5 seconds" }),
      "DownloadError",
      "connect_timeout"
    ))

  it.live("status codes map to reasons; 429 carries Retry-After", () =>
    Effect.gen(function*() {
      const limited = yield* expectFailure(fetchAll("/m/429"), "DownloadError", "rate_limited")
      assert.strictEqual((limited as unknown as { retryAfterMillis: number }).retryAfterMillis, 3000)
      yield* expectDownloadError("/m/503", "server_error")
      yield* expectDownloadError("/m/408", "request_timeout")
      const notFound = yield* expectDownloadError("/m/404", "client_error")
      assert.isFalse((notFound as unknown as { transient: boolean }).transient)
    }))

  it("parses Retry-After and Content-Range strictly", () => {
    assert.strictEqual(DownloaderLive.parseRetryAfter("7", 0), 7000)
    assert.strictEqual(DownloaderLive.parseRetryAfter("Thu, 01 Jan 1970 00:00:10 GMT", 4000), 6000)
    assert.strictEqual(DownloaderLive.parseRetryAfter("soon", 0), undefined)
    assert.strictEqual(DownloaderLive.parseRetryAfter(undefined, 0), undefined)
    assert.strictEqual(DownloaderLive.parseContentRangeStart("bytes 10-19/20"), 10)
    assert.strictEqual(DownloaderLive.parseContentRangeStart("bytes 10-19/*"), 10)
    assert.strictEqual(DownloaderLive.parseContentRangeStart("bytes 10-20/20"), undefined)
    assert.strictEqual(DownloaderLive.parseContentRangeStart("bytes 19-10/20"), undefined)
    assert.strictEqual(DownloaderLive.parseContentRangeStart("items 10-19/20"), undefined)
    assert.strictEqual(DownloaderLive.parseContentRangeStart(undefined), undefined)
  })
})

// ---------------------------------------------------------------------------------------------
// Through ModelStore.ensure, onto a real directory
// ---------------------------------------------------------------------------------------------

/** A store on `store` with the live downloader and the real file system. */
const storeOn = (store: string, patch: Partial<DownloaderLive.DownloaderOptions> = {}) =>
  ModelStoreLive.layer({
    storeDir: store,
    allowedSources: [`${origin.baseUrl}/m`],
    retries: 2,
    retryBase: "10 millis",
    retryMax: "1 second",
    lockWait: "1 minute"
  }).pipe(Layer.provide(Layer.mergeAll(StoreFileSystemLive.layer, NodePath.layer, DownloaderLive.layer(options(patch)))))

const withStore = <A, E>(
  body: (store: string) => Effect.Effect<A, E, ModelStore | Scope.Scope>,
  patch: Partial<DownloaderLive.DownloaderOptions> = {}
) =>
  Effect.acquireUseRelease(
    Effect.sync(() => mkdtempSync(join(tmpdir(), "companion-store-"))),
    (store) => body(store).pipe(Effect.scoped, Effect.provide(storeOn(store, patch))),
    (store) => Effect.sync(() => rmSync(store, { recursive: true, force: true }))
  )

const finalPath = (store: string) => join(store, SPEC.sha256)
const partialPath = (store: string) => join(store, "partial", `${SPEC.sha256}.partial`)
const spec = Either.getOrThrow(Integrity.checkSpec(SPEC))

const ensure = (path: string) => Effect.flatMap(ModelStore, (m) => m.ensure(spec, url(path)))

/** What a process handed the model's descriptor reads. */
const served = (model: VerifiedModel) => readFileSync(`/proc/self/fd/${model.descriptor}`)

/** Nothing is left at the final path and no partial file remains. */
const assertNothingStored = (store: string) => {
  assert.isFalse(existsSync(finalPath(store)))
  assert.deepStrictEqual(readdirSync(join(store, "partial")), [])
}

describe("ModelStore.ensure over the live downloader", () => {
  it.live("stores the verified model at its digest, mode 0600, directories 0700", () =>
    withStore((store) =>
      Effect.gen(function*() {
        const model = yield* ensure("/m/hop")
        assert.strictEqual(sha256Hex(served(model)), SPEC.sha256)
        assert.strictEqual(sha256Hex(readFileSync(finalPath(store))), SPEC.sha256)
        assert.strictEqual(statSync(finalPath(store)).mode & 0o777, 0o600)
        assert.strictEqual(statSync(join(store, "partial")).mode & 0o777, 0o700)
        assert.deepStrictEqual(readdirSync(join(store, "partial")), [])
      })))

  it.live("a body one byte too long is cut at expected+1; nothing stored", () =>
    withStore((store) =>
      Effect.gen(function*() {
        yield* expectFailure(ensure("/m/long"), "IntegrityError", "size_mismatch")
        assertNothingStored(store)
      })))

  it.live("an endless body is cut at expected+1; nothing stored", () =>
    withStore((store) =>
      Effect.gen(function*() {
        yield* expectFailure(ensure("/m/endless"), "IntegrityError", "size_mismatch")
        assertNothingStored(store)
      })))

  it.live("a 1-bit corruption is a digest mismatch; the partial file is deleted", () =>
    withStore((store) =>
      Effect.gen(function*() {
        yield* expectFailure(ensure("/m/corrupt"), "IntegrityError", "digest_mismatch")
        assertNothingStored(store)
      })))

  it.live("a 200 answer to a resume restarts from byte zero instead of appending", () =>
    withStore((store) =>
      Effect.gen(function*() {
        mkdirSync(join(store, "partial"), { recursive: true })
        writeFileSync(partialPath(store), MODEL.subarray(0, HALF))
        const model = yield* ensure("/m/no-range")
        assert.strictEqual(sha256Hex(served(model)), SPEC.sha256)
        assert.strictEqual(origin.lastHeaders.get("/m/no-range")?.range, `bytes=${HALF}-`)
      })))

  it.live("a reset mid-stream is retried with a resume that ends verified", () =>
    withStore((store) =>
      Effect.gen(function*() {
        resetServed = 0
        const model = yield* ensure("/m/reset")
        assert.strictEqual(sha256Hex(served(model)), SPEC.sha256)
        assert.strictEqual(resetServed, 2)
        const range = origin.lastHeaders.get("/m/reset")?.range
        assert.match(range ?? "", /^bytes=\d+-$/)
        assert.isAbove(Number(/\d+/.exec(range ?? "")?.[0]), 0)
        assert.isFalse(existsSync(partialPath(store)))
      })))

  it.live("a download under the rate floor is retried with a resume from the bytes it had, and ends verified", () =>
    withStore((store) =>
      Effect.gen(function*() {
        dripServed = 0
        const model = yield* ensure("/m/drip")
        assert.strictEqual(sha256Hex(served(model)), SPEC.sha256)
        assert.strictEqual(dripServed, 2)
        const resumedAt = Number(/^bytes=(\d+)-$/.exec(origin.lastHeaders.get("/m/drip")?.range ?? "")?.[1])
        assert.isAtLeast(resumedAt, DownloaderLive.READ_CHUNK_BYTES)
        assert.isFalse(existsSync(partialPath(store)))
      }), { minRate: 10_000, rateWindow: "1 second" }))

  it.live("a redirect to an unlisted host stores nothing", () =>
    withStore((store) =>
      Effect.gen(function*() {
        yield* expectFailure(ensure("/m/to-unlisted"), "DownloadError", "redirect_not_allowed")
        assertNothingStored(store)
      })))

  it.live("two stores on one directory: one downloads, the other waits for its lock and finds the result", () =>
    withStore((store) =>
      Effect.gen(function*() {
        const before = origin.hits.get("/m/model") ?? 0
        const other = Effect.provide(ensure("/m/model"), storeOn(store))
        const [a, b] = yield* Effect.all([ensure("/m/model"), other], { concurrency: 2 })
        assert.strictEqual(sha256Hex(served(a)), SPEC.sha256)
        assert.strictEqual(sha256Hex(served(b)), SPEC.sha256)
        assert.strictEqual((origin.hits.get("/m/model") ?? 0) - before, 1)
        assert.deepStrictEqual(readdirSync(join(store, "partial")), [])
      })))
})
