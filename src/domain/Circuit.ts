/**
 * The restart circuit: start failures and crashes inside a sliding window are counted; at
 * `maxFailures` the circuit opens for `cooldownMillis`, and while it is open nothing is started and
 * nothing is served. Times are epoch milliseconds handed in by the caller.
 */
import { Either } from "effect"
import { CircuitOpenError, refusal, type Refusal } from "./Errors.js"

export interface CircuitPolicy {
  /** Failures inside the window that open the circuit; a positive integer. */
  readonly maxFailures: number
  readonly windowMillis: number
  readonly cooldownMillis: number
}

export interface CircuitState {
  /** Failures still inside the window, oldest first. */
  readonly failures: ReadonlyArray<number>
  /** Open until this time, if it has opened. */
  readonly openUntil: number | undefined
}

export const closed: CircuitState = { failures: [], openUntil: undefined }

export type CircuitOpen = Refusal<CircuitOpenError, "circuit_open">

export const isOpen = (state: CircuitState, now: number): boolean => now < (state.openUntil ?? Number.NEGATIVE_INFINITY)

export const check = (state: CircuitState, now: number): Either.Either<void, CircuitOpen> =>
  isOpen(state, now) ? Either.left(refusal(CircuitOpenError, "circuit_open")) : Either.right(undefined)

/** Count a failure at `now`; the window forgets older ones. Opening starts afresh: no failure is carried over. */
export const recordFailure = (state: CircuitState, policy: CircuitPolicy, now: number): CircuitState => {
  const failures = [...state.failures.filter((at) => now - at < policy.windowMillis), now]
  return failures.length >= policy.maxFailures
    ? { failures: [], openUntil: now + policy.cooldownMillis }
    : { failures, openUntil: state.openUntil }
}
