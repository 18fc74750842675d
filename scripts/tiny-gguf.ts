/**
 * The generated test models (src/testing/ModelFixtures.ts), and a command that writes the tiny one:
 *
 *   npx tsx scripts/tiny-gguf.ts <out.gguf>    writes the file and prints its SHA-256 and size
 */
import { createHash } from "node:crypto"
import { writeFileSync } from "node:fs"
import { tinyGguf } from "../src/testing/ModelFixtures.js"

export * from "../src/testing/ModelFixtures.js"

if (process.argv[1] !== undefined && import.meta.url.endsWith(process.argv[1].split("/").at(-1) ?? "")) {
  const out = process.argv[2]
  if (out === undefined) {
    process.stderr.write("usage: tiny-gguf.ts <out.gguf>\n")
    process.exit(2)
  }
  const bytes = tinyGguf()
  writeFileSync(out, bytes)
  process.stdout.write(`${JSON.stringify({ path: out, sha256: createHash("sha256").update(bytes).digest("hex"), sizeBytes: bytes.length })}\n`)
}
