/**
 * One measured download, in a fresh process so its peak RSS is its own. Prints one JSON line:
 * { ms, cpuMs, maxRssMiB, baselineRssMiB } (cpuMs: this process's user + system time). Variants:
 *   ensureModel  ModelStore.ensure over DownloaderLive onto disk (verify while streaming,
 *                fsync, rename)
 *   plain        undici body piped to a file: no verification at all
 *   plain-fsync  plain, then the file and its directory fsynced: ensureModel's durability, no verification
 *   then-hash    plain, then a second pass reading the file through SHA-256 (what Ollama does)
 */
import { createHash } from "node:crypto"
import { closeSync, createReadStream, createWriteStream, fsyncSync, mkdirSync, openSync, readFileSync, rmSync } from "node:fs"
import { dirname } from "node:path"
import { rootCertificates } from "node:tls"
import { pipeline } from "node:stream/promises"
import { performance } from "node:perf_hooks"
import { NodePath } from "@effect/platform-node"
import * as Undici from "@effect/platform-node/Undici"
import { Effect, Either, Layer, ManagedRuntime } from "effect"
import * as Integrity from "../src/domain/Integrity.js"
import * as DownloaderLive from "../src/layers/DownloaderLive.js"
import * as ModelStoreLive from "../src/layers/ModelStoreLive.js"
import * as StoreFileSystemLive from "../src/layers/StoreFileSystemLive.js"
import { ModelStore } from "../src/services/ModelStore.js"

const [variant = "", url = "", caFile = "", sha256 = "", size = "0", dir = ""] = process.argv.slice(2)
const ca = readFileSync(caFile, "utf8")
rmSync(dir, { recursive: true, force: true })
mkdirSync(dir, { recursive: true })

const plain = async (dest: string) => {
  const agent = new Undici.Agent({ connect: { ca: [...rootCertificates, ca] } })
  const response = await agent.request({ origin: new URL(url).origin, path: new URL(url).pathname, method: "GET" })
  await pipeline(response.body, createWriteStream(dest, { mode: 0o600 }))
  await agent.close()
}

const plainFsync = async (dest: string) => {
  const fd = openSync(dest, "w", 0o600)
  const agent = new Undici.Agent({ connect: { ca: [...rootCertificates, ca] } })
  const response = await agent.request({ origin: new URL(url).origin, path: new URL(url).pathname, method: "GET" })
  await pipeline(response.body, createWriteStream("", { fd, autoClose: false }))
  fsyncSync(fd)
  closeSync(fd)
  const dir = openSync(dirname(dest), "r")
  fsyncSync(dir)
  closeSync(dir)
  await agent.close()
}

const hashFile = (path: string) =>
  pipeline(createReadStream(path, { highWaterMark: 1024 * 1024 }), async function*(chunks) {
    const hash = createHash("sha256")
    for await (const chunk of chunks) hash.update(chunk as Buffer)
    if (hash.digest("hex") !== sha256) throw new Error("digest mismatch")
  })

const ensureModel = async () => {
  const allowedSources = [new URL("/bench/", url).href]
  const spec = Either.getOrThrow(Integrity.checkSpec({ sha256, sizeBytes: Number(size) }))
  const layer = ModelStoreLive.layer({ storeDir: dir, allowedSources, retries: 5, retryBase: "500 millis", retryMax: "30 seconds", lockWait: "1 minute" }).pipe(
    Layer.provide(
      Layer.mergeAll(
        NodePath.layer,
        StoreFileSystemLive.layer,
        DownloaderLive.layer({ allowedSources, extraCaCertificates: [ca] })
      )
    )
  )
  // The layer is built once when a service starts; the download is what is measured.
  const runtime = ManagedRuntime.make(layer)
  const store = await runtime.runPromise(ModelStore)
  const cpu = process.cpuUsage()
  const started = performance.now()
  await runtime.runPromise(Effect.scoped(store.ensure(spec, new URL(url))))
  const ms = performance.now() - started
  const used = process.cpuUsage(cpu)
  await runtime.dispose()
  return { ms, cpuMs: (used.user + used.system) / 1000 }
}

// What the process holds before the download (Node, the loaded bundle), so growth can be told apart.
const baselineRssMiB = process.memoryUsage().rss / 1024 / 1024
const cpuBefore = process.cpuUsage()
const started = performance.now()
let measured: { ms: number; cpuMs: number } | undefined
if (variant === "ensureModel") measured = await ensureModel()
else if (variant === "plain") await plain(`${dir}/model.bin`)
else if (variant === "plain-fsync") await plainFsync(`${dir}/model.bin`)
else if (variant === "then-hash") {
  await plain(`${dir}/model.bin`)
  await hashFile(`${dir}/model.bin`)
} else throw new Error(`unknown variant ${variant}`)
const ms = measured?.ms ?? performance.now() - started
rmSync(dir, { recursive: true, force: true })
const cpu = process.cpuUsage(cpuBefore)
const cpuMs = measured?.cpuMs ?? (cpu.user + cpu.system) / 1000
process.stdout.write(`${JSON.stringify({ ms, cpuMs, maxRssMiB: process.resourceUsage().maxRSS / 1024, baselineRssMiB })}\n`)
