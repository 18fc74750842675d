import { Context, type Effect } from "effect"
import type { HubError } from "../domain/Errors.js"
import type { HeadFacts, LfsFacts } from "../domain/Hub.js"

/**
 * The hub's metadata API, as `pin` asks it: a revision's commit, a file's LFS facts, and the
 * `HEAD` of its resolve URL. Every failure is a `HubError`; a token (when configured) goes to the
 * hub's own origin only.
 */
export class HubClient extends Context.Tag("companion-runtime/HubClient")<
  HubClient,
  {
    /** The commit `revision` names, and the file's LFS facts if the answer lists them (`siblings`). */
    readonly revision: (repo: string, revision: string, file: string) => Effect.Effect<{ readonly commit: string; readonly listed: LfsFacts | undefined }, HubError>
    /** The file's LFS SHA-256 and size at `commit` (paths-info). */
    readonly lfs: (repo: string, commit: string, file: string) => Effect.Effect<LfsFacts, HubError>
    /** The resolve URL's `HEAD`, relative redirects followed, stopped at the first absolute one. */
    readonly head: (repo: string, commit: string, file: string) => Effect.Effect<HeadFacts, HubError>
  }
>() {}
