/**
 * The ModelPool: several models, each with a `RuntimeManager` of its own (lifecycle, admission,
 * supervision, circuit), within one memory budget (`resources`). A model loads on its first request
 * (or with the pool, when preloaded); before its runtime is spawned its estimate must fit beside the
 * models held, or the least recently used idle ones are stopped first, or the load waits for room.
 * See `ModelPoolLive`.
 */
import { Context, type Duration, type Effect } from "effect"
import type { ModelKind } from "../config/Config.js"
import type { ManagerStatus, RunFailure, RuntimeEndpoint, RuntimeManagerService, StartFailure } from "./RuntimeManager.js"
import { PoolError } from "./Errors.js"

export { PoolError }

export interface PoolModel {
  /** What clients call it: a request's `model`, `/v1/models`' `id`. */
  readonly name: string
  readonly kind: ModelKind
  /** Started with the pool; `/health` is 200 once every preloaded model is ready. */
  readonly preload: boolean
}

export interface PoolStatus {
  /** Every model, in the order of their names, with its manager's status. */
  readonly models: ReadonlyArray<PoolModel & { readonly status: ManagerStatus }>
  /** Every preloaded model is ready. */
  readonly ready: boolean
  /** The budget held now: each loaded or loading model's estimate, or its measured RAM when higher. */
  readonly heldBytes: number
}

export interface ModelPoolService {
  readonly models: ReadonlyArray<PoolModel>
  /** Start the preloaded models, one after another (each within the budget). */
  readonly start: Effect.Effect<void, StartFailure>
  /**
   * Run an inference effect on the named model's runtime, through its manager's gate; a model not
   * loaded is loaded first (the request waits in its queue). An unknown name is `model_not_found`.
   */
  readonly run: <A, E, R>(
    name: string,
    request: (endpoint: RuntimeEndpoint) => Effect.Effect<A, E, R>
  ) => Effect.Effect<A, E | RunFailure | PoolError, R>
  /** Drain every loaded model, each up to `deadline`, at the same time. */
  readonly drain: (deadline: Duration.DurationInput) => Effect.Effect<void>
  readonly status: Effect.Effect<PoolStatus>
  /** A model's manager, for its status and changes. */
  readonly manager: (name: string) => RuntimeManagerService | undefined
}

export class ModelPool extends Context.Tag("companion-runtime/ModelPool")<ModelPool, ModelPoolService>() {}
