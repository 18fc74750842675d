/**
 * The request firewall: what an inference body may say before a native parser sees it.
 *
 * llama-server parses request bodies in C++ and has had memory-safety bugs there (a negative
 * `n_discard` wrote out of bounds, CVE-2026-21869); its llama.cpp-only fields reach slots, LoRA
 * adapters, context shifting and grammar compilation. So every body is decoded against a schema of
 * the fields clients send, each with a type and a range, and the runtime is sent the decoded value
 * re-serialised, never the client's bytes:
 *
 * - Fields that steer the runtime's internals (`INTERNAL_FIELDS`) are refused whatever their value,
 *   in either mode (`field_not_allowed`).
 * - Unknown fields, at any depth of a known structure, are refused (`invalid_body`) or, with
 *   `unknownFields: "strip"`, dropped.
 * - Limits: messages, tools, characters of text (images aside), nesting depth; over one,
 *   `request_too_large`. Tokens to generate are capped to `maxTokens`, and set to it when the
 *   request names none (llama-server's own default is "until the context is full").
 * - `model`: one of the served models, of the route's kind (a chat model for chat and completions,
 *   an embedding model for embeddings: `wrong_model_kind` otherwise), or absent for the first of
 *   that kind; any other name is `model_not_found`. The runtime is sent that model's name.
 *
 * Refusals carry a fixed message naming no field and no value. The field-by-field decisions, read
 * from llama.cpp's `tools/server` request parsing, are listed in docs/threat-model.md.
 *
 * Pure: a function from a parsed body to a verdict. The gateway parses, calls `check`, forwards.
 */
import { Either, Schema } from "effect"
import { GatewayError } from "../services/Errors.js"

/** A model a request may name, and what it serves. */
export interface ServedModel {
  readonly name: string
  readonly kind: "chat" | "embedding"
}

export interface FirewallOptions {
  /** The models served: a request's `model` must name one of its route's kind; absent, it gets the first of that kind. */
  readonly models: ReadonlyArray<ServedModel>
  /** `"refuse"` (default) or `"strip"` a field the schema does not know. */
  readonly unknownFields: "refuse" | "strip"
  readonly maxTokens: number
  readonly maxMessages: number
  readonly maxCharacters: number
  readonly maxTools: number
  /** Strings in one embeddings request. Default 256. */
  readonly maxInputs?: number | undefined
}

/** Refused whatever their value: slot control, LoRA, context shifting, several completions, speculative decoding, raw result fields. */
export const INTERNAL_FIELDS: ReadonlySet<string> = new Set([
  "id_slot",
  "slot_id",
  "lora",
  "n_discard",
  "n_keep",
  "n_cmpl",
  "response_fields",
  "chat_format",
  "speculative.n_max",
  "speculative.n_min",
  "speculative.p_min"
])

/** The deepest nesting a body may have: JSON Schemas for tools and `response_format` are compiled recursively in native code. */
export const MAX_DEPTH = 32
/** `n_probs` / `top_logprobs`: each costs a sort over the vocabulary per token. */
export const MAX_PROBS = 20
const MAX_STOP = 16
const MAX_LOGIT_BIAS = 300
const MAX_NAME = 256

// ---------------------------------------------------------------------------------------------
// Field types
// ---------------------------------------------------------------------------------------------

const Int = (min: number, max: number) => Schema.Int.pipe(Schema.between(min, max))
const Num = (min: number, max: number) => Schema.Number.pipe(Schema.between(min, max))
const Short = Schema.String.pipe(Schema.maxLength(MAX_NAME))
const opt = <S extends Schema.Schema.Any>(schema: S) => Schema.optionalWith(schema, { exact: true })
/**
 * A value passed through as JSON (a JSON Schema, tool parameters); bounded by depth and characters.
 * No `__proto__` key at any depth: a decoded record would drop it (an object's prototype is not
 * data), so what the runtime got would differ from what the client sent.
 */
const hasProtoKey = (node: unknown): boolean => {
  if (typeof node !== "object" || node === null) return false
  if (Array.isArray(node)) return node.some(hasProtoKey)
  for (const key in node) if (key === "__proto__" || hasProtoKey((node as Record<string, unknown>)[key])) return true
  return false
}
const JsonObject = Schema.Record({ key: Schema.String, value: Schema.Unknown }).pipe(Schema.filter((value) => !hasProtoKey(value)))

/**
 * Tokens to generate: a positive int32 (llama-server reads it as one, so a larger value would wrap
 * to -1, "no limit"); `-1` itself is accepted and capped. 0 is refused: llama-server generates one
 * token for it anyway.
 */
const TokenCount = Schema.Int.pipe(Schema.between(-1, 2 ** 31 - 1), Schema.filter((n) => n !== 0))

/**
 * How deep a GBNF grammar's groups nest, and how many there are, outside its literals, character
 * classes and comments: the grammar parser recurses per group, and a few tens of thousands of
 * levels crash llama-server. Read as its parser (`llama-grammar.cpp`) reads: the text ends at the
 * first NUL (a C string), and a `#` comment ends at `\r` or `\n` (`parse_space`).
 */
export const grammarShape = (grammar: string): { readonly depth: number; readonly groups: number } => {
  const nul = grammar.indexOf("\0")
  const text = nul === -1 ? grammar : grammar.slice(0, nul)
  let depth = 0
  let deepest = 0
  let groups = 0
  for (let i = 0; i < text.length; i++) {
    const c = text[i]
    if (c === "\"" || c === "[") {
      const close = c === "\"" ? "\"" : "]"
      for (i++; i < text.length && text[i] !== close; i++) if (text[i] === "\\") i++
    } else if (c === "#") {
      while (i + 1 < text.length && text[i + 1] !== "\n" && text[i + 1] !== "\r") i++
    } else if (c === "(") {
      groups++
      deepest = Math.max(deepest, ++depth)
    } else if (c === ")") {
      depth--
    }
  }
  return { depth: deepest, groups }
}

/** How deep a grammar's groups nest (see `grammarShape`). */
export const grammarDepth = (grammar: string): number => grammarShape(grammar).depth

/** The most groups a grammar may have: a backstop should a nesting ever be misread. */
export const MAX_GROUPS = 4096

/**
 * A GBNF grammar: groups nested at most `MAX_DEPTH`, at most `MAX_GROUPS` of them, and not an llguidance grammar (`%llguidance`),
 * which a build without llguidance answers by aborting.
 */
const Grammar = Schema.String.pipe(
  Schema.filter((grammar) => {
    if (grammar.trimStart().startsWith("%llguidance")) return false
    const { depth, groups } = grammarShape(grammar)
    return depth <= MAX_DEPTH && groups <= MAX_GROUPS
  })
)

const Stop = Schema.Union(Schema.String.pipe(Schema.maxLength(1024)), Schema.Array(Schema.String.pipe(Schema.maxLength(1024))).pipe(Schema.maxItems(MAX_STOP)))

const LogitBias = Schema.Record({ key: Schema.String.pipe(Schema.pattern(/^\d{1,7}$/)), value: Num(-100, 100) }).pipe(
  Schema.filter((bias) => Object.keys(bias).length <= MAX_LOGIT_BIAS)
)

/** Images inline only: a runtime that fetched `http(s)` image URLs would be a way out of loopback. */
const ImagePart = Schema.Struct({
  type: Schema.Literal("image_url"),
  image_url: Schema.Struct({
    url: Schema.String.pipe(Schema.startsWith("data:image/")),
    detail: opt(Schema.Literal("auto", "low", "high"))
  })
})
const TextPart = Schema.Struct({ type: Schema.Literal("text"), text: Schema.String })
const Content = Schema.NullOr(Schema.Union(Schema.String, Schema.Array(Schema.Union(TextPart, ImagePart))))

const FunctionName = Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9_.:-]{1,64}$/))

const ToolCall = Schema.Struct({
  id: opt(Short),
  type: Schema.Literal("function"),
  function: Schema.Struct({ name: FunctionName, arguments: Schema.String })
})

const Message = Schema.Struct({
  role: Schema.Literal("system", "developer", "user", "assistant", "tool"),
  content: opt(Content),
  name: opt(Short),
  tool_calls: opt(Schema.Array(ToolCall).pipe(Schema.maxItems(128))),
  tool_call_id: opt(Short),
  reasoning_content: opt(Schema.String)
})

const Tool = Schema.Struct({
  type: Schema.Literal("function"),
  function: Schema.Struct({
    name: FunctionName,
    description: opt(Schema.String),
    parameters: opt(JsonObject),
    strict: opt(Schema.Boolean)
  })
})

/**
 * A mode only: llama-server reads `tool_choice` as a string and takes any other shape for `"auto"`,
 * so a client naming one function would silently get any. Refused rather than ignored.
 */
const ToolChoice = Schema.Literal("none", "auto", "required")

const ResponseFormat = Schema.Union(
  Schema.Struct({ type: Schema.Literal("text") }),
  Schema.Struct({ type: Schema.Literal("json_object"), schema: opt(JsonObject) }),
  Schema.Struct({
    type: Schema.Literal("json_schema"),
    json_schema: Schema.Struct({
      name: opt(Short),
      description: opt(Schema.String),
      schema: opt(JsonObject),
      strict: opt(Schema.Boolean)
    })
  })
)

/** Sampling fields both routes take: OpenAI's, then the common llama.cpp extras. */
const sampling = {
  model: opt(Short),
  stream: opt(Schema.Boolean),
  stream_options: opt(Schema.Struct({ include_usage: opt(Schema.Boolean) })),
  max_tokens: opt(TokenCount),
  n_predict: opt(TokenCount),
  temperature: opt(Num(0, 2)),
  top_p: opt(Num(0, 1)),
  stop: opt(Stop),
  seed: opt(Int(-1, 2 ** 32 - 1)),
  presence_penalty: opt(Num(-2, 2)),
  frequency_penalty: opt(Num(-2, 2)),
  logit_bias: opt(LogitBias),
  n: opt(Schema.Literal(1)),
  user: opt(Short),
  // llama.cpp sampling extras
  top_k: opt(Int(0, 1000)),
  min_p: opt(Num(0, 1)),
  typical_p: opt(Num(0, 1)),
  repeat_penalty: opt(Num(0, 5)),
  repeat_last_n: opt(Int(0, 32_768)), // llama-server refuses a negative one
  dynatemp_range: opt(Num(0, 5)),
  dynatemp_exponent: opt(Num(0, 10)),
  mirostat: opt(Schema.Literal(0, 1, 2)),
  mirostat_tau: opt(Num(0, 20)),
  mirostat_eta: opt(Num(0, 1)),
  xtc_probability: opt(Num(0, 1)),
  xtc_threshold: opt(Num(0, 1)),
  top_n_sigma: opt(Num(-1, 10)),
  dry_multiplier: opt(Num(0, 5)),
  dry_base: opt(Num(1, 4)),
  dry_allowed_length: opt(Int(0, 100)),
  dry_penalty_last_n: opt(Int(0, 32_768)),
  dry_sequence_breakers: opt(Schema.Array(Schema.String.pipe(Schema.maxLength(64))).pipe(Schema.minItems(1), Schema.maxItems(MAX_STOP))),
  min_keep: opt(Int(0, 100)),
  n_probs: opt(Int(0, MAX_PROBS)),
  ignore_eos: opt(Schema.Boolean),
  cache_prompt: opt(Schema.Boolean),
  timings_per_token: opt(Schema.Boolean),
  grammar: opt(Grammar),
  json_schema: opt(JsonObject)
}

/** `POST /v1/chat/completions`. */
export const ChatRequest = Schema.Struct({
  ...sampling,
  messages: Schema.Array(Message).pipe(Schema.minItems(1)),
  max_completion_tokens: opt(TokenCount),
  logprobs: opt(Schema.Boolean),
  top_logprobs: opt(Int(0, MAX_PROBS)),
  tools: opt(Schema.Array(Tool)),
  tool_choice: opt(ToolChoice),
  parallel_tool_calls: opt(Schema.Boolean),
  response_format: opt(ResponseFormat),
  chat_template_kwargs: opt(Schema.Struct({ enable_thinking: opt(Schema.Boolean) })),
  reasoning_format: opt(Schema.Literal("none", "auto", "deepseek", "deepseek-legacy"))
})
export type ChatRequest = typeof ChatRequest.Type

/**
 * `POST /v1/completions` (the legacy API: `logprobs` is a count). No `response_format`: llama-server
 * reads it only on the chat route, so a client asking for JSON here would silently not get it;
 * `json_schema` and `grammar` are the completion route's constraints.
 */
export const CompletionRequest = Schema.Struct({
  ...sampling,
  prompt: Schema.Union(Schema.String, Schema.Array(Schema.String).pipe(Schema.minItems(1), Schema.maxItems(1))),
  logprobs: opt(Int(0, MAX_PROBS)),
  echo: opt(Schema.Literal(false))
})
export type CompletionRequest = typeof CompletionRequest.Type

/**
 * `POST /v1/embeddings`: strings only (no token arrays, which reach the tokenizer unchecked), none
 * empty (llama-server refuses an empty input only for some models), each counted by the character
 * limit. `encoding_format` as llama-server takes it (the `openai` client asks for base64);
 * `dimensions` is refused as unknown: llama-server would ignore it and answer the model's width.
 */
export const EmbeddingRequest = Schema.Struct({
  model: opt(Short),
  input: Schema.Union(Schema.String.pipe(Schema.minLength(1)), Schema.Array(Schema.String.pipe(Schema.minLength(1))).pipe(Schema.minItems(1))),
  encoding_format: opt(Schema.Literal("float", "base64")),
  user: opt(Short)
})
export type EmbeddingRequest = typeof EmbeddingRequest.Type

export type Route = "chat" | "completion" | "embedding"

const decoders = {
  refuse: {
    chat: Schema.decodeUnknownEither(ChatRequest, { onExcessProperty: "error" }),
    completion: Schema.decodeUnknownEither(CompletionRequest, { onExcessProperty: "error" }),
    embedding: Schema.decodeUnknownEither(EmbeddingRequest, { onExcessProperty: "error" })
  },
  strip: {
    chat: Schema.decodeUnknownEither(ChatRequest, { onExcessProperty: "ignore" }),
    completion: Schema.decodeUnknownEither(CompletionRequest, { onExcessProperty: "ignore" }),
    embedding: Schema.decodeUnknownEither(EmbeddingRequest, { onExcessProperty: "ignore" })
  }
} as const

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/**
 * Where an inline image's data sits, the one string `measure` does not count: `messages[i].content[j].image_url.url`.
 * Each step names the key (or, for `"*"`, any array index) that leads to the next.
 */
const IMAGE_PATH: ReadonlyArray<string> = ["messages", "*", "content", "*", "image_url", "url"]

/**
 * Characters of text in a body, and whether it nests deeper than `MAX_DEPTH`. Every string counts
 * (keys too), but an inline image's data, which the body limit bounds (only at its place in a
 * message: an `image_url` key anywhere else counts like any other); every other value counts one,
 * so a schema cannot hide a million-entry `enum` of numbers (each an alternative in the grammar
 * llama-server would compile).
 */
export const measure = (value: unknown): { readonly characters: number; readonly tooDeep: boolean } => {
  let characters = 0
  let tooDeep = false
  // `step`: how much of IMAGE_PATH leads to this node (-1: off it).
  const walk = (node: unknown, depth: number, step: number): void => {
    if (tooDeep) return
    if (typeof node === "string") {
      if (step !== IMAGE_PATH.length) characters += node.length
      return
    }
    if (typeof node !== "object" || node === null) {
      characters += 1
      return
    }
    if (depth > MAX_DEPTH) {
      tooDeep = true
      return
    }
    const next = step >= 0 && step < IMAGE_PATH.length ? IMAGE_PATH[step] : undefined
    if (Array.isArray(node)) {
      const onPath = next === "*" ? step + 1 : -1
      for (const item of node) walk(item, depth + 1, onPath)
      return
    }
    for (const key in node) {
      characters += key.length
      walk((node as Record<string, unknown>)[key], depth + 1, next !== undefined && next !== "*" && key === next ? step + 1 : -1)
    }
  }
  walk(value, 0, 0)
  return { characters, tooDeep }
}

const refuse = (reason: GatewayError["reason"]) => Either.left(new GatewayError({ reason }))

/** The tokens a request may generate: what it asked for, capped; the cap when it asked for none (or -1). */
const capped = (cap: number, ...asked: ReadonlyArray<number | undefined>): number => {
  const given = asked.filter((n): n is number => n !== undefined && n > 0)
  return given.length === 0 ? cap : Math.min(cap, ...given)
}

/** What passed: the model it goes to, and the body to send that model's runtime. */
export interface Checked {
  readonly model: string
  readonly body: string
}

export const DEFAULT_MAX_INPUTS = 256

/** The model a request names (or, naming none, the first of the route's kind), if it serves the route. */
const modelFor = (route: Route, named: unknown, models: ReadonlyArray<ServedModel>): Either.Either<string, GatewayError> => {
  const kind = route === "embedding" ? "embedding" : "chat"
  if (named === undefined) {
    const first = models.find((m) => m.kind === kind)
    return first === undefined ? refuse("wrong_model_kind") : Either.right(first.name)
  }
  // A wrong type is a malformed body; another name is a model this gateway does not serve.
  if (typeof named !== "string") return refuse("invalid_body")
  const model = models.find((m) => m.name === named)
  if (model === undefined) return refuse("model_not_found")
  return model.kind === kind ? Either.right(model.name) : refuse("wrong_model_kind")
}

/**
 * Check one parsed body for `route`: the model it goes to and the body to send its runtime (the
 * decoded request, re-serialised with the model's name and the capped token counts), or the refusal.
 */
export const check = (route: Route, body: Record<string, unknown>, options: FirewallOptions): Either.Either<Checked, GatewayError> => {
  for (const key in body) if (INTERNAL_FIELDS.has(key)) return refuse("field_not_allowed")
  const model = modelFor(route, body["model"], options.models)
  if (Either.isLeft(model)) return Either.left(model.left)
  const { characters, tooDeep } = measure(body)
  if (tooDeep) return refuse("invalid_body")
  if (characters > options.maxCharacters) return refuse("request_too_large")
  const mode = decoders[options.unknownFields]
  let out: Record<string, unknown>
  if (route === "chat") {
    const decoded = mode.chat(body)
    if (Either.isLeft(decoded)) return refuse("invalid_body")
    const request = decoded.right
    if (request.messages.length > options.maxMessages || (request.tools?.length ?? 0) > options.maxTools) return refuse("request_too_large")
    const tokens = capped(options.maxTokens, request.max_tokens, request.max_completion_tokens, request.n_predict)
    out = { ...request, max_tokens: tokens, n_predict: tokens }
    if (request.max_completion_tokens !== undefined) out["max_completion_tokens"] = tokens
  } else if (route === "completion") {
    const decoded = mode.completion(body)
    if (Either.isLeft(decoded)) return refuse("invalid_body")
    const request = decoded.right
    const tokens = capped(options.maxTokens, request.max_tokens, request.n_predict)
    out = { ...request, max_tokens: tokens, n_predict: tokens }
  } else {
    const decoded = mode.embedding(body)
    if (Either.isLeft(decoded)) return refuse("invalid_body")
    const request = decoded.right
    if (typeof request.input !== "string" && request.input.length > (options.maxInputs ?? DEFAULT_MAX_INPUTS)) return refuse("request_too_large")
    out = { ...request }
  }
  out["model"] = model.right
  return Either.right({ model: model.right, body: JSON.stringify(out) })
}

/** For tests and docs: the fields a route's schema knows. */
export const knownFields = (route: Route): ReadonlyArray<string> =>
  Object.keys(route === "chat" ? ChatRequest.fields : route === "completion" ? CompletionRequest.fields : EmbeddingRequest.fields)
