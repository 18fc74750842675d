/**
 * HealthProbe over HTTP. llama.cpp: `GET /health`, 503 while the model loads, 200 when ready.
 * Ollama: `GET /api/tags` lists the handle's name and `POST /api/show` for it names the verified
 * blob (`wrong_model` otherwise; see `internal/Ollama.ts`); a handle that names no model only
 * needs `/api/tags` to answer 200. None of these routes needs the API key, so the probe never sends
 * it. Not listening yet is `unreachable`, slow is `probe_timeout` (both mean "keep polling" to the
 * manager), and any other answer is `unhealthy`.
 */
import { HttpClient } from "@effect/platform"
import { Duration, Effect, Layer } from "effect"
import { readConfig } from "../config/Config.js"
import { HealthError } from "../services/Errors.js"
import { type Health, HealthProbe } from "../services/HealthProbe.js"
import type { RuntimeKind } from "../services/Spawner.js"
import * as Ollama from "./internal/Ollama.js"

const PATHS: Record<RuntimeKind, string> = { "llama.cpp": "/health", ollama: "/api/tags" }

export const make = (kind: RuntimeKind, timeout: Duration.DurationInput = Duration.seconds(2)) =>
  Effect.map(HttpClient.HttpClient, (client) =>
    HealthProbe.of({
      probe: (handle) =>
        (kind === "ollama" && handle.serves !== undefined ? Ollama.servesVerified(client, handle.baseUrl, handle.serves) : client.get(`${handle.baseUrl}${PATHS[kind]}`).pipe(
          Effect.scoped,
          Effect.mapError(() => new HealthError({ reason: "unreachable" })),
          Effect.flatMap((response): Effect.Effect<Health, HealthError> =>
            response.status === 200
              ? Effect.succeed("ok")
              : response.status === 503 && kind === "llama.cpp"
              ? Effect.succeed("loading")
              : Effect.fail(new HealthError({ reason: "unhealthy" }))
          )
        )).pipe(
          Effect.timeoutFail({ duration: timeout, onTimeout: () => new HealthError({ reason: "probe_timeout" }) })
        )
    }))

/** Needs an HttpClient, e.g. NodeHttpClient.layerUndici. */
export const layer = (kind: RuntimeKind, timeout?: Duration.DurationInput) => Layer.effect(HealthProbe, make(kind, timeout))

/** `runtime.kind` and `health.probeTimeout` from `CompanionConfig`. */
export const layerConfig = Layer.unwrapEffect(Effect.map(readConfig, (config) => layer(config.runtime.kind, config.health.probeTimeout)))
