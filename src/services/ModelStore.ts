/**
 * The model store: the only way a model file reaches a runtime. `ensure` finds the model in the
 * store or downloads it from an allowed source, verifying size and SHA-256 as the bytes stream in,
 * and hands back a `VerifiedModel`: an open descriptor of exactly the bytes that were verified. No
 * one else can make one (there is no constructor), and the spawners refuse anything else.
 */
import type { GgufError, GgufFile, NeedMore } from "../domain/Gguf.js"
import { type Brand, Context, type Effect, type Either, Metric, type Scope, type Stream } from "effect"
import type { IntegrityError } from "../domain/Errors.js"
import type { ModelSpec, Sha256Hex } from "../domain/Integrity.js"
import type { DownloadError, ModelStoreError } from "./Errors.js"

/**
 * A stored model whose size and SHA-256 were verified, open read-only for the scope it was ensured
 * in. Spawners hand `descriptor` to the runtime, so the runtime reads the file that was verified
 * even if something else is renamed onto its path afterwards; nothing reopens a model by its path.
 */
export type VerifiedModel = {
  readonly sha256: Sha256Hex
  readonly sizeBytes: number
  readonly descriptor: number
} & Brand.Brand<"VerifiedModel">

export interface DownloadProgress {
  readonly receivedBytes: number
  readonly expectedBytes: number
}

export type EnsureError = IntegrityError | DownloadError | ModelStoreError

/**
 * An early look at a download's first bytes (not yet verified): `Right` to go on, `NeedMore` for a
 * longer prefix, or a refusal that ends the download at once. Advisory: whatever it says, the bytes
 * are verified in full and the verified file's header is judged again before any spawn.
 */
export type Screen<S> = (prefix: Uint8Array, fileSize: number) => Either.Either<void, S | NeedMore>

export interface ModelStoreService {
  /**
   * The model, verified, open for the caller's scope: the stored copy if it verifies (or is the
   * very file verified before, unchanged since), else downloaded from `source`, which must pass
   * the source policy. One writer per model, across processes.
   */
  readonly ensure: <S = never>(spec: ModelSpec, source: URL, screen?: Screen<S>) => Effect.Effect<VerifiedModel, EnsureError | S, Scope.Scope>
  /** The stored copy only, never a download: `not_stored` when there is none; one that fails verification is removed. */
  readonly verify: (spec: ModelSpec) => Effect.Effect<VerifiedModel, IntegrityError | ModelStoreError, Scope.Scope>
  /**
   * Still the bytes that were verified? Fails `model_changed` if the file behind the descriptor
   * was written since (its change time moved): a runtime that loaded it must not serve.
   */
  readonly confirm: (model: VerifiedModel) => Effect.Effect<void, ModelStoreError>
  /**
   * The verified model's GGUF header, read through its descriptor a prefix at a time (never the
   * weights) and checked by the bounded reader: what the runtime would parse, judged first.
   */
  readonly header: (model: VerifiedModel) => Effect.Effect<GgufFile, GgufError | ModelStoreError>
  /** Download progress of the model being fetched. */
  readonly progress: Stream.Stream<DownloadProgress>
}

export class ModelStore extends Context.Tag("companion-runtime/ModelStore")<ModelStore, ModelStoreService>() {}

export const metrics = {
  downloadedBytes: Metric.counter("companion_runtime_downloaded_bytes_total", { description: "Model bytes received" }),
  hashedBytes: Metric.counter("companion_runtime_hashed_bytes_total", {
    description: "Stored model bytes read back to verify them (not counting downloads, hashed as they arrive)"
  })
}
