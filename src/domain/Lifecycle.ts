/**
 * The runtime's lifecycle: stopped → starting → ready → draining → stopped, plus `exited` when the
 * process dies on its own. The table below is the whole machine: a pair that is not in it fails.
 */
import { Either, Schema } from "effect"
import { LifecycleError, type LifecycleReason } from "./Errors.js"

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

const isState = Schema.is(LifecycleState)
const isEvent = Schema.is(LifecycleEvent)
const fail = (reason: LifecycleReason) => Either.left(new LifecycleError({ reason }))

/** The next state, or a typed error; on error the caller keeps the state it had. */
export const transition = (state: unknown, event: unknown): Either.Either<LifecycleState, LifecycleError> => {
  if (!isState(state)) return fail("unknown_state")
  if (!isEvent(event)) return fail("unknown_event")
  const next = TRANSITIONS[state][event]
  return next === undefined ? fail("invalid_transition") : Either.right(next)
}

/** Inference is served in `ready` and nowhere else. */
export const canServe = (state: unknown): boolean => state === "ready"

/** `canServe` as a decision: `not_ready` for every other state, known or not. */
export const requireReady = (state: unknown): Either.Either<"ready", LifecycleError> =>
  state === "ready" ? Either.right("ready") : fail("not_ready")
