/**
 * The `companion-runtime` command as a user runs it: a separate process, its exit code and output.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process"
import { createHash } from "node:crypto"
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { createInterface } from "node:readline"
import { afterAll, assert, beforeAll, describe, inject, it } from "vitest"
import { type Origin, serveBytes, startOrigin } from "../../scripts/lib/origin.js"
import { makeTestPki, type TestPki } from "../../scripts/lib/pki.js"
import { makeGguf, TINY, tinyGguf } from "../../scripts/tiny-gguf.js"

const BIN = resolve("bin/companion-runtime.mjs")
const MODEL = tinyGguf()
const SHA = createHash("sha256").update(MODEL).digest("hex")
let work: string
let pki: TestPki
let origin: Origin

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "companion-cli-"))
  pki = makeTestPki()
  origin = await startOrigin(pki, { "/models/tiny.gguf": serveBytes(MODEL) })
})

afterAll(async () => {
  await origin?.close()
  if (work !== undefined) rmSync(work, { recursive: true, force: true })
})

const run = (...args: Array<string>) =>
  new Promise<{ code: number | null; stdout: string; stderr: string }>((done) => {
    execFile(process.execPath, [BIN, ...args], { timeout: 60_000 }, (error, stdout, stderr) =>
      done({ code: error === null ? 0 : typeof error.code === "number" ? error.code : null, stdout, stderr }))
  })

const writeConfig = (name: string, config: unknown) => {
  const path = join(work, name)
  writeFileSync(path, JSON.stringify(config))
  return path
}

describe("live: the companion-runtime command", () => {
  it("an invalid config fails before any work, naming fields and expectations, echoing no value", async () => {
    const path = writeConfig("bad.json", {
      model: { sha256: "NOT-HEX-secret-digest", sizeBytes: -5, source: 42 },
      runtime: { kind: "vllm" },
      gateway: { token: 12345, port: 70000 },
      apiKey: "sk-secret-value-abc"
    })
    const { code, stderr, stdout } = await run("serve", "--config", path)
    assert.strictEqual(code, 1)
    assert.include(stderr, "model.sha256: expected 64 lowercase hex digits")
    assert.include(stderr, "model.sizeBytes: expected a positive integer")
    assert.include(stderr, "model.source: expected")
    assert.include(stderr, "runtime.kind: expected")
    assert.include(stderr, "gateway.port: expected a port number")
    assert.include(stderr, "apiKey: not a known field")
    for (const secret of ["NOT-HEX", "secret-digest", "sk-secret-value-abc", "12345", "vllm", "70000"]) {
      assert.notInclude(stderr + stdout, secret)
    }
    const notJson = join(work, "not.json")
    writeFileSync(notJson, "{ nope")
    const second = await run("pull", "--config", notJson)
    assert.strictEqual(second.code, 1)
    assert.include(second.stderr, "not valid JSON")
  }, 60_000)

  it("verify: the exit code is the verdict", async () => {
    const file = join(work, "tiny.gguf")
    writeFileSync(file, MODEL)
    const ok = await run("verify", file, "--sha256", SHA, "--size", String(MODEL.length))
    assert.strictEqual(ok.code, 0)
    assert.include(ok.stdout, "verified")
    const wrongDigest = await run("verify", file, "--sha256", "0".repeat(64), "--size", String(MODEL.length))
    assert.strictEqual(wrongDigest.code, 1)
    assert.include(wrongDigest.stderr, "digest")
    assert.notInclude(wrongDigest.stderr, "0".repeat(64))
    const wrongSize = await run("verify", file, "--sha256", SHA, "--size", String(MODEL.length - 1))
    assert.strictEqual(wrongSize.code, 1)
    assert.notInclude(wrongSize.stderr, SHA)
  }, 60_000)

  it("pull: downloads and verifies with the store alone, starts no runtime, and a second pull downloads nothing", async () => {
    const caFile = join(work, "ca-pull.pem")
    writeFileSync(caFile, pki.caPem)
    const store = join(work, "pulled")
    const config = writeConfig("pull.json", {
      storeDir: store,
      model: { sha256: SHA, sizeBytes: MODEL.length, source: `${origin.baseUrl}/models/tiny.gguf` },
      allowedSources: [`${origin.baseUrl}/models/`],
      download: { caFiles: [caFile] },
      // A runtime that does not exist: pull never needs one.
      runtime: { binary: "/nonexistent/llama-server" }
    })
    const before = origin.hits.get("/models/tiny.gguf") ?? 0
    const first = await run("pull", "--config", config)
    assert.strictEqual(first.code, 0, first.stderr)
    assert.match(first.stdout, /model verified in \d+ ms/)
    assert.strictEqual(createHash("sha256").update(readFileSync(join(store, SHA))).digest("hex"), SHA)
    assert.strictEqual(statSync(join(store, SHA)).mode & 0o777, 0o600)
    const second = await run("pull", "--config", config)
    assert.strictEqual(second.code, 0, second.stderr)
    assert.strictEqual((origin.hits.get("/models/tiny.gguf") ?? 0) - before, 1)
    assert.notInclude(first.stdout + first.stderr + second.stdout + second.stderr, SHA)
  }, 60_000)

  it("serve + status; SIGTERM with a request in flight lets it complete, then exits 0", async () => {
    const caFile = join(work, "ca.pem")
    writeFileSync(caFile, pki.caPem)
    const config = writeConfig("good.json", {
      storeDir: join(work, "models"),
      model: { sha256: SHA, sizeBytes: MODEL.length, source: `${origin.baseUrl}/models/tiny.gguf` },
      allowedSources: [`${origin.baseUrl}/models/`],
      download: { caFiles: [caFile] },
      runtime: { binary: inject("llamaServer") },
      gateway: { port: 0 }
    })
    const serve: ChildProcess = spawn(process.execPath, [BIN, "serve", "--config", config], { stdio: ["ignore", "pipe", "pipe"] })
    try {
      const lines: Array<string> = []
      const url = await new Promise<string>((done, fail) => {
        createInterface({ input: serve.stdout! }).on("line", (line) => {
          lines.push(line)
          const match = /^gateway listening on (\S+)/.exec(line)
          if (match) done(match[1]!)
        })
        serve.once("exit", (code) => fail(new Error(`serve exited (${code})`)))
      })
      assert.match(lines.join("\n"), /model verified in \d+ ms\nruntime ready in \d+ ms/)

      const ready = await run("status", "--url", url)
      assert.strictEqual(ready.code, 0)
      // The health answer, then one line per model.
      const [answer, ...modelLines] = ready.stdout.trim().split("\n")
      assert.strictEqual((JSON.parse(answer ?? "") as { state: string }).state, "ready")
      assert.strictEqual(modelLines.length, 1)
      assert.match(modelLines[0] ?? "", /^[A-Za-z0-9._:-]+: ready, \d+ in flight, \d+ queued$/)

      // A streamed completion; SIGTERM arrives once its first bytes have.
      const response = await fetch(`${url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: "Once", max_tokens: 200, stream: true, ignore_eos: true })
      })
      const reader = response.body!.getReader()
      let text = new TextDecoder().decode((await reader.read()).value)
      const exited = new Promise<number | null>((done) => serve.once("exit", (code) => done(code)))
      serve.kill("SIGTERM")
      for (;;) {
        const { done, value } = await reader.read()
        if (done) break
        text += new TextDecoder().decode(value)
      }
      assert.include(text, "data: [DONE]")
      assert.strictEqual(await exited, 0)
      assert.include(lines.join("\n"), "draining")

      const gone = await run("status", "--url", url)
      assert.strictEqual(gone.code, 1)
    } finally {
      if (serve.exitCode === null) serve.kill("SIGKILL")
    }
  }, 120_000)

  it("inspect: one JSON object with the header's summary and the estimate; a broken file is a fixed message, exit 1, no path", async () => {
    const shape = { ...TINY, layers: 3, embedding: 128, heads: 8, headsKv: 2, feedForward: 256, vocabulary: 1000, context: 1024, weights: "Q8_0" as const, chatTemplate: "{{ x }}" }
    const good = join(work, "inspect-me.gguf")
    const bytes = makeGguf(shape)
    writeFileSync(good, bytes)
    const ok = await run("inspect", good, "--context", "2048", "--parallel", "4")
    assert.strictEqual(ok.code, 0, ok.stderr)
    const json = JSON.parse(ok.stdout) as { summary: Record<string, unknown>; estimate: Record<string, number> }
    assert.include(json.summary, { architecture: "llama", blockCount: 3, embeddingLength: 128, headCount: 8, headCountKv: 2, vocabularySize: 1000, contextLength: 1024, tensorCount: 30, fileType: 7 })
    assert.strictEqual(json.summary["chatTemplateSha256"], createHash("sha256").update("{{ x }}").digest("hex"))
    assert.include(json.estimate, { contextSize: 2048, parallel: 4, kvCacheBytes: 786_432 })
    assert.strictEqual(json.estimate["totalBytes"], json.estimate["weightsBytes"]! + json.estimate["kvCacheBytes"]! + json.estimate["computeBytes"]! + json.estimate["overheadBytes"]!)
    assert.notInclude(ok.stdout, work)

    // A tensor offset moved into the next tensor's data: refused, whatever digest it is pinned to.
    const evil = Buffer.from(bytes)
    const at = evil.indexOf(Buffer.from("output_norm.weight")) + "output_norm.weight".length + 4 + 8 + 4
    evil.writeBigUInt64LE(evil.readBigUInt64LE(at) + 32n, at)
    const bad = join(work, "evil.gguf")
    writeFileSync(bad, evil)
    for (const [file, message] of [[bad, "The model file describes a tensor that is not valid."], [join(work, "bad.json"), "The model file is not a GGUF file."]] as const) {
      if (!file.endsWith(".gguf")) writeFileSync(file, "{\"not\": \"a model\"}")
      const refused = await run("inspect", file)
      assert.strictEqual(refused.code, 1)
      assert.strictEqual(refused.stderr.trim(), `error: ${message}`)
      assert.strictEqual(refused.stdout, "")
    }

    // With a config, its ceiling applies: a model that cannot fit is refused.
    const tight = writeConfig("tight.json", {
      model: { sha256: SHA, sizeBytes: MODEL.length, source: `${origin.baseUrl}/models/tiny.gguf` },
      allowedSources: [`${origin.baseUrl}/models/`],
      resources: { maxRamBytes: 1024 * 1024 }
    })
    const tooLarge = await run("inspect", good, "--config", tight)
    assert.strictEqual(tooLarge.code, 1)
    assert.strictEqual(tooLarge.stderr.trim(), "error: The model would need more memory than the configured ceiling.")
    // And its model policy.
    const qwenOnly = writeConfig("qwen-only.json", {
      model: { sha256: SHA, sizeBytes: MODEL.length, source: `${origin.baseUrl}/models/tiny.gguf` },
      allowedSources: [`${origin.baseUrl}/models/`],
      policy: { architectures: ["qwen3"] }
    })
    const offList = await run("inspect", good, "--config", qwenOnly)
    assert.strictEqual(offList.code, 1)
    assert.strictEqual(offList.stderr.trim(), "error: The model's architecture is not on the allowed list.")
  })
})
