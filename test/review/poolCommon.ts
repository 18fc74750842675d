/** Shared by the review's pool tests: four same-shape models, a budget in units of one estimate. */
import { ConfigProvider, Deferred, Effect, Either, Layer } from "effect"
import * as Gguf from "../../src/domain/Gguf.js"
import * as MemoryFit from "../../src/domain/MemoryFit.js"
import { DownloaderControl } from "../../src/layers/DownloaderTest.js"
import { SpawnerControl } from "../../src/layers/SpawnerTest.js"
import * as TestLayers from "../../src/layers/TestLayers.js"
import { ModelPool } from "../../src/services/ModelPool.js"
import { tinyGguf } from "../../src/testing/ModelFixtures.js"
import { sha256Hex } from "../domain/fixtures.js"

export const NAMES = ["a", "b", "c", "d"] as const
export type Name = (typeof NAMES)[number]
export const FILES = Object.fromEntries(NAMES.map((name, i) => [name, tinyGguf(100 + i)])) as Record<Name, Uint8Array>
export const sourceOf = (name: Name) => `https://models.example.com/org/${name}/resolve/main/${name}.gguf`
export const PARALLEL = 2
export const ESTIMATE = MemoryFit.estimate(Either.getOrThrow(Gguf.summarize(Either.getOrThrow(Gguf.read(FILES.a, FILES.a.length)))), {
  parallel: PARALLEL
}).totalBytes

type Json = Record<string, unknown>
export const configOf = (budgetModels: number, patch: Json = {}, perModel: Partial<Record<Name, Json>> = {}) => ({
  storeDir: "/store",
  models: Object.fromEntries(
    NAMES.map((name) => [name, { sha256: sha256Hex(FILES[name]), sizeBytes: FILES[name].length, source: sourceOf(name), ...perModel[name] }])
  ),
  allowedSources: ["https://models.example.com/org/"],
  admission: { maxInFlight: PARALLEL, queueBound: 64 },
  resources: { maxRamBytes: Math.floor(budgetModels * ESTIMATE), maxCpuPercent: 100 },
  health: { firstProbeInterval: "50 millis", loadDeadline: "30 seconds" },
  stopGrace: "1 second",
  ...patch
})

export const poolLayer = (budgetModels: number, patch: Json = {}, perModel: Partial<Record<Name, Json>> = {}) =>
  TestLayers.pool.pipe(Layer.provide(Layer.setConfigProvider(ConfigProvider.fromJson(configOf(budgetModels, patch, perModel)))))

export const serveAll = Effect.flatMap(DownloaderControl, (d) => Effect.forEach(NAMES, (name) => d.serve(sourceOf(name), FILES[name]), { discard: true }))

export const alive = Effect.gen(function*() {
  const spawned = yield* (yield* SpawnerControl).spawned
  const running = yield* Effect.filter(spawned, (p) => p.alive)
  return running.map((p) => p.options.alias ?? "?").sort()
})

export const ping = (name: string) => Effect.flatMap(ModelPool, (pool) => pool.run(name, () => Effect.succeed(name)))
export const hold = (name: Name, gate: Deferred.Deferred<void>) => Effect.flatMap(ModelPool, (pool) => Effect.fork(pool.run(name, () => Deferred.await(gate))))
export const settle = Effect.repeatN(Effect.yieldNow(), 20)
export const stateOf = (name: Name) =>
  Effect.map(Effect.flatMap(ModelPool, (p) => p.status), (s) => s.models.find((m) => m.name === name)!.status)
