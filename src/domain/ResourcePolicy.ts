/**
 * Resource ceilings for the runtime process. The first violation wins, in the order RAM, VRAM, CPU.
 * A machine without a GPU has no VRAM ceiling: leave `maxVramBytes` out. It is never `Infinity`.
 */
import { Either, Schema } from "effect"
import { type Refusal, refusal, ResourceError } from "./Errors.js"

const PositiveFinite = Schema.Number.pipe(Schema.finite(), Schema.positive()).annotations({ identifier: "a positive number" })

export const ResourceLimits = Schema.Struct({
  maxRamBytes: PositiveFinite,
  /** Omitted: no VRAM ceiling. */
  maxVramBytes: Schema.optionalWith(PositiveFinite, { exact: true }),
  /** Percent of the whole machine, in (0, 100]. */
  maxCpuPercent: PositiveFinite.pipe(Schema.lessThanOrEqualTo(100)).annotations({ identifier: "a percentage in (0, 100]" })
})
export type ResourceLimits = typeof ResourceLimits.Type

/** What a runtime uses now: non-negative finite numbers, as the ResourceStat adapters measure them. */
export interface ResourceObservation {
  readonly ramBytes: number
  readonly vramBytes: number
  readonly cpuPercent: number
}

export type OverLimit = Refusal<ResourceError, "ram_over_limit" | "vram_over_limit" | "cpu_over_limit">

const isLimits = Schema.is(ResourceLimits)

/** The parse boundary for limits that did not come through the config schema. */
export const checkLimits = (limits: unknown): Either.Either<ResourceLimits, Refusal<ResourceError, "malformed_limits">> =>
  isLimits(limits) ? Either.right(limits) : Either.left(refusal(ResourceError, "malformed_limits"))

/**
 * Within the limits, or the first ceiling passed. Equal to a ceiling is within it. Each test is
 * written as "not within", so a value that is no number at all (NaN) fails closed.
 */
export const evaluateResources = (observation: ResourceObservation, limits: ResourceLimits): Either.Either<void, OverLimit> => {
  if (!(observation.ramBytes <= limits.maxRamBytes)) return Either.left(refusal(ResourceError, "ram_over_limit"))
  if (limits.maxVramBytes !== undefined && !(observation.vramBytes <= limits.maxVramBytes)) {
    return Either.left(refusal(ResourceError, "vram_over_limit"))
  }
  if (!(observation.cpuPercent <= limits.maxCpuPercent)) return Either.left(refusal(ResourceError, "cpu_over_limit"))
  return Either.right(undefined)
}
