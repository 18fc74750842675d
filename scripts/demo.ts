/**
 * `npm start` — the whole path on this machine, with embedded defaults:
 * find or build llama-server, write the tiny model, serve it from a local HTTPS origin (a CA made
 * now), run `companion-runtime serve` against it, send one chat completion through the gateway,
 * print the timeline, and stop. `npm start -- --keep` leaves the gateway up until Ctrl-C.
 */
import { execFileSync, spawn } from "node:child_process"
import { createHash } from "node:crypto"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { createInterface } from "node:readline"
import { serveBytes, startOrigin } from "./lib/origin.js"
import { makeTestPki } from "./lib/pki.js"
import { tinyGguf } from "./tiny-gguf.js"

const keep = process.argv.includes("--keep")
const say = (line: string) => console.log(`demo: ${line}`)

say("finding or building llama-server (the first build takes about 10 minutes on 2 cores)")
const llamaServer = execFileSync(process.execPath, ["scripts/runtime-ensure.mjs"], {
  encoding: "utf8",
  stdio: ["ignore", "pipe", "inherit"]
}).trim().split("\n").at(-1) ?? ""

const work = mkdtempSync(join(tmpdir(), "companion-demo-"))
const model = tinyGguf()
const pki = makeTestPki()
const origin = await startOrigin(pki, { "/models/tiny.gguf": serveBytes(model) })
const caFile = join(work, "demo-ca.pem")
writeFileSync(caFile, pki.caPem)
const configFile = join(work, "companion.json")
writeFileSync(
  configFile,
  JSON.stringify(
    {
      storeDir: join(work, "models"),
      model: {
        sha256: createHash("sha256").update(model).digest("hex"),
        sizeBytes: model.length,
        source: `${origin.baseUrl}/models/tiny.gguf`
      },
      allowedSources: [`${origin.baseUrl}/models/`],
      download: { caFiles: [caFile] },
      runtime: { binary: llamaServer, contextSize: 512 },
      gateway: { port: 0 }
    },
    null,
    2
  )
)
say(`tiny model (${model.length} bytes) served at ${origin.baseUrl}/models/tiny.gguf; config ${configFile}`)

const serve = spawn(process.execPath, [resolve("bin/companion-runtime.mjs"), "serve", "--config", configFile], {
  stdio: ["ignore", "pipe", "inherit"]
})
const timeline: Record<string, string> = {}
const listening = new Promise<string>((resolveUrl, reject) => {
  createInterface({ input: serve.stdout }).on("line", (line) => {
    console.log(`serve: ${line}`)
    const verified = /^model verified in (\d+ ms)/.exec(line)
    if (verified) timeline.verified = verified[1]!
    const ready = /^runtime ready in (\d+ ms)/.exec(line)
    if (ready) timeline.ready = ready[1]!
    const url = /^gateway listening on (\S+)/.exec(line)
    if (url) resolveUrl(url[1]!)
  })
  serve.once("exit", (code) => reject(new Error(`serve exited early (${code})`)))
})

const cleanup = async () => {
  await origin.close()
  rmSync(work, { recursive: true, force: true })
}

try {
  const url = await listening
  const t0 = performance.now()
  const response = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ messages: [{ role: "user", content: "Hello!" }], max_tokens: 16 })
  })
  const body = (await response.json()) as { choices?: Array<{ message?: { content?: string } }> }
  const answered = `${Math.round(performance.now() - t0)} ms`
  say(`HTTP ${response.status}; the answer (random weights, so gibberish): ${JSON.stringify(body.choices?.[0]?.message?.content ?? "")}`)
  say(`timeline: verified in ${timeline.verified}, spawned, ready in ${timeline.ready}, answered in ${answered}`)
  if (keep) {
    say(`the gateway stays up at ${url} — try: curl -s ${url}/health ; Ctrl-C to stop`)
    await new Promise<void>((done) => process.once("SIGINT", () => done()))
  }
} catch (error) {
  say(`failed: ${(error as Error).message}`)
  process.exitCode = 1
} finally {
  if (serve.exitCode === null) {
    serve.kill("SIGTERM")
    const code = await new Promise<number | null>((done) => serve.once("exit", (c) => done(c)))
    say(`serve stopped on SIGTERM, exit code ${code}`)
    if (code !== 0) process.exitCode = 1
  }
  await cleanup()
}
