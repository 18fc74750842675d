/** Shared by the manager tests: a model, a configuration read through Config, and assertions. */
import { assert } from "@effect/vitest"
import { Cause, ConfigProvider, Effect, Exit, Layer, Option } from "effect"
import { CompanionConfig } from "../../src/config/Config.js"
import * as TestLayers from "../../src/layers/TestLayers.js"
import { tinyGguf } from "../../src/testing/ModelFixtures.js"
import { assertCarriesNoInput, sha256Hex } from "../domain/fixtures.js"

/** A valid GGUF (the store's bytes must pass the header check before any spawn). */
export const MODEL = tinyGguf()
export const SPEC = { sha256: sha256Hex(MODEL), sizeBytes: MODEL.length }
export const SOURCE = "https://models.example.com/org/tiny/resolve/main/tiny.gguf"
export const STORE = "/store"
export const FINAL_PATH = `${STORE}/${SPEC.sha256}`
export const PARTIAL_PATH = `${STORE}/partial/${SPEC.sha256}.partial`

/** The configuration a test starts from; every value travels through ConfigProvider and Config. */
export const baseConfig = {
  storeDir: STORE,
  model: { ...SPEC, source: SOURCE },
  allowedSources: ["https://models.example.com/org/tiny"],
  admission: { maxInFlight: 2, queueBound: 2 },
  resources: { maxRamBytes: 4 * 1024 ** 3, maxCpuPercent: 90 },
  maxObservationAge: "100 millis",
  health: { firstProbeInterval: "50 millis", maxProbeInterval: "1 second", probeTimeout: "2 seconds", loadDeadline: "30 seconds" },
  download: { retries: 3, retryBase: "500 millis", retryMax: "10 seconds" },
  restart: { maxFailures: 3, window: "1 minute", cooldown: "2 minutes", backoffBase: "1 second", backoffMax: "8 seconds" },
  stopGrace: "5 seconds"
}

type Json = { readonly [key: string]: unknown }
const merge = (base: Json, patch: Json): Json =>
  Object.fromEntries(
    [...new Set([...Object.keys(base), ...Object.keys(patch)])].map((k) => {
      const a = base[k]
      const b = patch[k]
      const nested = typeof a === "object" && a !== null && !Array.isArray(a) && typeof b === "object" && b !== null && !Array.isArray(b)
      return [k, nested ? merge(a as Json, b as Json) : b === undefined ? a : b]
    })
  )

export const providerOf = (patch: Json = {}) => ConfigProvider.fromJson(merge(baseConfig, patch))

export const loadConfig = (patch: Json = {}) => Effect.withConfigProvider(CompanionConfig, providerOf(patch))

/** The manager and the store over the in-memory layers, with every test control available. */
export const managerLayer = (patch: Json = {}) => TestLayers.layer.pipe(Layer.provide(Layer.setConfigProvider(providerOf(patch))))

/** The store alone over the in-memory layers. */
export const storeLayer = (patch: Json = {}) => TestLayers.store.pipe(Layer.provide(Layer.setConfigProvider(providerOf(patch))))

/** Run `effect`, expect it to fail with this tag and reason, and check the error carries no input. */
export const expectFailure = <A, E, R>(effect: Effect.Effect<A, E, R>, tag: string, reason: string) =>
  Effect.gen(function*() {
    const exit = yield* Effect.exit(effect)
    if (Exit.isSuccess(exit)) return assert.fail(`expected ${tag}/${reason}, got success`)
    const failure = Cause.failureOption(exit.cause)
    if (Option.isNone(failure)) return assert.fail(`expected ${tag}/${reason}, got ${Cause.pretty(exit.cause)}`)
    const error = failure.value as { _tag: string; reason: string; message: string }
    assert.strictEqual(`${error._tag}/${error.reason}`, `${tag}/${reason}`)
    if (!("retryAfterMillis" in error)) assertCarriesNoInput(error)
    return error
  })

import { DownloaderControl } from "../../src/layers/DownloaderTest.js"
import { RuntimeManager } from "../../src/services/RuntimeManager.js"

/** Serve the model and start the runtime; health answers "ok" at once unless scripted. */
export const startReady = Effect.gen(function*() {
  const downloader = yield* DownloaderControl
  const manager = yield* RuntimeManager
  yield* downloader.serve(SOURCE, MODEL)
  yield* manager.start
  return manager
})
