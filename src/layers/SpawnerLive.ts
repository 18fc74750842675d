/**
 * Spawner for a real runtime process.
 *
 * - llama.cpp: `llama-server -m /dev/fd/3 --host 127.0.0.1 --port 0 --parallel <n> --alias <name>
 *   --n-predict <max>` (plus context size and threads when configured), and the hardening flags
 *   this binary's `--help` lists, read once (`--no-webui`, `--no-slots`, `--offline`,
 *   `--no-context-shift`); never `--props`, `--rpc` or `--metrics`. Descriptor 3 is the store's descriptor of the verified file,
 *   inherited by the child: the runtime opens the very file that was hashed, whatever has been
 *   renamed onto its path since. The port comes from its `listening on http://127.0.0.1:<port>`
 *   line, so there is no bind-then-release race.
 * - Ollama: one `ollama serve` for every model of the spawner (a pool), started by the first spawn
 *   and stopped after the last model's, with `OLLAMA_HOST=127.0.0.1:<port>` (the port found by
 *   binding port 0; spawned again on a new port, up to 3 times, if it exits first because the port
 *   was taken meanwhile) and `OLLAMA_MODELS` a private directory under the store. Each spawn then
 *   imports its verified model through Ollama's API under its alias (`internal/Ollama.ts`), and its
 *   handle's `stop` unloads that model (`keep_alive: 0`). While it runs, the name is checked every
 *   `verifyInterval`: a name another local process re-pointed ends the handle as if the runtime
 *   exited, so the manager stops it and imports the verified model again.
 * - Only a model minted by the store, its descriptor open and its file unchanged since it was
 *   verified, is spawned (`unverified_model` otherwise).
 * - A fresh 256-bit key per spawn, in `LLAMA_API_KEY` only (never in argv).
 * - The child's environment is built from an allowlist of the parent's variables, never the
 *   whole environment (which may hold tokens), and never a proxy variable or (for Ollama) an
 *   `OLLAMA_*` one, even allowlisted: `OLLAMA_ORIGINS` would open it to web pages.
 * - Its output, stdout and stderr, goes to a ring buffer of lines with the key scrubbed.
 * - The child leads its own process group (spawned detached): stop sends SIGTERM to the group,
 *   SIGKILL after the grace period.
 * - No orphans: the runtime is exec'd through `setpriv --pdeathsig SIGKILL`, so the kernel kills
 *   it when the manager process dies, however it dies (SIGKILL included).
 *
 * `node:child_process` rather than the platform's `Command`, which cannot hand a child a descriptor
 * beyond stdin, stdout and stderr.
 */
import { type ChildProcess, execFile, spawn as spawnChild } from "node:child_process"
import { randomBytes } from "node:crypto"
import { connect, createServer } from "node:net"
import { resolve } from "node:path"
import { FileSystem, HttpClient } from "@effect/platform"
import { NodeStream } from "@effect/platform-node"
import { Config, ConfigProvider, Deferred, Duration, Effect, Layer, Option, Redacted, Schedule, type Scope, Stream, SynchronizedRef } from "effect"
import { type CompanionConfig, defaultEnvAllowlist, firstModel, readConfig } from "../config/Config.js"
import { SpawnError } from "../services/Errors.js"
import type { VerifiedModel } from "../services/ModelStore.js"
import { type ExitStatus, type RuntimeHandle, type RuntimeKind, Spawner, type SpawnOptions } from "../services/Spawner.js"
import * as Ollama from "./internal/Ollama.js"
import * as VerifiedModels from "./internal/VerifiedModels.js"

export { defaultEnvAllowlist }

export interface SpawnerOptions {
  readonly kind: RuntimeKind
  /** The runtime binary: an absolute path, or a name looked up in the allowlisted PATH. */
  readonly binary: string
  /** Slots in the runtime; the manager sets this to `admission.maxInFlight`. */
  readonly parallel: number
  /** The name the runtime answers with (`--alias`), in place of the model's path. Default `"model"`. */
  readonly alias?: string | undefined
  /**
   * llama-server's default tokens per request (`--n-predict`) for a request that names none. Only a
   * default: a request's own count overrides it, which is why the gateway caps every request.
   */
  readonly maxTokens?: number | undefined
  readonly contextSize?: number | undefined
  readonly threads?: number | undefined
  /** A vetted chat template the runtime uses instead of the model's (`--chat-template-file`). */
  readonly chatTemplateFile?: string | undefined
  /** Serve embeddings (`--embeddings --pooling <pooling>`). */
  readonly embeddings?: { readonly pooling: "mean" | "cls" | "last" } | undefined
  /** Names of the parent's variables the child may see. Default: `defaultEnvAllowlist`. */
  readonly envAllowlist?: ReadonlyArray<string> | undefined
  /** The parent's environment to pick from. Default: the process environment, read through `ConfigProvider.fromEnv`. */
  readonly environment?: Readonly<Record<string, string | undefined>> | undefined
  /** How long to wait for the listening address (llama.cpp). Default 60 s. */
  readonly addressTimeout?: Duration.DurationInput | undefined
  /** Grace between SIGTERM and SIGKILL when the handle's scope closes. Default 5 s. */
  readonly stopGrace?: Duration.DurationInput | undefined
  /** Lines of output kept for diagnostics. Default 200. */
  readonly outputLines?: number | undefined
  /** Ollama: its private models directory (`OLLAMA_MODELS`), made 0700. Required for Ollama. */
  readonly modelsDirectory?: string | undefined
  /** Ollama: how long uploading and naming a model may take. Default 10 minutes. */
  readonly importTimeout?: Duration.DurationInput | undefined
  /** Ollama: how often a served name is checked to still name the verified blob. Default 2 s. */
  readonly verifyInterval?: Duration.DurationInput | undefined
  /**
   * Ollama: how long the process is kept once no model runs on it, so a pool swapping models does
   * not restart it; it stops at once when the spawner's scope closes. Default 30 s.
   */
  readonly linger?: Duration.DurationInput | undefined
}

/** Where the kernel's parent-death signal can be asked for (util-linux). */
const SETPRIV_PATHS = ["/usr/bin/setpriv", "/bin/setpriv"]

/** The descriptor number the model has in the child. */
const MODEL_FD = 3

const LISTENING = /listening on http:\/\/127\.0\.0\.1:(\d{1,5})\b/

const spawnFailed = () => new SpawnError({ reason: "spawn_failed" })

/**
 * Never handed to a runtime, allowlisted or not: proxies (a runtime has no business on the network
 * through them) and, for Ollama, its own settings, which this spawner sets (`OLLAMA_ORIGINS` would
 * let web pages call it, `OLLAMA_HOST` move it off loopback, `OLLAMA_MODELS` out of the store).
 */
export const forbiddenVariable = (name: string, kind: RuntimeKind = "llama.cpp"): boolean =>
  /_proxy$/i.test(name) || (kind === "ollama" && /^ollama_/i.test(name))

/** The child's environment: the allowlisted variables the parent has, and nothing else. */
export const childEnvironment = (
  environment: Readonly<Record<string, string | undefined>>,
  allowlist: ReadonlyArray<string>,
  kind: RuntimeKind = "llama.cpp"
): Record<string, string> => {
  const env: Record<string, string> = {}
  for (const name of allowlist) {
    const value = environment[name]
    if (value !== undefined && !forbiddenVariable(name, kind)) env[name] = value
  }
  return env
}

/**
 * Flags that take a surface away from llama-server, added when its `--help` lists them: the web UI,
 * the `/slots` endpoint (other requests' prompts), any network access of its own, context shifting.
 */
export const HARDENING_FLAGS = ["--no-webui", "--no-slots", "--offline", "--no-context-shift"] as const

/** The hardening flags a `--help` text lists, each as a whole option name. */
export const supportedFlags = (help: string): ReadonlySet<string> =>
  new Set(HARDENING_FLAGS.filter((flag) => new RegExp(`(?:^|[\\s,])${flag}(?=[\\s,]|$)`, "m").test(help)))

/**
 * The binary's `--help` (stdout and stderr); at most 10 s, then killed. A binary that cannot answer
 * it (a failed exit, a timeout) is `help_failed`, never "no hardening flags": a runtime started
 * without them would serve its web UI and slots, and fetch from the network.
 */
const readHelp = (binary: string, env: Record<string, string>) =>
  Effect.async<string, SpawnError>((resume) => {
    const child = execFile(binary, ["--help"], { env, timeout: 10_000, killSignal: "SIGKILL", maxBuffer: 1 << 20 }, (error, stdout, stderr) => {
      if (error === null) return resume(Effect.succeed(`${stdout}\n${stderr}`))
      const missing = "code" in error && (error.code === "ENOENT" || error.code === "EACCES")
      resume(Effect.fail(new SpawnError({ reason: missing ? "spawn_failed" : "help_failed" })))
    })
    child.stdin?.end()
    return Effect.sync(() => child.kill("SIGKILL"))
  })

/** The layer's options with what one spawn sets over them (each only when given). */
export const withSpawn = (options: SpawnerOptions, perSpawn: SpawnOptions): SpawnerOptions => ({
  ...options,
  ...Object.fromEntries(Object.entries(perSpawn).filter(([, value]) => value !== undefined))
})

/** The runtime's arguments; the key is never among them, and the model is the inherited descriptor. */
export const runtimeArgs = (options: SpawnerOptions, flags: ReadonlySet<string> = new Set()): Array<string> =>
  options.kind === "ollama"
    ? ["serve"]
    : [
      "-m",
      `/dev/fd/${MODEL_FD}`,
      "--host",
      "127.0.0.1",
      "--port",
      "0",
      "--parallel",
      String(options.parallel),
      "--alias",
      options.alias ?? "model",
      ...(options.maxTokens !== undefined ? ["--n-predict", String(options.maxTokens)] : []),
      ...(options.contextSize !== undefined ? ["--ctx-size", String(options.contextSize)] : []),
      ...(options.threads !== undefined ? ["--threads", String(options.threads)] : []),
      ...(options.chatTemplateFile !== undefined ? ["--chat-template-file", options.chatTemplateFile] : []),
      ...(options.embeddings !== undefined ? ["--embeddings", "--pooling", options.embeddings.pooling] : []),
      ...HARDENING_FLAGS.filter((flag) => flags.has(flag))
    ]

/** The allowlisted variables of the process environment, read through Effect's env provider. */
const allowlistedEnvironment = (allowlist: ReadonlyArray<string>) =>
  Effect.withConfigProvider(
    Effect.map(
      Effect.forEach(allowlist, (name) => Effect.map(Config.option(Config.string(name)), (value) => [name, Option.getOrUndefined(value)] as const)),
      (entries) => Object.fromEntries(entries)
    ),
    ConfigProvider.fromEnv()
  ).pipe(Effect.orElseSucceed(() => ({})))

/** A bounded buffer of the last `capacity` lines. */
export const ringBuffer = (capacity: number) => {
  const lines: Array<string> = []
  return {
    push: (line: string) => {
      lines.push(line)
      if (lines.length > capacity) lines.shift()
    },
    snapshot: (): ReadonlyArray<string> => lines.slice()
  }
}

/** A free loopback port, found by binding port 0 and releasing it. */
const freePort = Effect.async<number, SpawnError>((resume) => {
  const server = createServer()
  server.once("error", () => resume(Effect.fail(spawnFailed())))
  server.listen(0, "127.0.0.1", () => {
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    server.close(() => resume(port > 0 ? Effect.succeed(port) : Effect.fail(spawnFailed())))
  })
})

/** Resolves once something accepts TCP connections on the loopback port (polled every 20 ms). */
const accepting = (port: number) =>
  Effect.async<boolean>((resume) => {
    const socket = connect({ host: "127.0.0.1", port })
    socket.once("connect", () => {
      socket.destroy()
      resume(Effect.succeed(true))
    })
    socket.once("error", () => {
      socket.destroy()
      resume(Effect.succeed(false))
    })
    return Effect.sync(() => socket.destroy())
  }).pipe(
    Effect.repeat({ schedule: Schedule.spaced("20 millis"), until: (ok) => ok }),
    Effect.as(port)
  )

const signalGroup = (pid: number, signal: NodeJS.Signals) =>
  Effect.sync(() => {
    try {
      process.kill(-pid, signal)
    } catch {
      // ESRCH: the group is already gone.
    }
  })

interface Started {
  readonly child: ChildProcess
  readonly pid: number
  /** Settles once, when the process exits: a promise, so every later wait sees it too. */
  readonly exitStatus: Promise<ExitStatus>
}

const hasExited = (started: Started) => started.child.exitCode !== null || started.child.signalCode !== null

/**
 * SIGTERM to the process group, SIGKILL after `grace`; completes once it has exited. Its own wait
 * is interruptible, so the grace period bounds it even where it runs uninterruptibly.
 */
const stopProcess = (started: Started, grace: Duration.DurationInput) =>
  Effect.gen(function*() {
    const exited = Effect.promise(() => started.exitStatus)
    if (!hasExited(started)) {
      yield* signalGroup(started.pid, "SIGTERM")
      yield* Effect.interruptible(exited).pipe(Effect.timeout(grace), Effect.ignore)
      if (!hasExited(started)) yield* signalGroup(started.pid, "SIGKILL")
    }
    const status = yield* exited
    // Anything the runtime left in its group goes with it.
    yield* signalGroup(started.pid, "SIGKILL")
    return status
  })

/**
 * Spawn detached (its own process group), with `descriptor`, if any, as the child's fd 3. Acquired
 * with its release: however the caller is interrupted, a child that was started is stopped.
 */
const start = (command: string, args: ReadonlyArray<string>, env: Record<string, string>, descriptor: number | undefined, grace: Duration.DurationInput) =>
  Effect.acquireRelease(startChild(command, args, env, descriptor), (started) => stopProcess(started, grace))

const startChild = (command: string, args: ReadonlyArray<string>, env: Record<string, string>, descriptor: number | undefined) =>
  Effect.async<Started, SpawnError>((resume) => {
    const child = spawnChild(command, args, {
      stdio: ["ignore", "pipe", "pipe", ...(descriptor === undefined ? [] : [descriptor])],
      env,
      detached: true
    })
    const exitStatus = new Promise<ExitStatus>((resolve) =>
      child.once("exit", (code, signal) => resolve({ code, signal }))
    )
    child.once("error", () => resume(Effect.fail(spawnFailed())))
    child.once("spawn", () => {
      const pid = child.pid
      resume(pid === undefined ? Effect.fail(spawnFailed()) : Effect.succeed({ child, pid, exitStatus }))
    })
  })

/** What both kinds share: the checks on the host, the environment, and one process start. */
const processes = (options: SpawnerOptions) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const setpriv = yield* Effect.findFirst(SETPRIV_PATHS, (p) => Effect.orElseSucceed(fs.exists(p), () => false))
    if (Option.isNone(setpriv)) return yield* spawnFailed()
    const allowlist = options.envAllowlist ?? defaultEnvAllowlist
    const baseEnv = childEnvironment(options.environment ?? (yield* allowlistedEnvironment(allowlist)), allowlist, options.kind)
    const dropped = allowlist.filter((name) => forbiddenVariable(name, options.kind))
    if (dropped.length > 0) yield* Effect.logWarning("Allowlisted variables the runtime never gets", { dropped })
    const addressTimeout = options.addressTimeout ?? Duration.seconds(60)
    const stopGrace = options.stopGrace ?? Duration.seconds(5)
    const capacity = options.outputLines ?? 200
    // Read on the first spawn that gets an answer: which hardening flags this binary takes. A failed
    // read is not kept (Effect.cached would keep it), so the next spawn asks again.
    const known = yield* SynchronizedRef.make(Option.none<ReadonlySet<string>>())
    const flags = options.kind === "llama.cpp"
      ? SynchronizedRef.modifyEffect(known, (cached) =>
        Option.isSome(cached)
          ? Effect.succeed([cached.value, cached] as const)
          : readHelp(options.binary, baseEnv).pipe(
            Effect.map(supportedFlags),
            Effect.tap((found) => {
              const missing = HARDENING_FLAGS.filter((flag) => !found.has(flag))
              return missing.length === 0 ? Effect.void : Effect.logWarning("The runtime binary lacks hardening flags; it runs without them.", { missing })
            }),
            Effect.map((found) => [found, Option.some(found)] as const)
          ))
      : Effect.succeed(new Set<string>())

    /** llama-server with `descriptor` as its model, or Ollama listening on `port` with `extraEnv`. */
    const spawnOnce = (descriptor: number | undefined, port: number | undefined, perSpawn: SpawnOptions, extraEnv: Record<string, string> = {}) =>
      Effect.gen(function*() {
        const key = randomBytes(32).toString("base64url")
        const env = {
          ...baseEnv,
          ...(options.kind === "llama.cpp" ? { LLAMA_API_KEY: key } : extraEnv)
        }
        const args = ["--pdeathsig", "SIGKILL", "--", options.binary, ...runtimeArgs(withSpawn(options, perSpawn), yield* flags)]
        const started = yield* start(setpriv.value, args, env, descriptor, stopGrace)
        const { child, exitStatus, pid } = started
        const exited = Effect.promise(() => exitStatus)
        const stop = (grace: Duration.DurationInput) => stopProcess(started, grace)

        const output = ringBuffer(capacity)
        const address = yield* Deferred.make<number>()
        const scrub = (line: string) => line.split(key).join("[redacted]")
        const lines = (readable: NodeJS.ReadableStream | null) =>
          readable === null ? Stream.empty : NodeStream.fromReadable(() => readable as import("node:stream").Readable, () => spawnFailed())
        yield* Stream.merge(lines(child.stdout), lines(child.stderr)).pipe(
          Stream.decodeText(),
          Stream.splitLines,
          Stream.runForEach((raw) =>
            Effect.suspend(() => {
              const line = scrub(raw)
              output.push(line)
              const match = LISTENING.exec(line)
              return match === null ? Effect.void : Deferred.succeed(address, Number(match[1]))
            })
          ),
          Effect.ignore,
          Effect.forkScoped
        )

        const exitedEarly = Effect.zipRight(exited, Effect.fail(new SpawnError({ reason: "exited_early" })))
        const notReported = () => new SpawnError({ reason: "address_not_reported" })
        const listeningPort = options.kind === "ollama"
          ? accepting(port ?? 0).pipe(Effect.timeoutFail({ duration: addressTimeout, onTimeout: notReported }))
          : Deferred.await(address).pipe(Effect.timeoutFail({ duration: addressTimeout, onTimeout: notReported }))
        const boundPort = yield* Effect.raceFirst(listeningPort, exitedEarly)

        const handle: RuntimeHandle = {
          pid,
          baseUrl: `http://127.0.0.1:${boundPort}`,
          apiKey: Redacted.make(key),
          exited,
          stop,
          output: Effect.sync(output.snapshot)
        }
        return handle
      })

    return { spawnOnce }
  })

/** Only a model the store minted, whose descriptor is open and whose file has not changed since. */
const onlyVerified = <A, E, R>(model: VerifiedModel, spawn: Effect.Effect<A, E, R>): Effect.Effect<A, E | SpawnError, R> =>
  Effect.flatMap(VerifiedModels.stillVerified(model), (ok): Effect.Effect<A, E | SpawnError, R> => (ok ? spawn : Effect.fail(new SpawnError({ reason: "unverified_model" }))))

const makeLlama = (options: SpawnerOptions) =>
  Effect.map(processes(options), ({ spawnOnce }) =>
    Spawner.of({ spawn: (model, perSpawn = {}) => onlyVerified(model, spawnOnce(model.descriptor, undefined, perSpawn)) }))

const makeOllama = (options: SpawnerOptions) =>
  Effect.gen(function*() {
    const { spawnOnce } = yield* processes(options)
    const client = yield* HttpClient.HttpClient
    const directory = options.modelsDirectory
    const importTimeout = options.importTimeout ?? Duration.minutes(10)
    const verifyInterval = options.verifyInterval ?? Duration.seconds(2)
    if (directory === undefined) return yield* new SpawnError({ reason: "models_dir_unsafe" })
    // One `ollama serve` for every model: started by the first spawn, stopped after the last.
    const server = yield* Ollama.shared(
      Effect.zipRight(
        Ollama.prepareDirectories(directory),
        Effect.flatMap(freePort, (port) => spawnOnce(undefined, port, {}, Ollama.serverEnvironment(port, directory, options.parallel))).pipe(
          // The port found free may be taken by the time Ollama binds it: try a new one.
          Effect.retry({ times: 2, while: (e) => e.reason === "exited_early" })
        )
      ),
      options.linger ?? Duration.seconds(30),
      spawnFailed
    )
    /** Names held by a live model, as Ollama compares them: a second would re-point the first. */
    const held = new Set<string>()
    const spawn = (model: VerifiedModel, perSpawn: SpawnOptions = {}) =>
      Effect.gen(function*() {
        const alias = perSpawn.alias ?? options.alias ?? "model"
        const name = Ollama.ollamaName(alias)
        yield* Effect.acquireRelease(
          Effect.suspend(() => (held.has(name) ? Effect.fail(new SpawnError({ reason: "name_in_use" })) : Effect.sync(() => void held.add(name)))),
          () => Effect.sync(() => void held.delete(name))
        )
        const ollama = yield* server.get
        const serverExited = Effect.zipRight(ollama.exited, Effect.fail(new SpawnError({ reason: "exited_early" })))
        // Interruptible even in a caller's uninterruptible region (an acquire): its races must be
        // able to stop their losers.
        yield* Ollama.importModel(client, ollama.baseUrl, model, alias, {
          contextSize: perSpawn.contextSize ?? options.contextSize,
          threads: perSpawn.threads ?? options.threads
        }).pipe(
          Effect.timeoutFail({ duration: importTimeout, onTimeout: () => new SpawnError({ reason: "import_timeout" }) }),
          Effect.raceFirst(serverExited),
          Effect.interruptible
        )
        const blobPath = Ollama.blobPath(directory, model.sha256)
        // The name as this import made it: from now on, any change to it is someone else's.
        // (One that names another blob is not kept: readiness then answers `wrong_model`.)
        const modelfile = yield* Ollama.showModelfile(client, ollama.baseUrl, alias).pipe(
          Effect.map((text) => (text !== undefined && Ollama.modelfileFrom(text) === blobPath ? text : undefined)),
          Effect.mapError(() => new SpawnError({ reason: "import_failed" })),
          Effect.interruptible
        )
        const serves = { name: alias, blobPath, modelfile }
        // Ollama takes no key: any local process may re-point the name. Checked while it serves;
        // a mismatch ends this model's handle as an exit would, and the manager takes it from there.
        const replaced = yield* Deferred.make<ExitStatus>()
        yield* Ollama.servesVerified(client, ollama.baseUrl, serves).pipe(
          Effect.flip,
          Effect.filterOrFail((e) => e.reason === "wrong_model"),
          Effect.retry(Schedule.spaced(verifyInterval)),
          Effect.delay(verifyInterval),
          Effect.zipRight(Effect.logWarning("the runtime's model name was re-pointed; stopping it")),
          Effect.zipRight(Deferred.succeed(replaced, { code: null, signal: null })),
          // Forked interruptible, whatever region the spawn runs in: the scope's close stops it.
          Effect.interruptible,
          Effect.forkScoped
        )
        const handle: RuntimeHandle = {
          pid: ollama.pid,
          baseUrl: ollama.baseUrl,
          apiKey: ollama.apiKey,
          exited: Effect.raceFirst(ollama.exited, Deferred.await(replaced)),
          // The process serves other models: stopping this one unloads it; the process stops with the last.
          // Not unloaded (its name gone, say): the process is retired, stopped once no model is on it.
          stop: (grace) =>
            Effect.flatMap(Ollama.unload(client, ollama.baseUrl, alias, grace), (unloaded) =>
              Effect.as(unloaded ? Effect.void : server.retire(ollama), { code: 0, signal: null })),
          output: ollama.output,
          serves,
          shared: true
        }
        return handle
      })
    return Spawner.of({ spawn: (model, perSpawn) => onlyVerified(model, spawn(model, perSpawn)) })
  })

/**
 * The spawner for `options.kind`. Ollama's also needs an `HttpClient` (it imports each model
 * through Ollama's API) and a `Scope` (its one process stops when that scope closes, at the latest).
 */
export function make(options: SpawnerOptions & { readonly kind: "llama.cpp" }): Effect.Effect<Spawner["Type"], SpawnError, FileSystem.FileSystem>
export function make(options: SpawnerOptions): Effect.Effect<Spawner["Type"], SpawnError, FileSystem.FileSystem | HttpClient.HttpClient | Scope.Scope>
export function make(options: SpawnerOptions): Effect.Effect<Spawner["Type"], SpawnError, FileSystem.FileSystem | HttpClient.HttpClient | Scope.Scope> {
  return options.kind === "ollama" ? makeOllama(options) : makeLlama(options)
}

export function layer(options: SpawnerOptions & { readonly kind: "llama.cpp" }): Layer.Layer<Spawner, SpawnError, FileSystem.FileSystem>
export function layer(options: SpawnerOptions): Layer.Layer<Spawner, SpawnError, FileSystem.FileSystem | HttpClient.HttpClient>
export function layer(options: SpawnerOptions): Layer.Layer<Spawner, SpawnError, FileSystem.FileSystem | HttpClient.HttpClient> {
  return Layer.scoped(Spawner, make(options))
}

export const layerConfig = Layer.unwrapEffect(Effect.map(readConfig, (config) => layer(optionsFrom(config))))

export const optionsFrom = (config: CompanionConfig): SpawnerOptions => ({
  kind: config.runtime.kind,
  binary: config.runtime.binary,
  parallel: config.admission.maxInFlight,
  alias: firstModel(config).name,
  maxTokens: config.gateway.maxTokens,
  contextSize: Option.getOrUndefined(config.runtime.contextSize),
  threads: Option.getOrUndefined(config.runtime.threads),
  chatTemplateFile: Option.getOrUndefined(config.policy.chatTemplateFile),
  envAllowlist: config.runtime.envAllowlist,
  addressTimeout: config.runtime.addressTimeout,
  stopGrace: config.stopGrace,
  // Absolute: Ollama names a blob by its full path, which readiness compares.
  modelsDirectory: resolve(config.storeDir, "ollama")
})
