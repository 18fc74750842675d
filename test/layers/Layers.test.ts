/**
 * LiveLayers and TestLayers provide the same services; the Test side adds only its control
 * services and the in-memory file system under them. The store-only layers need no runtime.
 */
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Context, Effect, Layer } from "effect"
import * as LiveLayers from "../../src/layers/LiveLayers.js"
import * as TestLayers from "../../src/layers/TestLayers.js"
import { baseConfig } from "./harness.js"

/** The tags a layer puts in context, by key. */
const keysOf = <E>(layer: Layer.Layer<never, E, never> | Layer.Layer<any, E, never>) =>
  Effect.scoped(Effect.map(Layer.build(layer), (context) => new Set([...(context as Context.Context<never>).unsafeMap.keys()])))

/** What only a Test layer has: the controls, and the platform's FileSystem and Path over memory. */
const TEST_ONLY = /Control$|Processes$|^companion-runtime\/MemoryFileSystem$|^@effect\/platform\/(FileSystem|Path)$/

const withProvider = <A, E, R>(layer: Layer.Layer<A, E, R>, storeDir: string) =>
  layer.pipe(Layer.provide(Layer.setConfigProvider(ConfigProvider.fromJson({ ...baseConfig, storeDir, runtime: { binary: "/nonexistent" } }))))

describe("LiveLayers and TestLayers", () => {
  it.effect("provide the same services; Test adds only controls and the memory it runs on", () =>
    Effect.acquireUseRelease(
      Effect.sync(() => mkdtempSync(join(tmpdir(), "companion-layers-"))),
      (dir) =>
        Effect.gen(function*() {
          const live = yield* keysOf(withProvider(LiveLayers.layer, dir) as Layer.Layer<never, unknown, never>)
          const test = yield* keysOf(withProvider(TestLayers.layer, "/store") as Layer.Layer<never, unknown, never>)
          assert.includeMembers([...test], [...live])
          assert.deepStrictEqual([...test].filter((key) => !live.has(key) && !TEST_ONLY.test(key)), [])
          for (const service of ["RuntimeManager", "ModelStore", "Downloader", "Spawner", "HealthProbe", "ResourceStat", "StoreFileSystem"]) {
            assert.isTrue(live.has(`companion-runtime/${service}`), service)
          }
          const liveStore = yield* keysOf(withProvider(LiveLayers.store, dir) as Layer.Layer<never, unknown, never>)
          const testStore = yield* keysOf(withProvider(TestLayers.store, "/store") as Layer.Layer<never, unknown, never>)
          assert.includeMembers([...testStore], [...liveStore])
          // The store alone: no spawner, no resource probe (pull runs where neither could).
          assert.deepStrictEqual([...liveStore].sort(), ["companion-runtime/Downloader", "companion-runtime/ModelStore", "companion-runtime/StoreFileSystem"])
        }),
      (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
    ))
})
