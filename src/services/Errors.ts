/**
 * Typed failures of the services and of the RuntimeManager. As in the domain, an error carries its
 * tag, a fixed `reason` and nothing else but, for a rate-limited download, the server's requested
 * delay; its message is looked up from the reason. Adapters map platform errors into these at
 * their boundary, so no URL, path, digest, key or OS message crosses it.
 */
import { Schema } from "effect"
import { ReasonError, reasonLiterals } from "../domain/Errors.js"

const downloadMessages = {
  connection_failed: "The download connection failed.",
  connect_timeout: "The download source did not accept a connection in time.",
  stall_timeout: "The download stalled: no bytes arrived in time.",
  download_too_slow: "The download was slower than the minimum rate.",
  server_error: "The download source answered with a server error.",
  rate_limited: "The download source asked to slow down.",
  request_timeout: "The download source timed the request out.",
  client_error: "The download source refused the request.",
  link_expired: "A storage host the source redirected to refused the request; the source is asked again.",
  redirect_not_allowed: "The download source redirected to a location that is not allowed.",
  too_many_redirects: "The download source redirected too many times.",
  content_encoding_not_allowed: "The download source sent an encoded body; only identity is accepted.",
  range_mismatch: "The download source answered a resume with the wrong range."
} as const

/** Reasons worth another attempt with backoff. Everything else is final. */
export const transientDownloadReasons: ReadonlySet<DownloadError["reason"]> = new Set([
  "connection_failed",
  "connect_timeout",
  "stall_timeout",
  "download_too_slow",
  "server_error",
  "rate_limited",
  "request_timeout",
  "range_mismatch",
  // A signed storage URL that expired: the next attempt starts again from the source, which signs a new one.
  "link_expired"
])

export class DownloadError extends Schema.TaggedError<DownloadError>("companion-runtime/DownloadError")(
  "DownloadError",
  {
    reason: Schema.Literal(...reasonLiterals(downloadMessages)),
    /** A server's Retry-After, in milliseconds, when it gave one. */
    retryAfterMillis: Schema.optionalWith(Schema.NonNegativeInt, { exact: true })
  }
) {
  override get message(): string {
    return downloadMessages[this.reason]
  }
  get transient(): boolean {
    return transientDownloadReasons.has(this.reason)
  }
}

const storeFileMessages = {
  file_missing: "A file in the model store does not exist.",
  file_exists: "A file in the model store already exists.",
  not_a_file: "A model store path holds a link, directory or special file where a regular file belongs.",
  file_io_failed: "The model store could not read or write a file."
} as const

/** Failures of the store's file operations (`StoreFileSystem`); the store maps them into `ModelStoreError`. */
export class StoreFileError extends ReasonError("StoreFileError", storeFileMessages) {}

const modelStoreMessages = {
  io_failed: "The model store could not read or write a file.",
  store_locked: "Another process is writing this model.",
  not_stored: "The model is not in the store.",
  entry_replaced: "A file in the model store was replaced while it was being written.",
  store_not_private: "The model store directory can be written by other users.",
  model_changed: "The stored model changed after it was verified."
} as const

export class ModelStoreError extends ReasonError("ModelStoreError", modelStoreMessages) {}

const spawnMessages = {
  spawn_failed: "The runtime process could not be started.",
  help_failed: "The runtime binary did not answer --help, so its hardening flags are unknown.",
  unverified_model: "Only a model verified by the model store can be started.",
  address_not_reported: "The runtime did not report its listening address.",
  exited_early: "The runtime process exited before it reported its address.",
  models_dir_unsafe: "The runtime's private model directory is a link, not a directory, belongs to another user, or can be written by others.",
  blob_refused: "The runtime refused the verified model's bytes.",
  import_failed: "The runtime could not import the verified model.",
  import_timeout: "The runtime did not import the verified model in time.",
  name_in_use: "Another model on the runtime already has this name."
} as const

export class SpawnError extends ReasonError("SpawnError", spawnMessages) {}

const healthMessages = {
  unreachable: "The runtime's health endpoint could not be reached.",
  probe_timeout: "The runtime's health probe timed out.",
  unhealthy: "The runtime reported that it is unhealthy.",
  wrong_model: "The runtime does not serve the verified model under the model's name."
} as const

export class HealthError extends ReasonError("HealthError", healthMessages) {}

const resourceStatMessages = {
  stat_failed: "The runtime's resource usage could not be read.",
  parse_failed: "The runtime's resource usage could not be parsed.",
  process_gone: "The runtime process is gone."
} as const

export class ResourceStatError extends ReasonError("ResourceStatError", resourceStatMessages) {}

const startMessages = {
  load_deadline_exceeded: "The runtime did not become healthy before the load deadline.",
  health_failed: "The runtime reported a failure while loading.",
  exited_while_starting: "The runtime process exited while starting.",
  model_mismatch: "The runtime does not serve the verified model under the model's name."
} as const

export class StartError extends ReasonError("StartError", startMessages) {}

const runtimeExitedMessages = {
  runtime_exited: "The runtime process exited while the request was running.",
  runtime_stopped: "The runtime was stopped before the request finished."
} as const

export class RuntimeExitedError extends ReasonError("RuntimeExitedError", runtimeExitedMessages) {}

export class QueueTimeoutError extends ReasonError("QueueTimeoutError", {
  queue_timeout: "The request waited in the queue for too long."
}) {}

const gatewayMessages = {
  not_found: "There is no such route.",
  misdirected_request: "The Host header does not name this gateway.",
  origin_not_allowed: "Requests from this origin are not allowed.",
  unauthorized: "A valid bearer token is required.",
  body_too_large: "The request body is too large.",
  invalid_body: "The request body is not a valid request for this route.",
  field_not_allowed: "The request body sets a field that controls the runtime's internals.",
  request_too_large: "The request has more messages, characters or tools than allowed.",
  model_not_found: "The requested model is not served here.",
  wrong_model_kind: "The requested model does not serve this route (a chat model for chat and completions, an embedding model for embeddings).",
  invalid_host: "The request must carry exactly one Host header.",
  upstream_failed: "The runtime did not answer the request.",
  generation_timeout: "The answer took longer than the generation deadline."
} as const

/** Refusals of the loopback gateway itself, before or around a request to the runtime. */
export class GatewayError extends ReasonError("GatewayError", gatewayMessages) {}

/** A pool asked for a model it does not hold. */
export class PoolError extends ReasonError("PoolError", {
  model_not_found: "The requested model is not served here."
}) {}
