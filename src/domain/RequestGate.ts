/**
 * The gate in front of every inference request, in the order the manager runs it: the circuit,
 * then the lifecycle (a runtime loaded on demand queues every request until it is ready), then admission (a slot, a place in the queue, or a refusal), all decided at
 * once on one snapshot of the state; then, once a slot is held and an observation is at hand, the
 * resource ceilings.
 */
import { Either } from "effect"
import * as Admission from "./Admission.js"
import * as Circuit from "./Circuit.js"
import { LifecycleError, refusal } from "./Errors.js"
import * as Lifecycle from "./Lifecycle.js"
import * as ResourcePolicy from "./ResourcePolicy.js"

export interface EntryInput {
  /** Epoch milliseconds. */
  readonly now: number
  readonly circuit: Circuit.CircuitState
  readonly lifecycle: Lifecycle.LifecycleState
  /** The runtime's process has exited and the exit is not handled yet: it serves nothing. */
  readonly exiting: boolean
  /** Loaded on demand (unloaded while idle, evicted, or not preloaded): a request waits for the load. */
  readonly unloadedIdle: boolean
  /** A load on demand is already under way. */
  readonly waking: boolean
  readonly admission: Admission.AdmissionState
}

export type Entry =
  /** A slot now: `admission` counts it. */
  | { readonly _tag: "admitted"; readonly admission: Admission.AdmissionState }
  /** A place at the back of the queue: `admission` counts it. */
  | { readonly _tag: "queued"; readonly admission: Admission.AdmissionState }
  /** A place in the queue, and the runtime must be started (loaded on demand): `admission` counts the place. */
  | { readonly _tag: "reload"; readonly admission: Admission.AdmissionState }

export type EntryRefusal = Circuit.CircuitOpen | Lifecycle.NotReady | Admission.QueueFull

/** Steps 1–3: the circuit, the lifecycle, admission. The caller applies the new admission state atomically with the decision. */
export const enter = (input: EntryInput): Either.Either<Entry, EntryRefusal> => {
  const circuit = Circuit.check(input.circuit, input.now)
  if (Either.isLeft(circuit)) return Either.left(circuit.left)
  if (input.unloadedIdle && input.lifecycle !== "ready") {
    // Loaded on demand: every request waits in the queue for the load; the first one starts it.
    return Either.map(
      Admission.recordEnqueue(input.admission),
      (admission): Entry => (input.lifecycle === "stopped" && !input.waking ? { _tag: "reload", admission } : { _tag: "queued", admission })
    )
  }
  const ready = Lifecycle.requireReady(input.lifecycle)
  if (Either.isLeft(ready)) return Either.left(ready.left)
  if (input.exiting) return Either.left(refusal(LifecycleError, "not_ready"))
  const admitted = Admission.recordAdmit(input.admission)
  if (Either.isRight(admitted)) return Either.right({ _tag: "admitted", admission: admitted.right })
  return Either.map(Admission.recordEnqueue(input.admission), (admission) => ({ _tag: "queued", admission }))
}

/** Step 4, with a slot held: the runtime's observed use against the ceilings. */
export const checkResources: (
  observation: ResourcePolicy.ResourceObservation,
  limits: ResourcePolicy.ResourceLimits
) => Either.Either<void, ResourcePolicy.OverLimit> = ResourcePolicy.evaluateResources

export type GateRefusal = EntryRefusal | ResourcePolicy.OverLimit
