/**
 * HubClient over HTTPS (undici, the downloader's dispatcher: its connect timeout and extra CAs).
 *
 * - `revision`: `GET /api/models/{repo}/revision/{revision}?blobs=true` → `sha`, and the file's
 *   `siblings[].lfs` when listed.
 * - `lfs`: `POST /api/models/{repo}/paths-info/{commit}` with a form body `paths=<file>&expand=true`.
 * - `head`: `HEAD /{repo}/resolve/{commit}/{file}`; a relative `Location` (a renamed repository) is
 *   followed on the hub, an absolute one (the storage host) is where it stops, as huggingface_hub's
 *   `get_hf_file_metadata` does; the `X-Repo-Commit`/`X-Linked-*` headers are read from that answer.
 *
 * 401 and 403 are `auth_required`, 404 `repo_not_found`, anything else undocumented `hub_error`, no
 * connection `hub_unreachable`. The bearer token, if any, is set on requests to the hub's origin
 * only; no URL, header or body reaches an error.
 */
import { HttpClient, HttpClientRequest, type HttpClientResponse } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { Duration, Effect, Either, Layer, Option, Redacted, Stream } from "effect"
import { HubError } from "../domain/Errors.js"
import * as Hub from "../domain/Hub.js"
import { HubClient } from "../services/HubClient.js"
import { makeDispatcher } from "./DownloaderLive.js"

export interface HubClientOptions {
  /** Default `https://huggingface.co`. */
  readonly hub?: string
  readonly token?: Redacted.Redacted<string> | undefined
  readonly extraCaCertificates?: ReadonlyArray<string>
  /** Per request. Default 30 s. */
  readonly timeout?: Duration.DurationInput
}

const fail = (reason: HubError["reason"]) => Effect.fail(new HubError({ reason }))

const MAX_HOPS = 5
/** An API answer larger than this is not one the hub documents (`hub_error`), counted as it arrives. */
const MAX_ANSWER_BYTES = 16 * 1024 * 1024

export const makeWith = (client: HttpClient.HttpClient, hub: URL, options: HubClientOptions) => {
  const timeout = options.timeout ?? Duration.seconds(30)
  const scoped = HttpClient.withScope(client)

  const authorize = (request: HttpClientRequest.HttpClientRequest, url: URL) =>
    options.token !== undefined && url.origin === hub.origin ? HttpClientRequest.bearerToken(request, Redacted.value(options.token)) : request

  const statusError = (status: number) =>
    status === 401 || status === 403 ? fail("auth_required") : status === 404 ? fail("repo_not_found") : fail("hub_error")

  /** One request, relative redirects followed on the hub; the first answer that is not one. */
  const exchange = (make: (url: URL) => HttpClientRequest.HttpClientRequest, first: URL) =>
    Effect.gen(function*() {
      let url = first
      for (let hop = 0;; hop++) {
        const response = yield* scoped.execute(authorize(make(url), url)).pipe(Effect.mapError(() => new HubError({ reason: "hub_unreachable" })))
        const location = response.headers["location"]
        if (response.status >= 300 && response.status < 400 && location !== undefined && !/^[a-z][a-z0-9+.-]*:|^\/\//i.test(location)) {
          if (hop >= MAX_HOPS) return yield* fail("hub_error")
          const next = new URL(location, url)
          if (next.origin !== hub.origin) return yield* fail("redirect_off_hub")
          url = next
          continue
        }
        return response
      }
    })

  const json = (response: HttpClientResponse.HttpClientResponse) =>
    Effect.gen(function*() {
      if (response.status !== 200) return yield* statusError(response.status)
      const declared = response.headers["content-length"]
      if (declared !== undefined && (!/^\d{1,16}$/.test(declared) || Number(declared) > MAX_ANSWER_BYTES)) return yield* fail("hub_error")
      // Counted as it arrives, whatever the headers say: a chunked answer stops at the cap.
      const read = yield* response.stream.pipe(
        Stream.mapError(() => new HubError({ reason: "hub_unreachable" })),
        Stream.runFoldEffect({ parts: [] as Array<Uint8Array>, bytes: 0 }, (state, chunk) => {
          if (state.bytes + chunk.length > MAX_ANSWER_BYTES) return fail("hub_error")
          state.parts.push(chunk)
          return Effect.succeed({ parts: state.parts, bytes: state.bytes + chunk.length })
        })
      )
      const text = Buffer.concat(read.parts).toString("utf8")
      return yield* Effect.try({ try: () => JSON.parse(text) as unknown, catch: () => new HubError({ reason: "hub_error" }) })
    })

  const bounded = <A>(effect: Effect.Effect<A, HubError, import("effect/Scope").Scope>) =>
    effect.pipe(
      Effect.scoped,
      Effect.timeoutFail({ duration: timeout, onTimeout: () => new HubError({ reason: "hub_unreachable" }) })
    )

  return HubClient.of({
    revision: (repo, revision, file) =>
      bounded(Effect.gen(function*() {
        const url = Hub.revisionUrl(hub, repo, revision)
        url.searchParams.set("blobs", "true")
        const answer = yield* Effect.flatMap(exchange((u) => HttpClientRequest.get(u), url), json)
        const commit = yield* Hub.commitOf(answer)
        // Listed facts are a third witness when present; a file the answer does not list is not an error here.
        const listed = Hub.lfsOf(answer, file)
        return { commit, listed: Either.isRight(listed) ? listed.right : undefined }
      })),
    lfs: (repo, commit, file) =>
      bounded(Effect.gen(function*() {
        // A form body, as huggingface_hub sends it (huggingface.js sends JSON; the hub takes both).
        const request = (u: URL) => HttpClientRequest.post(u).pipe(HttpClientRequest.bodyUrlParams({ paths: file, expand: "true" }))
        const answer = yield* Effect.flatMap(exchange(request, Hub.pathsInfoUrl(hub, repo, commit)), json)
        return yield* Hub.lfsOf(answer, file)
      })),
    head: (repo, commit, file) =>
      bounded(Effect.gen(function*() {
        const response = yield* exchange(
          (u) => HttpClientRequest.head(u).pipe(HttpClientRequest.setHeader("accept-encoding", "identity")),
          Hub.resolveUrl(hub, repo, commit, file)
        )
        if (response.status >= 400) return yield* statusError(response.status)
        const redirect = response.status >= 300
        if (redirect && Option.isNone(Option.fromNullable(response.headers["location"]))) return yield* fail("hub_error")
        return Hub.headFacts(response.headers, redirect)
      }))
  })
}

/** A hub that is not an https origin is `malformed_reference`. */
export const make = (options: HubClientOptions) =>
  Effect.flatMap(Hub.parseHub(options.hub ?? Hub.DEFAULT_HUB), (hub) =>
    Effect.map(makeDispatcher({ allowedSources: [], extraCaCertificates: options.extraCaCertificates ?? [] }), (agent) =>
      makeWith(NodeHttpClient.makeUndici(agent), hub, options)))

export const layer = (options: HubClientOptions): Layer.Layer<HubClient, HubError> => Layer.scoped(HubClient, make(options))
