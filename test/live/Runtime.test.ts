/**
 * The live layers together against real processes and sockets: a real llama-server (built or found
 * by globalSetup) serving the tiny GGUF from a local HTTPS origin, stand-in processes where a real
 * runtime cannot show a behaviour (never healthy, ignores SIGTERM; Ollama's are in Ollama.test.ts), and a manager process
 * killed with SIGKILL.
 */
import { spawn } from "node:child_process"
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, readlinkSync, renameSync, rmSync, writeFileSync, writeSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { HttpClient, HttpClientRequest } from "@effect/platform"
import { NodeContext, NodeHttpClient } from "@effect/platform-node"
import { afterAll, assert, beforeAll, describe, inject, it } from "@effect/vitest"
import { ConfigProvider, Duration, Effect, Either, Exit, Fiber, Layer, Metric, Redacted, Ref, Schedule, Stream } from "effect"
import { type Origin, serveBytes, startOrigin } from "../../scripts/lib/origin.js"
import { makeTestPki, type TestPki } from "../../scripts/lib/pki.js"
import { makeGguf, TINY, tinyGguf } from "../../scripts/tiny-gguf.js"
import * as Gguf from "../../src/domain/Gguf.js"
import * as DownloaderLive from "../../src/layers/DownloaderLive.js"
import * as HealthProbeLive from "../../src/layers/HealthProbeLive.js"
import * as LiveLayers from "../../src/layers/LiveLayers.js"
import * as ModelStoreLive from "../../src/layers/ModelStoreLive.js"
import * as ResourceStatLive from "../../src/layers/ResourceStatLive.js"
import * as RuntimeManagerLive from "../../src/layers/RuntimeManagerLive.js"
import * as SpawnerLive from "../../src/layers/SpawnerLive.js"
import * as StoreFileSystemLive from "../../src/layers/StoreFileSystemLive.js"
import { HealthProbe } from "../../src/services/HealthProbe.js"
import { metrics as storeMetrics } from "../../src/services/ModelStore.js"
import { RuntimeManager } from "../../src/services/RuntimeManager.js"
import { type RuntimeHandle, Spawner } from "../../src/services/Spawner.js"
import { sha256Hex } from "../domain/fixtures.js"
import { expectFailure, loadConfig } from "../layers/harness.js"
import { verifiedModel } from "./fixtures/verified.js"
import { gone, standinScript } from "./fixtures/processes.js"

const MODEL = tinyGguf()
/** The tiny model with its second tensor's offset moved into the first's data: a hostile header, pinned correctly. */
const EVIL = (() => {
  const bytes = Buffer.from(tinyGguf())
  const name = Buffer.from("output_norm.weight")
  const at = bytes.indexOf(name) + name.length + 4 + 8 + 4
  bytes.writeBigUInt64LE(bytes.readBigUInt64LE(at) - 32n, at)
  return new Uint8Array(bytes)
})()
const SPEC = { sha256: sha256Hex(MODEL), sizeBytes: MODEL.length }

let llamaServer: string
let pki: TestPki
let origin: Origin
let work: string
let modelFile: string

beforeAll(async () => {
  llamaServer = inject("llamaServer")
  pki = makeTestPki()
  origin = await startOrigin(pki, { "/models/tiny.gguf": serveBytes(MODEL), "/models/evil.gguf": serveBytes(EVIL) })
  work = mkdtempSync(join(tmpdir(), "companion-live-"))
  modelFile = join(work, "tiny.gguf")
  writeFileSync(modelFile, MODEL, { mode: 0o600 })
})

afterAll(async () => {
  await origin?.close()
  if (work !== undefined) rmSync(work, { recursive: true, force: true })
})

/** An executable that runs the stand-in in `mode` (the spawner\'s argv follows). */
const standin = (mode: string, extra = "") => standinScript(work, mode, extra)

const waitGone = (pid: number, within: Duration.DurationInput) =>
  Effect.sync(() => gone(pid)).pipe(
    Effect.repeat({ schedule: Schedule.spaced("50 millis"), until: (g) => g }),
    Effect.timeoutFail({ duration: within, onTimeout: () => new Error(`pid ${pid} still alive`) })
  )

/** The tiny model, verified by a store on disk, open for the caller's scope. */
const model = () => verifiedModel(join(work, "verified"), MODEL)

const hashedBytes = Effect.map(Metric.value(storeMetrics.hashedBytes), (state) => state.count)

/** A Spawner that also records every handle it returns. */
const recording = (options: SpawnerLive.SpawnerOptions, handles: Ref.Ref<ReadonlyArray<RuntimeHandle>>) =>
  Layer.scoped(
    Spawner,
    Effect.map(SpawnerLive.make(options), (live) =>
      Spawner.of({ spawn: (m) => Effect.tap(live.spawn(m), (h) => Ref.update(handles, (all) => [...all, h])) }))
  ).pipe(Layer.provide(NodeContext.layer))

const liveManager = (
  handles: Ref.Ref<ReadonlyArray<RuntimeHandle>>,
  spawner: Partial<SpawnerLive.SpawnerOptions> = {},
  patch: Record<string, unknown> = {},
  health: Layer.Layer<HealthProbe, never, HttpClient.HttpClient> = HealthProbeLive.layer(spawner.kind ?? "llama.cpp")
) =>
  Layer.unwrapEffect(
    Effect.map(
      loadConfig({
        storeDir: join(work, "store"),
        model: { ...SPEC, source: `${origin.baseUrl}/models/tiny.gguf` },
        allowedSources: [`${origin.baseUrl}/models/`],
        admission: { maxInFlight: 2, queueBound: 4 },
        resources: { maxRamBytes: 16 * 1024 ** 3, maxCpuPercent: 100 },
        health: { firstProbeInterval: "20 millis", maxProbeInterval: "200 millis", probeTimeout: "2 seconds", loadDeadline: "60 seconds" },
        restart: { backoffBase: "100 millis", backoffMax: "1 second" },
        stopGrace: "3 seconds",
        ...patch
      }),
      (config) =>
        RuntimeManagerLive.layer(RuntimeManagerLive.configFrom(config)).pipe(
          Layer.provideMerge(ModelStoreLive.layer(ModelStoreLive.optionsFrom(config))),
          Layer.provide(
            Layer.mergeAll(
              DownloaderLive.layer({ allowedSources: config.allowedSources, extraCaCertificates: [pki.caPem] }),
              StoreFileSystemLive.layer,
              recording({ kind: "llama.cpp", binary: llamaServer, parallel: config.admission.maxInFlight, ...spawner }, handles),
              health,
              ResourceStatLive.layer
            )
          ),
          Layer.provide(Layer.mergeAll(NodeContext.layer, NodeHttpClient.layerUndici))
        )
    )
  )

const completion = (endpoint: { baseUrl: string; apiKey: Redacted.Redacted<string> } | { baseUrl: string }) =>
  Effect.flatMap(HttpClient.HttpClient, (client) =>
    HttpClientRequest.post(`${endpoint.baseUrl}/v1/completions`).pipe(
      HttpClientRequest.bodyUnsafeJson({ prompt: "hello", max_tokens: 4, temperature: 0 }),
      "apiKey" in endpoint ? HttpClientRequest.bearerToken(Redacted.value(endpoint.apiKey)) : (r) => r,
      client.execute,
      Effect.flatMap((response) =>
        Effect.map(Effect.orElseSucceed(response.json, () => null), (body) => ({ status: response.status, body }))
      ),
      Effect.scoped
    ))

const latest = (handles: Ref.Ref<ReadonlyArray<RuntimeHandle>>) =>
  Effect.map(Ref.get(handles), (all) => {
    const last = all.at(-1)
    if (last === undefined) throw new Error("nothing spawned")
    return last
  })

describe("live: a real llama-server", () => {
  it.live("the model over HTTPS → start → a completion with the per-spawn key → drain → process gone", () =>
    Effect.gen(function*() {
      const handles = yield* Ref.make<ReadonlyArray<RuntimeHandle>>([])
      yield* Effect.gen(function*() {
        const manager = yield* RuntimeManager
        yield* manager.start
        const handle = yield* latest(handles)
        assert.match(handle.baseUrl, /^http:\/\/127\.0\.0\.1:\d+$/)
        // The default environment: the allowlisted variables this process has (PATH, at least), and the key.
        const names = readFileSync(`/proc/${handle.pid}/environ`, "utf8").split("\0").filter(Boolean).map((e) => e.split("=")[0]!)
        assert.includeMembers(names, ["PATH", "LLAMA_API_KEY"])
        for (const name of names) assert.include([...SpawnerLive.defaultEnvAllowlist, "LLAMA_API_KEY"], name)
        // The runtime refuses a request without the key…
        const refused = yield* completion({ baseUrl: handle.baseUrl })
        assert.strictEqual(refused.status, 401)
        // …and answers one through the manager, which hands out the key.
        const answer = yield* manager.run(completion)
        assert.strictEqual(answer.status, 200)
        const choices = (answer.body as { choices?: Array<{ text?: unknown }> }).choices
        assert.isTrue(Array.isArray(choices) && typeof choices[0]?.text === "string")
        yield* manager.drain("10 seconds")
        assert.strictEqual((yield* manager.status).state, "stopped")
        assert.isTrue(gone(handle.pid))
      }).pipe(Effect.provide(Layer.merge(liveManager(handles), NodeHttpClient.layerUndici)))
    }), 120_000)

  it.live("LiveLayers.layer from Config alone (CA file, runtime binary): start, complete, drain", () =>
    Effect.gen(function*() {
      const caFile = join(work, "ca.pem")
      writeFileSync(caFile, pki.caPem)
      const config = ConfigProvider.fromJson({
        storeDir: join(work, "store-config"),
        model: { ...SPEC, source: `${origin.baseUrl}/models/tiny.gguf` },
        allowedSources: [`${origin.baseUrl}/models/`],
        download: { caFiles: [caFile] },
        runtime: { binary: llamaServer, contextSize: 256, threads: 1 }
      })
      yield* Effect.gen(function*() {
        const manager = yield* RuntimeManager
        yield* manager.start
        const answer = yield* manager.run(completion)
        assert.strictEqual(answer.status, 200)
        yield* manager.drain("10 seconds")
        assert.strictEqual((yield* manager.status).state, "stopped")
      }).pipe(
        Effect.provide(Layer.merge(LiveLayers.layer, NodeHttpClient.layerUndici)),
        Effect.withConfigProvider(config)
      )
    }), 120_000)

  it.live("SIGKILL of the runtime while ready: requests in flight fail typed, the supervisor restarts it", () =>
    Effect.gen(function*() {
      const handles = yield* Ref.make<ReadonlyArray<RuntimeHandle>>([])
      yield* Effect.gen(function*() {
        const manager = yield* RuntimeManager
        yield* manager.start
        const first = yield* latest(handles)
        const inFlight = yield* Effect.forkAll(
          [1, 2].map(() => Effect.exit(manager.run(() => Effect.sleep("1 minute"))))
        )
        yield* Effect.flatMap(manager.status, (s) => (s.inFlight === 2 ? Effect.void : Effect.fail("wait"))).pipe(
          Effect.retry(Schedule.spaced("10 millis"))
        )
        const hashedBefore = yield* hashedBytes
        process.kill(first.pid, "SIGKILL")
        const exits = yield* Fiber.join(inFlight)
        for (const exit of exits) {
          assert.isTrue(Exit.isFailure(exit))
          if (Exit.isFailure(exit)) {
            const error = exit.cause._tag === "Fail" ? exit.cause.error : undefined
            assert.strictEqual((error as { _tag?: string } | undefined)?._tag, "RuntimeExitedError")
          }
        }
        // The supervisor brings a new process to ready.
        yield* manager.changes.pipe(Stream.filter((c) => c.state === "ready"), Stream.take(1), Stream.runDrain)
        const second = yield* latest(handles)
        assert.notStrictEqual(second.pid, first.pid)
        assert.strictEqual((yield* manager.status).restarts, 1)
        // The file was not written since it was verified: the restart did not read it again.
        assert.strictEqual((yield* hashedBytes) - hashedBefore, 0)
        const answer = yield* manager.run(completion)
        assert.strictEqual(answer.status, 200)
        yield* manager.drain("10 seconds")
        assert.isTrue(gone(second.pid))
      }).pipe(Effect.provide(Layer.merge(liveManager(handles), NodeHttpClient.layerUndici)))
    }), 120_000)

  it.live("the child sees only allowlisted variables; the key is in no argv, output line or error", () =>
    Effect.scoped(
      Effect.gen(function*() {
        const spawner = yield* SpawnerLive.make({
          kind: "llama.cpp",
          binary: llamaServer,
          parallel: 1,
          environment: { PATH: "/usr/bin:/bin", HOME: "/nonexistent", GITHUB_TOKEN: "ghp_secret", AWS_SECRET_ACCESS_KEY: "aws" }
        })
        const handle = yield* spawner.spawn(yield* model())
        const key = Redacted.value(handle.apiKey)
        assert.isAtLeast(key.length, 43)
        const environ = readFileSync(`/proc/${handle.pid}/environ`, "utf8").split("\0").filter(Boolean)
        assert.deepStrictEqual(environ.map((e) => e.split("=")[0]).sort(), ["HOME", "LLAMA_API_KEY", "PATH"])
        const cmdline = readFileSync(`/proc/${handle.pid}/cmdline`, "utf8").split("\0")
        assert.notInclude(cmdline.join(" "), key)
        // The model is the store's descriptor of the verified file, inherited as fd 3; no path is passed.
        assert.includeMembers(cmdline, ["--host", "127.0.0.1", "--port", "0", "--parallel", "1", "-m", "/dev/fd/3"])
        assert.notInclude(cmdline.join(" "), SPEC.sha256)
        const output = yield* handle.output
        assert.isTrue(output.some((line) => line.includes("listening on")))
        assert.isFalse(output.some((line) => line.includes(key)))
        const status = yield* handle.stop("5 seconds")
        assert.isTrue(gone(handle.pid))
        assert.notInclude(JSON.stringify(status), key)
      }).pipe(Effect.provide(NodeContext.layer))
    ), 60_000)

  it.live("the runtime starts with the least it needs: its alias, and each hardening flag its --help lists; never --props, --rpc or --metrics", () =>
    Effect.scoped(
      Effect.gen(function*() {
        const real = yield* SpawnerLive.make({ kind: "llama.cpp", binary: llamaServer, parallel: 1, alias: "companion-tiny", maxTokens: 64 })
        const handle = yield* real.spawn(yield* model())
        const cmdline = readFileSync(`/proc/${handle.pid}/cmdline`, "utf8").split("\0")
        assert.includeMembers(cmdline, ["--alias", "companion-tiny", "--n-predict", "64", ...SpawnerLive.HARDENING_FLAGS])
        for (const flag of ["--props", "--rpc", "--metrics", "--slots", "--webui", "--context-shift"]) assert.notInclude(cmdline, flag)
        // llama-server took them: it runs, and the slots endpoint is gone.
        const slots = yield* Effect.tryPromise(() =>
          fetch(`${handle.baseUrl}/slots`, { headers: { authorization: `Bearer ${Redacted.value(handle.apiKey)}` } }).then((r) => r.status)
        ).pipe(Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.upTo("10 seconds"))))
        assert.notStrictEqual(slots, 200)
        yield* handle.stop("5 seconds")

        // A binary whose --help lists only some of them gets only those.
        const older = yield* SpawnerLive.make({ kind: "llama.cpp", binary: standin("never-healthy"), parallel: 1 })
        const other = yield* older.spawn(yield* model())
        const args = readFileSync(`/proc/${other.pid}/cmdline`, "utf8").split("\0")
        assert.includeMembers(args, ["--no-slots", "--offline", "--alias", "model"])
        assert.notInclude(args, "--no-webui")
        assert.notInclude(args, "--no-context-shift")
        yield* other.stop("5 seconds")
        // A binary that fails --help is not started without its flags, and is asked again next time.
        const marker = join(work, "help-failed")
        const flaky = yield* SpawnerLive.make({ kind: "llama.cpp", binary: standin("help-fails-once", marker), parallel: 1 })
        const first = yield* Effect.flip(flaky.spawn(yield* model()))
        assert.strictEqual(first.reason, "help_failed")
        assert.isTrue(existsSync(marker))
        const second = yield* flaky.spawn(yield* model())
        assert.includeMembers(readFileSync(`/proc/${second.pid}/cmdline`, "utf8").split("\0"), ["--no-slots", "--offline"])
        yield* second.stop("5 seconds")
        const absent = yield* SpawnerLive.make({ kind: "llama.cpp", binary: join(work, "no-such-binary"), parallel: 1 })
        assert.strictEqual((yield* Effect.flip(absent.spawn(yield* model()))).reason, "spawn_failed")
        assert.deepStrictEqual(SpawnerLive.supportedFlags("--ui, --webui, --no-ui, --no-webui   x\n--no-webui-mcp-proxy\n"), new Set(["--no-webui"]))
        assert.deepStrictEqual(SpawnerLive.supportedFlags("--no-slotsy --offline-mode"), new Set())
      }).pipe(Effect.provide(NodeContext.layer))
    ), 60_000)

  it.live("a file renamed onto the model's path once the runtime has it: the runtime reads and serves the verified file, not the path", () =>
    Effect.scoped(
      Effect.gen(function*() {
        const store = join(work, "swap-store")
        const verified = yield* verifiedModel(store, MODEL)
        const spawner = yield* SpawnerLive.make({ kind: "llama.cpp", binary: llamaServer, parallel: 1 })
        const handle = yield* spawner.spawn(verified)
        // The attacker's file (garbage, which llama-server could not load) takes the model's name.
        writeFileSync(join(store, "impostor"), Buffer.alloc(MODEL.length, 0x41))
        renameSync(join(store, "impostor"), join(store, SPEC.sha256))
        // It loads (garbage would not) and serves: fd 3 is the verified file, now without a name.
        const answer = yield* completion(handle).pipe(
          Effect.flatMap((r) => (r.status === 503 ? Effect.fail("loading") : Effect.succeed(r))),
          Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.upTo("30 seconds"))),
          Effect.provide(NodeHttpClient.layerUndici)
        )
        assert.strictEqual(answer.status, 200)
        assert.strictEqual(sha256Hex(readFileSync(`/proc/${handle.pid}/fd/3`)), SPEC.sha256)
        assert.match(readlinkSync(`/proc/${handle.pid}/fd/3`), /\(deleted\)$/)
        yield* handle.stop("5 seconds")
      }).pipe(Effect.provide(NodeContext.layer))
    ), 60_000)

  it.live("a model whose file lost its name after verification is not spawned at all", () =>
    Effect.scoped(
      Effect.gen(function*() {
        const store = join(work, "unlinked-store")
        const verified = yield* verifiedModel(store, MODEL)
        writeFileSync(join(store, "impostor"), Buffer.alloc(MODEL.length, 0x41))
        renameSync(join(store, "impostor"), join(store, SPEC.sha256))
        const spawner = yield* SpawnerLive.make({ kind: "llama.cpp", binary: llamaServer, parallel: 1 })
        yield* expectFailure(spawner.spawn(verified), "SpawnError", "unverified_model")
      }).pipe(Effect.provide(NodeContext.layer))
    ), 60_000)

  it.live("the model written in place while the runtime loads: the start fails model_changed and the runtime is stopped", () =>
    Effect.gen(function*() {
      const handles = yield* Ref.make<ReadonlyArray<RuntimeHandle>>([])
      const storeDir = join(work, "store-written")
      // A health probe that, before its first answer, lets the attacker write into the stored model.
      const writing = Layer.effect(
        HealthProbe,
        Effect.map(HealthProbeLive.make("llama.cpp"), (live) => {
          let written = false
          return HealthProbe.of({
            probe: (handle) =>
              Effect.suspend(() => {
                if (!written) {
                  written = true
                  const fd = openSync(join(storeDir, SPEC.sha256), "r+")
                  writeSync(fd, Buffer.from([0]), 0, 1, MODEL.length - 1)
                  closeSync(fd)
                }
                return live.probe(handle)
              })
          })
        })
      )
      yield* Effect.gen(function*() {
        const manager = yield* RuntimeManager
        yield* expectFailure(manager.start, "ModelStoreError", "model_changed")
        assert.strictEqual((yield* manager.status).state, "stopped")
        assert.isTrue(gone((yield* latest(handles)).pid))
      }).pipe(Effect.provide(liveManager(handles, {}, { storeDir }, writing)))
    }), 60_000)

  it.live("SIGKILL of a manager process: its runtime is gone within 5 s", () =>
    Effect.gen(function*() {
      const child = spawn(process.execPath, ["--import", "tsx", "test/live/fixtures/manager-child.ts", llamaServer, join(work, "child-store"), modelFile], {
        stdio: ["ignore", "pipe", "inherit"]
      })
      const runtimePid = yield* Effect.async<number>((resume) => {
        let out = ""
        child.stdout.on("data", (d: Buffer) => {
          out += d.toString()
          const match = /runtime (\d+)/.exec(out)
          if (match) resume(Effect.succeed(Number(match[1])))
        })
      }).pipe(Effect.timeout("60 seconds"), Effect.ensuring(Effect.void))
      assert.isFalse(gone(runtimePid))
      child.kill("SIGKILL")
      yield* waitGone(runtimePid, "5 seconds")
    }), 90_000)
})

describe("live: the model's header before the real llama-server sees it", () => {
  it.live("a bad tensor offset with a correctly pinned digest, and a model over maxRamBytes: refused, no process spawned", () =>
    Effect.gen(function*() {
      for (const [patch, tag, reason] of [
        [{ model: { sha256: sha256Hex(EVIL), sizeBytes: EVIL.length, source: `${origin.baseUrl}/models/evil.gguf` } }, "GgufError", "gguf_bad_tensor"],
        [{ resources: { maxRamBytes: 8 * 1024 * 1024, maxCpuPercent: 100 } }, "ResourceError", "model_too_large"]
      ] as const) {
        const handles = yield* Ref.make<ReadonlyArray<RuntimeHandle>>([])
        yield* Effect.gen(function*() {
          const manager = yield* RuntimeManager
          yield* expectFailure(manager.start, tag, reason)
          assert.deepStrictEqual(yield* Ref.get(handles), [], `${reason}: a process was spawned`)
          assert.strictEqual((yield* manager.status).state, "stopped")
        }).pipe(Effect.provide(liveManager(handles, {}, patch)))
      }
    }), 60_000)
})

describe("live: generated models of several shapes, served by llama-server", () => {
  it.live("F16 and Q8_0 shapes with grouped KV heads and larger vocabularies: the header parses to the shape, llama-server answers", () =>
    Effect.scoped(
      Effect.gen(function*() {
        const spawner = yield* SpawnerLive.make({ kind: "llama.cpp", binary: llamaServer, parallel: 1 })
        for (const shape of [
          { ...TINY, weights: "F16" as const, layers: 3, heads: 8, headsKv: 2, embedding: 128, feedForward: 256, vocabulary: 1000 },
          { ...TINY, weights: "Q8_0" as const, layers: 2, heads: 4, headsKv: 1, embedding: 64, feedForward: 192, vocabulary: 3000, chatTemplate: "{% for m in messages %}{{ m.content }}{% endfor %}" }
        ]) {
          const bytes = makeGguf(shape)
          const summary = Either.getOrThrow(Gguf.summarize(Either.getOrThrow(Gguf.read(bytes, bytes.length)) as Gguf.GgufFile))
          assert.include(summary, { blockCount: shape.layers, headCount: shape.heads, headCountKv: shape.headsKv, embeddingLength: shape.embedding, vocabularySize: shape.vocabulary })
          const handle = yield* spawner.spawn(yield* verifiedModel(join(work, `shape-${shape.weights}`), bytes))
          const answer = yield* completion(handle).pipe(
            Effect.flatMap((r) => (r.status === 503 ? Effect.fail("loading") : Effect.succeed(r))),
            Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.upTo("30 seconds"))),
            Effect.provide(NodeHttpClient.layerUndici)
          )
          assert.strictEqual(answer.status, 200, shape.weights)
          yield* handle.stop("5 seconds")
        }
      }).pipe(Effect.provide(NodeContext.layer))
    ), 90_000)
})

describe("live: stand-in runtimes", () => {
  it.live("a runtime that never becomes healthy: load deadline, and the process is killed", () =>
    Effect.gen(function*() {
      const handles = yield* Ref.make<ReadonlyArray<RuntimeHandle>>([])
      yield* Effect.gen(function*() {
        const manager = yield* RuntimeManager
        yield* expectFailure(manager.start, "StartError", "load_deadline_exceeded")
        const handle = yield* latest(handles)
        assert.isTrue(gone(handle.pid))
        assert.strictEqual((yield* manager.status).state, "stopped")
      }).pipe(
        Effect.provide(
          liveManager(handles, { binary: standin("never-healthy") }, {
            health: { firstProbeInterval: "20 millis", maxProbeInterval: "100 millis", probeTimeout: "1 second", loadDeadline: "1 second" }
          })
        )
      )
    }), 60_000)

  it.live("stop: SIGTERM to the group, SIGKILL after the grace period; the key is scrubbed from output", () =>
    Effect.scoped(
      Effect.gen(function*() {
        const spawner = yield* SpawnerLive.make({ kind: "llama.cpp", binary: standin("stubborn"), parallel: 1 })
        const handle = yield* spawner.spawn(yield* model())
        const key = Redacted.value(handle.apiKey)
        yield* Effect.flatMap(handle.output, (lines) =>
          lines.some((l) => l.startsWith("api key is")) ? Effect.void : Effect.fail("wait")).pipe(
            Effect.retry(Schedule.spaced("10 millis"))
          )
        const output = yield* handle.output
        assert.include(output, "api key is [redacted]")
        assert.isFalse(output.some((line) => line.includes(key)))
        const started = Date.now()
        const status = yield* handle.stop("300 millis")
        assert.isAtLeast(Date.now() - started, 250)
        assert.deepStrictEqual(status, { code: null, signal: "SIGKILL" })
        assert.isTrue(gone(handle.pid))
        assert.include(yield* handle.output, "ignoring SIGTERM")
      }).pipe(Effect.provide(NodeContext.layer))
    ), 30_000)

  it.live("a spawn interrupted while it waits for the runtime's address leaves no process behind", () =>
    Effect.gen(function*() {
      const pidFile = join(work, "silent.pid")
      const spawner = yield* SpawnerLive.make({ kind: "llama.cpp", binary: standin("silent", pidFile), parallel: 1, stopGrace: "1 second" })
      const spawning = yield* Effect.fork(Effect.scoped(Effect.flatMap(model(), spawner.spawn)))
      const pid = yield* Effect.sync(() => (existsSync(pidFile) ? Number(readFileSync(pidFile, "utf8")) : undefined)).pipe(
        Effect.filterOrFail((p): p is number => p !== undefined && p > 0),
        Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo("10 seconds")))
      )
      assert.isFalse(gone(pid))
      yield* Fiber.interrupt(spawning)
      yield* waitGone(pid, "3 seconds")
    }).pipe(Effect.provide(NodeContext.layer)), 30_000)

  it.live("a runtime that exits before reporting its address is exited_early", () =>
    expectFailure(
      Effect.scoped(
        Effect.flatMap(SpawnerLive.make({ kind: "llama.cpp", binary: standin("exit"), parallel: 1 }), (s) => Effect.flatMap(model(), s.spawn))
      ).pipe(Effect.provide(NodeContext.layer)),
      "SpawnError",
      "exited_early"
    ), 30_000)
})
