/**
 * `companion-runtime status`: ask a gateway's `/health`. Over the platform's fetch client
 * (`FetchHttpClient`, Node's built-in fetch), which loads far less than the undici-based client.
 */
import * as FetchHttpClient from "@effect/platform/FetchHttpClient"
import * as HttpClient from "@effect/platform/HttpClient"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"

export const status = (url: string) =>
  Effect.gen(function*() {
    const client = yield* HttpClient.HttpClient
    const response = yield* client.get(`${url.replace(/\/$/, "")}/health`).pipe(
      Effect.mapError(() => ({ message: "The gateway did not answer." }))
    )
    const body = yield* response.json.pipe(Effect.orElseSucceed(() => ({})))
    yield* Console.log(JSON.stringify(body))
    // Then one line per model: its state and load.
    const models = (body as { models?: unknown }).models
    if (typeof models === "object" && models !== null) {
      for (const [name, model] of Object.entries(models as Record<string, { state?: unknown; inFlight?: unknown; queued?: unknown }>)) {
        yield* Console.log(`${name}: ${String(model?.state)}, ${Number(model?.inFlight)} in flight, ${Number(model?.queued)} queued`)
      }
    }
    if (response.status !== 200) return yield* Effect.fail({ message: "The runtime is not ready." })
  }).pipe(Effect.scoped, Effect.provide(FetchHttpClient.layer))
