/**
 * An in-memory Downloader. By default it serves the files it was given, honouring the requested
 * offset like a server that supports ranges. Scripted responses, consumed first and in order,
 * model everything else: failures when opening or mid-stream, a whole file sent in answer to a
 * range, an endless body.
 */
import { Context, Effect, Layer, Ref, Stream } from "effect"
import { type DownloadRequest, Downloader } from "../services/Downloader.js"
import { DownloadError } from "../services/Errors.js"

export interface ScriptedResponse {
  /** Fail when opening, before any byte. */
  readonly openError?: DownloadError
  /** Where the body starts; by default the requested offset (the range was honoured). */
  readonly startsAt?: number
  /** The body, chunk by chunk; a DownloadError item fails the stream at that point. */
  readonly body?: ReadonlyArray<Uint8Array | DownloadError>
  /** After the body, repeat this chunk for ever. */
  readonly endless?: Uint8Array
}

export interface DownloaderControlService {
  /** Serve `bytes` at `url` (ranges honoured) once the script is used up. */
  readonly serve: (url: string, bytes: Uint8Array, chunkSize?: number) => Effect.Effect<void>
  readonly script: (...responses: ReadonlyArray<ScriptedResponse>) => Effect.Effect<void>
  /** Every request made, in order. */
  readonly requests: Effect.Effect<ReadonlyArray<{ readonly url: string; readonly offset: number }>>
  /** Bytes the downloader emitted (what a consumer pulled), across all requests. */
  readonly bytesSent: Effect.Effect<number>
  /** Connections whose scope is still open. */
  readonly openConnections: Effect.Effect<number>
}

export class DownloaderControl extends Context.Tag("companion-runtime/DownloaderControl")<DownloaderControl, DownloaderControlService>() {}

const chunksOf = (bytes: Uint8Array, size: number): Array<Uint8Array> => {
  const out: Array<Uint8Array> = []
  for (let at = 0; at < bytes.length; at += size) out.push(bytes.subarray(at, at + size))
  return out
}

export const layer: Layer.Layer<Downloader | DownloaderControl> = Layer.effectContext(
  Effect.gen(function*() {
    const files = yield* Ref.make(new Map<string, { bytes: Uint8Array; chunkSize: number }>())
    const script = yield* Ref.make<ReadonlyArray<ScriptedResponse>>([])
    const requests = yield* Ref.make<ReadonlyArray<{ url: string; offset: number }>>([])
    const sent = yield* Ref.make(0)
    const open = yield* Ref.make(0)

    const next = (request: DownloadRequest) =>
      Effect.gen(function*() {
        const scripted = yield* Ref.modify(script, ([head, ...rest]) => [head, head === undefined ? [] : rest] as const)
        if (scripted !== undefined) return scripted
        const file = (yield* Ref.get(files)).get(request.url.href)
        if (file === undefined) return { openError: new DownloadError({ reason: "client_error" }) }
        const body = chunksOf(file.bytes.subarray(request.offset), file.chunkSize)
        return { startsAt: request.offset, body } satisfies ScriptedResponse
      })

    const count = (chunk: Uint8Array) => Effect.as(Ref.update(sent, (n) => n + chunk.length), chunk)

    const downloader = Downloader.of({
      open: (request) =>
        Effect.gen(function*() {
          yield* Ref.update(requests, (all) => [...all, { url: request.url.href, offset: request.offset }])
          const response = yield* next(request)
          if (response.openError) return yield* response.openError
          yield* Effect.acquireRelease(Ref.update(open, (n) => n + 1), () => Ref.update(open, (n) => n - 1))
          const items = response.body ?? []
          const body = Stream.fromIterable(items).pipe(
            Stream.mapEffect((item) => (item instanceof DownloadError ? Effect.fail(item) : count(item)))
          )
          const endless = response.endless
          return {
            startsAt: response.startsAt ?? request.offset,
            bytes: endless === undefined ? body : Stream.concat(body, Stream.repeatEffect(count(endless)))
          }
        })
    })

    const control: DownloaderControlService = {
      serve: (url, bytes, chunkSize = 64 * 1024) => Ref.update(files, (m) => new Map(m).set(new URL(url).href, { bytes, chunkSize })),
      script: (...responses) => Ref.update(script, (s) => [...s, ...responses]),
      requests: Ref.get(requests),
      bytesSent: Ref.get(sent),
      openConnections: Ref.get(open)
    }
    return Context.make(Downloader, downloader).pipe(Context.add(DownloaderControl, control))
  })
)
