/** The config file shown in README.md: it must pass the command's own validation, as printed. */
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Effect, Either } from "effect"
import * as ConfigFile from "../../src/cli/ConfigFile.js"
import * as Integrity from "../../src/domain/Integrity.js"
import { RuntimeManagerConfig } from "../../src/services/RuntimeManager.js"

const readme = readFileSync(join(import.meta.dirname, "../../README.md"), "utf8")
const shown = JSON.parse(/## A real-world config[\s\S]*?```json\n([\s\S]*?)```/.exec(readme)?.[1] ?? "null") as unknown

describe("README: the real-world config", () => {
  it.effect("is a valid config file, its model spec is well-formed and its source is allowed", () =>
    Effect.gen(function*() {
      const file = yield* ConfigFile.decode(shown)
      // The manager's own reading checks the model spec (digest form, size) on the way.
      const config = yield* Effect.withConfigProvider(RuntimeManagerConfig, ConfigProvider.fromJson(file))
      assert.strictEqual(config.model.spec.sizeBytes, 532_517_120)
      assert.isTrue(Either.isRight(Integrity.checkSource(config.model.source, config.allowedSources)))
    }))
})
