/**
 * Pinning a model from a Hugging Face-style hub, the decisions only: what a valid reference is,
 * the URLs the hub documents, how its answers are read, and whether they agree. The requests
 * themselves are `HubClient`'s; `pin` (src/cli/pin.ts) puts the two together.
 *
 * Read from huggingface_hub (`hf_api.py`: `revision/{quote(revision, safe="")}`, `paths-info` with
 * `expand`; `file_download.py`: `get_hf_file_metadata`, `_normalize_etag`, the `X-Repo-Commit`,
 * `X-Linked-Etag` and `X-Linked-Size` headers) and hub-docs (`api.md`, `models-downloading.md`).
 * Where huggingface_hub checks only the size, a pin needs the hub's three answers to agree on the
 * commit, the SHA-256 and the size; any disagreement refuses the pin.
 *
 * Pure: no I/O.
 */
import { Either, Option } from "effect"
import { HubError } from "./Errors.js"

/** The hub's documented default. */
export const DEFAULT_HUB = "https://huggingface.co"

/**
 * The storage hosts a hub download is redirected to. hub-docs (`models-downloading.md`, "firewall")
 * lists nine hostnames under `hf.co` (`transfer.xethub.hf.co`, `cdn-lfs-us-1.hf.co`,
 * `us.aws.cdn.hf.co`, …), warns that they change, and advises allowing the `hf.co` and
 * `huggingface.co` suffixes, subdomains at any depth: that is the default (as redirect targets of a
 * hub source only).
 */
export const DEFAULT_STORAGE_HOSTS: ReadonlyArray<string> = ["https://*.hf.co/", "https://*.huggingface.co/"]

const fail = (reason: HubError["reason"]) => Either.left(new HubError({ reason }))

/**
 * Whether the environment's token (`HF_TOKEN`) may go to `hub`: only to the default hub's origin. A
 * config or `--hub` naming another host must not receive the user's hub token; a token for it goes
 * in that config's `hub.token`.
 */
export const takesEnvironmentToken = (hub: URL): boolean => hub.origin === new URL(DEFAULT_HUB).origin

/** `name` or `namespace/name`: letters, digits, `.`, `_`, `-`; no `..`, no `--` (as the hub names them). */
const REPO = /^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}\/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$/
export const isRepoId = (repo: string): boolean => REPO.test(repo) && !repo.includes("..") && !repo.includes("--")

/** A path inside a repository: `/`-separated segments, none empty, `.` or `..`; no control (C0, C1) or bidi override, `\`, `%`, `?`, `#` (it is printed). */
export const isRepoFile = (file: string): boolean =>
  file.length > 0 && file.length <= 1024 && !/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069\\%?#]/.test(file) &&
  file.split("/").every((segment) => segment !== "" && segment !== "." && segment !== "..")

/** A revision as a branch, tag or commit: no control characters, no `..`, bounded. */
export const isRevision = (revision: string): boolean =>
  revision.length > 0 && revision.length <= 256 && !/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069\\]/.test(revision) && !revision.includes("..")

export const isCommit = (revision: string): boolean => /^[0-9a-f]{40}$/.test(revision)

/** The hub's base: an https origin with no path, credentials, query or fragment. */
export const parseHub = (hub: string): Either.Either<URL, HubError> => {
  if (!URL.canParse(hub)) return fail("malformed_reference")
  const url = new URL(hub)
  if (url.protocol !== "https:" || url.username !== "" || url.password !== "" || url.search !== "" || url.hash !== "" || url.pathname !== "/") {
    return fail("malformed_reference")
  }
  return Either.right(url)
}

const filePath = (file: string) => file.split("/").map(encodeURIComponent).join("/")

/** `GET {hub}/api/models/{repo}/revision/{revision}`: the revision's commit (`sha`). */
export const revisionUrl = (hub: URL, repo: string, revision: string): URL =>
  new URL(`/api/models/${repo}/revision/${encodeURIComponent(revision)}`, hub)

/** `POST {hub}/api/models/{repo}/paths-info/{commit}` with `{ paths, expand: true }`: a file's size and LFS SHA-256. */
export const pathsInfoUrl = (hub: URL, repo: string, commit: string): URL =>
  new URL(`/api/models/${repo}/paths-info/${encodeURIComponent(commit)}`, hub)

/** `{hub}/{repo}/resolve/{revision}/{file}`: the download URL, and the `HEAD` that states its metadata. */
export const resolveUrl = (hub: URL, repo: string, revision: string, file: string): URL =>
  new URL(`/${repo}/resolve/${encodeURIComponent(revision)}/${filePath(file)}`, hub)

/** The allowlist entry a pin writes: that commit's resolve prefix in that repository, no wider. */
export const resolvePrefix = (hub: URL, repo: string, commit: string): string =>
  new URL(`/${repo}/resolve/${commit}/`, hub).href

export interface HubReference {
  readonly repo: string
  readonly revision: string
  readonly file: string
}

/** `source` read as a resolve URL on `hub`, or none: what `pull` and `serve` print (repo and commit). */
export const parseResolveUrl = (source: URL, hub: URL): Option.Option<HubReference> => {
  if (source.origin !== hub.origin) return Option.none()
  const match = /^\/((?:[^/]+\/)?[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(source.pathname)
  if (match === null) return Option.none()
  try {
    const reference = { repo: match[1]!, revision: decodeURIComponent(match[2]!), file: match[3]!.split("/").map(decodeURIComponent).join("/") }
    return isRepoId(reference.repo) && isRevision(reference.revision) && isRepoFile(reference.file) ? Option.some(reference) : Option.none()
  } catch {
    return Option.none()
  }
}

/** An ETag as huggingface_hub's `_normalize_etag` reads it: a weak `W/` prefix and the quotes dropped. */
export const normalizeEtag = (etag: string): string => etag.trim().replace(/^W\//, "").replace(/^"(.*)"$/, "$1")

const asRecord = (value: unknown): Record<string, unknown> | undefined =>
  typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined

const sizeOf = (value: unknown): number | undefined =>
  typeof value === "number" && Number.isSafeInteger(value) && value > 0 ? value : undefined

const sha256Of = (value: unknown): string | undefined =>
  typeof value === "string" && /^[0-9a-f]{64}$/.test(value) ? value : undefined

/** The commit a revision answer names (`sha`), or `hub_error`. */
export const commitOf = (answer: unknown): Either.Either<string, HubError> => {
  const sha = asRecord(answer)?.["sha"]
  return typeof sha === "string" && isCommit(sha) ? Either.right(sha) : fail("hub_error")
}

export interface LfsFacts {
  readonly sha256: string
  readonly sizeBytes: number
}

/**
 * The file's LFS SHA-256 and size from the shapes the hub answers in: a paths-info or tree list
 * (`[{ path, type: "file", size, lfs: { oid, size } }]`), or a model info's siblings
 * (`{ siblings: [{ rfilename, lfs: { sha256, size } }] }`). No entry for the file is `repo_not_found`; an
 * entry with no LFS SHA-256 is `not_lfs`; an LFS size that differs from the entry's is `hub_disagrees`.
 */
export const lfsOf = (answer: unknown, file: string): Either.Either<LfsFacts, HubError> => {
  const entries: ReadonlyArray<unknown> | undefined = Array.isArray(answer)
    ? answer
    : Array.isArray(asRecord(answer)?.["siblings"])
    ? (asRecord(answer)!["siblings"] as ReadonlyArray<unknown>)
    : undefined
  if (entries === undefined) return fail("hub_error")
  const entry = entries.map(asRecord).find((e) => e !== undefined && (e["path"] === file || e["rfilename"] === file))
  if (entry === undefined) return fail("repo_not_found")
  if (entry["type"] !== undefined && entry["type"] !== "file") return fail("repo_not_found")
  const lfs = asRecord(entry["lfs"])
  if (lfs === undefined) return fail("not_lfs")
  const sha256 = sha256Of(lfs["oid"]) ?? sha256Of(lfs["sha256"])
  const sizeBytes = sizeOf(lfs["size"])
  if (sha256 === undefined || sizeBytes === undefined) return fail("not_lfs")
  if (entry["size"] !== undefined && entry["size"] !== sizeBytes) return fail("hub_disagrees")
  return Either.right({ sha256, sizeBytes })
}

/** What the `HEAD` of a resolve URL says, its headers lower-cased. */
export interface HeadFacts {
  readonly repoCommit: string | undefined
  readonly linkedEtag: string | undefined
  readonly linkedSize: string | undefined
}

/**
 * As `get_hf_file_metadata` reads them: `X-Linked-Etag`, else `ETag`; `X-Linked-Size`, else (on an
 * answer that is not a redirect) `Content-Length`.
 */
export const headFacts = (headers: Readonly<Record<string, string | undefined>>, redirect: boolean): HeadFacts => ({
  repoCommit: headers["x-repo-commit"],
  linkedEtag: headers["x-linked-etag"] ?? headers["etag"],
  linkedSize: headers["x-linked-size"] ?? (redirect ? undefined : headers["content-length"])
})

export interface Pin {
  readonly repo: string
  readonly commit: string
  readonly file: string
  readonly sha256: string
  readonly sizeBytes: number
}

/**
 * A pin when the answers agree: the revision resolved to `commit`; paths-info's LFS facts; and the
 * resolve `HEAD`'s `X-Repo-Commit`, ETag (normalized) and size. A `HEAD` without an ETag or a size
 * is `not_lfs`; any difference is `hub_disagrees`.
 */
export const crossCheck = (reference: { readonly repo: string; readonly file: string }, commit: string, lfs: LfsFacts, head: HeadFacts): Either.Either<Pin, HubError> => {
  if (head.linkedEtag === undefined || head.linkedSize === undefined) return fail("not_lfs")
  if (head.repoCommit !== commit) return fail("hub_disagrees")
  if (normalizeEtag(head.linkedEtag) !== lfs.sha256) return fail("hub_disagrees")
  if (!/^\d{1,16}$/.test(head.linkedSize.trim()) || Number(head.linkedSize.trim()) !== lfs.sizeBytes) return fail("hub_disagrees")
  return Either.right({ repo: reference.repo, commit, file: reference.file, sha256: lfs.sha256, sizeBytes: lfs.sizeBytes })
}

/**
 * The config file after a pin: the `model` block (source at the commit, SHA-256, size, name), or in
 * a config of several the `models` entry of that name (its other fields kept), and the commit's
 * resolve prefix added to `allowedSources`, every other key kept as it was. A previous pin's prefix
 * for the same repository is replaced, not kept beside the new one, unless another model uses it.
 */
export const applyPin = (config: Record<string, unknown>, pin: Pin, hub: URL, name: string): Record<string, unknown> => {
  const prefix = resolvePrefix(hub, pin.repo, pin.commit)
  const previous = Array.isArray(config["allowedSources"]) ? (config["allowedSources"] as ReadonlyArray<unknown>) : []
  const stale = new URL(`/${pin.repo}/resolve/`, hub).href
  const source = resolveUrl(hub, pin.repo, pin.commit, pin.file).href
  const pinned = { source, sha256: pin.sha256, sizeBytes: pin.sizeBytes }
  const several = config["models"]
  // A config of several models gets (or updates) the entry of that name, keeping its other fields.
  const models = typeof several === "object" && several !== null && !Array.isArray(several)
    ? { ...(several as Record<string, unknown>), [name]: { ...((several as Record<string, Record<string, unknown>>)[name] ?? {}), ...pinned } }
    : undefined
  // Another commit's prefix for this repository goes, unless another model's source still needs it.
  const sources = models === undefined ? [source] : Object.values(models).map((entry) => String((entry as Record<string, unknown>)?.["source"] ?? ""))
  const kept = previous.filter((entry) =>
    !(typeof entry === "string" && entry.startsWith(stale) && entry !== prefix && !sources.some((s) => s.startsWith(entry)))
  )
  const allowedSources = kept.includes(prefix) ? kept : [...kept, prefix]
  return models === undefined
    ? { ...config, model: { ...pinned, name }, allowedSources }
    : { ...config, models, allowedSources }
}
