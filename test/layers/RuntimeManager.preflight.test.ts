/**
 * Before any spawn, the verified model's GGUF header goes through the bounded reader, the policy
 * and the memory fit (in memory: the real manager and store over the Test layers). A refusal is
 * typed, carries no input, and nothing is spawned.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { DownloaderControl } from "../../src/layers/DownloaderTest.js"
import { MemoryFileSystem } from "../../src/layers/MemoryFileSystem.js"
import { SpawnerControl } from "../../src/layers/SpawnerTest.js"
import { RuntimeManager } from "../../src/services/RuntimeManager.js"
import { makeGguf, TINY } from "../../src/testing/ModelFixtures.js"
import { sha256Hex } from "../domain/fixtures.js"
import { expectFailure, managerLayer, SOURCE } from "./harness.js"

/** A model whose second tensor's offset points into the first's data: a correct digest, a hostile header. */
const overlapping = () => {
  const bytes = Buffer.from(makeGguf(TINY))
  const name = Buffer.from("output_norm.weight")
  const at = bytes.indexOf(name) + name.length + 4 + 8 + 4
  bytes.writeBigUInt64LE(bytes.readBigUInt64LE(at) - 32n, at)
  return new Uint8Array(bytes)
}

const refusedBeforeSpawn = (bytes: Uint8Array, tag: string, reason: string, patch: Record<string, unknown> = {}) =>
  Effect.gen(function*() {
    yield* (yield* DownloaderControl).serve(SOURCE, bytes)
    yield* expectFailure((yield* RuntimeManager).start, tag, reason)
    assert.deepStrictEqual(yield* (yield* SpawnerControl).spawned, [])
    assert.strictEqual((yield* (yield* RuntimeManager).status).state, "stopped")
  }).pipe(Effect.provide(managerLayer({ model: { sha256: sha256Hex(bytes), sizeBytes: bytes.length }, ...patch })))

describe("RuntimeManager: the model's header before any spawn", () => {
  it.effect("a tensor offset into another tensor's data, with its digest pinned: gguf_bad_tensor, nothing spawned", () =>
    refusedBeforeSpawn(overlapping(), "GgufError", "gguf_bad_tensor"))

  it.effect("bytes that are not a GGUF at all, correctly pinned: gguf_bad_magic, nothing spawned", () =>
    refusedBeforeSpawn(new TextEncoder().encode("not a model, but exactly the pinned bytes"), "GgufError", "gguf_bad_magic"))

  it.effect("an estimate over resources.maxRamBytes: model_too_large, nothing spawned", () =>
    refusedBeforeSpawn(makeGguf(TINY), "ResourceError", "model_too_large", { resources: { maxRamBytes: 16 * 1024 * 1024 } }))

  it.effect("a context size that would not fit (the KV cache counted as llama-server allocates it)", () =>
    refusedBeforeSpawn(makeGguf({ ...TINY, context: 1 << 20 }), "ResourceError", "model_too_large", {
      resources: { maxRamBytes: 256 * 1024 * 1024 },
      runtime: { contextSize: 1 << 20 }
    }))

  it.effect("an architecture off the list: architecture_not_allowed", () =>
    refusedBeforeSpawn(makeGguf(TINY), "PolicyError", "architecture_not_allowed", { policy: { architectures: ["qwen3"] } }))

  it.effect("a chat template over its length, or not one of the vetted ones", () =>
    Effect.gen(function*() {
      const model = makeGguf({ ...TINY, chatTemplate: "{{ messages }}".repeat(100) })
      yield* refusedBeforeSpawn(model, "PolicyError", "chat_template_too_long", { policy: { maxChatTemplateBytes: 1000 } })
      yield* refusedBeforeSpawn(model, "PolicyError", "chat_template_not_allowed", { policy: { chatTemplateSha256s: ["ab".repeat(32)] } })
    }))

  it.effect("a model that passes is spawned: its template among the vetted ones, or replaced by a vetted file (then not judged)", () =>
    Effect.gen(function*() {
      const template = "x".repeat(2000)
      const model = makeGguf({ ...TINY, chatTemplate: template })
      const starts = (patch: Record<string, unknown>) =>
        Effect.gen(function*() {
          yield* (yield* DownloaderControl).serve(SOURCE, model)
          yield* (yield* RuntimeManager).start
          assert.strictEqual((yield* (yield* SpawnerControl).spawned).length, 1)
          assert.strictEqual((yield* (yield* RuntimeManager).status).state, "ready")
        }).pipe(Effect.provide(managerLayer({ model: { sha256: sha256Hex(model), sizeBytes: model.length }, ...patch })))
      yield* starts({ policy: { chatTemplateSha256s: [sha256Hex(new TextEncoder().encode(template))] } })
      yield* starts({ policy: { maxChatTemplateBytes: 100, chatTemplateSha256s: ["ab".repeat(32)], chatTemplateFile: "/etc/companion/vetted.jinja" } })
    }))

  it.effect("a download is screened as its first bytes arrive: a model that cannot pass stops there, and nothing is stored", () =>
    Effect.gen(function*() {
      const model = makeGguf({ ...TINY, vocabulary: 4096 }) // about 1.5 MB, its header about 60 KB
      yield* Effect.gen(function*() {
        const downloader = yield* DownloaderControl
        yield* downloader.serve(SOURCE, model, 16 * 1024)
        yield* expectFailure((yield* RuntimeManager).start, "PolicyError", "architecture_not_allowed")
        const sent = yield* downloader.bytesSent
        assert.isBelow(sent, model.length / 4, `the whole model was fetched (${sent} bytes)`)
        assert.deepStrictEqual(yield* (yield* SpawnerControl).spawned, [])
        // Not retried, and the partial file is gone.
        assert.strictEqual((yield* downloader.requests).length, 1)
        const files = yield* (yield* MemoryFileSystem).files
        assert.isFalse([...files.keys()].some((path) => path.includes(sha256Hex(model))))
      }).pipe(Effect.provide(managerLayer({ model: { sha256: sha256Hex(model), sizeBytes: model.length }, policy: { architectures: ["qwen3"] } })))
    }))
})
