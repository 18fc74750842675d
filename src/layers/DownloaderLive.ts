/**
 * Downloader over HTTPS with `@effect/platform`'s HttpClient on undici.
 *
 * - Redirects are followed by hand, at most `maxRedirects`, and every hop is checked again against
 *   the source policy (HTTPS, allowlist): a redirect is never a way around it.
 * - `Accept-Encoding: identity`; any other content encoding is refused, so the bytes verified are
 *   the bytes on the wire and nothing inflates them.
 * - A resume asks for `Range: bytes=N-` and accepts a `206` only with a matching `Content-Range`;
 *   a `200` is reported as `startsAt: 0` so the caller restarts instead of appending.
 * - Connect timeout (TCP and TLS) from the undici agent; stall timeout (no headers, or no bytes,
 *   for that long) from Effect; and a rate floor: once the body has run for `rateWindow`, the bytes
 *   of the last `rateWindow` must average `minRate` per second (`download_too_slow`), so a source
 *   that trickles a byte just inside each stall interval cannot hold a download for ever. All three
 *   are typed and transient: the retry resumes where the bytes stopped.
 * - Extra trusted CA certificates are added to Node's bundled roots, never replacing them.
 *
 * No URL, header or platform error text crosses into a `DownloadError`.
 */
import { FileSystem, HttpClient, HttpClientRequest, type HttpClientResponse } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import * as Undici from "@effect/platform-node/Undici"
import { Chunk, Clock, ConfigError, Duration, Effect, Either, Layer, Option, Redacted, Stream } from "effect"
import * as Hub from "../domain/Hub.js"
import { type CompanionConfig, modelsOf, readConfig } from "../config/Config.js"
import { Readable } from "node:stream"
import { rootCertificates } from "node:tls"
import { checkSource } from "../domain/Integrity.js"
import { Downloader, type DownloadRequest } from "../services/Downloader.js"
import { DownloadError } from "../services/Errors.js"

export interface DownloaderOptions {
  /** The same allowlist the manager applies to the first URL; every redirect hop must pass it. */
  readonly allowedSources: ReadonlyArray<string>
  /** TCP connect plus TLS handshake. Default 10 s. */
  readonly connectTimeout?: Duration.DurationInput
  /** Longest wait for the response headers or for the next chunk of the body. Default 30 s. */
  readonly stallTimeout?: Duration.DurationInput
  /** Bytes per second the body must average over `rateWindow`; 0 turns the floor off. Default 64 KiB/s. */
  readonly minRate?: number
  /** The sliding window of `minRate`. Default 60 s. */
  readonly rateWindow?: Duration.DurationInput
  /** Default 5. */
  readonly maxRedirects?: number
  /**
   * Entries admitted only as redirect targets, never as a first URL: a hub's storage hosts, which
   * serve files only through the hub's signed redirects.
   */
  readonly redirectSources?: ReadonlyArray<string>
  /**
   * `Authorization: Bearer` for one origin only (a hub, for gated repositories): sent to URLs of
   * exactly that origin, never to a host a redirect leads to.
   */
  readonly bearer?: { readonly origin: string; readonly token: Redacted.Redacted<string> }
  /** PEM certificates trusted in addition to Node's bundled roots (a mirror's CA, a test CA). */
  readonly extraCaCertificates?: ReadonlyArray<string>
}

const fail = (reason: DownloadError["reason"], retryAfterMillis?: number) =>
  Effect.fail(new DownloadError(retryAfterMillis === undefined ? { reason } : { reason, retryAfterMillis }))

const isRedirect = (status: number) => status === 301 || status === 302 || status === 303 || status === 307 || status === 308

const CONTENT_RANGE = /^bytes (\d+)-(\d+)\/(\d+|\*)$/

/** `Retry-After` as delay-seconds or an HTTP date; undefined when absent or unreadable. */
export const parseRetryAfter = (value: string | undefined, nowMillis: number): number | undefined => {
  if (value === undefined) return undefined
  const trimmed = value.trim()
  if (/^\d+$/.test(trimmed)) {
    const seconds = Number(trimmed)
    return Number.isSafeInteger(seconds * 1000) ? seconds * 1000 : undefined
  }
  const at = Date.parse(trimmed)
  return Number.isNaN(at) ? undefined : Math.max(0, at - nowMillis)
}

/** The start byte of a `206`'s `Content-Range`, or undefined if the header is missing or malformed. */
export const parseContentRangeStart = (value: string | undefined): number | undefined => {
  const match = value === undefined ? null : CONTENT_RANGE.exec(value.trim())
  if (match === null) return undefined
  const start = Number(match[1])
  const end = Number(match[2])
  const total = match[3] === "*" ? undefined : Number(match[3])
  if (end < start || (total !== undefined && end >= total)) return undefined
  return start
}

const isConnectTimeout = (cause: unknown): boolean =>
  typeof cause === "object" && cause !== null &&
  ((cause as { code?: unknown }).code === "UND_ERR_CONNECT_TIMEOUT" ||
    isConnectTimeout((cause as { cause?: unknown }).cause))

const statusError = (response: HttpClientResponse.HttpClientResponse, now: number) => {
  const status = response.status
  if (status === 429) return fail("rate_limited", parseRetryAfter(response.headers["retry-after"], now))
  if (status === 408) return fail("request_timeout")
  if (status === 503) return fail("server_error", parseRetryAfter(response.headers["retry-after"], now))
  if (status >= 500) return fail("server_error")
  return fail("client_error")
}

/** Bytes handed to the consumer at once: large enough that per-chunk costs vanish, small enough to stay bounded. */
export const READ_CHUNK_BYTES = 1024 * 1024

/** What the body watchdog enforces: no stall longer than `stall`; at least `minRate` bytes/s over `window` (0: off). */
export interface BodyLimits {
  readonly stall: Duration.Duration
  readonly minRate: number
  readonly window: Duration.Duration
}

/**
 * The rate floor over a sliding window, fed one sample (time, bytes so far) per watchdog tick:
 * `true` once a whole window has passed whose bytes average below `minRate` per second. Samples
 * older than the window (but the last one before it) are dropped, so memory stays bounded.
 */
export const rateFloor = (minRate: number, windowMillis: number) => {
  const samples: Array<{ readonly at: number; readonly bytes: number }> = []
  const below = (at: number, bytes: number): boolean => {
    if (minRate <= 0) return false // off: nothing kept
    samples.push({ at, bytes })
    while (samples.length > 1 && samples[1]!.at <= at - windowMillis) samples.shift()
    const from = samples[0]!
    const elapsed = at - from.at
    return elapsed >= windowMillis && (bytes - from.bytes) * 1000 < minRate * elapsed
  }
  /** How many samples it holds (for tests: bounded by the window). */
  return Object.assign(below, { held: () => samples.length })
}

/** How long a batch that has not reached `READ_CHUNK_BYTES` waits before it is handed over anyway. */
const BATCH_WAIT_MILLIS = 20

/**
 * A Node readable's own chunks (no copy), handed over in batches of about `READ_CHUNK_BYTES` (or
 * whatever arrived within `BATCH_WAIT_MILLIS`): the consumer wakes once per batch, not once per
 * TLS record. The readable is paused while a batch waits for the consumer (at most two batches
 * queued), so memory stays bounded. `arrived` counts every byte as it comes, for the watchdog.
 * Written here: `NodeStream.fromReadable` either wakes per record or, asked for 1 MiB reads,
 * joins the records into a new buffer each time (a copy the GC frees late: the RSS in
 * docs/benchmarks.md).
 */
const batched = (readable: Readable, arrived: (bytes: number) => void, onError: () => DownloadError) =>
  Stream.async<Uint8Array, DownloadError>((emit) => {
    let pending: Array<Uint8Array> = []
    let pendingBytes = 0
    let timer: ReturnType<typeof setTimeout> | undefined
    let ended = false
    let flushing = false
    /** The consumer left: nothing more is handed over, no timer started. */
    let done = false
    const flush = (): void => {
      if (timer !== undefined) clearTimeout(timer)
      timer = undefined
      if (flushing) return
      if (pending.length === 0) {
        if (ended) void emit.end()
        return
      }
      const out = pending
      pending = []
      pendingBytes = 0
      flushing = true
      readable.pause()
      void emit.chunk(Chunk.unsafeFromArray(out)).then(() => {
        flushing = false
        if (done) return
        if (ended || pendingBytes >= READ_CHUNK_BYTES) return flush()
        readable.resume()
        if (pending.length > 0 && timer === undefined) timer = setTimeout(flush, BATCH_WAIT_MILLIS)
      })
    }
    readable.on("data", (chunk: Uint8Array) => {
      pending.push(chunk)
      pendingBytes += chunk.length
      arrived(chunk.length)
      if (pendingBytes >= READ_CHUNK_BYTES) flush()
      else if (timer === undefined) timer = setTimeout(flush, BATCH_WAIT_MILLIS)
    })
    readable.once("end", () => {
      ended = true
      flush()
    })
    readable.once("error", () => void emit.fail(onError()))
    readable.once("close", () => {
      if (!ended && !readable.readableEnded) void emit.fail(onError())
    })
    return Effect.sync(() => {
      done = true
      if (timer !== undefined) clearTimeout(timer)
      readable.destroy()
    })
  }, 2)

/**
 * The body as a stream of chunks, failing with `stall_timeout` when no byte arrives for `stall`,
 * and with `download_too_slow` under the rate floor.
 *
 * On the undici client the response carries its Node readable (`source.body`), read in batches
 * (`batched`): a few wake-ups per MiB instead of one per TLS record (16 KiB), which is where the
 * stream's per-chunk cost went (docs/benchmarks.md), and no copy. Stall and rate are judged by
 * bytes as they arrive. Any other client's stream is used as it is, judged by the bytes it has
 * handed over.
 */
const bodyOf = (
  response: HttpClientResponse.HttpClientResponse,
  limits: BodyLimits
): Stream.Stream<Uint8Array, DownloadError> => {
  const connectionFailed = () => new DownloadError({ reason: "connection_failed" })
  const body = (response as { readonly source?: { readonly body?: unknown } }).source?.body
  const readable = body instanceof Readable ? body : undefined
  const stallMillis = Duration.toMillis(limits.stall)
  const windowMillis = Duration.toMillis(limits.window)
  let consumed = 0
  const watchdog = Effect.gen(function*() {
    const tick = Math.max(1, Math.min(stallMillis / 4, limits.minRate > 0 ? windowMillis / 10 : Infinity))
    const tooSlow = rateFloor(limits.minRate, windowMillis)
    let seen = -1
    let movedAt = yield* Clock.currentTimeMillis
    tooSlow(movedAt, 0)
    for (;;) {
      yield* Effect.sleep(Duration.millis(tick))
      const now = yield* Clock.currentTimeMillis
      const total = consumed
      if (total !== seen) {
        seen = total
        movedAt = now
      } else if (now - movedAt >= stallMillis) {
        return yield* new DownloadError({ reason: "stall_timeout" })
      }
      if (tooSlow(now, total)) return yield* new DownloadError({ reason: "download_too_slow" })
    }
  })
  const chunks = readable === undefined
    ? Stream.mapError(response.stream, connectionFailed).pipe(Stream.tap((chunk) => Effect.sync(() => void (consumed += chunk.length))))
    : batched(readable, (bytes) => void (consumed += bytes), connectionFailed)
  return chunks.pipe(Stream.interruptWhen(watchdog))
}

/** Builds the Downloader from an HttpClient that does not follow redirects by itself. */
export const makeWith = (client: HttpClient.HttpClient, options: DownloaderOptions) => {
  const stall = Duration.decode(options.stallTimeout ?? Duration.seconds(30))
  const limits: BodyLimits = {
    stall,
    minRate: options.minRate ?? 64 * 1024,
    window: Duration.decode(options.rateWindow ?? Duration.seconds(60))
  }
  const maxRedirects = options.maxRedirects ?? 5
  const scoped = HttpClient.withScope(client)

  const redirectTargets = [...options.allowedSources, ...(options.redirectSources ?? [])]
  const bearer = options.bearer
  const request = (url: URL, offset: number, length: number | undefined) =>
    HttpClientRequest.get(url).pipe(
      HttpClientRequest.setHeader("accept-encoding", "identity"),
      length !== undefined
        ? HttpClientRequest.setHeader("range", `bytes=${offset}-${offset + length - 1}`)
        : offset > 0
        ? HttpClientRequest.setHeader("range", `bytes=${offset}-`)
        : (r) => r,
      bearer !== undefined && url.origin === bearer.origin ? HttpClientRequest.bearerToken(Redacted.value(bearer.token)) : (r) => r
    )

  const send = (url: URL, offset: number, length: number | undefined) =>
    scoped.execute(request(url, offset, length)).pipe(
      Effect.catchAll((error) =>
        error._tag === "RequestError" && isConnectTimeout(error.cause) ? fail("connect_timeout") : fail("connection_failed")
      ),
      Effect.timeoutFail({ duration: stall, onTimeout: () => new DownloadError({ reason: "stall_timeout" }) })
    )

  const open = ({ length, offset, url }: DownloadRequest) =>
    Effect.gen(function*() {
      let current = url
      for (let hop = 0;; hop++) {
        const response = yield* send(current, offset, length)
        if (isRedirect(response.status)) {
          if (hop >= maxRedirects) return yield* fail("too_many_redirects")
          const location = response.headers["location"]
          if (location === undefined) return yield* fail("redirect_not_allowed")
          const next = Either.try(() => new URL(location, current))
          if (Either.isLeft(next)) return yield* fail("redirect_not_allowed")
          const checked = checkSource(next.right.href, redirectTargets)
          if (Either.isLeft(checked)) return yield* fail("redirect_not_allowed")
          current = checked.right
          continue
        }
        const encoding = response.headers["content-encoding"]
        if (encoding !== undefined && encoding.trim().toLowerCase() !== "identity") {
          return yield* fail("content_encoding_not_allowed")
        }
        let startsAt: number
        if (response.status === 200) {
          startsAt = 0
        } else if (response.status === 206 && (offset > 0 || length !== undefined)) {
          if (parseContentRangeStart(response.headers["content-range"]) !== offset) return yield* fail("range_mismatch")
          startsAt = offset
        } else if (
          (response.status === 401 || response.status === 403) && current.origin !== url.origin &&
          Either.isRight(checkSource(current.href, options.redirectSources ?? []))
        ) {
          // Refused by a hub's storage host the source sent us to: its signed link expired, most likely.
          return yield* fail("link_expired")
        } else {
          return yield* statusError(response, yield* Clock.currentTimeMillis)
        }
        const bytes = bodyOf(response, limits)
        return { startsAt, bytes }
      }
    })

  return Downloader.of({ open })
}

/** An undici agent with the connect timeout and the extra CAs; destroyed with the scope. */
export const makeDispatcher = (options: DownloaderOptions) =>
  Effect.acquireRelease(
    Effect.sync(() =>
      new Undici.Agent({
        connect: {
          timeout: Duration.toMillis(Duration.decode(options.connectTimeout ?? Duration.seconds(10))),
          ...(options.extraCaCertificates !== undefined && options.extraCaCertificates.length > 0
            ? { ca: [...rootCertificates, ...options.extraCaCertificates] }
            : {})
        }
      })
    ),
    (agent) => Effect.promise(() => agent.destroy())
  )

export const make = (options: DownloaderOptions) =>
  Effect.map(makeDispatcher(options), (agent) => makeWith(NodeHttpClient.makeUndici(agent), options))

export const layer = (options: DownloaderOptions): Layer.Layer<Downloader> => Layer.scoped(Downloader, make(options))

/**
 * For a model whose source is a resolve URL on `hub.url`: the hub's storage hosts as redirect
 * targets, and the hub's token for the hub's origin. Any other source gets neither.
 */
export const hubOptions = (config: CompanionConfig): Pick<DownloaderOptions, "redirectSources" | "bearer"> => {
  const hub = Hub.parseHub(config.hub.url)
  if (Either.isLeft(hub) || !modelsOf(config).some((model) => Option.isSome(Hub.parseResolveUrl(model.source, hub.right)))) return {}
  return {
    redirectSources: config.hub.storageHosts,
    ...(Option.isSome(config.hub.token) ? { bearer: { origin: hub.right.origin, token: config.hub.token.value } } : {})
  }
}

/** Read PEM files named in config (`download.caFiles`); an unreadable one is a config error. */
export const readCaFiles = (files: ReadonlyArray<string>) =>
  Effect.flatMap(FileSystem.FileSystem, (fs) =>
    Effect.forEach(files, (file) =>
      fs.readFileString(file).pipe(
        Effect.mapError(() => ConfigError.InvalidData(["download", "caFiles"], "a readable PEM file"))
      )))

/** The downloader for a `CompanionConfig`: `allowedSources` and `download.connectTimeout`, `.stallTimeout`, `.minRate`, `.rateWindow`, `.caFiles` (read once, when the layer is built). */
export const layerFrom = (config: CompanionConfig): Layer.Layer<Downloader, ConfigError.ConfigError, FileSystem.FileSystem> =>
  Layer.scoped(
    Downloader,
    Effect.gen(function*() {
      return yield* make({
        allowedSources: config.allowedSources,
        ...hubOptions(config),
        connectTimeout: config.download.connectTimeout,
        stallTimeout: config.download.stallTimeout,
        minRate: config.download.minRate,
        rateWindow: config.download.rateWindow,
        extraCaCertificates: yield* readCaFiles(config.download.caFiles)
      })
    })
  )

/** The downloader from `CompanionConfig`. */
export const layerConfig: Layer.Layer<Downloader, ConfigError.ConfigError, FileSystem.FileSystem> = Layer.unwrapEffect(
  Effect.map(readConfig, layerFrom)
)
