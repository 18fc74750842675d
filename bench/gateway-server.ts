/**
 * The system under test for bench:gateway, in its own process: the live manager over llama-server
 * and the gateway on a loopback port, with the tiny model from a local HTTPS origin.
 *
 * 1. Start-up: `STARTS` cycles of start → ready → drain. The spawner is wrapped to note when each
 *    spawn began and to poll the runtime's `/health` every millisecond on its own, so the manager's
 *    start-to-ready can be set against the runtime's spawn-to-first-200. One JSON line per cycle.
 * 2. Serving: start once more and print `{"gateway", "proxy", "direct", "key"}`, then serve until
 *    stdin closes, drain and exit. `direct` is llama-server itself (the key is this bench's own
 *    runtime's); `proxy` is the least any Node proxy can do, a bare `http` pipe to it in this same
 *    process with no checks, no admission and no Effect: the floor the gateway is set against.
 */
import { Agent, createServer, get, request } from "node:http"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createHash } from "node:crypto"
import { HttpServer } from "@effect/platform"
import { NodeContext, NodeHttpClient, NodeHttpServer } from "@effect/platform-node"
import { ConfigProvider, Effect, Layer, Redacted } from "effect"
import { serveBytes, startOrigin } from "../scripts/lib/origin.js"
import { makeTestPki } from "../scripts/lib/pki.js"
import { tinyGguf } from "../scripts/tiny-gguf.js"
import { CompanionConfig } from "../src/config/Config.js"
import * as Gateway from "../src/http/Gateway.js"
import * as DownloaderLive from "../src/layers/DownloaderLive.js"
import * as HealthProbeLive from "../src/layers/HealthProbeLive.js"
import * as ModelStoreLive from "../src/layers/ModelStoreLive.js"
import * as ResourceStatLive from "../src/layers/ResourceStatLive.js"
import * as ModelPoolLive from "../src/layers/ModelPoolLive.js"
import * as RuntimeManagerLive from "../src/layers/RuntimeManagerLive.js"
import * as SpawnerLive from "../src/layers/SpawnerLive.js"
import * as StoreFileSystemLive from "../src/layers/StoreFileSystemLive.js"
import { RuntimeManager } from "../src/services/RuntimeManager.js"
import { Spawner } from "../src/services/Spawner.js"

const [llamaServer = "", maxInFlight = "4", starts = "7"] = process.argv.slice(2)
const STARTS = Number(starts)

/** Poll `url` every millisecond until it answers 200; resolves with the time it did. */
const firstOk = (url: string): Promise<number> =>
  new Promise((resolve) => {
    const attempt = () =>
      get(url, (res) => {
        res.resume()
        if (res.statusCode === 200) resolve(performance.now())
        else setTimeout(attempt, 1)
      }).on("error", () => setTimeout(attempt, 1))
    attempt()
  })

interface SpawnTiming {
  readonly spawnAt: number
  readonly firstOk: Promise<number>
}
const spawns: Array<SpawnTiming> = []

const timedSpawner = (options: SpawnerLive.SpawnerOptions) =>
  Layer.scoped(
    Spawner,
    Effect.map(SpawnerLive.make(options), (live) =>
      Spawner.of({
        spawn: (model) =>
          Effect.suspend(() => {
            const spawnAt = performance.now()
            return Effect.tap(live.spawn(model), (handle) =>
              Effect.sync(() => spawns.push({ spawnAt, firstOk: firstOk(`${handle.baseUrl}/health`) })))
          })
      }))
  ).pipe(Layer.provide(NodeContext.layer))

/** A streamed one-token completion through the gateway: when its first byte arrived (known once it ends). */
const firstByteOf = (port: number): Promise<number> =>
  new Promise((resolve, reject) => {
    const body = JSON.stringify({ prompt: "Hello", max_tokens: 1, stream: true })
    const req = request({
      host: "127.0.0.1",
      port,
      method: "POST",
      path: "/v1/completions",
      headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) }
    }, (res) => {
      let first = 0
      res.once("data", () => {
        first = performance.now()
      })
      // Resolved once the answer ends, so its slot is free for the next round's unload.
      res.on("end", () => resolve(first))
      res.resume()
    })
    req.on("error", reject)
    req.end(body)
  })

/** A bare Node proxy to the runtime: the floor for any proxy written in Node. */
const bareProxy = (target: string, key: string) =>
  new Promise<string>((resolve) => {
    const agent = new Agent({ keepAlive: true })
    const proxy = createServer((req, res) => {
      const headers: Record<string, string> = { authorization: `Bearer ${key}` }
      for (const name of ["content-type", "content-length"]) {
        const value = req.headers[name]
        if (typeof value === "string") headers[name] = value
      }
      const outgoing = request(`${target}${req.url}`, { method: req.method, agent, headers }, (answer) => {
        res.writeHead(answer.statusCode ?? 502, { "content-type": answer.headers["content-type"] ?? "application/json" })
        answer.pipe(res)
      })
      outgoing.on("error", () => res.destroy())
      req.pipe(outgoing)
    })
    proxy.listen(0, "127.0.0.1", () => {
      const address = proxy.address()
      resolve(`http://127.0.0.1:${typeof address === "object" && address !== null ? address.port : 0}`)
    })
  })

const work = mkdtempSync(join(tmpdir(), "companion-bench-gateway-"))
const model = tinyGguf()
const pki = makeTestPki()
const origin = await startOrigin(pki, { "/models/tiny.gguf": serveBytes(model) })

const program = Effect.gen(function*() {
  const config = yield* CompanionConfig.pipe(
    Effect.withConfigProvider(ConfigProvider.fromJson({
      storeDir: join(work, "store"),
      model: {
        sha256: createHash("sha256").update(model).digest("hex"),
        sizeBytes: model.length,
        source: `${origin.baseUrl}/models/tiny.gguf`
      },
      allowedSources: [`${origin.baseUrl}/models/`],
      admission: { maxInFlight: Number(maxInFlight), queueBound: 64 }
    }))
  )
  const stack = Gateway.layer().pipe(
    Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" })),
    Layer.provideMerge(ModelPoolLive.fromManager({ name: "model" })),
    Layer.provideMerge(RuntimeManagerLive.layer(RuntimeManagerLive.configFrom(config))),
    Layer.provide(ModelStoreLive.layer(ModelStoreLive.optionsFrom(config))),
    Layer.provide(Layer.mergeAll(
      StoreFileSystemLive.layer,
      DownloaderLive.layer({ allowedSources: config.allowedSources, extraCaCertificates: [pki.caPem] }),
      timedSpawner({ kind: "llama.cpp", binary: llamaServer, parallel: config.admission.maxInFlight, contextSize: 512 * config.admission.maxInFlight, threads: 1 }),
      HealthProbeLive.layer("llama.cpp"),
      ResourceStatLive.layer
    )),
    Layer.provide(Layer.mergeAll(NodeContext.layer, NodeHttpClient.layerUndici))
  )
  yield* Effect.gen(function*() {
    const manager = yield* RuntimeManager
    // A first cycle downloads and verifies the model: not what is timed.
    yield* manager.start
    yield* manager.drain("10 seconds")
    for (let i = 0; i < STARTS; i++) {
      const t0 = performance.now()
      yield* manager.start
      const ready = performance.now()
      const spawn = spawns.at(-1)!
      const ok = yield* Effect.promise(() => spawn.firstOk)
      console.log(JSON.stringify({ startToReady: ready - t0, spawnToFirstOk: ok - spawn.spawnAt }))
      yield* manager.drain("10 seconds")
    }
    const server = yield* HttpServer.HttpServer
    const port = server.address._tag === "TcpAddress" ? server.address.port : 0
    // Loaded on demand: unloaded while idle, then a request through the gateway loads it again.
    for (let i = 0; i < STARTS; i++) {
      yield* Effect.ignore(manager.start) // ready already after the previous round
      if (!(yield* manager.unloadIfIdle)) throw new Error("bench: the runtime was not idle")
      const sent = performance.now()
      const firstByte = yield* Effect.promise(() => firstByteOf(port))
      const spawn = spawns.at(-1)!
      const ok = yield* Effect.promise(() => spawn.firstOk)
      console.log(JSON.stringify({ onDemandFirstByte: firstByte - sent, onDemandSpawnToFirstOk: ok - spawn.spawnAt }))
    }

    const endpoint = yield* manager.run((e) => Effect.succeed(e))
    const key = Redacted.value(endpoint.apiKey)
    const proxy = yield* Effect.promise(() => bareProxy(endpoint.baseUrl, key))
    console.log(JSON.stringify({ gateway: `http://127.0.0.1:${port}`, proxy, direct: endpoint.baseUrl, key }))
    yield* Effect.async<void>((resume) => {
      process.stdin.resume()
      process.stdin.once("end", () => resume(Effect.void))
    })
    yield* manager.drain("10 seconds")
  }).pipe(Effect.provide(stack))
})

try {
  await Effect.runPromise(program)
} finally {
  await origin.close()
  rmSync(work, { recursive: true, force: true })
  process.exit(0) // the bare proxy would keep the process up
}
