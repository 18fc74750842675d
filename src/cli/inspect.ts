/**
 * `companion-runtime inspect <file>`: the GGUF header's summary and the memory estimate, as one JSON
 * object, without running anything. The file is read a prefix at a time (the header only, never the
 * weights). With `--config`, that config's context size, slots, model policy and RAM ceiling apply.
 */
import { open } from "node:fs/promises"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Gguf from "../domain/Gguf.js"
import * as MemoryFit from "../domain/MemoryFit.js"
import * as ModelPolicy from "../domain/ModelPolicy.js"

const unreadable = () => ({ message: "The model file could not be read." })

/** The header of the file at `path`: prefixes of 1 MiB, then as long as the reader asks. */
export const readHeader = (path: string) =>
  Effect.acquireUseRelease(
    Effect.tryPromise({ try: () => open(path, "r"), catch: unreadable }),
    (handle) =>
      Effect.gen(function*() {
        const stat = yield* Effect.tryPromise({ try: () => handle.stat(), catch: unreadable })
        if (!stat.isFile()) return yield* Effect.fail(unreadable())
        let length = Math.min(stat.size, 1024 * 1024)
        for (;;) {
          const buffer = Buffer.alloc(length)
          const { bytesRead } = yield* Effect.tryPromise({ try: () => handle.read(buffer, 0, length, 0), catch: unreadable })
          const result = Gguf.read(buffer.subarray(0, bytesRead), stat.size)
          if (Either.isRight(result)) return result.right
          if (result.left._tag !== "NeedMore") return yield* Effect.fail(result.left)
          if (result.left.bytes <= length) return yield* Effect.fail(unreadable())
          length = result.left.bytes
        }
      }),
    (handle) => Effect.promise(() => handle.close())
  )

export interface InspectOptions {
  readonly context: Option.Option<number>
  readonly parallel: Option.Option<number>
  readonly config: Option.Option<string>
}

export const inspect = (file: string, options: InspectOptions) =>
  Effect.gen(function*() {
    const config = Option.isSome(options.config)
      ? Option.some(yield* Effect.flatMap(Effect.promise(() => import("./serve.js")), (m) => m.load(options.config.pipe(Option.getOrThrow))))
      : Option.none()
    const header = yield* readHeader(file)
    const summary = yield* Gguf.summarize(header)
    const contextSize = Option.getOrUndefined(Option.orElse(options.context, () => Option.flatMap(config, (c) => c.runtime.contextSize)))
    const parallel = Option.getOrElse(Option.orElse(options.parallel, () => Option.map(config, (c) => c.admission.maxInFlight)), () => 1)
    const estimate = MemoryFit.estimate(summary, { contextSize, parallel })
    if (Option.isSome(config)) {
      const { policy, resources } = config.value
      yield* ModelPolicy.preflight(header, {
        policy: { ...policy, templateReplaced: Option.isSome(policy.chatTemplateFile) },
        contextSize,
        parallel,
        maxRamBytes: resources.maxRamBytes
      })
    }
    yield* Console.log(JSON.stringify({ summary, estimate }))
  })

