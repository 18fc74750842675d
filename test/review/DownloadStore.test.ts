/**
 * Review of `downloadOnce` (src/layers/ModelStoreLive.ts) after the batching change: per-chunk
 * verification before one `appendAll`, and the background fsync every `syncEveryBytes`. Real file
 * system (StoreFileSystemLive) behind a spy that records the partial file's size after each
 * append, slows or fails file fsyncs, and notes fsyncs still running when the rename happens.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs"
import type { IncomingMessage, ServerResponse } from "node:http"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { NodePath } from "@effect/platform-node"
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Cause, Effect, Either, Exit, Layer, Option, type Scope } from "effect"
import { type Origin, serveBytes, startOrigin } from "../../scripts/lib/origin.js"
import { makeTestPki, type TestPki } from "../../scripts/lib/pki.js"
import * as Integrity from "../../src/domain/Integrity.js"
import * as DownloaderLive from "../../src/layers/DownloaderLive.js"
import * as ModelStoreLive from "../../src/layers/ModelStoreLive.js"
import * as StoreFileSystemLive from "../../src/layers/StoreFileSystemLive.js"
import { StoreFileError } from "../../src/services/Errors.js"
import { ModelStore } from "../../src/services/ModelStore.js"
import { type StoreFile, StoreFileSystem } from "../../src/services/StoreFileSystem.js"
import { bytesOf, sha256Hex } from "../domain/fixtures.js"
import { expectFailure } from "../layers/harness.js"

const MODEL = bytesOf(3 * 1024 * 1024 + 17, 21)
const SPEC = Either.getOrThrow(Integrity.checkSpec({ sha256: sha256Hex(MODEL), sizeBytes: MODEL.length }))

interface Spy {
  maxPartialSize: number
  syncDelayMillis: number
  failSyncs: number
  syncsStarted: number
  syncFailures: number
  inFlight: number
  inFlightAtRename: Array<number>
}
const freshSpy = (): Spy => ({
  maxPartialSize: 0,
  syncDelayMillis: 0,
  failSyncs: 0,
  syncsStarted: 0,
  syncFailures: 0,
  inFlight: 0,
  inFlightAtRename: []
})
let spy = freshSpy()

const spyFile = (file: StoreFile): StoreFile => ({
  ...file,
  appendAll: (chunks) =>
    Effect.zipRight(
      file.appendAll(chunks),
      Effect.map(file.identity, (id) => void (spy.maxPartialSize = Math.max(spy.maxPartialSize, id.size)))
    ),
  sync: Effect.suspend(() => {
    spy.syncsStarted++
    spy.inFlight++
    const fail = spy.failSyncs > 0
    if (fail) spy.failSyncs--
    return Effect.sleep(spy.syncDelayMillis).pipe(
      Effect.zipRight(fail ? Effect.fail(new StoreFileError({ reason: "file_io_failed" })) : file.sync),
      Effect.tapError(() => Effect.sync(() => void spy.syncFailures++)),
      Effect.ensuring(Effect.sync(() => void spy.inFlight--))
    )
  })
})

const spyLayer = Layer.effect(
  StoreFileSystem,
  Effect.map(StoreFileSystem, (fs) =>
    StoreFileSystem.of({
      ...fs,
      create: (p) => Effect.map(fs.create(p), spyFile),
      openAppend: (p) => Effect.map(fs.openAppend(p), spyFile),
      rename: (a, b) => Effect.suspend(() => {
        spy.inFlightAtRename.push(spy.inFlight)
        return fs.rename(a, b)
      })
    }))
).pipe(Layer.provide(StoreFileSystemLive.layer))

let pki: TestPki
let origin: Origin
let cutServed = 0
let syncFailServed = 0
const rangesSeen: Array<string | undefined> = []

/** Headers, then `first` bytes, then the socket cut after `wait`; later requests served properly. */
const cutThenServe = (first: number, wait: number, counter: () => number) => (req: IncomingMessage, res: ServerResponse) => {
  rangesSeen.push(req.headers.range)
  if (counter() > 0) return serveBytes(MODEL)(req, res)
  res.writeHead(200, { "content-length": MODEL.length })
  res.write(Buffer.from(MODEL.subarray(0, first)), () => setTimeout(() => res.socket?.destroy(), wait))
}

beforeAll(async () => {
  pki = makeTestPki()
  origin = await startOrigin(pki, {
    "/s/model": serveBytes(MODEL),
    // Chunked (no Content-Length): the client cannot cut it; 100 extra bytes in the same write as the last good ones.
    "/s/long-chunked": (_req, res) => {
      res.writeHead(200)
      res.write(Buffer.from(MODEL.subarray(0, 2 * 1024 * 1024)))
      res.end(Buffer.concat([Buffer.from(MODEL.subarray(2 * 1024 * 1024)), Buffer.alloc(100, 0xee)]))
    },
    "/s/cut-during-sync": cutThenServe(1_500_000, 50, () => cutServed++),
    "/s/cut-after-failed-sync": cutThenServe(400 * 1024, 300, () => syncFailServed++)
  })
}, 30_000)

afterAll(async () => {
  await origin?.close()
})

const storeOn = (store: string, syncEveryBytes?: number) =>
  ModelStoreLive.layer({
    storeDir: store,
    allowedSources: [`${origin.baseUrl}/s`],
    retries: 2,
    retryBase: "10 millis",
    retryMax: "1 second",
    lockWait: "1 minute",
    ...(syncEveryBytes === undefined ? {} : { syncEveryBytes })
  }).pipe(Layer.provide(Layer.mergeAll(
    spyLayer,
    NodePath.layer,
    DownloaderLive.layer({
      allowedSources: [`${origin.baseUrl}/s`],
      extraCaCertificates: [pki.caPem],
      connectTimeout: "2 seconds",
      stallTimeout: "2 seconds",
      minRate: 0
    })
  )))

const withStore = <A, E>(body: (store: string) => Effect.Effect<A, E, ModelStore | Scope.Scope>, syncEveryBytes?: number) =>
  Effect.acquireUseRelease(
    Effect.sync(() => {
      spy = freshSpy()
      return mkdtempSync(join(tmpdir(), "companion-review-store-"))
    }),
    (store) => body(store).pipe(Effect.scoped, Effect.provide(storeOn(store, syncEveryBytes))),
    (store) => Effect.sync(() => rmSync(store, { recursive: true, force: true }))
  )

const ensure = (path: string) => Effect.flatMap(ModelStore, (m) => m.ensure(SPEC, new URL(`${origin.baseUrl}${path}`)))
const finalPath = (store: string) => join(store, SPEC.sha256)

describe("review: downloadOnce, verification before the batched write", () => {
  it.live("an over-long chunked body whose extra bytes share a batch with the last good ones: refused, the partial never held a byte past the size", () =>
    withStore((store) =>
      Effect.gen(function*() {
        yield* expectFailure(ensure("/s/long-chunked"), "IntegrityError", "size_mismatch")
        assert.isAtMost(spy.maxPartialSize, MODEL.length)
        assert.isFalse(existsSync(finalPath(store)))
        assert.deepStrictEqual(readdirSync(join(store, "partial")), [])
      })), 30_000)

  it.live("a plain download through the batched path is stored byte-exact", () =>
    withStore((store) =>
      Effect.gen(function*() {
        yield* ensure("/s/model")
        assert.strictEqual(sha256Hex(readFileSync(finalPath(store))), SPEC.sha256)
        assert.strictEqual(spy.maxPartialSize, MODEL.length)
      })), 30_000)
})

describe("review: downloadOnce, the background fsync", () => {
  it.live("slow background fsyncs every 256 KiB: verified, several synced as it streams, none still running at the rename", () =>
    withStore((store) =>
      Effect.gen(function*() {
        spy.syncDelayMillis = 150
        yield* ensure("/s/model")
        assert.strictEqual(sha256Hex(readFileSync(finalPath(store))), SPEC.sha256)
        assert.isAtLeast(spy.syncsStarted, 2)
        assert.deepStrictEqual(spy.inFlightAtRename, [0])
      }), 256 * 1024), 30_000)

  it.live("a transient cut while a background fsync is in flight: retried, verified; nothing syncing at the rename", () =>
    withStore((store) =>
      Effect.gen(function*() {
        spy.syncDelayMillis = 400
        yield* ensure("/s/cut-during-sync")
        assert.strictEqual(sha256Hex(readFileSync(finalPath(store))), SPEC.sha256)
        assert.deepStrictEqual(spy.inFlightAtRename, [0])
        yield* Effect.sleep(600)
        assert.strictEqual(spy.inFlight, 0, "a background fsync fiber outlived its attempt")
      }), 256 * 1024), 30_000)

  it.live("a background fsync that failed is not forgotten when the same attempt then fails transiently: the bytes it covered are not promoted", () =>
    withStore((store) =>
      Effect.gen(function*() {
        // The first file fsync (the background one, forked once 256 KiB are written) fails at once;
        // the connection is cut 300 ms later, before another 256 KiB arrive, so the attempt ends
        // with connection_failed and is retried as a resume of the partial file.
        spy.failSyncs = 1
        rangesSeen.length = 0
        const exit = yield* Effect.exit(ensure("/s/cut-after-failed-sync"))
        assert.strictEqual(spy.syncFailures, 1, "the scenario did not happen: no background fsync failed")
        const resumedOnTopOfIt = rangesSeen.length > 1 && rangesSeen[1] !== undefined
        if (Exit.isSuccess(exit)) {
          // Acceptable only if the retry did not build on the partial file whose fsync failed.
          assert.isFalse(
            resumedOnTopOfIt,
            `promoted a file that resumed (${rangesSeen[1]}) on bytes whose fsync failed; the failure was lost`
          )
        } else {
          const failure = Cause.failureOption(exit.cause)
          assert.strictEqual(Option.getOrUndefined(Option.map(failure, (e) => (e as { reason?: string }).reason)), "io_failed")
          assert.isFalse(existsSync(finalPath(store)))
        }
      }), 256 * 1024), 30_000)
})
