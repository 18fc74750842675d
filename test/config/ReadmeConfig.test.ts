/** The config file shown in README.md: it must pass the one config schema, as printed. */
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Effect, Either } from "effect"
import { CompanionConfig, decodeFile, encode, nameFrom } from "../../src/config/Config.js"
import * as Hub from "../../src/domain/Hub.js"
import * as DownloaderLive from "../../src/layers/DownloaderLive.js"
import * as Integrity from "../../src/domain/Integrity.js"

const readme = readFileSync(join(import.meta.dirname, "../../README.md"), "utf8")
const shown = JSON.parse(/## A real-world config[\s\S]*?```json\n([\s\S]*?)```/.exec(readme)?.[1] ?? "null") as unknown

describe("README: the real-world config", () => {
  it.effect("is a valid config file, its model spec is well-formed and its source is allowed; Config reads it the same", () =>
    Effect.gen(function*() {
      const config = yield* decodeFile(shown)
      assert.strictEqual(config.model?.spec.sizeBytes, 532_517_120)
      assert.isTrue(config.model !== undefined && Either.isRight(Integrity.checkSource(config.model.source, config.allowedSources)))
      const viaProvider = yield* Effect.withConfigProvider(CompanionConfig, ConfigProvider.fromJson(shown))
      assert.deepStrictEqual(encode(viaProvider), encode(config))
    }))

  it("is what `pin` writes for the command shown, over the keys set before", () => {
    const command = /```sh\ncompanion-runtime pin (\S+) (\S+) \\\n\s+--revision (\S+)/.exec(readme)
    assert.isNotNull(command)
    const [, repo, file, commit] = command!
    const { allowedSources: _allowed, model, ...before } = shown as Record<string, unknown> & { model: { sha256: string; sizeBytes: number; name: string } }
    const hub = new URL(Hub.DEFAULT_HUB)
    const written = Hub.applyPin(before, { repo: repo!, commit: commit!, file: file!, sha256: model.sha256, sizeBytes: model.sizeBytes }, hub, nameFrom(Hub.resolveUrl(hub, repo!, commit!, file!)))
    assert.deepStrictEqual(written, shown)
  })

  it.effect("its downloads may be redirected to the hub's documented storage hosts, and nowhere else", () =>
    Effect.gen(function*() {
      const config = yield* decodeFile(shown)
      const redirects = [...config.allowedSources, ...(DownloaderLive.hubOptions(config).redirectSources ?? [])]
      for (const storage of ["https://cas-bridge.xethub.hf.co/xet-bridge-us/abc/def", "https://cdn-lfs-us-1.hf.co/repos/ab/cd/x", "https://us.aws.cdn.hf.co/x", "https://transfer.xethub-eu.hf.co/x"]) {
        assert.isTrue(Either.isRight(Integrity.checkSource(storage, redirects)), storage)
        // A redirect target only, never a first source.
        assert.isTrue(Either.isLeft(Integrity.checkSource(storage, config.allowedSources)), storage)
      }
      for (const elsewhere of ["https://hf.co.evil.io/x", "https://evilhf.co/x", "https://huggingface.co/other/repo/resolve/main/x.gguf"]) {
        assert.isTrue(Either.isLeft(Integrity.checkSource(elsewhere, redirects)), elsewhere)
      }
    }))
})
