/**
 * The `--config` file: JSON, validated by Schema before any work. Unknown keys are refused (a typo
 * is not silently ignored). A refusal names the field and what it expected, never the value found,
 * so a misplaced secret is not echoed. A valid file becomes a `ConfigProvider` for the layers'
 * own `Config` (which apply the defaults).
 */
import { FileSystem } from "@effect/platform"
import { ConfigProvider, Effect, ParseResult, Schema } from "effect"

const Duration = Schema.String.annotations({ identifier: "a duration such as \"500 millis\" or \"2 minutes\"" })
const PositiveInt = Schema.Int.pipe(Schema.positive()).annotations({ identifier: "a positive integer" })
const NonNegativeInt = Schema.Int.pipe(Schema.nonNegative()).annotations({ identifier: "a non-negative integer" })
const Port = Schema.Int.pipe(Schema.between(0, 65535)).annotations({ identifier: "a port number (0 picks one)" })
const Url = Schema.String.annotations({ identifier: "an https URL" })

export const ConfigFileSchema = Schema.Struct({
  storeDir: Schema.optional(Schema.String),
  model: Schema.Struct({
    sha256: Schema.String.pipe(Schema.pattern(/^[0-9a-f]{64}$/)).annotations({ identifier: "64 lowercase hex digits" }),
    sizeBytes: PositiveInt,
    source: Url
  }),
  allowedSources: Schema.optional(Schema.Array(Url)),
  admission: Schema.optional(Schema.Struct({
    maxInFlight: Schema.optional(PositiveInt),
    queueBound: Schema.optional(NonNegativeInt),
    queueTimeout: Schema.optional(Duration)
  })),
  resources: Schema.optional(Schema.Struct({
    maxRamBytes: Schema.optional(PositiveInt),
    maxVramBytes: Schema.optional(PositiveInt),
    maxCpuPercent: Schema.optional(Schema.Number.pipe(Schema.between(1, 100)).annotations({ identifier: "a percentage" }))
  })),
  maxObservationAge: Schema.optional(Duration),
  health: Schema.optional(Schema.Struct({
    firstProbeInterval: Schema.optional(Duration),
    maxProbeInterval: Schema.optional(Duration),
    probeTimeout: Schema.optional(Duration),
    loadDeadline: Schema.optional(Duration)
  })),
  download: Schema.optional(Schema.Struct({
    retries: Schema.optional(NonNegativeInt),
    retryBase: Schema.optional(Duration),
    retryMax: Schema.optional(Duration),
    lockWait: Schema.optional(Duration),
    connectTimeout: Schema.optional(Duration),
    stallTimeout: Schema.optional(Duration),
    caFiles: Schema.optional(Schema.Array(Schema.String))
  })),
  restart: Schema.optional(Schema.Struct({
    enabled: Schema.optional(Schema.Boolean),
    maxFailures: Schema.optional(PositiveInt),
    window: Schema.optional(Duration),
    cooldown: Schema.optional(Duration),
    backoffBase: Schema.optional(Duration),
    backoffMax: Schema.optional(Duration)
  })),
  stopGrace: Schema.optional(Duration),
  idleTtl: Schema.optional(Duration),
  runtime: Schema.optional(Schema.Struct({
    kind: Schema.optional(Schema.Literal("llama.cpp", "ollama")),
    binary: Schema.optional(Schema.String),
    contextSize: Schema.optional(PositiveInt),
    threads: Schema.optional(PositiveInt),
    envAllowlist: Schema.optional(Schema.Array(Schema.String)),
    addressTimeout: Schema.optional(Duration)
  })),
  gateway: Schema.optional(Schema.Struct({
    port: Schema.optional(Port),
    allowedOrigins: Schema.optional(Schema.Array(Schema.String)),
    token: Schema.optional(Schema.String),
    maxBodyBytes: Schema.optional(PositiveInt)
  }))
})

export type ConfigFile = Schema.Schema.Type<typeof ConfigFileSchema>

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

const expectedOf = (ast: import("effect").SchemaAST.AST): string => {
  const identifier = ast.annotations[Symbol.for("effect/annotation/Identifier")]
  return typeof identifier === "string" ? identifier : String(ast)
}

/** Walk a parse issue into "path: expected …" lines. Actual values are never read. */
export const problemsOf = (issue: ParseResult.ParseIssue, path: ReadonlyArray<PropertyKey> = []): Array<string> => {
  const at = path.length === 0 ? "(root)" : path.map(String).join(".")
  switch (issue._tag) {
    case "Pointer":
      return problemsOf(issue.issue, [...path, ...(Array.isArray(issue.path) ? issue.path : [issue.path])])
    case "Composite":
      return ((Array.isArray(issue.issues) ? issue.issues : [issue.issues]) as ReadonlyArray<ParseResult.ParseIssue>)
        .flatMap((i) => problemsOf(i, path))
    case "Missing":
      return [`${at}: required`]
    case "Unexpected":
      return [`${at}: not a known field`]
    case "Refinement":
    case "Transformation":
      return issue._tag === "Refinement" && issue.kind === "Predicate"
        ? [`${at}: expected ${expectedOf(issue.ast)}`]
        : problemsOf(issue.issue, path)
    case "Type":
      return [`${at}: expected ${expectedOf(issue.ast)}`]
    case "Forbidden":
      return [`${at}: not allowed`]
  }
}

export const decode = (json: unknown) =>
  Schema.decodeUnknown(ConfigFileSchema, { onExcessProperty: "error", errors: "all" })(json).pipe(
    Effect.mapError((error) => new ConfigFileError({ reason: "invalid", problems: [...new Set(problemsOf(error.issue))] }))
  )

/** Read, parse and validate a config file; the result is a ConfigProvider over its contents. */
export const load = (path: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const text = yield* fs.readFileString(path).pipe(Effect.mapError(() => new ConfigFileError({ reason: "unreadable", problems: [] })))
    const json = yield* Effect.try({ try: () => JSON.parse(text) as unknown, catch: () => new ConfigFileError({ reason: "not_json", problems: [] }) })
    const file = yield* decode(json)
    return { file, provider: ConfigProvider.fromJson(file) }
  })
