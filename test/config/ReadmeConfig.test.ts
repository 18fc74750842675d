/** The config file shown in README.md: it must pass the one config schema, as printed. */
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Effect, Either } from "effect"
import { CompanionConfig, decodeFile, encode } from "../../src/config/Config.js"
import * as Integrity from "../../src/domain/Integrity.js"

const readme = readFileSync(join(import.meta.dirname, "../../README.md"), "utf8")
const shown = JSON.parse(/## A real-world config[\s\S]*?```json\n([\s\S]*?)```/.exec(readme)?.[1] ?? "null") as unknown

describe("README: the real-world config", () => {
  it.effect("is a valid config file, its model spec is well-formed and its source is allowed; Config reads it the same", () =>
    Effect.gen(function*() {
      const config = yield* decodeFile(shown)
      assert.strictEqual(config.model.spec.sizeBytes, 532_517_120)
      assert.isTrue(Either.isRight(Integrity.checkSource(config.model.source, config.allowedSources)))
      const viaProvider = yield* Effect.withConfigProvider(CompanionConfig, ConfigProvider.fromJson(shown))
      assert.deepStrictEqual(encode(viaProvider), encode(config))
    }))
})
