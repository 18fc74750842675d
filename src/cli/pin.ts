/**
 * `companion-runtime pin <repo> <file>`: a commit-pinned, checked config from a hub.
 *
 * 1. The revision resolved to its commit (the revision API).
 * 2. The file's LFS SHA-256 and size at that commit (paths-info), and the revision answer's own
 *    listing of them when it has one.
 * 3. The resolve URL's `HEAD` at that commit (`X-Repo-Commit`, `X-Linked-Etag`, `X-Linked-Size`).
 *    Any disagreement among those answers refuses the pin (`hub_disagrees`).
 * 4. The GGUF header, read through range requests from the pinned URL (redirects only to the
 *    hub's storage hosts), judged by the config's model policy and memory fit.
 * 5. The config file written: the `model` block and that commit's resolve prefix in
 *    `allowedSources` (and `hub.url` when `--hub` names another hub), every other key kept. The new
 *    file is decoded by the same schema as `serve` reads before it replaces the old one, atomically.
 *
 * Nothing is written unless every step passed. The token (`hub.token` for the hub the config names,
 * or `HF_TOKEN` for the default hub only) goes to the hub's origin only, and into no output.
 */
import { randomBytes } from "node:crypto"
import { readFile, rename, rm, writeFile } from "node:fs/promises"
import { dirname, join } from "node:path"
import { FileSystem } from "@effect/platform"
import { Config, Console, Effect, Either, Layer, Option, type Redacted, Stream } from "effect"
import {
  type CompanionConfig,
  ConfigFileError,
  decodeFile,
  decodeHubSections,
  firstModel,
  type ModelConfig,
  modelsOf,
  nameFrom,
  preflightOptions
} from "../config/Config.js"
import { HubError } from "../domain/Errors.js"
import * as Gguf from "../domain/Gguf.js"
import * as Hub from "../domain/Hub.js"
import * as ModelPolicy from "../domain/ModelPolicy.js"
import * as DownloaderLive from "../layers/DownloaderLive.js"
import * as HubClientLive from "../layers/HubClientLive.js"
import { Downloader } from "../services/Downloader.js"
import { HubClient } from "../services/HubClient.js"

export interface PinOptions {
  readonly repo: string
  readonly file: string
  readonly revision: string
  /** The config file to create or update. */
  readonly config: string
  readonly name: Option.Option<string>
  readonly hub: Option.Option<string>
}

const unreadable = () => new ConfigFileError({ reason: "unreadable", problems: [] })

/** The config file as JSON, or `{}` when there is none yet. */
const readExisting = (path: string) =>
  Effect.tryPromise({
    try: () => readFile(path, "utf8").then((text) => JSON.parse(text) as unknown, (error: NodeJS.ErrnoException) => (error.code === "ENOENT" ? {} : Promise.reject(error))),
    catch: unreadable
  }).pipe(
    Effect.filterOrFail(
      (json): json is Record<string, unknown> => typeof json === "object" && json !== null && !Array.isArray(json),
      unreadable
    )
  )

/** Replace `path` with `text` atomically: a private temporary file beside it, then a rename. */
const writeAtomically = (path: string, text: string) => {
  const temporary = join(dirname(path), `.${randomBytes(8).toString("hex")}.tmp`)
  return Effect.tryPromise({
    try: () => writeFile(temporary, text, { mode: 0o600, flag: "wx" }).then(() => rename(temporary, path)),
    catch: unreadable
  }).pipe(Effect.tapError(() => Effect.promise(() => rm(temporary, { force: true }))))
}

/**
 * The header of the model at `source`, read through range requests of 1 MiB and then as long as
 * the reader asks (never past `gguf.maxHeaderBytes`): the downloader's redirect and token rules apply.
 */
export const remoteHeader = (source: URL, sizeBytes: number, caps: Gguf.GgufCaps) =>
  Effect.flatMap(Downloader, (downloader) =>
    Effect.gen(function*() {
      let length = Math.min(sizeBytes, 1024 * 1024)
      for (;;) {
        const body = yield* downloader.open({ url: source, offset: 0, length })
        if (body.startsAt !== 0) return yield* new Gguf.GgufError({ reason: "gguf_truncated" })
        // Read until `length` bytes are in; leaving the scope then closes the connection.
        const read = yield* Stream.runFoldWhile(
          body.bytes,
          { parts: [] as Array<Uint8Array>, bytes: 0 },
          (state) => state.bytes < length,
          (state, chunk) => ({ parts: [...state.parts, chunk], bytes: state.bytes + chunk.length })
        )
        const prefix = Buffer.concat(read.parts).subarray(0, length)
        const result = Gguf.read(prefix, sizeBytes, caps)
        if (Either.isRight(result)) return result.right
        if (result.left._tag !== "NeedMore") return yield* result.left
        if (result.left.bytes <= length || prefix.length < length) return yield* new Gguf.GgufError({ reason: "gguf_truncated" })
        length = Math.min(result.left.bytes, sizeBytes)
      }
    }).pipe(Effect.scoped))

/** The pin, checked; returns the config as written and what was pinned. */
export const pinModel = (options: PinOptions) =>
  Effect.gen(function*() {
    if (!Hub.isRepoId(options.repo) || !Hub.isRepoFile(options.file) || !Hub.isRevision(options.revision)) {
      return yield* new HubError({ reason: "malformed_reference" })
    }
    const existing = yield* readExisting(options.config)
    const existingHub = typeof (existing["hub"] as Record<string, unknown> | undefined)?.["url"] === "string" ? ((existing["hub"] as Record<string, unknown>)["url"] as string) : undefined
    const hubText = Option.getOrElse(options.hub, () => existingHub ?? Hub.DEFAULT_HUB)
    const hub = yield* Hub.parseHub(hubText)
    // The existing file's `download` and `hub` sections as the schema reads them (its CA files and
    // token): a file may hold them before it has a model.
    const base = yield* decodeHubSections(existing)
    // As huggingface_hub: HF_TOKEN, else HUGGING_FACE_HUB_TOKEN; a bad value reads as none.
    const envToken = yield* Effect.orElseSucceed(Config.option(Config.orElse(Config.redacted("HF_TOKEN"), () => Config.redacted("HUGGING_FACE_HUB_TOKEN"))), () => Option.none())
    // The config's own token, for the hub that config names only; else the environment's, for the
    // default hub only: a `--hub` or a shared config naming another host gets no one's token.
    const fileToken = hub.origin === new URL(base.hub.url).origin ? base.hub.token : Option.none()
    const token: Redacted.Redacted<string> | undefined = Option.getOrUndefined(
      Option.orElse(fileToken, () => (Hub.takesEnvironmentToken(hub) ? envToken : Option.none()))
    )
    const caFiles = yield* DownloaderLive.readCaFiles(base.download.caFiles)

    const facts = yield* Effect.gen(function*() {
      const client = yield* HubClient
      const { commit, listed } = yield* client.revision(options.repo, options.revision, options.file)
      const lfs = yield* client.lfs(options.repo, commit, options.file)
      if (listed !== undefined && (listed.sha256 !== lfs.sha256 || listed.sizeBytes !== lfs.sizeBytes)) {
        return yield* new HubError({ reason: "hub_disagrees" })
      }
      const head = yield* client.head(options.repo, commit, options.file)
      return yield* Hub.crossCheck(options, commit, lfs, head)
    }).pipe(Effect.provide(HubClientLive.layer({ hub: hub.href, token, extraCaCertificates: caFiles })))

    const source = Hub.resolveUrl(hub, facts.repo, facts.commit, facts.file)
    const name = Option.getOrElse(options.name, () => nameFrom(source))
    const patched = Hub.applyPin(existing, facts, hub, name)
    // The hub pinned from is the config's hub, so its storage hosts and token apply to the source.
    if (hub.origin !== new URL(base.hub.url).origin) {
      const { token: _other, ...rest } = (existing["hub"] ?? {}) as Record<string, unknown>
      patched["hub"] = { ...rest, url: hub.origin }
    }
    // What `serve` would read: the same schema, so a pin never writes a config that fails to load.
    const config: CompanionConfig = yield* decodeFile(patched)
    const withToken: CompanionConfig = token === undefined ? config : { ...config, hub: { ...config.hub, token: Option.some(token) } }

    const model = modelsOf(config).find((m) => m.name === name) ?? firstModel(config)
    const header = yield* remoteHeader(model.source, model.spec.sizeBytes, config.gguf).pipe(
      Effect.provide(Layer.provide(DownloaderLive.layerFrom(withToken), Layer.succeed(FileSystem.FileSystem, yield* FileSystem.FileSystem)))
    )
    const estimate = yield* ModelPolicy.preflight(header, preflightOptions({
      ...config,
      runtime: { contextSize: model.contextSize },
      admission: { maxInFlight: model.parallel }
    }))
    return { pin: facts, name, patched, estimate }
  })

/** `pin`: check, write, and print what was pinned (never a token). */
export const pin = (options: PinOptions) =>
  Effect.gen(function*() {
    const { name, patched, pin: facts } = yield* pinModel(options)
    yield* writeAtomically(options.config, `${JSON.stringify(patched, null, 2)}\n`)
    yield* Console.log(`pinned ${facts.repo} at ${facts.commit}: ${facts.file}, ${facts.sizeBytes} bytes, sha256 ${facts.sha256}, as "${name}"`)
  })

/** What `pull` and `serve` say about a hub source: its repository and commit, nothing else. */
export const describeSource = (config: CompanionConfig, model: ModelConfig = firstModel(config)): Option.Option<string> =>
  Either.match(Hub.parseHub(config.hub.url), {
    onLeft: () => Option.none(),
    onRight: (hub) => Option.map(Hub.parseResolveUrl(model.source, hub), (ref) => `${ref.repo} at ${ref.revision}`)
  })
