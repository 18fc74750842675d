/**
 * Admission arithmetic: at most `maxInFlight` requests running and `queueBound` waiting.
 * Every step returns a new state; no step takes a count below zero or past its bound.
 */
import { Either, Schema } from "effect"
import { AdmissionError, type AdmissionReason } from "./Errors.js"

const PositiveInt = Schema.Number.pipe(Schema.int(), Schema.positive(), Schema.lessThanOrEqualTo(Number.MAX_SAFE_INTEGER))
const Count = Schema.Number.pipe(Schema.int(), Schema.nonNegative(), Schema.lessThanOrEqualTo(Number.MAX_SAFE_INTEGER))

export const AdmissionLimits = Schema.Struct({ maxInFlight: PositiveInt, queueBound: PositiveInt })
export type AdmissionLimits = typeof AdmissionLimits.Type

export const AdmissionState = Schema.Struct({
  maxInFlight: PositiveInt,
  queueBound: PositiveInt,
  inFlight: Count,
  queued: Count
}).pipe(Schema.filter((s) => s.inFlight <= s.maxInFlight && s.queued <= s.queueBound))
export type AdmissionState = typeof AdmissionState.Type

const isLimits = Schema.is(AdmissionLimits)
const isState = Schema.is(AdmissionState)
const fail = (reason: AdmissionReason) => Either.left(new AdmissionError({ reason }))

/** An empty state for valid limits. */
export const makeAdmissionState = (limits: unknown): Either.Either<AdmissionState, AdmissionError> =>
  isLimits(limits)
    ? Either.right({ maxInFlight: limits.maxInFlight, queueBound: limits.queueBound, inFlight: 0, queued: 0 })
    : fail("malformed_admission_state")

const withState = <A>(
  state: unknown,
  f: (s: AdmissionState) => Either.Either<A, AdmissionError>
): Either.Either<A, AdmissionError> => (isState(state) ? f(state) : fail("malformed_admission_state"))

/**
 * May a new request run now? `at_capacity` means every slot is taken but the queue has room (the
 * caller may wait); `queue_full` means both are full (the caller must refuse).
 */
export const evaluate = (state: unknown): Either.Either<void, AdmissionError> =>
  withState(state, (s) =>
    s.inFlight < s.maxInFlight
      ? Either.right(undefined)
      : s.queued < s.queueBound
      ? fail("at_capacity")
      : fail("queue_full")
  )

/** A request takes an in-flight slot. */
export const recordAdmit = (state: unknown): Either.Either<AdmissionState, AdmissionError> =>
  withState(state, (s) => (s.inFlight < s.maxInFlight ? Either.right({ ...s, inFlight: s.inFlight + 1 }) : fail("at_capacity")))

/** A running request gives its slot back. */
export const recordComplete = (state: unknown): Either.Either<AdmissionState, AdmissionError> =>
  withState(state, (s) => (s.inFlight > 0 ? Either.right({ ...s, inFlight: s.inFlight - 1 }) : fail("no_in_flight_to_complete")))

/** A request joins the queue. */
export const recordEnqueue = (state: unknown): Either.Either<AdmissionState, AdmissionError> =>
  withState(state, (s) => (s.queued < s.queueBound ? Either.right({ ...s, queued: s.queued + 1 }) : fail("queue_full")))

/** A request leaves the queue (admitted, timed out or cancelled). */
export const recordDequeue = (state: unknown): Either.Either<AdmissionState, AdmissionError> =>
  withState(state, (s) => (s.queued > 0 ? Either.right({ ...s, queued: s.queued - 1 }) : fail("nothing_queued")))
