/**
 * Typed failures of the decision core.
 *
 * Security invariant, enforced here and nowhere else: an error carries only its tag and a fixed
 * `reason` literal. Its message is looked up from that literal, so no URL, host, path, digest,
 * size or observed value can reach a field, a message, a log line or a response.
 */
import { Schema } from "effect"

const integrityMessages = {
  malformed_spec: "The model integrity spec or input is malformed.",
  source_not_allowed: "The model source is not on the allowlist.",
  scheme_not_allowed: "The model source must use HTTPS.",
  size_mismatch: "The model size does not match the expected size.",
  digest_mismatch: "The model SHA-256 digest does not match the expected digest.",
  accumulator_finalized: "The verifier was already finalized.",
  accumulator_aborted: "The verifier was aborted."
} as const

const lifecycleMessages = {
  invalid_transition: "The lifecycle transition is not allowed from the current state.",
  not_ready: "The runtime is not ready to serve inference."
} as const

const admissionMessages = {
  at_capacity: "All in-flight slots are taken.",
  queue_full: "The request queue is full.",
  no_in_flight_to_complete: "There is no in-flight request to complete.",
  nothing_queued: "There is no queued request to dequeue."
} as const

const resourceMessages = {
  malformed_limits: "The resource limits are malformed.",
  ram_over_limit: "The runtime is over its RAM limit.",
  vram_over_limit: "The runtime is over its VRAM limit.",
  cpu_over_limit: "The runtime is over its CPU limit.",
  model_too_large: "The model would need more memory than the configured ceiling.",
  insufficient_resources: "The model cannot be loaded now: the models in use leave too little of the memory budget."
} as const

const hubMessages = {
  malformed_reference: "The repository, file or revision is not a valid hub reference.",
  hub_unreachable: "The hub could not be reached.",
  hub_error: "The hub answered with an error or an answer it does not document.",
  auth_required: "The hub requires authorization for this repository (a token with access, in HF_TOKEN).",
  repo_not_found: "The hub has no such repository, revision or file.",
  not_lfs: "The file is not stored with a SHA-256 (not an LFS file) at that revision.",
  hub_disagrees: "The hub's answers about the file disagree (commit, SHA-256 or size); nothing was pinned.",
  redirect_off_hub: "The hub redirected off its own origin where it may not."
} as const

const circuitMessages = {
  circuit_open: "The runtime failed too often; starts are refused until the circuit cools down."
} as const

/** The keys of a reason → message table, as the arguments of `Schema.Literal`. */
export const reasonLiterals = <M extends Record<string, string>>(messages: M) =>
  Object.keys(messages) as unknown as readonly [keyof M & string, ...Array<keyof M & string>]

/**
 * A `Schema.TaggedError` whose only field is a `reason` from `messages`, and whose message is that
 * reason's fixed text. Every error of this project that carries nothing else is made here.
 */
export const ReasonError = <const Tag extends string, const M extends Record<string, string>>(
  tag: Tag,
  messages: M
): ReasonErrorClass<Tag, M> =>
  class extends Schema.TaggedError<{ readonly _tag: Tag; readonly reason: keyof M & string }>(`companion-runtime/${tag}`)(
    tag,
    { reason: Schema.Literal(...reasonLiterals(messages)) }
  ) {
    override get message(): string {
      return messages[this.reason] as string
    }
  }

/** What `ReasonError` returns, spelled out so the declaration files can name it. */
export type ReasonErrorClass<Tag extends string, M extends Record<string, string>> = Schema.TaggedErrorClass<
  { readonly _tag: Tag; readonly reason: keyof M & string },
  Tag,
  { readonly _tag: Schema.tag<Tag>; readonly reason: Schema.Literal<readonly [keyof M & string, ...Array<keyof M & string>]> }
>

export class IntegrityError extends ReasonError("IntegrityError", integrityMessages) {}
export class LifecycleError extends ReasonError("LifecycleError", lifecycleMessages) {}
export class AdmissionError extends ReasonError("AdmissionError", admissionMessages) {}
export class ResourceError extends ReasonError("ResourceError", resourceMessages) {}
export class CircuitOpenError extends ReasonError("CircuitOpenError", circuitMessages) {}
export class HubError extends ReasonError("HubError", hubMessages) {}

export type IntegrityReason = IntegrityError["reason"]
export type LifecycleReason = LifecycleError["reason"]
export type AdmissionReason = AdmissionError["reason"]
export type ResourceReason = ResourceError["reason"]

/**
 * An error of class `E` narrowed to the reasons `R`: what a function can really return, so a
 * caller's `switch (error.reason)` lists those and no others.
 */
export type Refusal<E extends { readonly reason: string }, R extends E["reason"]> = E & { readonly reason: R }

/** Make an `E` with reason `R`, typed as exactly that refusal. */
export const refusal = <E extends { readonly reason: string }, const R extends E["reason"]>(
  make: new(props: { readonly reason: R }) => E,
  reason: R
): Refusal<E, R> => new make({ reason }) as Refusal<E, R>

/** Every failure the decision core can return. */
export type DomainError = IntegrityError | LifecycleError | AdmissionError | ResourceError | CircuitOpenError
export type DomainReason = DomainError["reason"]
