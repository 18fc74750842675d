/**
 * The services and the manager reach the clock, the environment, randomness and the file system
 * only through Effect services (Clock, Config, Random, FileSystem), so the Test layers and
 * TestClock replace all of them.
 */
import { readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"

const ROOT = join(import.meta.dirname, "../..")
const files = [
  ...readdirSync(join(ROOT, "src/services")).map((f) => `src/services/${f}`),
  "src/layers/RuntimeManagerLive.ts"
]
const AMBIENT = /\bprocess\.\w|Date\.now|new Date\(|Math\.random|console\.|setTimeout|setInterval|\bfetch\(|require\(|Effect\.run(Promise|Sync|Fork)/

describe("service boundaries", () => {
  it.skipIf(Reflect.has(globalThis, "__stryker__"))("no ambient clock, environment, randomness, console or file access", () => {
    assert.isAtLeast(files.length, 7)
    for (const file of files) {
      const source = readFileSync(join(ROOT, file), "utf8")
      assert.notMatch(source, AMBIENT, file)
      for (const [, spec] of source.matchAll(/^import .* from "([^"]+)"/gm)) {
        assert.notMatch(spec ?? "", /^(node:)?(fs|fs\/promises|child_process|http|https|net|os|path)$/, `${file} imports ${spec}`)
      }
    }
  })
})
