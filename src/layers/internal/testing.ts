/** Helpers shared by the in-memory Test layers. */
import { Ref } from "effect"

/** Take the next scripted answer; the last one stays, so a script of one answers it for ever. */
export const nextOf = <A>(ref: Ref.Ref<ReadonlyArray<A>>) =>
  Ref.modify(ref, (all) => [all[0], all.length > 1 ? all.slice(1) : all] as const)
