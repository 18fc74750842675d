/**
 * One memory budget for several models: may another model load now, and if not, which idle models
 * must go first. Pure: the pool gives the models it holds (loaded or loading) and the newcomer's
 * estimate, and applies the plan under its own lock, so two loads are judged one after the other.
 *
 * - A model held counts its estimate or its measured RAM, whichever is higher (a model that grew
 *   past its estimate is counted as it is). VRAM is counted as measured only: the estimate is for
 *   RAM (`MemoryFit`).
 * - Only an idle model (ready, nothing in flight or queued) may be evicted, least recently used
 *   first, and only as many as the newcomer needs. A busy or loading model is never evicted.
 * - When evicting every idle model would still not make room: wait (something busy may become idle,
 *   or unload). When the newcomer alone is over the budget: never (`MemoryFit` refuses that first).
 */
import type * as ResourcePolicy from "./ResourcePolicy.js"

export interface Held {
  readonly name: string
  readonly estimateBytes: number
  /** Measured RAM of its runtime, 0 before any measurement. */
  readonly ramBytes: number
  readonly vramBytes: number
  /** Ready with nothing in flight or queued: it may be evicted. */
  readonly idle: boolean
  /** When a request last entered or left it (epoch milliseconds): the least recent goes first. */
  readonly lastActivity: number
}

export type Plan =
  /** Room now: reserve the estimate. */
  | { readonly _tag: "fits" }
  /** Room once these idle models are stopped, in this order. */
  | { readonly _tag: "evict"; readonly names: ReadonlyArray<string> }
  /** No room even with every idle model stopped: wait for one to become idle or to stop. */
  | { readonly _tag: "wait" }
  /** No room even with nothing else loaded. */
  | { readonly _tag: "never" }

/** What a held model counts against the RAM budget. A measurement that is no number counts as the budget (fails closed). */
export const cost = (held: Held): number => Math.max(held.estimateBytes, Number.isNaN(held.ramBytes) ? Infinity : held.ramBytes)

const within = (ram: number, vram: number, limits: ResourcePolicy.ResourceLimits) =>
  ram <= limits.maxRamBytes && (limits.maxVramBytes === undefined || vram <= limits.maxVramBytes)

const vramOf = (held: Held) => (Number.isNaN(held.vramBytes) ? Infinity : held.vramBytes)

/** The plan for a newcomer of `estimateBytes` beside `held` (the newcomer itself is not among them). */
export const plan = (held: ReadonlyArray<Held>, estimateBytes: number, limits: ResourcePolicy.ResourceLimits): Plan => {
  if (!within(estimateBytes, 0, limits)) return { _tag: "never" }
  let ram = estimateBytes + held.reduce((n, h) => n + cost(h), 0)
  let vram = held.reduce((n, h) => n + vramOf(h), 0)
  if (within(ram, vram, limits)) return { _tag: "fits" }
  const candidates = held.filter((h) => h.idle).sort((a, b) => a.lastActivity - b.lastActivity)
  const names: Array<string> = []
  for (const victim of candidates) {
    names.push(victim.name)
    ram -= cost(victim)
    vram -= vramOf(victim)
    if (within(ram, vram, limits)) return { _tag: "evict", names }
  }
  return { _tag: "wait" }
}
