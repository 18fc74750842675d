/** The example in docs/api.md, verbatim but for the imports: if it stops compiling or passing, the doc is wrong. */
import { createHash } from "node:crypto"
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { assert, it } from "@effect/vitest"
import { ConfigProvider, Effect, Fiber, Layer, Redacted, TestClock } from "effect"
import { DownloaderTest, HealthProbeTest, ModelFixtures, RuntimeManager, SpawnerTest, TestLayers } from "../../src/index.js"

// A tiny generated GGUF (its header passes the checks) and the spec a registry would publish for it.
const model = ModelFixtures.tinyGguf()
const sha256 = createHash("sha256").update(model).digest("hex")
const source = "https://models.example.com/acme/tiny/resolve/main/tiny.gguf"

// The manager reads its configuration through Config; here from JSON, in an app from the environment or a file.
const config = ConfigProvider.fromJson({
  model: { sha256, sizeBytes: model.length, source },
  allowedSources: ["https://models.example.com/acme/tiny"],
  admission: { maxInFlight: 2, queueBound: 8 }
})

// The real manager and model store over the in-memory layers; every control service stays available.
const TestManager = TestLayers.layer.pipe(Layer.provide(Layer.setConfigProvider(config)))

it.effect("docs/api.md: embedding the manager with the Test layers", () =>
  Effect.gen(function*() {
    const downloader = yield* DownloaderTest.DownloaderControl
    const health = yield* HealthProbeTest.HealthProbeControl
    const manager = yield* RuntimeManager

    yield* downloader.serve(source, model) // the source serves the bytes, with ranges
    yield* health.answers("loading", "ok") // the runtime loads, then is ready
    const starting = yield* Effect.fork(manager.start) // verify, spawn (a fake process), poll health
    yield* TestClock.adjust("100 millis") // time moves only when the test says so
    yield* Fiber.join(starting)

    const answer = yield* manager.run(({ apiKey, baseUrl }) =>
      // A real app sends its HTTP request here, with `Authorization: Bearer ${Redacted.value(apiKey)}`.
      Effect.succeed(`${baseUrl} accepted a key of ${Redacted.value(apiKey).length} characters`)
    )
    assert.match(answer, /^http:\/\/127\.0\.0\.1:\d+ accepted a key/)

    const process = yield* (yield* SpawnerTest.SpawnerControl).latest
    yield* manager.drain("5 seconds")
    assert.isFalse(yield* process.alive)
  }).pipe(Effect.provide(TestManager)))

it("docs/api.md shows this example, verbatim", () => {
  const doc = readFileSync(join(import.meta.dirname, "../../docs/api.md"), "utf8")
  const block = /## Embedding and testing with the Test layers\n[\s\S]*?```ts\n([\s\S]*?)```/.exec(doc)?.[1]
  const self = readFileSync(import.meta.filename, "utf8")
  const body = self.slice(self.indexOf("// A tiny"), self.indexOf("\nit(\"docs/api.md shows"))
  assert.strictEqual(block?.trim(), body.trim())
})
