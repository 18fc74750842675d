/**
 * The services, the manager and the store reach the clock, the environment, randomness and the
 * file system only through Effect services (Clock, Config, Random, FileSystem, StoreFileSystem), so
 * the Test layers and TestClock replace all of them. And deferreds are completed by hand in one
 * place only: the slot gate.
 */
import { readdirSync, readFileSync } from "node:fs"
import { join, relative } from "node:path"
import { assert, describe, it } from "@effect/vitest"

const ROOT = join(import.meta.dirname, "../..")
const files = [
  ...readdirSync(join(ROOT, "src/services")).map((f) => `src/services/${f}`),
  "src/layers/RuntimeManagerLive.ts",
  "src/layers/ModelStoreLive.ts",
  "src/layers/internal/SlotGate.ts"
]
const AMBIENT = /\bprocess\.\w|Date\.now|new Date\(|Math\.random|console\.|setTimeout|setInterval|\bfetch\(|require\(|Effect\.run(Promise|Sync|Fork)/

const sources = (dir: string): Array<string> =>
  readdirSync(join(ROOT, dir), { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? sources(join(dir, entry.name)) : entry.name.endsWith(".ts") ? [join(dir, entry.name)] : []
  )

describe("service boundaries", () => {
  it.skipIf(Reflect.has(globalThis, "__stryker__"))("no ambient clock, environment, randomness, console or file access", () => {
    assert.isAtLeast(files.length, 10)
    for (const file of files) {
      const source = readFileSync(join(ROOT, file), "utf8")
      assert.notMatch(source, AMBIENT, file)
      for (const [, spec] of source.matchAll(/^import .* from "([^"]+)"/gm)) {
        assert.notMatch(spec ?? "", /^(node:)?(fs|fs\/promises|child_process|http|https|net|os|path)$/, `${file} imports ${spec}`)
      }
    }
  })

  it.skipIf(Reflect.has(globalThis, "__stryker__"))("only the slot gate completes deferreds by hand", () => {
    const byHand = sources("src").filter((file) => /Deferred\.unsafe(Done|Make)/.test(readFileSync(join(ROOT, file), "utf8")))
    assert.deepStrictEqual(byHand.map((f) => relative(".", f)), ["src/layers/internal/SlotGate.ts"])
  })
})
