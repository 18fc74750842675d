import { Context, type Duration, type Effect, type Redacted, type Scope } from "effect"
import type { SpawnError } from "./Errors.js"
import type { VerifiedModel } from "./ModelStore.js"

/** Which runtime serves: llama.cpp's `llama-server`, or `ollama serve`. */
export type RuntimeKind = "llama.cpp" | "ollama"

/** How the process ended: an exit code, or the signal that killed it. */
export interface ExitStatus {
  readonly code: number | null
  readonly signal: string | null
}

export interface RuntimeHandle {
  readonly pid: number
  /** Where the runtime listens, e.g. `http://127.0.0.1:41234`. Always loopback. */
  readonly baseUrl: string
  /** A fresh key for this spawn; every request to the runtime must carry it. */
  readonly apiKey: Redacted.Redacted<string>
  /** Completes when the process has exited, for whatever reason. */
  readonly exited: Effect.Effect<ExitStatus>
  /**
   * SIGTERM to the process group, SIGKILL after `grace`; completes once it has exited. It must keep
   * to `grace` even when run uninterruptibly (as in a finalizer): its own wait is interruptible.
   */
  readonly stop: (grace: Duration.DurationInput) => Effect.Effect<ExitStatus>
  /** The runtime's last lines of output, with the key scrubbed, for diagnostics. */
  readonly output: Effect.Effect<ReadonlyArray<string>>
  /**
   * For a runtime that serves models by name from a store of its own (Ollama): the name it serves
   * this model under and the file that must back that name (the verified blob), for the health
   * probe to check. Absent for llama-server, which serves the descriptor it was handed.
   */
  readonly serves?: {
    readonly name: string
    readonly blobPath: string
    /** The runtime's description of the name as this service made it: any change is a re-pointed name. */
    readonly modelfile?: string | undefined
  } | undefined
  /**
   * The process also serves other models (one Ollama for a pool): `pid`'s measurements are the
   * whole process tree's, not this model's, so a pool counts the model at its estimate.
   */
  readonly shared?: boolean | undefined
}

/** What one spawn sets for its model, over the layer's options: the pool runs each model its own way. */
export interface SpawnOptions {
  /** The name the runtime answers with (`--alias`). */
  readonly alias?: string | undefined
  /** Slots (`--parallel`). */
  readonly parallel?: number | undefined
  readonly contextSize?: number | undefined
  readonly threads?: number | undefined
  /** Serve embeddings (`--embeddings --pooling <pooling>`). */
  readonly embeddings?: { readonly pooling: "mean" | "cls" | "last" } | undefined
}

/**
 * Starts the inference runtime for a model the store verified, and nothing else (`unverified_model`).
 * The handle is scoped: closing the scope kills the process group if it is still alive and waits
 * for it to exit.
 */
export class Spawner extends Context.Tag("companion-runtime/Spawner")<
  Spawner,
  {
    readonly spawn: (model: VerifiedModel, options?: SpawnOptions) => Effect.Effect<RuntimeHandle, SpawnError, Scope.Scope>
  }
>() {}
