/**
 * Spawner for a real runtime process, through `@effect/platform`'s Command.
 *
 * - llama.cpp: `llama-server -m <verified file> --host 127.0.0.1 --port 0 --parallel <n>` (plus
 *   context size and threads when configured); the port comes from its `listening on
 *   http://127.0.0.1:<port>` log line, so there is no bind-then-release race.
 * - Ollama: `ollama serve` with `OLLAMA_HOST=127.0.0.1:<port>`, the port found by binding port 0;
 *   the handle is returned once the port accepts connections. If the runtime exits first (the
 *   port was taken meanwhile), it is spawned again on a new port (up to 3 times).
 * - A fresh 256-bit key per spawn, in `LLAMA_API_KEY` only (never in argv).
 * - The child's environment is built from an allowlist of the parent's variables, never the
 *   whole environment (which may hold tokens).
 * - Its output, stdout and stderr, goes to a ring buffer of lines with the key scrubbed.
 * - The child leads its own process group (the platform spawns it detached): stop sends SIGTERM to
 *   the group, SIGKILL after the grace period.
 * - No orphans: the runtime is exec'd through `setpriv --pdeathsig SIGKILL`, so the kernel kills
 *   it when the manager process dies, however it dies (SIGKILL included).
 */
import { randomBytes } from "node:crypto"
import { connect, createServer } from "node:net"
import { Command, CommandExecutor, FileSystem } from "@effect/platform"
import { Config, ConfigProvider, Deferred, Duration, Effect, Either, Layer, Option, Redacted, Schedule, Stream } from "effect"
import { SpawnError } from "../services/Errors.js"
import { type ExitStatus, type RuntimeHandle, Spawner, type VerifiedModel } from "../services/Spawner.js"
import type { RuntimeKind } from "./HealthProbeLive.js"

export interface SpawnerOptions {
  readonly kind: RuntimeKind
  /** The runtime binary: an absolute path, or a name looked up in the allowlisted PATH. */
  readonly binary: string
  /** Slots in the runtime; the manager sets this to `admission.maxInFlight`. */
  readonly parallel: number
  readonly contextSize?: number | undefined
  readonly threads?: number | undefined
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
}

/** Enough to find programs and libraries, pick a locale and a GPU; nothing that holds a secret. */
export const defaultEnvAllowlist: ReadonlyArray<string> = [
  "PATH",
  "HOME",
  "LANG",
  "LC_ALL",
  "TZ",
  "TMPDIR",
  "CUDA_VISIBLE_DEVICES",
  "HIP_VISIBLE_DEVICES",
  "ROCR_VISIBLE_DEVICES"
]

/** Where the kernel's parent-death signal can be asked for (util-linux). */
const SETPRIV_PATHS = ["/usr/bin/setpriv", "/bin/setpriv"]

const LISTENING = /listening on http:\/\/127\.0\.0\.1:(\d{1,5})\b/

const spawnFailed = () => new SpawnError({ reason: "spawn_failed" })

/** The child's environment: the allowlisted variables the parent has, and nothing else. */
export const childEnvironment = (
  environment: Readonly<Record<string, string | undefined>>,
  allowlist: ReadonlyArray<string>
): Record<string, string> => {
  const env: Record<string, string> = {}
  for (const name of allowlist) {
    const value = environment[name]
    if (value !== undefined) env[name] = value
  }
  return env
}

/** The runtime's arguments; the key is never among them. */
export const runtimeArgs = (options: SpawnerOptions, model: VerifiedModel): Array<string> =>
  options.kind === "ollama"
    ? ["serve"]
    : [
      "-m",
      model.path,
      "--host",
      "127.0.0.1",
      "--port",
      "0",
      "--parallel",
      String(options.parallel),
      ...(options.contextSize !== undefined ? ["--ctx-size", String(options.contextSize)] : []),
      ...(options.threads !== undefined ? ["--threads", String(options.threads)] : [])
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

/** The platform reports a signal death only in an error's text; read the signal name back. */
const exitStatusOf = (exit: Either.Either<number, { readonly message: string }>): ExitStatus =>
  Either.isRight(exit)
    ? { code: exit.right, signal: null }
    : { code: null, signal: /\b(SIG[A-Z0-9]+)\b/.exec(exit.left.message)?.[1] ?? "unknown" }

const signalGroup = (pid: number, signal: NodeJS.Signals) =>
  Effect.sync(() => {
    try {
      process.kill(-pid, signal)
    } catch {
      // ESRCH: the group is already gone.
    }
  })

export const make = (options: SpawnerOptions) =>
  Effect.gen(function*() {
    const executor = yield* CommandExecutor.CommandExecutor
    const fs = yield* FileSystem.FileSystem
    const setpriv = yield* Effect.findFirst(SETPRIV_PATHS, (p) => Effect.orElseSucceed(fs.exists(p), () => false))
    if (Option.isNone(setpriv)) return yield* spawnFailed()
    const allowlist = options.envAllowlist ?? defaultEnvAllowlist
    const baseEnv = childEnvironment(options.environment ?? (yield* allowlistedEnvironment(allowlist)), allowlist)
    const addressTimeout = options.addressTimeout ?? Duration.seconds(60)
    const stopGrace = options.stopGrace ?? Duration.seconds(5)
    const capacity = options.outputLines ?? 200

    const spawnOnce = (model: VerifiedModel, port: number | undefined) =>
      Effect.gen(function*() {
        const key = randomBytes(32).toString("base64url")
        const env = {
          ...baseEnv,
          ...(options.kind === "llama.cpp" ? { LLAMA_API_KEY: key } : { OLLAMA_HOST: `127.0.0.1:${port}` })
        }
        const command = Command.make(setpriv.value, "--pdeathsig", "SIGKILL", "--", options.binary, ...runtimeArgs(options, model))
          .pipe(Command.env(env, { extendEnv: false }))
        const proc = yield* executor.start(command).pipe(Effect.mapError(spawnFailed))
        const pid = proc.pid

        const exited = yield* Deferred.make<ExitStatus>()
        yield* Effect.forkScoped(
          Effect.flatMap(Effect.either(proc.exitCode), (exit) => Deferred.succeed(exited, exitStatusOf(exit)))
        )

        const output = ringBuffer(capacity)
        const address = yield* Deferred.make<number>()
        const scrub = (line: string) => line.split(key).join("[redacted]")
        yield* Stream.merge(proc.stdout, proc.stderr).pipe(
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

        const stop = (grace: Duration.DurationInput) =>
          Effect.gen(function*() {
            if (!(yield* Deferred.isDone(exited))) {
              yield* signalGroup(pid, "SIGTERM")
              // Interruptible, so the grace period bounds the wait even where stop runs uninterruptibly.
              yield* Effect.interruptible(Deferred.await(exited)).pipe(Effect.timeout(grace), Effect.ignore)
              if (!(yield* Deferred.isDone(exited))) yield* signalGroup(pid, "SIGKILL")
            }
            const status = yield* Deferred.await(exited)
            // Anything the runtime left in its group goes with it.
            yield* signalGroup(pid, "SIGKILL")
            return status
          })
        // Runs before the platform's own release, which would wait on SIGTERM without a limit.
        yield* Effect.addFinalizer(() => stop(stopGrace))

        const exitedEarly = Effect.zipRight(Deferred.await(exited), Effect.fail(new SpawnError({ reason: "exited_early" })))
        const listeningPort = options.kind === "ollama"
          ? accepting(port ?? 0).pipe(
            Effect.timeoutFail({ duration: addressTimeout, onTimeout: () => new SpawnError({ reason: "address_not_reported" }) })
          )
          : Deferred.await(address).pipe(
            Effect.timeoutFail({ duration: addressTimeout, onTimeout: () => new SpawnError({ reason: "address_not_reported" }) })
          )
        const boundPort = yield* Effect.raceFirst(listeningPort, exitedEarly)

        const handle: RuntimeHandle = {
          pid,
          baseUrl: `http://127.0.0.1:${boundPort}`,
          apiKey: Redacted.make(key),
          exited: Deferred.await(exited),
          stop,
          output: Effect.sync(output.snapshot)
        }
        return handle
      })

    const spawn = (model: VerifiedModel) =>
      options.kind === "llama.cpp"
        ? spawnOnce(model, undefined)
        : Effect.flatMap(freePort, (port) => spawnOnce(model, port)).pipe(
          // The port found free may be taken by the time Ollama binds it: try a new one.
          Effect.retry({ times: 2, while: (e) => e.reason === "exited_early" })
        )

    return Spawner.of({ spawn })
  })

export const layer = (options: SpawnerOptions): Layer.Layer<Spawner, SpawnError, CommandExecutor.CommandExecutor | FileSystem.FileSystem> =>
  Layer.effect(Spawner, make(options))

/** `runtime.*` keys, with `admission.maxInFlight` as the runtime's slot count. */
export const SpawnerConfig = Config.all({
  kind: Config.literal("llama.cpp", "ollama")("kind").pipe(Config.withDefault("llama.cpp" as const)),
  binary: Config.string("binary").pipe(Config.withDefault("llama-server")),
  contextSize: Config.option(Config.integer("contextSize")),
  threads: Config.option(Config.integer("threads")),
  envAllowlist: Config.array(Config.string(), "envAllowlist").pipe(Config.withDefault(defaultEnvAllowlist)),
  addressTimeout: Config.duration("addressTimeout").pipe(Config.withDefault(Duration.seconds(60)))
}).pipe(Config.nested("runtime"))
