/**
 * The one configuration. A single Schema, `CompanionConfigSchema`, holds every key, its type, its
 * bounds and its default. Both ways in come from it:
 *
 * - `decodeFile(json)`: the `--config` file, refused with one "field: expected …" line per problem
 *   (unknown keys included) and never a value, so a misplaced secret is not echoed;
 * - `CompanionConfig`: a `Config` for the layers, read from whatever `ConfigProvider` is in place
 *   (JSON, a map, the environment). It reads the keys the schema names, as text, and decodes them
 *   with the same schema, so it has the same defaults and the same messages.
 *
 * Effect's `Config` combinators would be a second definition of every bound and default, which is
 * what this module replaces; the walk below derives the readers from the schema instead.
 */
import {
  Config,
  ConfigError,
  Duration,
  Effect,
  Either,
  HashMap,
  HashSet,
  Option,
  ParseResult,
  Schema,
  SchemaAST
} from "effect"
import * as Admission from "../domain/Admission.js"
import type { IntegrityReason } from "../domain/Errors.js"
import * as Gguf from "../domain/Gguf.js"
import * as Hub from "../domain/Hub.js"
import * as Integrity from "../domain/Integrity.js"
import * as ModelPolicy from "../domain/ModelPolicy.js"
import * as ResourcePolicy from "../domain/ResourcePolicy.js"

// ---------------------------------------------------------------------------------------------
// Field types
// ---------------------------------------------------------------------------------------------

const unitOf = (millis: number): string =>
  millis % 60_000 === 0 ? `${millis / 60_000} minute` : millis % 1_000 === 0 ? `${millis / 1_000} second` : `${millis} milli`

/** A duration written as text: `"500 millis"`, `"30 seconds"`, `"2 minutes"`. */
export const DurationText = Schema.transformOrFail(Schema.String, Schema.DurationFromSelf, {
  strict: true,
  decode: (text, _, ast) =>
    Option.match(Duration.decodeUnknown(text), {
      onNone: () => ParseResult.fail(new ParseResult.Type(ast, text)),
      onSome: (duration) => Duration.isFinite(duration) ? ParseResult.succeed(duration) : ParseResult.fail(new ParseResult.Type(ast, text))
    }),
  encode: (duration) => {
    const millis = Duration.toMillis(duration)
    const unit = unitOf(millis)
    return ParseResult.succeed(unit.startsWith("1 ") ? unit : `${unit}s`)
  }
}).annotations({ identifier: "a duration such as \"500 millis\" or \"2 minutes\"" })

const PositiveDuration = DurationText.pipe(Schema.filter((d) => Duration.toMillis(d) > 0))
  .annotations({ identifier: "a positive duration such as \"500 millis\" or \"2 minutes\"" })

const PositiveInt = Schema.Int.pipe(Schema.positive(), Schema.lessThanOrEqualTo(Number.MAX_SAFE_INTEGER))
  .annotations({ identifier: "a positive integer" })
const NonNegativeInt = Schema.Int.pipe(Schema.nonNegative(), Schema.lessThanOrEqualTo(Number.MAX_SAFE_INTEGER))
  .annotations({ identifier: "a non-negative integer" })
const Text = Schema.String.pipe(Schema.minLength(1)).annotations({ identifier: "a non-empty string" })

const AllowlistEntry = Schema.String.pipe(Schema.filter((entry) => Integrity.isAllowlistEntry(entry)))
  .annotations({ identifier: "an https URL prefix without credentials, query or fragment" })
const HubUrl = Schema.String.pipe(Schema.filter((url) => Either.isRight(Hub.parseHub(url))))
  .annotations({ identifier: "an https origin (no path, credentials, query or fragment)" })

const Origin = Schema.String.pipe(
  Schema.filter((origin) => URL.canParse(origin) && new URL(origin).origin === origin)
).annotations({ identifier: "an origin such as \"http://localhost:3000\"" })

const EnvName = Schema.String.pipe(Schema.pattern(/^[A-Za-z_][A-Za-z0-9_]*$/))
  .annotations({ identifier: "an environment variable name" })

const Port = Schema.Int.pipe(Schema.between(0, 65_535)).annotations({ identifier: "a port number (0 picks one)" })

const MiB = 1024 * 1024
const GiB = 1024 * MiB

const withDefault = <S extends Schema.Schema.Any>(schema: S, value: Schema.Schema.Type<S>) =>
  Schema.optionalWith(schema, { default: () => value, exact: true })

const off = <S extends Schema.Schema.Any>(schema: S) => Schema.optionalWith(schema, { as: "Option", exact: true })

/** A section whose every field has a default may be left out; it then takes those defaults. */
const section = <Fields extends Schema.Struct.Fields>(fields: Fields) => {
  const struct = Schema.Struct(fields)
  // Every field of a section has a default (or is off), and none needs a service.
  const defaults = Schema.decodeUnknownSync(struct as unknown as Schema.Schema<Schema.Schema.Type<typeof struct>>)({})
  return Schema.optionalWith(struct, { default: () => defaults, exact: true })
}

/** What the runtime calls the model (`--alias`), the only name a client sees: no path, no digest. */
export const ModelName = Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/))
  .annotations({ identifier: "a model name: a letter or digit, then letters, digits, '.', '_', ':' or '-' (at most 64)" })

/**
 * The default model name: the source URL's file name without its extension
 * (`…/Qwen3.5-0.8B-Q4_K_M.gguf` → `Qwen3.5-0.8B-Q4_K_M`), other characters made `-`; `model` when
 * nothing is left, or when what is left carries a digest (32 or more hex digits in a row, as a
 * blob store's `sha256-<hex>` names do): the name is shown to every client, a digest never is.
 */
export const nameFrom = (source: URL): string => {
  const file = source.pathname.slice(source.pathname.lastIndexOf("/") + 1)
  let decoded = file
  try {
    decoded = decodeURIComponent(file)
  } catch {
    // an invalid escape: keep the file name as written
  }
  const dot = decoded.lastIndexOf(".")
  const stem = (dot > 0 ? decoded.slice(0, dot) : decoded).replace(/[^A-Za-z0-9._:-]/g, "-").replace(/^[^A-Za-z0-9]+/, "").slice(0, 64)
  return stem === "" || /[0-9a-f]{32,}/i.test(stem) ? "model" : stem
}

const Sha256Text = Schema.String.pipe(Schema.pattern(/^[0-9a-f]{64}$/)).annotations({ identifier: "64 lowercase hex digits" })
const SourceText = Schema.String.pipe(Schema.filter((s) => URL.canParse(s))).annotations({ identifier: "an https URL" })

/** What a model is for: `chat` serves the chat and completion routes, `embedding` the embeddings route. */
export const ModelKind = Schema.Literal("chat", "embedding")
export type ModelKind = typeof ModelKind.Type

/** `{ sha256, sizeBytes, source, name? }` in the file; a checked `ModelSpec`, a parsed URL and a name once decoded. */
const ModelEntry = Schema.transform(
  Schema.Struct({
    sha256: Sha256Text,
    sizeBytes: Integrity.SizeBytes.annotations({ identifier: "a positive integer" }),
    source: SourceText,
    name: Schema.optionalWith(ModelName, { exact: true })
  }),
  Schema.Struct({ spec: Schema.typeSchema(Integrity.ModelSpec), source: Schema.URLFromSelf, name: Schema.String }),
  {
    strict: true,
    decode: ({ name, sha256, sizeBytes, source }) => {
      const url = new URL(source)
      return { spec: Integrity.ModelSpec.make({ sha256: sha256 as Integrity.Sha256Hex, sizeBytes }), source: url, name: name ?? nameFrom(url) }
    },
    encode: ({ name, source, spec }) => ({ sha256: spec.sha256, sizeBytes: spec.sizeBytes, source: source.href, name })
  }
)

/**
 * One model of several (`models.<name>`): what it is and where it comes from, what it serves, and
 * how it runs. Unset fields take the top-level values (`runtime.contextSize`, `admission.maxInFlight`
 * for `parallel`, `idleTtl`, `runtime.threads`).
 */
const PoolEntry = Schema.Struct({
  sha256: Sha256Text,
  sizeBytes: Integrity.SizeBytes.annotations({ identifier: "a positive integer" }),
  source: Schema.URL.annotations({ identifier: "an https URL" }),
  kind: withDefault(ModelKind, "chat"),
  contextSize: off(PositiveInt),
  /** Slots in this model's runtime, and its most requests in flight. */
  parallel: off(PositiveInt),
  /** Started with the pool (`serve`); otherwise on its first request. */
  preload: withDefault(Schema.Boolean, false),
  idleTtl: off(PositiveDuration),
  runtime: section({ threads: off(PositiveInt) })
})

// ---------------------------------------------------------------------------------------------
// The schema
// ---------------------------------------------------------------------------------------------

/** The environment a runtime sees: enough to find programs and libraries, pick a locale and a GPU; nothing that holds a secret. */
export const defaultEnvAllowlist: ReadonlyArray<string> = [
  "PATH",
  "HOME",
  "LANG",
  "LC_ALL",
  "TZ",
  "TMPDIR",
  "CUDA_VISIBLE_DEVICES",
  "HIP_VISIBLE_DEVICES",
  "ROCR_VISIBLE_DEVICES"
]

const sourceMessages: Partial<Record<IntegrityReason, string>> = {
  scheme_not_allowed: "must use https",
  source_not_allowed: "is not under any allowedSources entry"
}

export const CompanionConfigSchema = Schema.Struct({
  /** Where verified models live: `<storeDir>/<sha256>`. */
  storeDir: withDefault(Text, ".companion-runtime/models"),
  /** The one-model shorthand: set this or `models`, not both. */
  model: Schema.optionalWith(ModelEntry, { exact: true }),
  /** Several models by name, served within one budget (`resources`). */
  models: Schema.optionalWith(Schema.Record({ key: ModelName, value: PoolEntry }), { exact: true }),
  /** URL prefixes a download, and every redirect hop of it, may come from (`https://*.<domain>/` admits its subdomains). */
  allowedSources: withDefault(Schema.Array(AllowlistEntry), []),
  admission: section({
    maxInFlight: withDefault(Admission.AdmissionLimits.fields.maxInFlight, 4),
    queueBound: withDefault(Admission.AdmissionLimits.fields.queueBound, 64),
    queueTimeout: off(PositiveDuration)
  }),
  resources: section({
    maxRamBytes: withDefault(ResourcePolicy.ResourceLimits.fields.maxRamBytes, 8 * GiB),
    maxVramBytes: ResourcePolicy.ResourceLimits.fields.maxVramBytes,
    maxCpuPercent: withDefault(ResourcePolicy.ResourceLimits.fields.maxCpuPercent, 100)
  }),
  /** How long one resource observation serves the requests that follow; 0 observes every request. */
  maxObservationAge: withDefault(DurationText.pipe(Schema.filter((d) => Duration.toMillis(d) >= 0)), Duration.seconds(1)),
  health: section({
    firstProbeInterval: withDefault(PositiveDuration, Duration.millis(50)),
    maxProbeInterval: withDefault(PositiveDuration, Duration.seconds(1)),
    probeTimeout: withDefault(PositiveDuration, Duration.seconds(2)),
    loadDeadline: withDefault(PositiveDuration, Duration.minutes(2))
  }),
  download: section({
    retries: withDefault(NonNegativeInt, 5),
    retryBase: withDefault(PositiveDuration, Duration.millis(500)),
    retryMax: withDefault(PositiveDuration, Duration.seconds(30)),
    lockWait: withDefault(PositiveDuration, Duration.minutes(15)),
    connectTimeout: withDefault(PositiveDuration, Duration.seconds(10)),
    stallTimeout: withDefault(PositiveDuration, Duration.seconds(30)),
    /** Bytes per second a download must average over `rateWindow`, or it fails as `download_too_slow`; 0 is off. */
    minRate: withDefault(NonNegativeInt, 64 * 1024),
    rateWindow: withDefault(PositiveDuration, Duration.seconds(60)),
    caFiles: withDefault(Schema.Array(Text), [])
  }),
  restart: section({
    enabled: withDefault(Schema.Boolean, true),
    maxFailures: withDefault(PositiveInt, 5),
    window: withDefault(PositiveDuration, Duration.minutes(5)),
    cooldown: withDefault(PositiveDuration, Duration.minutes(5)),
    backoffBase: withDefault(PositiveDuration, Duration.seconds(1)),
    backoffMax: withDefault(PositiveDuration, Duration.seconds(30))
  }),
  stopGrace: withDefault(PositiveDuration, Duration.seconds(5)),
  idleTtl: off(PositiveDuration),
  runtime: section({
    kind: withDefault(Schema.Literal("llama.cpp", "ollama"), "llama.cpp"),
    binary: withDefault(Text, "llama-server"),
    contextSize: off(PositiveInt),
    threads: off(PositiveInt),
    envAllowlist: withDefault(Schema.Array(EnvName), defaultEnvAllowlist),
    addressTimeout: withDefault(PositiveDuration, Duration.seconds(60))
  }),
  /** What a model must be, read from its GGUF header before the runtime loads it. */
  policy: section({
    architectures: withDefault(Schema.Array(Text), ModelPolicy.DEFAULT_ARCHITECTURES),
    maxChatTemplateBytes: withDefault(PositiveInt, 64 * 1024),
    chatTemplateSha256s: withDefault(Schema.Array(Schema.String.pipe(Schema.pattern(/^[0-9a-f]{64}$/)).annotations({ identifier: "64 lowercase hex digits" })), []),
    /** A vetted template the runtime uses instead of the model's (`--chat-template-file`). */
    chatTemplateFile: off(Text)
  }),
  /** Caps on a GGUF header; the defaults admit every real model. */
  gguf: section({
    maxTensors: withDefault(PositiveInt, Gguf.defaultCaps.maxTensors),
    maxKeys: withDefault(PositiveInt, Gguf.defaultCaps.maxKeys),
    maxStringBytes: withDefault(PositiveInt, Gguf.defaultCaps.maxStringBytes),
    maxArrayLength: withDefault(PositiveInt, Gguf.defaultCaps.maxArrayLength),
    maxArrayDepth: withDefault(PositiveInt, Gguf.defaultCaps.maxArrayDepth),
    maxHeaderBytes: withDefault(PositiveInt, Gguf.defaultCaps.maxHeaderBytes)
  }),
  /** A Hugging Face-style hub: where `pin` asks, and what a source on it may be redirected to. */
  hub: section({
    url: withDefault(HubUrl, Hub.DEFAULT_HUB),
    /**
     * Redirect targets of a source on the hub (its resolve URLs), never first sources: its storage
     * hosts. The default is what the hub documents (`https://*.hf.co/`).
     */
    storageHosts: withDefault(Schema.Array(AllowlistEntry), Hub.DEFAULT_STORAGE_HOSTS),
    /** For gated repositories; sent to the hub's own origin only. `HF_TOKEN` when absent (the command). */
    token: off(Schema.Redacted(Text))
  }),
  gateway: section({
    port: withDefault(Port, 0),
    allowedOrigins: withDefault(Schema.Array(Origin), []),
    token: off(Schema.Redacted(Text)),
    maxBodyBytes: withDefault(PositiveInt.pipe(Schema.lessThanOrEqualTo(GiB)).annotations({ identifier: "a positive integer up to 1 GiB" }), 8 * MiB),
    retryAfterSeconds: withDefault(PositiveInt, 1),
    /** A body field the request schema does not know: `"refuse"` it (400) or `"strip"` it. */
    unknownFields: withDefault(Schema.Literal("refuse", "strip"), "refuse"),
    /** The most tokens one request may generate; a request asking more (or naming none) gets this many. */
    maxTokens: withDefault(PositiveInt.pipe(Schema.lessThanOrEqualTo(2 ** 31 - 1)).annotations({ identifier: "a positive integer up to 2147483647" }), 2048),
    maxMessages: withDefault(PositiveInt, 256),
    /** Characters of text across a request's messages (or prompt), tools and schemas. */
    maxCharacters: withDefault(PositiveInt, 256 * 1024),
    maxTools: withDefault(PositiveInt, 64),
    /** Strings in one embeddings request (each counted by `maxCharacters` too). */
    maxInputs: withDefault(PositiveInt, 256),
    /** From the slot to the last byte of the answer; past it, 504 or a cut-off stream, and the slot is back. */
    generationTimeout: withDefault(PositiveDuration, Duration.minutes(5))
  })
}).pipe(
  Schema.filter((config) => {
    const several = config.models === undefined ? 0 : Object.keys(config.models).length
    if ((config.model === undefined) === (config.models === undefined)) return { path: ["models"], message: "set model or models, not both" }
    if (config.models !== undefined && several === 0) return { path: ["models"], message: "expected at least one model" }
    const sources: Array<readonly [ReadonlyArray<string>, URL]> = config.model !== undefined
      ? [[["model", "source"], config.model.source]]
      : Object.entries(config.models ?? {}).map(([name, entry]) => [["models", name, "source"], entry.source] as const)
    const issues = sources.flatMap(([path, source]) =>
      Either.match(Integrity.checkSource(source, config.allowedSources), {
        onLeft: (error) => [{ path, message: sourceMessages[error.reason] ?? "expected an https URL" }],
        onRight: () => []
      })
    )
    // Ollama takes `chat`, `Chat` and `chat:latest` for one name: two of them would re-point each other.
    if (config.runtime.kind === "ollama") {
      const seen = new Set<string>()
      for (const name of Object.keys(config.models ?? {}).sort()) {
        const ollama = (name.includes(":") ? name : `${name}:latest`).toLowerCase()
        if (seen.has(ollama)) issues.push({ path: ["models", name], message: "names the same Ollama model as another entry" })
        seen.add(ollama)
      }
    }
    return issues.length === 0 ? undefined : issues
  })
)

export type CompanionConfig = typeof CompanionConfigSchema.Type
export type CompanionConfigFile = typeof CompanionConfigSchema.Encoded

// ---------------------------------------------------------------------------------------------
// Problems: "field: expected …", never a value
// ---------------------------------------------------------------------------------------------

export interface Problem {
  readonly path: ReadonlyArray<string>
  /** "required", "not a known field", "expected …", or a fixed message of this module. */
  readonly text: string
}

const IDENTIFIER = Symbol.for("effect/annotation/Identifier")

const identifierOf = (ast: SchemaAST.AST): string | undefined => {
  const identifier = ast.annotations[IDENTIFIER]
  return typeof identifier === "string" ? identifier : undefined
}

const expectedOf = (ast: SchemaAST.AST): string =>
  identifierOf(ast) ?? (SchemaAST.isRefinement(ast) || SchemaAST.isTransformation(ast) ? expectedOf(ast.from) : String(ast))

/** Walk a parse issue into problems. The actual values are never read. */
export const problemsOf = (issue: ParseResult.ParseIssue, path: ReadonlyArray<string> = []): Array<Problem> => {
  switch (issue._tag) {
    case "Pointer":
      return problemsOf(issue.issue, [...path, ...(Array.isArray(issue.path) ? issue.path : [issue.path]).map(String)])
    case "Composite":
      return ((Array.isArray(issue.issues) ? issue.issues : [issue.issues]) as ReadonlyArray<ParseResult.ParseIssue>)
        .flatMap((i) => problemsOf(i, path))
    case "Missing":
      return [{ path, text: "required" }]
    case "Unexpected":
      return [{ path, text: "not a known field" }]
    case "Refinement":
    case "Transformation": {
      // A named type is reported by its name, whichever of its inner checks failed.
      const named = identifierOf(issue.ast)
      if (named !== undefined) return [{ path, text: `expected ${named}` }]
      // A filter of this module that points at a field (the allowlist check) reports there.
      if (issue._tag === "Refinement" && issue.kind === "Predicate" && (issue.issue._tag === "Pointer" || issue.issue._tag === "Composite")) {
        return problemsOf(issue.issue, path)
      }
      return issue.kind === "Predicate" || issue.kind === "Transformation"
        ? [{ path, text: `expected ${expectedOf(issue.ast)}` }]
        : problemsOf(issue.issue, path)
    }
    case "Type":
      // Messages are set only by this module's own filters, each a fixed text; the value is never read.
      return [{ path, text: issue.message ?? `expected ${expectedOf(issue.ast)}` }]
    case "Forbidden":
      return [{ path, text: "not allowed" }]
  }
}

export const formatProblem = (problem: Problem): string =>
  `${problem.path.length === 0 ? "(root)" : problem.path.join(".")}: ${problem.text}`

const uniqueProblems = (issue: ParseResult.ParseIssue): Array<Problem> => {
  const seen = new Set<string>()
  return problemsOf(issue).filter((p) => {
    const key = formatProblem(p)
    return seen.has(key) ? false : (seen.add(key), true)
  })
}

// ---------------------------------------------------------------------------------------------
// The file
// ---------------------------------------------------------------------------------------------

/** A config file that could not be used; `problems` are "field: expected …" lines, no values. */
export class ConfigFileError extends Schema.TaggedError<ConfigFileError>("companion-runtime/ConfigFileError")(
  "ConfigFileError",
  { reason: Schema.Literal("unreadable", "not_json", "invalid"), problems: Schema.Array(Schema.String) }
) {
  override get message(): string {
    return this.reason === "unreadable"
      ? "The config file could not be read."
      : this.reason === "not_json"
      ? "The config file is not valid JSON."
      : `The config file is invalid:\n${this.problems.map((p) => `  - ${p}`).join("\n")}`
  }
}

/** The file's JSON, decoded: unknown keys refused, every problem listed. */
export const decodeFile = (json: unknown): Effect.Effect<CompanionConfig, ConfigFileError> =>
  Schema.decodeUnknown(CompanionConfigSchema, { onExcessProperty: "error", errors: "all" })(json).pipe(
    Effect.mapError((error) => new ConfigFileError({ reason: "invalid", problems: uniqueProblems(error.issue).map(formatProblem) }))
  )

/**
 * A file's `download` and `hub` sections alone, as `decodeFile` reads them: what `pin` needs before
 * the file has a model (its CA files and the hub's token).
 */
export const decodeHubSections = (json: unknown) =>
  Schema.decodeUnknown(
    Schema.Struct({ download: CompanionConfigSchema.from.fields.download, hub: CompanionConfigSchema.from.fields.hub }),
    { onExcessProperty: "ignore", errors: "all" }
  )(json).pipe(
    Effect.mapError((error) => new ConfigFileError({ reason: "invalid", problems: uniqueProblems(error.issue).map(formatProblem) }))
  )

/** The text of a config file: JSON, then `decodeFile`. */
export const parseFile = (text: string): Effect.Effect<CompanionConfig, ConfigFileError> =>
  Effect.flatMap(
    Effect.try({ try: () => JSON.parse(text) as unknown, catch: () => new ConfigFileError({ reason: "not_json", problems: [] }) }),
    decodeFile
  )

/** The configuration as the file would write it (durations as text, the token in clear). */
export const encode = (config: CompanionConfig): CompanionConfigFile => Schema.encodeSync(CompanionConfigSchema)(config)

// ---------------------------------------------------------------------------------------------
// The layers' Config
// ---------------------------------------------------------------------------------------------

const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i
const EMPTY = new Set(["", "<nil>"])

/** A leaf read as text and turned into the JSON type the schema's encoded side expects; text that is not one stays text, so the schema refuses it. */
const leafOf = (ast: SchemaAST.AST, name: string): Config.Config<Option.Option<unknown>> | undefined => {
  switch (ast._tag) {
    case "StringKeyword":
    case "Literal":
    case "TemplateLiteral":
      return Config.option(Config.string(name))
    case "NumberKeyword":
      return Config.option(Config.map(Config.string(name), (text) => (NUMBER.test(text.trim()) ? Number(text) : text)))
    case "BooleanKeyword":
      return Config.option(Config.map(Config.string(name), (text) => (text === "true" ? true : text === "false" ? false : text)))
    case "Union": {
      const members = ast.types.filter((t) => t._tag !== "UndefinedKeyword")
      return members.length === 1 ? leafOf(members[0]!, name) : members.every((t) => t._tag === "Literal") ? Config.option(Config.string(name)) : undefined
    }
    case "TupleType": {
      const element = ast.rest[0]?.type
      return ast.elements.length === 0 && element !== undefined && (element._tag === "StringKeyword" || element._tag === "Literal")
        // An empty list reaches Config as one empty item (an empty variable, or `<nil>` from fromJson).
        ? Config.option(Config.map(Config.array(Config.string(), name), (items) => (items.length === 1 && EMPTY.has(items[0]!) ? [] : items)))
        : undefined
    }
    case "TypeLiteral": {
      const entry = ast.indexSignatures[0]?.type
      if (ast.propertySignatures.length > 0 || entry === undefined) return Config.nested(structOf(ast), name)
      // A record of structs (`models`): one entry per child of the key; none reads as absent.
      if (!SchemaAST.isTypeLiteral(entry)) return undefined
      return Config.map(
        Config.hashMap(Config.map(structOf(entry), (value) => Option.getOrElse(value, () => ({}))), name),
        (map) => (HashMap.size(map) === 0 ? Option.none() : Option.some(Object.fromEntries(map)))
      )
    }
    default:
      return undefined
  }
}

/** Every property of a struct, read as an option; a section with no key present is absent. */
const structOf = (ast: SchemaAST.TypeLiteral): Config.Config<Option.Option<Record<string, unknown>>> => {
  const entries = ast.propertySignatures.map((p) => {
    const name = String(p.name)
    const reader = leafOf(p.type, name)
    if (reader === undefined) throw new Error(`config: no reader for the key ${name}`)
    return [name, reader] as const
  })
  return Config.map(Config.all(Object.fromEntries(entries)), (values) => {
    const present = Object.entries(values as Record<string, Option.Option<unknown>>)
      .flatMap(([key, value]) => (Option.isSome(value) ? [[key, value.value] as const] : []))
    return present.length === 0 ? Option.none() : Option.some(Object.fromEntries(present))
  })
}

const encodedStruct = (): SchemaAST.TypeLiteral => {
  const ast = Schema.encodedSchema(CompanionConfigSchema).ast
  if (!SchemaAST.isTypeLiteral(ast)) throw new Error("config: the schema's encoded side is not a struct")
  return ast
}

const toConfigError = (problems: ReadonlyArray<Problem>): ConfigError.ConfigError =>
  problems
    .map((p) => ConfigError.InvalidData([...p.path], p.text))
    .reduce((left, right) => ConfigError.And(left, right))

/**
 * The whole configuration from the `ConfigProvider` in context, decoded by the same schema as the
 * file (unknown keys in the provider are not read). A failure is a `ConfigError` per problem, each
 * naming its path and what was expected, never the value.
 */
export const CompanionConfig: Config.Config<CompanionConfig> = Config.mapOrFail(
  structOf(encodedStruct()),
  (raw) =>
    Either.mapLeft(
      Schema.decodeUnknownEither(CompanionConfigSchema, { errors: "all" })(Option.getOrElse(raw, () => ({}))),
      (error) => toConfigError(uniqueProblems(error.issue))
    )
)

/**
 * `CompanionConfig`, and a key inside a section that the schema does not know refused, as the file
 * decoder refuses it: a `gateway.tokne` must not leave the gateway without its token. What the
 * layers read. Checked where the provider can list a section's keys as they are written (JSON, a
 * map, a provider of the app's own). Not checked: top-level keys (an environment holds every
 * variable of the process); Effect's environment provider, which lists names upper-cased (so
 * `GATEWAY_INTERFACE`, never read as config, could not be told from a misspelt key); and providers
 * whose paths are rewritten (`nested`, `constantCase`).
 */
export const readConfig: Effect.Effect<CompanionConfig, ConfigError.ConfigError> = Effect.gen(function*() {
  // Each section's path and the keys it knows; a record's entries (`models.<name>`) are sections too.
  const sections = encodedStruct().propertySignatures.flatMap((p) => {
    const type = SchemaAST.isTypeLiteral(p.type) ? p.type : undefined
    if (type === undefined) return []
    const entry = type.indexSignatures[0]?.type
    return [{
      path: [String(p.name)],
      known: new Set(type.propertySignatures.map((q) => String(q.name))),
      entries: entry !== undefined && SchemaAST.isTypeLiteral(entry) ? new Set(entry.propertySignatures.map((q) => String(q.name))) : undefined
    }]
  })
  const problems = yield* Effect.configProviderWith((provider) => {
    const children = (path: ReadonlyArray<string>) =>
      Effect.map(
        Effect.orElseSucceed(provider.flattened.enumerateChildren(path), () => HashSet.empty<string>()),
        // A list's items are children named `key[0]`, `key[1]`, ...: each is its key.
        (found) => [...new Set([...found].map((child) => child.replace(/\[\d+\]$/, "")))]
      )
    const unknownIn = (path: ReadonlyArray<string>, known: ReadonlySet<string>) =>
      Effect.map(children(path), (found) =>
        found.filter((child) => !known.has(child)).map((child): Problem => ({ path: [...path, child], text: "not a known field" })))
    return provider.flattened.patch._tag !== "Empty"
      ? Effect.succeed([])
      : Effect.forEach(sections, ({ entries, known, path }) =>
        entries === undefined
          ? unknownIn(path, known)
          : Effect.flatMap(children(path), (names) => Effect.map(Effect.forEach(names, (name) => unknownIn([...path, name], entries)), (all) => all.flat())))
  })
  const unknown = problems.flat()
  if (unknown.length > 0) return yield* Effect.fail(toConfigError(unknown))
  return yield* CompanionConfig
})

/** Every key of the schema as a dotted path, in declaration order. */
export const keys = (): ReadonlyArray<string> => {
  const walk = (ast: SchemaAST.TypeLiteral, prefix: string): Array<string> => [
    ...ast.propertySignatures.flatMap((p) =>
      SchemaAST.isTypeLiteral(p.type) ? walk(p.type, `${prefix}${String(p.name)}.`) : [`${prefix}${String(p.name)}`]
    ),
    // A record's entries are named by the user: `models.<name>.sha256`, ...
    ...ast.indexSignatures.flatMap((i) => (SchemaAST.isTypeLiteral(i.type) ? walk(i.type, `${prefix}<name>.`) : []))
  ]
  return walk(encodedStruct(), "")
}

/** The model policy, the runtime's context and slots, and the RAM ceiling: what a pre-flight judges against. */
export const preflightOptions = (config: {
  readonly policy: CompanionConfig["policy"]
  readonly runtime: Pick<CompanionConfig["runtime"], "contextSize">
  readonly admission: Pick<CompanionConfig["admission"], "maxInFlight">
  readonly resources: Pick<CompanionConfig["resources"], "maxRamBytes">
}): ModelPolicy.PreflightOptions => ({
  policy: {
    architectures: config.policy.architectures,
    maxChatTemplateBytes: config.policy.maxChatTemplateBytes,
    chatTemplateSha256s: config.policy.chatTemplateSha256s,
    templateReplaced: Option.isSome(config.policy.chatTemplateFile)
  },
  contextSize: Option.getOrUndefined(config.runtime.contextSize),
  parallel: config.admission.maxInFlight,
  maxRamBytes: config.resources.maxRamBytes
})

/** One model as the pool runs it: the `model` shorthand and each `models` entry come out as this. */
export interface ModelConfig {
  /** What clients call it: the `--alias`, the `model` of every request and answer. */
  readonly name: string
  readonly kind: ModelKind
  readonly spec: Integrity.ModelSpec
  readonly source: URL
  readonly contextSize: Option.Option<number>
  /** Slots in its runtime (`--parallel`), and its most requests in flight. */
  readonly parallel: number
  /** Started with the pool; otherwise loaded on its first request. */
  readonly preload: boolean
  readonly idleTtl: Option.Option<Duration.Duration>
  readonly threads: Option.Option<number>
}

/**
 * Every configured model: the one `model` (a chat model, preloaded, with the top-level settings),
 * or each `models` entry with the top-level settings where it sets none, in the order of their
 * names (the first of a kind is where a request naming no model goes).
 */
export const modelsOf = (config: CompanionConfig): ReadonlyArray<ModelConfig> => {
  if (config.model !== undefined) {
    return [{
      name: config.model.name,
      kind: "chat",
      spec: config.model.spec,
      source: config.model.source,
      contextSize: config.runtime.contextSize,
      parallel: config.admission.maxInFlight,
      preload: true,
      idleTtl: config.idleTtl,
      threads: config.runtime.threads
    }]
  }
  // By name: a ConfigProvider keeps no order among a record's keys, and the two readers must agree.
  return Object.entries(config.models ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([name, entry]) => ({
    name,
    kind: entry.kind,
    spec: Integrity.ModelSpec.make({ sha256: entry.sha256 as Integrity.Sha256Hex, sizeBytes: entry.sizeBytes }),
    source: entry.source,
    contextSize: Option.orElse(entry.contextSize, () => config.runtime.contextSize),
    parallel: Option.getOrElse(entry.parallel, () => config.admission.maxInFlight),
    preload: entry.preload,
    idleTtl: Option.orElse(entry.idleTtl, () => config.idleTtl),
    threads: Option.orElse(entry.runtime.threads, () => config.runtime.threads)
  }))
}

/** The first configured model: the one `model`, or the first of `models`. */
export const firstModel = (config: CompanionConfig): ModelConfig => modelsOf(config)[0]!
