/**
 * The single gate in front of every inference request: lifecycle, then admission, then resources.
 * Any input at all yields a decision; nothing here throws.
 */
import { Either } from "effect"
import * as Admission from "./Admission.js"
import { type AdmissionError, type LifecycleError, RequestGateError, type ResourceError } from "./Errors.js"
import * as Lifecycle from "./Lifecycle.js"
import * as ResourcePolicy from "./ResourcePolicy.js"

export interface GateInput {
  readonly lifecycle: Lifecycle.LifecycleState
  readonly admission: Admission.AdmissionState
  readonly observation: ResourcePolicy.ResourceObservation
  readonly limits: ResourcePolicy.ResourceLimits
}

export type GateError = LifecycleError | AdmissionError | ResourceError | RequestGateError

const malformed = () => Either.left(new RequestGateError({ reason: "malformed_request_params" }))

const decideUnsafe = (input: unknown): Either.Either<void, GateError> => {
  // Object() turns null, undefined and primitives into an object whose fields are all missing.
  const { lifecycle, admission, observation, limits } = Object(input) as Partial<Record<keyof GateInput, unknown>>
  if (lifecycle == null || admission == null || observation == null || limits == null) return malformed()
  return Either.flatMap(
    Lifecycle.requireReady(lifecycle),
    (): Either.Either<void, GateError> =>
      Either.flatMap(Admission.evaluate(admission), () => ResourcePolicy.evaluateResources(observation, limits))
  )
}

/** Admit (right) or refuse with the first failing check's typed error (left). */
export const decide = (input: unknown): Either.Either<void, GateError> => {
  try {
    return decideUnsafe(input)
  } catch {
    // A hostile input (a throwing getter, a revoked proxy) is refused without carrying it outward.
    return malformed()
  }
}
