import { Context, type Effect, type Scope, type Stream } from "effect"
import type { DownloadError } from "./Errors.js"

export interface DownloadRequest {
  /** A source that passed `Integrity.checkSource`. */
  readonly url: URL
  /** Resume from this byte; 0 for the whole file. */
  readonly offset: number
  /**
   * Ask for at most this many bytes from `offset` (`Range: bytes=offset-(offset+length-1)`), as a
   * header read does. A source may still send more (a 200 with the whole file): read what you need.
   */
  readonly length?: number
}

export interface DownloadBody {
  /**
   * The byte the body starts at: `offset` when the source honoured the range, 0 when it answered a
   * ranged request with the whole file (the caller must then restart, never append).
   */
  readonly startsAt: number
  readonly bytes: Stream.Stream<Uint8Array, DownloadError>
}

/** Opens a byte stream of a model file. The connection lives as long as the scope. */
export class Downloader extends Context.Tag("companion-runtime/Downloader")<
  Downloader,
  { readonly open: (request: DownloadRequest) => Effect.Effect<DownloadBody, DownloadError, Scope.Scope> }
>() {}
