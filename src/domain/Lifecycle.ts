/**
 * The runtime's lifecycle: stopped → starting → ready → draining → stopped, plus `exited` when the
 * process dies on its own. The table below is the whole machine: a pair that is not in it fails.
 */
import { Either, Schema } from "effect"
import { LifecycleError, type Refusal, refusal } from "./Errors.js"

export const LifecycleState = Schema.Literal("stopped", "starting", "ready", "draining")
export type LifecycleState = typeof LifecycleState.Type

export const LifecycleEvent = Schema.Literal("start", "health_ok", "health_fail", "drain", "stopped", "exited")
export type LifecycleEvent = typeof LifecycleEvent.Type

export const initialState: LifecycleState = "stopped"

const TRANSITIONS: { readonly [S in LifecycleState]: Partial<Readonly<Record<LifecycleEvent, LifecycleState>>> } = {
  stopped: { start: "starting" },
  starting: { health_ok: "ready", health_fail: "stopped", exited: "stopped" },
  ready: { drain: "draining", exited: "stopped" },
  draining: { stopped: "stopped", exited: "stopped" }
}

export type InvalidTransition = Refusal<LifecycleError, "invalid_transition">
export type NotReady = Refusal<LifecycleError, "not_ready">

/** The next state, or `invalid_transition`; on error the caller keeps the state it had. */
export const transition = (state: LifecycleState, event: LifecycleEvent): Either.Either<LifecycleState, InvalidTransition> => {
  const next = TRANSITIONS[state][event]
  return next === undefined ? Either.left(refusal(LifecycleError, "invalid_transition")) : Either.right(next)
}

/** Inference is served in `ready` and nowhere else. */
export const canServe = (state: LifecycleState): boolean => state === "ready"

/** `canServe` as a decision: `not_ready` for every other state. */
export const requireReady = (state: LifecycleState): Either.Either<"ready", NotReady> =>
  state === "ready" ? Either.right("ready") : Either.left(refusal(LifecycleError, "not_ready"))
