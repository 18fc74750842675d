/**
 * What a model must be before the runtime may load it, beyond its digest: an architecture on the
 * allowlist, a chat template within its length and (when a list is given) one of the vetted ones,
 * and a memory estimate under the RAM ceiling. Pure: `preflight` takes the parsed GGUF header.
 *
 * The default architectures are the mainstream decoder-only chat families whose llama.cpp loaders
 * are the most exercised (llama, Qwen 2/3/3.5, Gemma 2/3, Phi-3, Mistral 3, Granite, SmolLM3,
 * OLMo 2, LFM2, gpt-oss, DeepSeek 2, GLM-4, EXAONE 4): loader bugs live in the less-travelled code
 * for newer or rarer architectures, which an app should name to use.
 */
import { Either } from "effect"
import { ReasonError, type Refusal, type ResourceError } from "./Errors.js"
import * as Gguf from "./Gguf.js"
import * as MemoryFit from "./MemoryFit.js"

const policyMessages = {
  architecture_not_allowed: "The model's architecture is not on the allowed list.",
  chat_template_too_long: "The model's chat template is longer than allowed.",
  chat_template_not_allowed: "The model's chat template is not one of the vetted templates."
} as const

export class PolicyError extends ReasonError("PolicyError", policyMessages) {}

export const DEFAULT_ARCHITECTURES: ReadonlyArray<string> = [
  "llama",
  "qwen2",
  "qwen3",
  "qwen3moe",
  "qwen35",
  "qwen35moe",
  "gemma2",
  "gemma3",
  "phi3",
  "mistral3",
  "granite",
  "smollm3",
  "olmo2",
  "lfm2",
  "gpt-oss",
  "deepseek2",
  "glm4",
  "exaone4"
]

export interface ModelPolicy {
  readonly architectures: ReadonlyArray<string>
  readonly maxChatTemplateBytes: number
  /** Empty: any template within the length. */
  readonly chatTemplateSha256s: ReadonlyArray<string>
  /** The runtime is given a vetted template file instead: the model's own is not used, so not judged. */
  readonly templateReplaced: boolean
}

export interface PreflightOptions {
  readonly policy: ModelPolicy
  readonly contextSize: number | undefined
  readonly parallel: number
  readonly maxRamBytes: number
}

export type PreflightError = Gguf.GgufError | PolicyError | Refusal<ResourceError, "model_too_large">

/** The policy alone, on a summary. */
export const check = (summary: Gguf.GgufSummary, policy: ModelPolicy): Either.Either<void, PolicyError> => {
  if (!policy.architectures.includes(summary.architecture)) return Either.left(new PolicyError({ reason: "architecture_not_allowed" }))
  if (policy.templateReplaced) return Either.right(undefined)
  if ((summary.chatTemplateLength ?? 0) > policy.maxChatTemplateBytes) return Either.left(new PolicyError({ reason: "chat_template_too_long" }))
  if (
    policy.chatTemplateSha256s.length > 0 &&
    (summary.chatTemplateSha256 === null || !policy.chatTemplateSha256s.includes(summary.chatTemplateSha256))
  ) return Either.left(new PolicyError({ reason: "chat_template_not_allowed" }))
  return Either.right(undefined)
}

/** A parsed header through the policy and the memory fit: the estimate, or the first refusal. */
export const preflight = (file: Gguf.GgufFile, options: PreflightOptions): Either.Either<MemoryFit.Estimate, PreflightError> =>
  Either.gen(function*() {
    const summary = yield* Gguf.summarize(file)
    yield* check(summary, options.policy)
    const estimate = MemoryFit.estimate(summary, { contextSize: options.contextSize, parallel: options.parallel })
    yield* MemoryFit.fits(estimate, options.maxRamBytes)
    return estimate
  })

/**
 * How an embedding model's runtime pools token vectors into one (`--pooling`): the model's own
 * (`<arch>.pooling_type`: mean, cls or last) or, when it names none (or none, or rank, which is for
 * reranking), mean: llama-server refuses OpenAI embeddings without pooling.
 */
export const embeddingPooling = (summary: Pick<Gguf.GgufSummary, "poolingType">): "mean" | "cls" | "last" =>
  summary.poolingType === 2 ? "cls" : summary.poolingType === 3 ? "last" : "mean"
