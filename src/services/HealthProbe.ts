import { Context, type Effect } from "effect"
import type { HealthError } from "./Errors.js"
import type { RuntimeHandle } from "./Spawner.js"

export type Health = "loading" | "ok"

/** One probe of a runtime's health endpoint. */
export class HealthProbe extends Context.Tag("companion-runtime/HealthProbe")<
  HealthProbe,
  { readonly probe: (handle: RuntimeHandle) => Effect.Effect<Health, HealthError> }
>() {}
