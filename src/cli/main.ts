/**
 * `companion-runtime` — serve, pull, verify, status. Built with @effect/cli, run with
 * NodeRuntime.runMain (SIGINT/SIGTERM interrupt the program: `serve` then drains, stops the runtime
 * and exits 0). Failures print their fixed message, never a URL, path, digest or key, and exit 1.
 */
import { createServer } from "node:http"
import { Args, Command, Options } from "@effect/cli"
import { FileSystem, HttpClient, HttpServer } from "@effect/platform"
import { NodeContext, NodeHttpClient, NodeHttpServer, NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Layer, Stream } from "effect"
import { type CompanionConfig, ConfigFileError, parseFile } from "../config/Config.js"
import * as Integrity from "../domain/Integrity.js"
import * as Gateway from "../http/Gateway.js"
import * as LiveLayers from "../layers/LiveLayers.js"
import { ModelStore } from "../services/ModelStore.js"
import { RuntimeManager } from "../services/RuntimeManager.js"

const DEFAULT_STATUS_URL = "http://127.0.0.1:8089"

/** A failure already reported to the user: exit 1, print nothing more. */
class Reported {
  readonly _tag = "Reported"
}

const report = <A, E extends { readonly message: string }, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.catchAll(effect, (error) => Effect.zipRight(Console.error(`error: ${error.message}`), Effect.fail(new Reported())))

const elapsed = (since: number) => `${Math.round(performance.now() - since)} ms`

const configOption = Options.file("config", { exists: "yes" }).pipe(Options.withDescription("a JSON config file"))

/** Read and validate the config file: one schema, every problem named by field, never by value. */
const load = (path: string) =>
  Effect.flatMap(FileSystem.FileSystem, (fs) =>
    Effect.flatMap(
      Effect.mapError(fs.readFileString(path), () => new ConfigFileError({ reason: "unreadable", problems: [] })),
      parseFile
    ))

/** The live stack and the gateway, configured from the file. */
const serverLayer = (config: CompanionConfig) =>
  Gateway.layer(Gateway.optionsFrom(config)).pipe(
    Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: config.gateway.port, host: "127.0.0.1" })),
    Layer.provideMerge(LiveLayers.layerFrom(config))
  )

const serve = Command.make("serve", { config: configOption }, ({ config: file }) =>
  report(
    Effect.gen(function*() {
      const config = yield* load(file)
      yield* Effect.gen(function*() {
        const manager = yield* RuntimeManager
        const store = yield* ModelStore
        const server = yield* HttpServer.HttpServer
        const t0 = performance.now()
        // Verified here once; the start below finds the same file unchanged and does not read it again.
        yield* Effect.scoped(store.ensure(config.model.spec, config.model.source))
        yield* Console.log(`model verified in ${elapsed(t0)}`)
        const t1 = performance.now()
        yield* manager.start
        yield* Console.log(`runtime ready in ${elapsed(t1)}`)
        const address = server.address
        yield* Console.log(`gateway listening on http://127.0.0.1:${address._tag === "TcpAddress" ? address.port : 0}`)
        return yield* Effect.never
      }).pipe(
        Effect.onInterrupt(() =>
          Effect.flatMap(RuntimeManager, (manager) =>
            Console.log("draining").pipe(
              Effect.zipRight(Effect.ignore(manager.drain("30 seconds"))),
              Effect.zipRight(Console.log("stopped"))
            ))
        ),
        Effect.provide(serverLayer(config))
      )
    })
  )).pipe(Command.withDescription("Ensure the model, start the runtime and serve the loopback gateway until SIGINT/SIGTERM."))

const bar = (received: number, expected: number, startedAt: number) => {
  const seconds = Math.max(0.001, (performance.now() - startedAt) / 1000)
  const rate = received / seconds
  const eta = rate > 0 ? Math.round((expected - received) / rate) : 0
  const done = expected > 0 ? received / expected : 1
  const width = 30
  const filled = Math.round(done * width)
  const mib = (n: number) => (n / 1024 / 1024).toFixed(1)
  return `[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${mib(received)}/${mib(expected)} MiB ${mib(rate)} MiB/s ETA ${eta}s`
}

const pull = Command.make("pull", { config: configOption }, ({ config: file }) =>
  report(
    Effect.gen(function*() {
      const config = yield* load(file)
      const tty = process.stdout.isTTY === true
      const t0 = performance.now()
      let lastLine = 0
      yield* Effect.gen(function*() {
        const store = yield* ModelStore
        yield* store.progress.pipe(
          Stream.runForEach(({ expectedBytes, receivedBytes }) =>
            Effect.sync(() => {
              const now = performance.now()
              if (tty) process.stdout.write(`\r${bar(receivedBytes, expectedBytes, t0)}`)
              else if (now - lastLine > 1000 || receivedBytes === expectedBytes) {
                lastLine = now
                process.stdout.write(`${bar(receivedBytes, expectedBytes, t0)}\n`)
              }
            })
          ),
          Effect.forkScoped
        )
        yield* store.ensure(config.model.spec, config.model.source)
        if (tty) process.stdout.write("\n")
        yield* Console.log(`model verified in ${elapsed(t0)}`)
      }).pipe(Effect.scoped, Effect.provide(LiveLayers.storeFrom(config)))
    })
  )).pipe(Command.withDescription("Download and verify the configured model, and nothing else (no runtime is needed)."))

const verify = Command.make(
  "verify",
  {
    file: Args.file({ name: "file", exists: "yes" }),
    sha256: Options.text("sha256"),
    size: Options.integer("size")
  },
  ({ file, sha256, size }) =>
    report(
      Effect.gen(function*() {
        const spec = yield* Integrity.checkSpec({ sha256, sizeBytes: size })
        const fs = yield* FileSystem.FileSystem
        const verifier = Integrity.makeVerifier(spec)
        yield* fs.stream(file, { chunkSize: FileSystem.MiB(1) }).pipe(
          Stream.mapError(() => ({ message: "The file could not be read." })),
          Stream.runForEach((chunk) => verifier.update(chunk))
        )
        yield* verifier.finalize()
        yield* Console.log("verified")
      })
    )
).pipe(Command.withDescription("Stream-verify a local file against a SHA-256 and a size; the exit code is the verdict."))

const status = Command.make(
  "status",
  { url: Options.text("url").pipe(Options.withDefault(DEFAULT_STATUS_URL)) },
  ({ url }) =>
    report(
      Effect.gen(function*() {
        const client = yield* HttpClient.HttpClient
        const response = yield* client.get(`${url.replace(/\/$/, "")}/health`).pipe(
          Effect.mapError(() => ({ message: "The gateway did not answer." }))
        )
        const body = yield* response.json.pipe(Effect.orElseSucceed(() => ({})))
        yield* Console.log(JSON.stringify(body))
        if (response.status !== 200) return yield* Effect.fail({ message: "The runtime is not ready." })
      }).pipe(Effect.scoped, Effect.provide(NodeHttpClient.layerUndici))
    )
).pipe(Command.withDescription("Ask a running gateway's /health; exit 0 only when ready."))

const root = Command.make("companion-runtime").pipe(Command.withSubcommands([serve, pull, verify, status]))

export const cli = Command.run(root, { name: "companion-runtime", version: "0.1.0" })

// Only when run as the program, not when imported by a test.
if (process.argv[1] !== undefined && /cli[\\/]main\.ts$|companion-runtime(\.mjs)?$/.test(process.argv[1])) {
  cli(process.argv).pipe(
    Effect.provide(NodeContext.layer),
    (effect) => NodeRuntime.runMain(effect, { disableErrorReporting: true })
  )
}
