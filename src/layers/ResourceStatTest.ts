/**
 * An in-memory ResourceStat that answers from a script of observations or failures, one per
 * call; the last one repeats. By default the runtime uses nothing.
 */
import { Context, Duration, Effect, Layer, Ref } from "effect"
import type { ResourceObservation } from "../domain/ResourcePolicy.js"
import { ResourceStatError } from "../services/Errors.js"
import { ResourceStat } from "../services/ResourceStat.js"
import { nextOf } from "./internal/testing.js"

export interface ResourceStatControlService {
  readonly observations: (...answers: ReadonlyArray<ResourceObservation | ResourceStatError>) => Effect.Effect<void>
  readonly calls: Effect.Effect<number>
  /** How long each observation takes from now on (default: no time). */
  readonly latency: (duration: Duration.DurationInput) => Effect.Effect<void>
}

export class ResourceStatControl extends Context.Tag("companion-runtime/ResourceStatControl")<ResourceStatControl, ResourceStatControlService>() {}

const idle: ResourceObservation = { ramBytes: 0, vramBytes: 0, cpuPercent: 0 }

export const layer: Layer.Layer<ResourceStat | ResourceStatControl> = Layer.effectContext(
  Effect.gen(function*() {
    const script = yield* Ref.make<ReadonlyArray<ResourceObservation | ResourceStatError>>([idle])
    const calls = yield* Ref.make(0)
    const latency = yield* Ref.make<Duration.DurationInput>(Duration.zero)
    const stat = ResourceStat.of({
      observe: () =>
        Effect.gen(function*() {
          yield* Ref.update(calls, (n) => n + 1)
          yield* Effect.sleep(yield* Ref.get(latency))
          const answer = (yield* nextOf(script)) ?? idle
          return answer instanceof ResourceStatError ? yield* answer : answer
        })
    })
    const control: ResourceStatControlService = {
      observations: (...answers) => Ref.set(script, answers.length > 0 ? answers : [idle]),
      calls: Ref.get(calls),
      latency: (duration) => Ref.set(latency, duration)
    }
    return Context.make(ResourceStat, stat).pipe(Context.add(ResourceStatControl, control))
  })
)
