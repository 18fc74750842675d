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
  not_ready: "The runtime is not ready to serve inference.",
  unknown_event: "The lifecycle event is unknown.",
  unknown_state: "The lifecycle state is unknown."
} as const

const admissionMessages = {
  malformed_admission_state: "The admission state or limits are malformed.",
  at_capacity: "All in-flight slots are taken.",
  queue_full: "The request queue is full.",
  no_in_flight_to_complete: "There is no in-flight request to complete.",
  nothing_queued: "There is no queued request to dequeue."
} as const

const resourceMessages = {
  malformed_limits: "The resource limits are malformed.",
  malformed_observation: "The resource observation is malformed.",
  ram_over_limit: "The runtime is over its RAM limit.",
  vram_over_limit: "The runtime is over its VRAM limit.",
  cpu_over_limit: "The runtime is over its CPU limit."
} as const

const requestGateMessages = {
  malformed_request_params: "The request gate parameters are malformed."
} as const

/** The keys of a reason → message table, as the arguments of `Schema.Literal`. */
export const reasonLiterals = <M extends Record<string, string>>(messages: M) =>
  Object.keys(messages) as unknown as readonly [keyof M & string, ...Array<keyof M & string>]

export class IntegrityError extends Schema.TaggedError<IntegrityError>("companion-runtime/IntegrityError")(
  "IntegrityError",
  { reason: Schema.Literal(...reasonLiterals(integrityMessages)) }
) {
  override get message(): string {
    return integrityMessages[this.reason]
  }
}

export class LifecycleError extends Schema.TaggedError<LifecycleError>("companion-runtime/LifecycleError")(
  "LifecycleError",
  { reason: Schema.Literal(...reasonLiterals(lifecycleMessages)) }
) {
  override get message(): string {
    return lifecycleMessages[this.reason]
  }
}

export class AdmissionError extends Schema.TaggedError<AdmissionError>("companion-runtime/AdmissionError")(
  "AdmissionError",
  { reason: Schema.Literal(...reasonLiterals(admissionMessages)) }
) {
  override get message(): string {
    return admissionMessages[this.reason]
  }
}

export class ResourceError extends Schema.TaggedError<ResourceError>("companion-runtime/ResourceError")(
  "ResourceError",
  { reason: Schema.Literal(...reasonLiterals(resourceMessages)) }
) {
  override get message(): string {
    return resourceMessages[this.reason]
  }
}

export class RequestGateError extends Schema.TaggedError<RequestGateError>("companion-runtime/RequestGateError")(
  "RequestGateError",
  { reason: Schema.Literal(...reasonLiterals(requestGateMessages)) }
) {
  override get message(): string {
    return requestGateMessages[this.reason]
  }
}

export type IntegrityReason = IntegrityError["reason"]
export type LifecycleReason = LifecycleError["reason"]
export type AdmissionReason = AdmissionError["reason"]
export type ResourceReason = ResourceError["reason"]
export type RequestGateReason = RequestGateError["reason"]

/** Every failure the decision core can return. */
export type DomainError = IntegrityError | LifecycleError | AdmissionError | ResourceError | RequestGateError
export type DomainReason = DomainError["reason"]
