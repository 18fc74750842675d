import { Context, type Effect } from "effect"
import type { ResourceObservation } from "../domain/ResourcePolicy.js"
import type { ResourceStatError } from "./Errors.js"
import type { RuntimeHandle } from "./Spawner.js"

/** One observation of what a runtime process (and its children) uses now. */
export class ResourceStat extends Context.Tag("companion-runtime/ResourceStat")<
  ResourceStat,
  { readonly observe: (handle: RuntimeHandle) => Effect.Effect<ResourceObservation, ResourceStatError> }
>() {}
