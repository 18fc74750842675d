/**
 * Admission arithmetic: at most `maxInFlight` requests running and `queueBound` waiting.
 * Every step returns a new state; no step takes a count below zero or past its bound.
 */
import { Either, Schema } from "effect"
import { AdmissionError, type Refusal, refusal } from "./Errors.js"

const PositiveInt = Schema.Int.pipe(Schema.positive(), Schema.lessThanOrEqualTo(Number.MAX_SAFE_INTEGER))
  .annotations({ identifier: "a positive integer" })
const Count = Schema.Int.pipe(Schema.nonNegative(), Schema.lessThanOrEqualTo(Number.MAX_SAFE_INTEGER))
  .annotations({ identifier: "a non-negative integer" })

/** A queue bound of 0 means no waiting: a request that finds every slot taken is refused at once. */
export const AdmissionLimits = Schema.Struct({ maxInFlight: PositiveInt, queueBound: Count })
export type AdmissionLimits = typeof AdmissionLimits.Type

export interface AdmissionState {
  readonly maxInFlight: number
  readonly queueBound: number
  readonly inFlight: number
  readonly queued: number
}

export type AtCapacity = Refusal<AdmissionError, "at_capacity">
export type QueueFull = Refusal<AdmissionError, "queue_full">

// The two refusals a busy gate gives on every request: made once (an error's construction, its
// stack capture included, was 1.4 % of the gateway's CPU under load). They carry no input data.
const AT_CAPACITY: AtCapacity = refusal(AdmissionError, "at_capacity")
const QUEUE_FULL: QueueFull = refusal(AdmissionError, "queue_full")

/** An empty state for the limits. */
export const makeAdmissionState = (limits: AdmissionLimits): AdmissionState => ({
  maxInFlight: limits.maxInFlight,
  queueBound: limits.queueBound,
  inFlight: 0,
  queued: 0
})

/**
 * May a new request run now? `at_capacity` means every slot is taken but the queue has room (the
 * caller may wait); `queue_full` means both are full (the caller must refuse).
 */
export const evaluate = (s: AdmissionState): Either.Either<void, AtCapacity | QueueFull> =>
  s.inFlight < s.maxInFlight
    ? Either.right(undefined)
    : s.queued < s.queueBound
    ? Either.left(AT_CAPACITY)
    : Either.left(QUEUE_FULL)

/** A request takes an in-flight slot. */
export const recordAdmit = (s: AdmissionState): Either.Either<AdmissionState, AtCapacity> =>
  s.inFlight < s.maxInFlight ? Either.right({ ...s, inFlight: s.inFlight + 1 }) : Either.left(AT_CAPACITY)

/** A running request gives its slot back. */
export const recordComplete = (s: AdmissionState): Either.Either<AdmissionState, Refusal<AdmissionError, "no_in_flight_to_complete">> =>
  s.inFlight > 0
    ? Either.right({ ...s, inFlight: s.inFlight - 1 })
    : Either.left(refusal(AdmissionError, "no_in_flight_to_complete"))

/** A request joins the queue. */
export const recordEnqueue = (s: AdmissionState): Either.Either<AdmissionState, QueueFull> =>
  s.queued < s.queueBound ? Either.right({ ...s, queued: s.queued + 1 }) : Either.left(QUEUE_FULL)

/** A request leaves the queue (admitted, timed out or cancelled). */
export const recordDequeue = (s: AdmissionState): Either.Either<AdmissionState, Refusal<AdmissionError, "nothing_queued">> =>
  s.queued > 0 ? Either.right({ ...s, queued: s.queued - 1 }) : Either.left(refusal(AdmissionError, "nothing_queued"))
