/**
 * Ollama fed the verified model, through its own HTTP API (its `docs/api.md`, as `server/routes.go`
 * and `server/create.go` implement it):
 *
 * - `ollama serve` runs with `OLLAMA_MODELS` in a private directory under the store (0700, a
 *   directory of this user, never a link), so no one else can plant a blob or a manifest in it;
 * - the verified file is uploaded from the store's descriptor to `POST /api/blobs/sha256:<digest>`
 *   (`HEAD` first: a blob it holds is not sent again; Ollama hashes an upload and refuses a
 *   mismatch with 400), then named with `POST /api/create {model, files, stream: false}` (streamed,
 *   a failure would come as an `error` line under HTTP 200);
 * - readiness: `GET /api/tags` lists the name (`<alias>:latest`; its `digest` is the manifest's, not
 *   the blob's) and `POST /api/show` for it names the verified blob's path in its `FROM` line;
 * - unloading is `POST /api/generate {model, keep_alive: 0}`; the process serves every model of a
 *   pool, and stops when the last of them is stopped.
 */
import { constants } from "node:fs"
import { mkdir, open } from "node:fs/promises"
import { join } from "node:path"
import { HttpClient, HttpClientRequest, type HttpClientResponse } from "@effect/platform"
import { Duration, Effect, Exit, Option, Schema, Scope, Stream } from "effect"
import { HealthError, SpawnError } from "../../services/Errors.js"
import type { Health } from "../../services/HealthProbe.js"
import type { VerifiedModel } from "../../services/ModelStore.js"
import * as VerifiedModels from "./VerifiedModels.js"

/** Ollama's name for a model: a name without a tag gets `:latest`. Compared without case, as Ollama does. */
export const ollamaName = (alias: string): string => (alias.includes(":") ? alias : `${alias}:latest`).toLowerCase()

/** Where Ollama keeps a blob: `<OLLAMA_MODELS>/blobs/sha256-<hex>` (`manifest.BlobsPath`). */
export const blobPath = (modelsDirectory: string, sha256: string): string => join(modelsDirectory, "blobs", `sha256-${sha256}`)

const unsafe = () => new SpawnError({ reason: "models_dir_unsafe" })

/**
 * Make `path` the private directory Ollama keeps its models in: created 0700 if absent; if present it
 * must be a directory (opened with `O_NOFOLLOW`, so never a link) owned by this user that no one
 * else can write, and is then set to 0700 through that descriptor. A directory others could write
 * may already hold a planted blob: refused, never repaired.
 */
export const privateDirectory = (path: string) =>
  Effect.tryPromise({
    try: async () => {
      try {
        await mkdir(path, { mode: 0o700 })
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error
      }
      const handle = await open(path, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW)
      try {
        const stat = await handle.stat()
        const uid = process.getuid?.()
        if (!stat.isDirectory() || (uid !== undefined && stat.uid !== uid) || (stat.mode & 0o022) !== 0) throw new Error("unsafe")
        if ((stat.mode & 0o777) !== 0o700) await handle.chmod(0o700)
      } finally {
        await handle.close()
      }
    },
    catch: unsafe
  })

const importFailed = () => new SpawnError({ reason: "import_failed" })

/** The verified file, read through the store's descriptor (the very bytes that were hashed), 1 MiB at a time. */
const verifiedBytes = (model: VerifiedModel) => {
  const record = VerifiedModels.recordOf(model)
  if (record === undefined) return Stream.fail(new SpawnError({ reason: "unverified_model" }))
  const chunk = 1 << 20
  return Stream.unfoldEffect(0, (position) =>
    position >= model.sizeBytes
      ? Effect.succeed(Option.none())
      : Effect.map(record.file.read(position, Math.min(chunk, model.sizeBytes - position)), (bytes) =>
        bytes.length === 0 ? Option.none() : Option.some([bytes, position + bytes.length] as const)))
}

const CreateAnswer = Schema.parseJson(Schema.Struct({ status: Schema.Literal("success") }))

const answerText = (response: HttpClientResponse.HttpClientResponse) => Effect.orElseSucceed(response.text, () => "")

/**
 * Import the verified model into the Ollama at `baseUrl` under `alias`: the blob (unless it is held),
 * then the name. Every failure is `import_failed`, but bytes Ollama refused are `blob_refused`.
 */
export const importModel = (
  client: HttpClient.HttpClient,
  baseUrl: string,
  model: VerifiedModel,
  alias: string,
  settings: { readonly contextSize?: number | undefined; readonly threads?: number | undefined } = {}
) =>
  Effect.gen(function*() {
    const digest = `sha256:${model.sha256}`
    const held = yield* client.execute(HttpClientRequest.head(`${baseUrl}/api/blobs/${digest}`)).pipe(
      Effect.map((response) => response.status === 200),
      Effect.scoped,
      Effect.mapError(importFailed)
    )
    if (!held) {
      const request = HttpClientRequest.post(`${baseUrl}/api/blobs/${digest}`).pipe(
        HttpClientRequest.bodyStream(verifiedBytes(model), { contentType: "application/octet-stream", contentLength: model.sizeBytes })
      )
      const status = yield* client.execute(request).pipe(
        Effect.map((response) => response.status),
        Effect.scoped,
        Effect.mapError(importFailed)
      )
      // 201 stored; 200 it had it meanwhile; 400 the bytes did not hash to the digest.
      if (status === 400) return yield* new SpawnError({ reason: "blob_refused" })
      if (status !== 201 && status !== 200) return yield* importFailed()
    }
    const created = yield* HttpClientRequest.post(`${baseUrl}/api/create`).pipe(
      // The context the memory estimate counted (`num_ctx`), not one Ollama picks for itself, and
      // the model's threads (`num_thread`); slots are process-wide (`OLLAMA_NUM_PARALLEL`).
      HttpClientRequest.bodyUnsafeJson({
        model: alias,
        files: { "model.gguf": digest },
        parameters: {
          ...(settings.contextSize !== undefined ? { num_ctx: settings.contextSize } : {}),
          ...(settings.threads !== undefined ? { num_thread: settings.threads } : {})
        },
        stream: false
      }),
      client.execute,
      Effect.flatMap((response) => Effect.map(answerText(response), (text) => response.status === 200 && Option.isSome(Schema.decodeUnknownOption(CreateAnswer)(text)))),
      Effect.scoped,
      Effect.mapError(importFailed)
    )
    if (!created) return yield* importFailed()
  })

const Tags = Schema.parseJson(Schema.Struct({ models: Schema.Array(Schema.Struct({ name: Schema.String })) }))
const Show = Schema.parseJson(Schema.Struct({ modelfile: Schema.String }))

/**
 * The blob a Modelfile serves: its one uncommented `FROM` line, and nothing that changes what the
 * model does beyond the file (an `ADAPTER` or `DRAFT` model, a `SYSTEM` prompt, `MESSAGE`s): this
 * service never asks for those, so a name that has them was re-pointed by someone else.
 */
export const modelfileFrom = (modelfile: string): string | undefined => {
  const lines = modelfile.split("\n").map((line) => line.trim())
  if (lines.some((line) => /^(ADAPTER|DRAFT|SYSTEM|MESSAGE)\b/i.test(line))) return undefined
  const froms = lines.map((line) => /^FROM (.+)$/.exec(line)?.[1]).filter((from) => from !== undefined)
  return froms.length === 1 ? froms[0] : undefined
}

const mismatch = () => new HealthError({ reason: "wrong_model" })

/** `/api/show`'s Modelfile for a name: `wrong_model` when the name is unknown (404); an error of Ollama's own (5xx) is `unreachable` (asked again). */
export const showModelfile = (client: HttpClient.HttpClient, baseUrl: string, name: string) =>
  HttpClientRequest.post(`${baseUrl}/api/show`).pipe(
    HttpClientRequest.bodyUnsafeJson({ model: name }),
    client.execute,
    Effect.flatMap((response) =>
      response.status === 200
        ? answerText(response)
        : Effect.fail(new HealthError({ reason: response.status === 404 ? "wrong_model" : "unreachable" }))
    ),
    Effect.scoped,
    Effect.mapError((e) => (e._tag === "HealthError" ? e : new HealthError({ reason: "unreachable" }))),
    Effect.map((text) => Option.getOrUndefined(Option.map(Schema.decodeUnknownOption(Show)(text), ({ modelfile }) => modelfile)))
  )

/**
 * Readiness of a model on Ollama: `/api/tags` answers and lists the name, and `/api/show` for it
 * names the verified blob and nothing else that changes the model (and, once known, is the very
 * Modelfile the import made). Not answering, or an error of Ollama's own, is `unreachable`; a name
 * missing or changed is `wrong_model`.
 */
export const servesVerified = (
  client: HttpClient.HttpClient,
  baseUrl: string,
  serves: { readonly name: string; readonly blobPath: string; readonly modelfile?: string | undefined }
) =>
  Effect.gen(function*() {
    const tags = yield* client.get(`${baseUrl}/api/tags`).pipe(
      Effect.flatMap((response) =>
        response.status === 200 ? answerText(response) : Effect.fail(new HealthError({ reason: response.status >= 500 ? "unreachable" : "unhealthy" }))
      ),
      Effect.scoped,
      Effect.catchTag("RequestError", () => Effect.fail(new HealthError({ reason: "unreachable" }))),
      Effect.catchTag("ResponseError", () => Effect.fail(new HealthError({ reason: "unhealthy" })))
    )
    const decoded = Schema.decodeUnknownOption(Tags)(tags)
    // An answer that does not decode is Ollama's trouble, not a changed name: asked again.
    if (Option.isNone(decoded)) return yield* new HealthError({ reason: "unreachable" })
    if (!decoded.value.models.some((m) => m.name.toLowerCase() === ollamaName(serves.name))) return yield* mismatch()
    const modelfile = yield* showModelfile(client, baseUrl, serves.name)
    if (modelfile === undefined || modelfileFrom(modelfile) !== serves.blobPath) return yield* mismatch()
    if (serves.modelfile !== undefined && modelfile !== serves.modelfile) return yield* mismatch()
    return "ok" as Health
  })

/**
 * Unload a model (`keep_alive: 0`), bounded by `grace`: whether Ollama answered 200. Anything else
 * (the name deleted by another local process: 404) may leave the model loaded, with no timer to
 * unload it (`OLLAMA_KEEP_ALIVE=-1`): the caller then retires the process.
 */
export const unload = (client: HttpClient.HttpClient, baseUrl: string, alias: string, grace: Duration.DurationInput) =>
  HttpClientRequest.post(`${baseUrl}/api/generate`).pipe(
    HttpClientRequest.bodyUnsafeJson({ model: alias, keep_alive: 0 }),
    client.execute,
    Effect.map((response) => response.status === 200),
    Effect.scoped,
    Effect.interruptible,
    Effect.timeout(grace),
    Effect.orElseSucceed(() => false)
  )

/**
 * One process shared by its holders: started by the first `get`, kept `linger` after the last holder
 * lets go (a pool swapping models does not restart it), then stopped; started anew for the next
 * `get` once it has exited (a crash); stopped at once when `owner` closes. Written here rather than
 * with `RcRef`: after `RcRef.invalidate`, the release of the old value's last holder empties the
 * new state (effect 3.22's `internal/rcRef.js`), which would leave the new process unowned.
 */
export const shared = <A extends { readonly exited: Effect.Effect<unknown> }, E>(
  acquire: Effect.Effect<A, E, Scope.Scope>,
  linger: Duration.DurationInput,
  /** What a `get` after the owner closed fails with: no process is started that no one would stop. */
  closedError: () => E
) =>
  Effect.gen(function*() {
    interface Entry {
      readonly value: A
      readonly scope: Scope.CloseableScope
      refs: number
      dead: boolean
      /** Counts releases: a linger timer stops the entry only if none came after it. */
      releases: number
    }
    const owner = yield* Effect.scope
    const lock = yield* Effect.makeSemaphore(1)
    let current: Entry | undefined
    let closed = false
    /** Every entry not yet stopped, the current one and any that crashed while lingering. */
    const open = new Set<Entry>()

    /** Under the lock: stop an entry. */
    const stop = (entry: Entry) =>
      Effect.suspend(() => {
        if (current === entry) current = undefined
        open.delete(entry)
        return Scope.close(entry.scope, Exit.void)
      })

    const release = (entry: Entry) =>
      lock.withPermits(1)(Effect.suspend(() => {
        entry.refs--
        entry.releases++
        if (entry.refs > 0) return Effect.void
        if (entry.dead || Duration.toMillis(Duration.decode(linger)) === 0) return stop(entry)
        // Kept a while for the next model; a `get` meanwhile takes it again, and a later release
        // starts the wait again. (Forked from a finalizer, so its wait is made interruptible: the
        // owner's close must not wait it out.)
        const at = entry.releases
        return Effect.asVoid(Effect.forkIn(
          Effect.zipRight(
            Effect.interruptible(Effect.sleep(linger)),
            lock.withPermits(1)(Effect.suspend(() => (entry.refs === 0 && entry.releases === at && open.has(entry) ? stop(entry) : Effect.void)))
          ),
          owner
        ))
      }))

    /** Under the lock: the live entry (not one whose process has exited), or a new one (only its start is interruptible). */
    const take =
      Effect.suspend(() => {
        if (closed) return Effect.fail(closedError())
        const live = current
        if (live !== undefined && !live.dead) {
          live.refs++
          return Effect.succeed(live)
        }
        return Effect.gen(function*() {
          const scope = yield* Scope.make()
          // Interruptible even for a caller in an uninterruptible region: the start's races must
          // be able to stop their losers (the lock is held meanwhile).
          const value = yield* Effect.interruptible(Scope.extend(acquire, scope)).pipe(Effect.onError(() => Scope.close(scope, Exit.void)))
          const entry: Entry = { value, scope, refs: 1, dead: false, releases: 0 }
          open.add(entry)
          // Its exit is watched from the owner's scope: a process that died while lingering (no
          // holder) is stopped at once, its group with it. Forked from the uninterruptible region,
          // so made interruptible: the owner's close stops it.
          yield* Effect.forkIn(
            Effect.interruptible(Effect.andThen(
              value.exited,
              Effect.suspend(() => {
                entry.dead = true
                return lock.withPermits(1)(Effect.suspend(() => (entry.refs === 0 && open.has(entry) ? stop(entry) : Effect.void)))
              })
            )),
            owner
          )
          current = entry
          return entry
        })
      })

    yield* Effect.addFinalizer(() =>
      lock.withPermits(1)(Effect.suspend(() => {
        closed = true
        return Effect.forEach([...open], stop, { discard: true })
      }))
    )

    const get: Effect.Effect<A, E, Scope.Scope> = Effect.uninterruptibleMask((restore) =>
      Effect.gen(function*() {
        yield* restore(lock.take(1))
        const entry = yield* Effect.ensuring(take, lock.release(1))
        yield* Effect.addFinalizer(() => release(entry))
        return entry.value
      })
    )
    /**
     * The process holding `value` takes no new holder and stops as soon as its last one lets go (no
     * linger): what is loaded in it can no longer be unloaded by name.
     */
    const retire = (value: A) =>
      lock.withPermits(1)(Effect.suspend(() => {
        const entry = [...open].find((e) => e.value === value)
        if (entry === undefined) return Effect.void
        entry.dead = true
        if (current === entry) current = undefined
        return entry.refs === 0 ? stop(entry) : Effect.void
      }))
    return { get, retire }
  })

/** The environment Ollama gets on top of the allowlisted one. */
export const serverEnvironment = (port: number, modelsDirectory: string, parallel: number): Record<string, string> => ({
  OLLAMA_HOST: `127.0.0.1:${port}`,
  OLLAMA_MODELS: modelsDirectory,
  // Its identity key, history and settings live beside the models, not in the user's ~/.ollama.
  HOME: join(modelsDirectory, "home"),
  // Models stay loaded until this service unloads them (`keep_alive: 0`), not on Ollama's 5-minute timer.
  OLLAMA_KEEP_ALIVE: "-1",
  OLLAMA_NUM_PARALLEL: String(parallel),
  // No remote inference or web search through this process.
  OLLAMA_NO_CLOUD: "1"
})

/** Ollama's serve: the models' directory and its home made private, then the process. */
export const prepareDirectories = (modelsDirectory: string) =>
  Effect.zipRight(privateDirectory(modelsDirectory), privateDirectory(join(modelsDirectory, "home")))
