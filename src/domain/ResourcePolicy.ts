/**
 * Resource ceilings for the runtime process. The first violation wins, in the order RAM, VRAM, CPU.
 * A machine without a GPU has no VRAM ceiling: leave `maxVramBytes` out. It is never `Infinity`.
 */
import { Either, Schema } from "effect"
import { ResourceError, type ResourceReason } from "./Errors.js"

const PositiveFinite = Schema.Number.pipe(Schema.finite(), Schema.positive())
const NonNegativeFinite = Schema.Number.pipe(Schema.finite(), Schema.nonNegative())

export const ResourceLimits = Schema.Struct({
  maxRamBytes: PositiveFinite,
  /** Omitted: no VRAM ceiling. */
  maxVramBytes: Schema.optionalWith(PositiveFinite, { exact: true }),
  /** Percent of the whole machine, in (0, 100]. */
  maxCpuPercent: PositiveFinite.pipe(Schema.lessThanOrEqualTo(100))
})
export type ResourceLimits = typeof ResourceLimits.Type

export const ResourceObservation = Schema.Struct({
  ramBytes: NonNegativeFinite,
  vramBytes: NonNegativeFinite,
  cpuPercent: NonNegativeFinite
})
export type ResourceObservation = typeof ResourceObservation.Type

const isLimits = Schema.is(ResourceLimits)
const isObservation = Schema.is(ResourceObservation)
const fail = (reason: ResourceReason) => Either.left(new ResourceError({ reason }))

export const checkLimits = (limits: unknown): Either.Either<ResourceLimits, ResourceError> =>
  isLimits(limits) ? Either.right(limits) : fail("malformed_limits")

/** Within the limits, or the first ceiling passed. Equal to a ceiling is within it. */
export const evaluateResources = (observation: unknown, limits: unknown): Either.Either<void, ResourceError> => {
  if (!isLimits(limits)) return fail("malformed_limits")
  if (!isObservation(observation)) return fail("malformed_observation")
  if (observation.ramBytes > limits.maxRamBytes) return fail("ram_over_limit")
  if (observation.vramBytes > (limits.maxVramBytes ?? Number.POSITIVE_INFINITY)) return fail("vram_over_limit")
  if (observation.cpuPercent > limits.maxCpuPercent) return fail("cpu_over_limit")
  return Either.right(undefined)
}
