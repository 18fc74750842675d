/**
 * Where `VerifiedModel`s are minted, and the registry that tells a real one from a lookalike.
 * Only the model store mints, and revokes a model as its descriptor closes; the spawners ask
 * `stillVerified` before they hand anything to a runtime.
 * The registry also keeps, for `ModelStore.confirm`, the open file and its identity at verification.
 */
import { Effect, Scope } from "effect"
import type { Sha256Hex } from "../../domain/Integrity.js"
import type { VerifiedModel } from "../../services/ModelStore.js"
import { type FileIdentity, type StoreFile, sameVersion } from "../../services/StoreFileSystem.js"

interface Record {
  readonly identity: FileIdentity
  readonly file: StoreFile
}

const minted = new WeakMap<object, Record>()

const mint = (
  fields: { readonly sha256: Sha256Hex; readonly sizeBytes: number },
  identity: FileIdentity,
  file: StoreFile
): VerifiedModel => {
  const model = Object.freeze({ sha256: fields.sha256, sizeBytes: fields.sizeBytes, descriptor: file.descriptor }) as VerifiedModel
  minted.set(model, { identity, file })
  return model
}

export const isVerified = (model: unknown): model is VerifiedModel => typeof model === "object" && model !== null && minted.has(model)

/**
 * Minted by the store, its descriptor still open, and the file behind it unchanged since it was
 * verified: what a spawner asks just before it hands the descriptor to a runtime.
 */
export const stillVerified = (model: unknown): Effect.Effect<boolean> =>
  Effect.suspend(() => {
    const record = isVerified(model) ? minted.get(model) : undefined
    return record === undefined
      ? Effect.succeed(false)
      : Effect.orElseSucceed(Effect.map(record.file.identity, (now) => sameVersion(now, record.identity)), () => false)
  })

/**
 * Mint a model whose descriptor closes with `scope`, and revoke it just before: a model is never
 * "verified" with a closed descriptor, whose number another file may take. The descriptor's close
 * was registered in `scope` first, so this finalizer runs before it.
 */
export const mintIn = (
  scope: Scope.Scope,
  fields: { readonly sha256: Sha256Hex; readonly sizeBytes: number },
  identity: FileIdentity,
  file: StoreFile
): Effect.Effect<VerifiedModel> =>
  Effect.suspend(() => {
    const model = mint(fields, identity, file)
    return Effect.as(Scope.addFinalizer(scope, Effect.sync(() => void minted.delete(model))), model)
  })

/** The open file behind a model and its identity when it was verified. */
export const recordOf = (model: VerifiedModel): Record | undefined => minted.get(model)
