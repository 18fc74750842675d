/**
 * Where `VerifiedModel`s are minted, and the registry that tells a real one from a lookalike.
 * Only the model store mints; the spawners ask `isVerified` before they hand anything to a runtime.
 * The registry also keeps, for `ModelStore.confirm`, the open file and its identity at verification.
 */
import type { Sha256Hex } from "../../domain/Integrity.js"
import type { VerifiedModel } from "../../services/ModelStore.js"
import type { FileIdentity, StoreFile } from "../../services/StoreFileSystem.js"

interface Record {
  readonly identity: FileIdentity
  readonly file: StoreFile
}

const minted = new WeakMap<object, Record>()

export const mint = (
  fields: { readonly sha256: Sha256Hex; readonly sizeBytes: number },
  identity: FileIdentity,
  file: StoreFile
): VerifiedModel => {
  const model = Object.freeze({ sha256: fields.sha256, sizeBytes: fields.sizeBytes, descriptor: file.descriptor }) as VerifiedModel
  minted.set(model, { identity, file })
  return model
}

export const isVerified = (model: unknown): model is VerifiedModel => typeof model === "object" && model !== null && minted.has(model)

/** The open file behind a model and its identity when it was verified. */
export const recordOf = (model: VerifiedModel): Record | undefined => minted.get(model)
