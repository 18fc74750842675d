/**
 * An in-memory HealthProbe that answers from a script, one answer per probe; the last answer
 * repeats. `"hang"` never answers (for the per-probe timeout). The default answer is `"ok"`.
 */
import { Context, Effect, Layer, Ref } from "effect"
import { HealthError } from "../services/Errors.js"
import { type Health, HealthProbe } from "../services/HealthProbe.js"
import { nextOf } from "./internal/testing.js"

export type HealthAnswer = Health | HealthError | "hang"

export interface HealthProbeControlService {
  readonly answers: (...answers: ReadonlyArray<HealthAnswer>) => Effect.Effect<void>
  readonly probes: Effect.Effect<number>
}

export class HealthProbeControl extends Context.Tag("companion-runtime/HealthProbeControl")<HealthProbeControl, HealthProbeControlService>() {}

export const layer: Layer.Layer<HealthProbe | HealthProbeControl> = Layer.effectContext(
  Effect.gen(function*() {
    const script = yield* Ref.make<ReadonlyArray<HealthAnswer>>(["ok" as HealthAnswer])
    const probes = yield* Ref.make(0)
    const probe = HealthProbe.of({
      probe: () =>
        Effect.gen(function*() {
          yield* Ref.update(probes, (n) => n + 1)
          const answer = (yield* nextOf(script)) ?? "ok"
          if (answer === "hang") return yield* Effect.never
          if (answer instanceof HealthError) return yield* answer
          return answer
        })
    })
    const control: HealthProbeControlService = {
      answers: (...answers) => Ref.set(script, answers.length > 0 ? answers : ["ok" as const]),
      probes: Ref.get(probes)
    }
    return Context.make(HealthProbe, probe).pipe(Context.add(HealthProbeControl, control))
  })
)
