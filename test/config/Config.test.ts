/**
 * One configuration: the file decoder and the layers' Config come from one schema, so every key
 * reads the same both ways, the defaults are one set (and the docs' table is checked against it),
 * and a refusal names the field and what it expected, never the value.
 */
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { Cause, ConfigProvider, Duration, Effect, Exit, Option, Redacted, Schema } from "effect"
import { CompanionConfig, CompanionConfigSchema, decodeFile, encode, keys, modelsOf, nameFrom, readConfig } from "../../src/config/Config.js"

const MODEL = { sha256: "ab".repeat(32), sizeBytes: 1234, source: "https://models.example.com/org/repo/resolve/abc/m.gguf" }

/** Every key set, none to its default. */
const full = {
  storeDir: "/var/lib/companion/models",
  model: { ...MODEL, name: "companion-small:q4" },
  allowedSources: ["https://models.example.com/org/repo/resolve/abc/", "https://cdn.example.net/"],
  admission: { maxInFlight: 3, queueBound: 0, queueTimeout: "7 seconds" },
  resources: { maxRamBytes: 123_456_789, maxVramBytes: 987_654_321, maxCpuPercent: 55.5 },
  maxObservationAge: "250 millis",
  health: { firstProbeInterval: "10 millis", maxProbeInterval: "3 seconds", probeTimeout: "4 seconds", loadDeadline: "3 minutes" },
  download: {
    retries: 0,
    retryBase: "2 seconds",
    retryMax: "1 minute",
    lockWait: "2 minutes",
    connectTimeout: "3 seconds",
    stallTimeout: "45 seconds",
    minRate: 0,
    rateWindow: "2 minutes",
    caFiles: ["/etc/ca/a.pem", "/etc/ca/b.pem"]
  },
  restart: { enabled: false, maxFailures: 9, window: "10 minutes", cooldown: "1 minute", backoffBase: "250 millis", backoffMax: "5 seconds" },
  stopGrace: "9 seconds",
  idleTtl: "30 minutes",
  runtime: { kind: "ollama", binary: "/opt/ollama/bin/ollama", contextSize: 8192, threads: 6, envAllowlist: ["PATH", "HOME"], addressTimeout: "90 seconds" },
  policy: { architectures: ["llama", "qwen3"], maxChatTemplateBytes: 4096, chatTemplateSha256s: ["cd".repeat(32)], chatTemplateFile: "/etc/companion/template.jinja" },
  gguf: { maxTensors: 1000, maxKeys: 500, maxStringBytes: 65536, maxArrayLength: 300000, maxArrayDepth: 1, maxHeaderBytes: 33554432 },
  hub: { url: "https://hub.example.com", storageHosts: ["https://*.storage.example.com/", "https://cdn.example.net/"], token: "hf_example_token" },
  gateway: { port: 8089, allowedOrigins: ["http://localhost:3000"], token: "a-long-random-token", maxBodyBytes: 1_048_576, retryAfterSeconds: 3,
    unknownFields: "strip",
    maxTokens: 512,
    maxMessages: 9,
    maxCharacters: 10_000,
    maxTools: 3,
    maxInputs: 17,
    generationTimeout: "90 seconds"
  }
}

/** The same settings with several models in place of the one: every key of a `models` entry set. */
const { model: _one, ...shared } = full
const several = {
  ...shared,
  models: {
    "embed-small": {
      ...MODEL,
      kind: "embedding",
      contextSize: 2048,
      parallel: 2,
      preload: true,
      idleTtl: "5 minutes",
      runtime: { threads: 2 }
    }
  }
}

/** A key of the schema as it is written in `several` (the record's entries are named by the user). */
const named = (key: string) => key.replace("<name>", "embed-small")
/** Which example sets a key: `model.*` the one-model example, everything else both (`models.*` only `several`). */
const exampleFor = (key: string) => (key.startsWith("model.") ? full : several)

type Json = { readonly [key: string]: unknown }

const at = (json: Json, path: string): unknown =>
  path.split(".").reduce<unknown>((node, key) => (node as Json | undefined)?.[key], json)

/** The same settings as a flat map of text, as an environment would hold them (lists comma-separated). */
const flat = (json: Json, prefix = ""): Array<readonly [string, string]> =>
  Object.entries(json).flatMap(([key, value]) =>
    typeof value === "object" && value !== null && !Array.isArray(value)
      ? flat(value as Json, `${prefix}${key}.`)
      : [[`${prefix}${key}`, Array.isArray(value) ? value.join(",") : String(value)] as const]
  )

const fromProvider = (provider: ConfigProvider.ConfigProvider) => Effect.withConfigProvider(CompanionConfig, provider)

describe("one configuration", () => {
  it("the full examples (one model, several) set every key the schema has", () => {
    for (const key of keys()) assert.isDefined(at(exampleFor(key), named(key)), `${key} is not set in the test's full config`)
    const written = new Set([...flat(full), ...flat(several)].map(([k]) => k.replace("embed-small", "<name>")))
    assert.deepStrictEqual([...keys()].sort(), [...written].sort())
  })

  it.effect("every key decoded from a file equals the same key read through a ConfigProvider (JSON, and a flat map of text)", () =>
    Effect.gen(function*() {
      for (const example of [full, several]) {
        const fromFile = yield* decodeFile(example)
        const fromJson = yield* fromProvider(ConfigProvider.fromJson(example))
        const fromMap = yield* fromProvider(ConfigProvider.fromMap(new Map(flat(example)), { pathDelim: ".", seqDelim: "," }))
        const written = encode(fromFile)
        // Each way reads every key, and reads it as the file gives it.
        for (const key of keys().filter((k) => example === full ? !k.startsWith("models.") : !k.startsWith("model."))) {
          const path = named(key)
          assert.deepStrictEqual(at(encode(fromJson) as Json, path), at(written as Json, path), key)
          assert.deepStrictEqual(at(encode(fromMap) as Json, path), at(written as Json, path), key)
          assert.deepStrictEqual(at(written as Json, path), at(example, path), key)
        }
      }
      const fromFile = yield* decodeFile(full)
      const fromJson = yield* fromProvider(ConfigProvider.fromJson(full))
      const fromMap = yield* fromProvider(ConfigProvider.fromMap(new Map(flat(full)), { pathDelim: ".", seqDelim: "," }))
      // Typed on the way in: durations, options, the token redacted, the model a checked spec and a URL.
      assert.isTrue(Duration.equals(fromMap.admission.queueTimeout.pipe(Option.getOrThrow), Duration.seconds(7)))
      assert.strictEqual(Redacted.value(Option.getOrThrow(fromJson.gateway.token)), "a-long-random-token")
      assert.notInclude(String(Option.getOrThrow(fromJson.gateway.token)), "a-long-random-token")
      assert.instanceOf(fromFile.model?.source, URL)
      assert.strictEqual(fromFile.model?.spec.sha256, MODEL.sha256)
    }))

  it.effect("the same defaults both ways, and the queue timeout, idle unload, VRAM ceiling, context, threads and token are off unless set", () =>
    Effect.gen(function*() {
      const minimal = { model: MODEL, allowedSources: full.allowedSources }
      const fromFile = yield* decodeFile(minimal)
      const fromJson = yield* fromProvider(ConfigProvider.fromJson(minimal))
      assert.deepStrictEqual(encode(fromJson), encode(fromFile))
      assert.strictEqual(fromFile.admission.maxInFlight, 4)
      assert.strictEqual(fromFile.admission.queueBound, 64)
      assert.isTrue(Option.isNone(fromFile.admission.queueTimeout))
      assert.isTrue(Option.isNone(fromFile.idleTtl))
      assert.isFalse("maxVramBytes" in fromFile.resources)
      assert.isTrue(Option.isNone(fromFile.runtime.contextSize) && Option.isNone(fromFile.runtime.threads))
      assert.isTrue(Option.isNone(fromFile.gateway.token))
      assert.strictEqual(fromFile.restart.enabled, true)
    }))

  it.effect("the bounds the two readers used to disagree on are one set now", () =>
    Effect.gen(function*() {
      const both = (patch: Json) => {
        const json = { model: MODEL, allowedSources: full.allowedSources, ...patch }
        return Effect.all([Effect.exit(decodeFile(json)), Effect.exit(fromProvider(ConfigProvider.fromJson(json)))])
      }
      const verdict = (exits: ReadonlyArray<Exit.Exit<unknown, unknown>>) => exits.map(Exit.isSuccess)
      // A queue bound of 0 (no waiting) is valid; so is a fractional CPU share; 0 % is not.
      assert.deepStrictEqual(verdict(yield* both({ admission: { queueBound: 0 } })), [true, true])
      assert.deepStrictEqual(verdict(yield* both({ resources: { maxCpuPercent: 0.5 } })), [true, true])
      assert.deepStrictEqual(verdict(yield* both({ resources: { maxCpuPercent: 0 } })), [false, false])
      assert.deepStrictEqual(verdict(yield* both({ resources: { maxCpuPercent: 100.5 } })), [false, false])
      // The body limit is checked too.
      assert.deepStrictEqual(verdict(yield* both({ gateway: { maxBodyBytes: 0 } })), [false, false])
      assert.deepStrictEqual(verdict(yield* both({ gateway: { maxBodyBytes: 2 * 1024 ** 3 } })), [false, false])
      // Passed to llama-server's --n-predict, an int32: one more would wrap.
      assert.deepStrictEqual(verdict(yield* both({ gateway: { maxTokens: 2 ** 31 - 1 } })), [true, true])
      assert.deepStrictEqual(verdict(yield* both({ gateway: { maxTokens: 2 ** 31 } })), [false, false])
      // The hub: an https origin only; storage hosts are allowlist entries (a wildcard over two labels or more).
      assert.deepStrictEqual(verdict(yield* both({ hub: { url: "http://hub.example.com" } })), [false, false])
      assert.deepStrictEqual(verdict(yield* both({ hub: { url: "https://hub.example.com/path" } })), [false, false])
      assert.deepStrictEqual(verdict(yield* both({ hub: { storageHosts: ["https://*.co/"] } })), [false, false])
      assert.deepStrictEqual(verdict(yield* both({ hub: { storageHosts: ["https://*.hf.co/"] } })), [true, true])
      assert.deepStrictEqual(verdict(yield* both({ admission: { maxInFlight: 0 } })), [false, false])
    }))

  it.effect("the model's source must be under allowedSources, and https", () =>
    Effect.gen(function*() {
      const outside = yield* Effect.flip(decodeFile({ model: { ...MODEL, source: "https://elsewhere.example/m.gguf" }, allowedSources: full.allowedSources }))
      assert.include(outside.problems, "model.source: is not under any allowedSources entry")
      const plain = yield* Effect.flip(decodeFile({ model: { ...MODEL, source: "http://models.example.com/org/repo/resolve/abc/m.gguf" }, allowedSources: full.allowedSources }))
      assert.include(plain.problems, "model.source: must use https")
      const badEntry = yield* Effect.flip(decodeFile({ model: MODEL, allowedSources: ["https://user:pw@models.example.com/org"] }))
      assert.include(badEntry.problems, "allowedSources.0: expected an https URL prefix without credentials, query or fragment")
    }))

  it.effect("names the field and what it expected, never the value, in the file and through Config", () =>
    Effect.gen(function*() {
      const secretSource = "https://tenant-991.example/private/m.gguf"
      const cases: ReadonlyArray<Json> = [
        { model: { ...MODEL, sha256: "SECRETDIGEST", source: secretSource } },
        { model: MODEL, admission: { maxInFlight: -3 } },
        { model: MODEL, resources: { maxCpuPercent: 250 } },
        { model: MODEL, health: { loadDeadline: "0 millis" } },
        { model: MODEL, health: { loadDeadline: "4 parsecs-of-secret" } },
        { model: MODEL, gateway: { token: "", allowedOrigins: ["https://secret-origin.example/path"] } },
        { model: { ...MODEL, source: secretSource } }
      ]
      for (const patch of cases) {
        const json = { allowedSources: full.allowedSources, ...patch }
        const fileError = yield* Effect.flip(decodeFile(json))
        const configExit = yield* Effect.exit(fromProvider(ConfigProvider.fromJson(json)))
        assert.isTrue(Exit.isFailure(configExit))
        for (const text of [fileError.message, Exit.isFailure(configExit) ? Cause.pretty(configExit.cause) : ""]) {
          for (const secret of ["SECRETDIGEST", "tenant-991", "-3", "250", "parsecs", "secret-origin"]) assert.notInclude(text, secret)
          assert.match(text, /expected|is not under/)
        }
      }
    }))

  it.effect("unknown keys are refused in the file (a typo is not ignored), and in a section read through Config", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(decodeFile({ model: MODEL, allowedSources: full.allowedSources, admision: { maxInFlight: 2 } }))
      assert.deepStrictEqual(error.problems, ["admision: not a known field"])
      // A misspelt token must not leave the gateway open: readConfig (what the layers use) refuses it,
      // from JSON and from an environment-style map alike.
      const typo = { model: MODEL, allowedSources: full.allowedSources, gateway: { tokne: "secret-token-value", allowedOrigins: ["http://localhost:3000"] } }
      const fileTypo = yield* Effect.flip(decodeFile(typo))
      assert.deepStrictEqual(fileTypo.problems, ["gateway.tokne: not a known field"])
      for (const provider of [ConfigProvider.fromJson(typo), ConfigProvider.fromMap(new Map(flat(typo)), { pathDelim: ".", seqDelim: "," })]) {
        const exit = yield* Effect.exit(Effect.withConfigProvider(readConfig, provider))
        assert.isTrue(Exit.isFailure(exit))
        const text = Exit.isFailure(exit) ? Cause.pretty(exit.cause) : ""
        assert.include(text, "gateway.tokne")
        assert.notInclude(text, "secret-token-value")
      }
      // Top-level keys are not checked (an environment holds every variable of the process), a full
      // config passes, and so does one under a rewritten path (not checked there).
      yield* Effect.withConfigProvider(readConfig, ConfigProvider.fromJson({ ...full, PATH: "/usr/bin" }))
      yield* Effect.withConfigProvider(readConfig, ConfigProvider.nested(ConfigProvider.fromJson({ companion: full }), "companion"))
    }))

  it.effect("model.name: by default the source's file name without its extension; a given one must be a plain name", () =>
    Effect.gen(function*() {
      const derived = yield* decodeFile({ model: MODEL, allowedSources: full.allowedSources })
      assert.strictEqual(derived.model?.name, "m")
      assert.strictEqual((yield* fromProvider(ConfigProvider.fromJson({ model: MODEL, allowedSources: full.allowedSources }))).model?.name, "m")
      for (const bad of ["", "../etc", "/home/user/model", "a b", "x".repeat(65), "-flag", "name\n"]) {
        const error = yield* Effect.flip(decodeFile({ model: { ...MODEL, name: bad }, allowedSources: full.allowedSources }))
        assert.strictEqual(error.problems.length, 1, JSON.stringify(bad))
        assert.match(error.problems[0] ?? "", /^model\.name: expected a model name/)
      }
      const url = (path: string) => new URL(`https://models.example.com${path}`)
      assert.strictEqual(nameFrom(url("/unsloth/Qwen3.5-0.8B-GGUF/resolve/6ab4/Qwen3.5-0.8B-Q4_K_M.gguf")), "Qwen3.5-0.8B-Q4_K_M")
      assert.strictEqual(nameFrom(url("/a/my%20model%2Bv2.gguf")), "my-model-v2")
      assert.strictEqual(nameFrom(url("/a/model")), "model")
      assert.strictEqual(nameFrom(url("/a/.gguf")), "gguf")
      assert.strictEqual(nameFrom(url("/a/")), "model")
      assert.strictEqual(nameFrom(url("/a/%ZZbroken.gguf")), "ZZbroken")
      assert.strictEqual(nameFrom(url(`/a/${"n".repeat(100)}.gguf`)).length, 64)
      // A blob store's digest-named file: never shown to clients as the model's name.
      const digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
      assert.strictEqual(nameFrom(url(`/v2/library/blobs/sha256-${digest}`)), "model")
      assert.strictEqual(nameFrom(url(`/a/${digest}.gguf`)), "model")
      assert.strictEqual(nameFrom(url(`/a/${digest.slice(0, 31)}.gguf`)), digest.slice(0, 31))
      // Whatever the URL, the derived name is one the schema accepts.
      for (const path of ["/a/%2e%2e.gguf", "/a/---.gguf", "/a/%F0%9F%A6%99.gguf", "/a/x y.q4.gguf"]) {
        assert.match(nameFrom(url(path)), /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/, path)
      }
    }))

  it.effect("an empty list reads as empty both ways", () =>
    Effect.gen(function*() {
      const json = { model: MODEL, allowedSources: full.allowedSources, gateway: { allowedOrigins: [] }, runtime: { envAllowlist: [] }, download: { caFiles: [] } }
      const fromFile = yield* decodeFile(json)
      const fromJson = yield* fromProvider(ConfigProvider.fromJson(json))
      const fromMap = yield* fromProvider(ConfigProvider.fromMap(new Map([...flat({ model: MODEL }), ["allowedSources", full.allowedSources.join(",")], ["gateway.allowedOrigins", ""], ["runtime.envAllowlist", ""]]), { pathDelim: ".", seqDelim: "," }))
      for (const config of [fromFile, fromJson, fromMap]) {
        assert.deepStrictEqual(config.gateway.allowedOrigins, [])
        assert.deepStrictEqual(config.runtime.envAllowlist, [])
      }
      assert.deepStrictEqual(fromJson.download.caFiles, [])
    }))
})

describe("several models", () => {
  const entry = (name: string) => ({ ...MODEL, source: `https://models.example.com/org/repo/resolve/abc/${name}.gguf` })
  const problemsOf = (json: unknown) => Effect.map(Effect.flip(decodeFile(json)), (e) => e.problems)

  it.effect("model or models, one of them; models not empty; each source under allowedSources, named by its path", () =>
    Effect.gen(function*() {
      const allowedSources = full.allowedSources
      assert.deepStrictEqual(yield* problemsOf({ allowedSources }), ["models: set model or models, not both"])
      assert.deepStrictEqual(yield* problemsOf({ model: MODEL, models: { a: entry("a") }, allowedSources }), ["models: set model or models, not both"])
      assert.deepStrictEqual(yield* problemsOf({ models: {}, allowedSources }), ["models: expected at least one model"])
      assert.deepStrictEqual(
        yield* problemsOf({ models: { a: entry("a"), b: { ...MODEL, source: "https://elsewhere.example/b.gguf" } }, allowedSources }),
        ["models.b.source: is not under any allowedSources entry"]
      )
      const bad = yield* problemsOf({ models: { "../x": entry("x"), ok: { ...entry("ok"), kind: "vision", tokne: "secret-value" } }, allowedSources })
      assert.includeMembers([...bad], ["models.../x: not a known field", "models.ok.kind: expected \"embedding\"", "models.ok.tokne: not a known field"])
      assert.isTrue(bad.some((p) => p.startsWith("models.")))
      assert.notInclude(bad.join("\n"), "secret-value")
    }))

  it.effect("with Ollama, two names it takes for one (case, `:latest`) are refused; with llama.cpp they are two models", () =>
    Effect.gen(function*() {
      const allowedSources = full.allowedSources
      const models = { chat: entry("chat"), "Chat:latest": entry("chat2"), other: entry("other") }
      assert.deepStrictEqual(yield* problemsOf({ models, allowedSources, runtime: { kind: "ollama" } }), ["models.chat: names the same Ollama model as another entry"])
      const ok = yield* decodeFile({ models, allowedSources })
      assert.strictEqual(modelsOf(ok).length, 3)
    }))

  it.effect("each entry takes the top-level settings it does not set; both readers give the models in the order of their names", () =>
    Effect.gen(function*() {
      const json = {
        models: { zeta: entry("zeta"), alpha: { ...entry("alpha"), kind: "embedding", parallel: 1, idleTtl: "2 minutes", preload: true } },
        allowedSources: full.allowedSources,
        admission: { maxInFlight: 3 },
        runtime: { contextSize: 4096, threads: 2 },
        idleTtl: "9 minutes"
      }
      for (const config of [yield* decodeFile(json), yield* readConfig.pipe(Effect.withConfigProvider(ConfigProvider.fromJson(json)))]) {
        const models = modelsOf(config)
        assert.deepStrictEqual(models.map((m) => [m.name, m.kind, m.parallel, m.preload, Option.getOrUndefined(m.contextSize), Option.getOrUndefined(m.threads)]), [
          ["alpha", "embedding", 1, true, 4096, 2],
          ["zeta", "chat", 3, false, 4096, 2]
        ])
        assert.deepStrictEqual(models.map((m) => Duration.toMinutes(Option.getOrThrow(m.idleTtl))), [2, 9])
      }
      // Through a provider, an unknown key inside an entry is refused as the file refuses it.
      const typo = yield* Effect.flip(readConfig.pipe(Effect.withConfigProvider(ConfigProvider.fromJson({ ...json, models: { a: { ...entry("a"), tokne: "secret-value" } } }))))
      assert.include(String(typo), "models.a.tokne")
      assert.notInclude(String(typo), "secret-value")
    }))
})

describe("docs/api.md: the defaults table", () => {
  const doc = readFileSync(join(import.meta.dirname, "../../docs/api.md"), "utf8")
  const section = /## Configuration\n([\s\S]*?)\n## /.exec(doc)?.[1] ?? ""
  const rows = new Map(
    [...section.matchAll(/^\| `([^`]+)` \| ([^|]+) \|/gm)].map((m) => [m[1] ?? "", (m[2] ?? "").trim()] as const)
  )
  // The schema without its cross-field check, so defaults can be read from `{ model }` alone.
  const struct = CompanionConfigSchema.from
  const defaults = Schema.encodeSync(struct)(Schema.decodeUnknownSync(struct)({ model: MODEL, models: { "embed-small": MODEL } })) as Json

  it("has a row for every key and no other", () => {
    assert.deepStrictEqual([...rows.keys()].sort(), [...keys()].sort())
  })

  it("shows each key's default as the schema has it: required, off, or the value", () => {
    for (const key of keys()) {
      const cell = rows.get(key) ?? ""
      const required = (key.startsWith("model.") && key !== "model.name") || /^models\.<name>\.(sha256|sizeBytes|source)$/.test(key)
      const value = at(defaults, named(key))
      if (key === "model.name") assert.strictEqual(cell, "derived", key)
      else if (required) assert.strictEqual(cell, "required", key)
      else if (value === undefined) assert.strictEqual(cell, "off", key)
      else assert.deepStrictEqual(JSON.parse(/^`(.*)`$/.exec(cell)?.[1] ?? "null"), value, key)
    }
  })
})
