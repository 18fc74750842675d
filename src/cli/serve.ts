/**
 * `companion-runtime serve` and `pull`: read the config file, then run the live stack (serve) or the
 * store alone (pull). Imported only when one of them runs.
 */
import { createServer } from "node:http"
import { FileSystem, HttpServer } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Config, Console, Effect, Either, Layer, Option, Stream } from "effect"
import * as Hub from "../domain/Hub.js"
import { type CompanionConfig, ConfigFileError, type ModelConfig, modelsOf, parseFile } from "../config/Config.js"
import * as Gateway from "../http/Gateway.js"
import * as LiveLayers from "../layers/LiveLayers.js"
import { ModelStore } from "../services/ModelStore.js"
import { PoolError } from "../services/Errors.js"
import { ModelPool } from "../services/ModelPool.js"

const elapsed = (since: number) => `${Math.round(performance.now() - since)} ms`

/**
 * Read and validate the config file: one schema, every problem named by field, never by value.
 * With no `hub.token` in it, the environment's `HF_TOKEN` (else `HUGGING_FACE_HUB_TOKEN`) is the
 * hub's token, when the hub is the default one only (`Hub.takesEnvironmentToken`).
 */
export const load = (path: string) =>
  Effect.flatMap(FileSystem.FileSystem, (fs) =>
    Effect.flatMap(
      Effect.flatMap(
        Effect.mapError(fs.readFileString(path), () => new ConfigFileError({ reason: "unreadable", problems: [] })),
        parseFile
      ),
      (config) =>
        Option.isSome(config.hub.token) || !Either.match(Hub.parseHub(config.hub.url), { onLeft: () => false, onRight: Hub.takesEnvironmentToken })
          ? Effect.succeed(config)
          : Effect.map(
            Effect.orElseSucceed(Config.option(Config.orElse(Config.redacted("HF_TOKEN"), () => Config.redacted("HUGGING_FACE_HUB_TOKEN"))), () => Option.none()),
            (token) => ({ ...config, hub: { ...config.hub, token } })
          )
    ))

/** A hub source's repository and commit, said before the work (no other part of the URL). */
const announce = (config: CompanionConfig, model: ModelConfig, several: boolean) =>
  Effect.flatMap(Effect.promise(() => import("./pin.js")), (m) =>
    Option.match(m.describeSource(config, model), {
      onNone: () => Effect.void,
      onSome: (text) => Console.log(several ? `model ${model.name} from ${text}` : `model from ${text}`)
    }))

/** The live stack and the gateway, configured from the file. */
const serverLayer = (config: CompanionConfig) =>
  Gateway.layer(Gateway.optionsFrom(config)).pipe(
    Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: config.gateway.port, host: "127.0.0.1" })),
    Layer.provideMerge(LiveLayers.poolFrom(config))
  )

/**
 * Every model is downloaded and verified before the gateway answers (a first request must not wait
 * for a download); the preloaded ones are then started, the rest load on their first request.
 */
export const serve = (file: string) =>
  Effect.gen(function*() {
    const config = yield* load(file)
    const models = modelsOf(config)
    const several = models.length > 1 || config.models !== undefined
    yield* Effect.gen(function*() {
      const pool = yield* ModelPool
      const store = yield* ModelStore
      const server = yield* HttpServer.HttpServer
      for (const model of models) {
        yield* announce(config, model, several)
        const t0 = performance.now()
        // Verified here once; a start finds the same file unchanged and does not read it again.
        yield* Effect.scoped(store.ensure(model.spec, model.source))
        yield* Console.log(several ? `model ${model.name} verified in ${elapsed(t0)}` : `model verified in ${elapsed(t0)}`)
      }
      const t1 = performance.now()
      yield* pool.start
      const preloaded = models.filter((m) => m.preload).map((m) => m.name)
      if (!several) yield* Console.log(`runtime ready in ${elapsed(t1)}`)
      else if (preloaded.length > 0) yield* Console.log(`ready in ${elapsed(t1)}: ${preloaded.join(", ")}`)
      if (several) {
        const onDemand = models.filter((m) => !m.preload).map((m) => m.name)
        if (onDemand.length > 0) yield* Console.log(`loaded on demand: ${onDemand.join(", ")}`)
      }
      const address = server.address
      yield* Console.log(`gateway listening on http://127.0.0.1:${address._tag === "TcpAddress" ? address.port : 0}`)
      return yield* Effect.never
    }).pipe(
      Effect.onInterrupt(() =>
        Effect.flatMap(ModelPool, (pool) =>
          Console.log("draining").pipe(
            Effect.zipRight(pool.drain("30 seconds")),
            Effect.zipRight(Console.log("stopped"))
          ))
      ),
      Effect.provide(serverLayer(config))
    )
  })

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

/** Download and verify every model, or the one named; an unknown name is refused before any download. */
export const pull = (file: string, only: Option.Option<string> = Option.none()) =>
  Effect.gen(function*() {
    const config = yield* load(file)
    const all = modelsOf(config)
    const models = Option.match(only, { onNone: () => all, onSome: (name) => all.filter((m) => m.name === name) })
    if (models.length === 0) return yield* Effect.fail(new PoolError({ reason: "model_not_found" }))
    const several = all.length > 1 || config.models !== undefined
    for (const model of models) yield* pullOne(config, model, several)
  })

const pullOne = (config: CompanionConfig, model: ModelConfig, several: boolean) =>
  Effect.gen(function*() {
    yield* announce(config, model, several)
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
      yield* store.ensure(model.spec, model.source)
      if (tty) process.stdout.write("\n")
      yield* Console.log(several ? `model ${model.name} verified in ${elapsed(t0)}` : `model verified in ${elapsed(t0)}`)
    }).pipe(Effect.scoped, Effect.provide(LiveLayers.storeFrom(config)))
  })
