/**
 * HealthProbe over HTTP. llama.cpp: `GET /health`, 503 while the model loads, 200 when ready.
 * Ollama: `GET /api/tags`, 200 once it serves. Neither route needs the API key, so the probe
 * never sends it. Not listening yet is `unreachable`, slow is `probe_timeout` (both mean "keep
 * polling" to the manager), and any other answer is `unhealthy`.
 */
import { HttpClient } from "@effect/platform"
import { Duration, Effect, Layer } from "effect"
import { readConfig } from "../config/Config.js"
import { HealthError } from "../services/Errors.js"
import { type Health, HealthProbe } from "../services/HealthProbe.js"
import type { RuntimeKind } from "../services/Spawner.js"

const PATHS: Record<RuntimeKind, string> = { "llama.cpp": "/health", ollama: "/api/tags" }

export const make = (kind: RuntimeKind, timeout: Duration.DurationInput = Duration.seconds(2)) =>
  Effect.map(HttpClient.HttpClient, (client) =>
    HealthProbe.of({
      probe: (handle) =>
        client.get(`${handle.baseUrl}${PATHS[kind]}`).pipe(
          Effect.scoped,
          Effect.mapError(() => new HealthError({ reason: "unreachable" })),
          Effect.flatMap((response): Effect.Effect<Health, HealthError> =>
            response.status === 200
              ? Effect.succeed("ok")
              : response.status === 503 && kind === "llama.cpp"
              ? Effect.succeed("loading")
              : Effect.fail(new HealthError({ reason: "unhealthy" }))
          ),
          Effect.timeoutFail({ duration: timeout, onTimeout: () => new HealthError({ reason: "probe_timeout" }) })
        )
    }))

/** Needs an HttpClient, e.g. NodeHttpClient.layerUndici. */
export const layer = (kind: RuntimeKind, timeout?: Duration.DurationInput) => Layer.effect(HealthProbe, make(kind, timeout))

/** `runtime.kind` and `health.probeTimeout` from `CompanionConfig`. */
export const layerConfig = Layer.unwrapEffect(Effect.map(readConfig, (config) => layer(config.runtime.kind, config.health.probeTimeout)))
