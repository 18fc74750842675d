/** `companion-runtime verify`: stream a local file through the domain's verifier. */
import * as FileSystem from "@effect/platform/FileSystem"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Stream from "effect/Stream"
import * as Integrity from "../domain/Integrity.js"

export const verify = (file: string, sha256: string, size: number) =>
  Effect.gen(function*() {
    const spec = yield* Integrity.checkSpec({ sha256, sizeBytes: size })
    const fs = yield* FileSystem.FileSystem
    const verifier = Integrity.makeVerifier(spec)
    yield* fs.stream(file, { chunkSize: FileSystem.MiB(1) }).pipe(
      Stream.mapError(() => ({ message: "The file could not be read." })),
      Stream.runForEach((chunk) => verifier.update(chunk))
    )
    yield* verifier.finalize()
    yield* Console.log("verified")
  })
