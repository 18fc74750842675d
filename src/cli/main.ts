/**
 * `companion-runtime` — serve, pull, pin, verify, inspect, status. Built with @effect/cli, run with
 * NodeRuntime.runMain (SIGINT/SIGTERM interrupt the program: `serve` then drains, stops the runtime
 * and exits 0). Failures print their fixed message, never a URL, path, digest or key, and exit 1.
 *
 * This module loads only the command line's own pieces, through deep imports (the `effect` and
 * `@effect/platform-node` barrels load every module they name): `--help` and `status` start near a
 * bare `node`. Each command's work is imported when that command runs (`./serve.js` for serve and
 * pull, `./verify.js` for verify).
 */
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"

const DEFAULT_STATUS_URL = "http://127.0.0.1:8089"
const VERSION = "0.1.0"

/** A failure already reported to the user: exit 1, print nothing more. */
class Reported {
  readonly _tag = "Reported"
}

const report = <A, E extends { readonly message: string }, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.catchAll(effect, (error) => Effect.zipRight(Console.error(`error: ${error.message}`), Effect.fail(new Reported())))

const configOption = Options.file("config", { exists: "yes" }).pipe(Options.withDescription("a JSON config file"))

const serve = Command.make("serve", { config: configOption }, ({ config }) =>
  report(Effect.flatMap(Effect.promise(() => import("./serve.js")), (m) => m.serve(config)))).pipe(
    Command.withDescription("Ensure the model, start the runtime and serve the loopback gateway until SIGINT/SIGTERM.")
  )

const pull = Command.make(
  "pull",
  { config: configOption, model: Options.text("model").pipe(Options.optional, Options.withDescription("only this model (by name)")) },
  ({ config, model }) => report(Effect.flatMap(Effect.promise(() => import("./serve.js")), (m) => m.pull(config, model)))
).pipe(Command.withDescription("Download and verify the configured models (or one), and nothing else (no runtime is needed)."))

const pin = Command.make(
  "pin",
  {
    repo: Args.text({ name: "repo" }).pipe(Args.withDescription("namespace/name on the hub")),
    file: Args.text({ name: "file" }).pipe(Args.withDescription("the GGUF file's path in the repository")),
    revision: Options.text("revision").pipe(Options.withDefault("main"), Options.withDescription("a branch, tag or commit; pinned as its commit")),
    config: Options.text("config").pipe(Options.withDefault("companion-runtime.json"), Options.withDescription("the config file to create or update")),
    name: Options.text("name").pipe(Options.optional, Options.withDescription("the model's name for clients (default: the file's name)")),
    hub: Options.text("hub").pipe(Options.optional, Options.withDescription("the hub's https origin (default https://huggingface.co)"))
  },
  (options) => report(Effect.flatMap(Effect.promise(() => import("./pin.js")), (m) => m.pin(options)))
).pipe(Command.withDescription("Pin a GGUF from a hub at a commit: its SHA-256 and size cross-checked, its header judged, written into the config."))

const verify = Command.make(
  "verify",
  {
    file: Args.file({ name: "file", exists: "yes" }),
    sha256: Options.text("sha256"),
    size: Options.integer("size")
  },
  ({ file, sha256, size }) => report(Effect.flatMap(Effect.promise(() => import("./verify.js")), (m) => m.verify(file, sha256, size)))
).pipe(Command.withDescription("Stream-verify a local file against a SHA-256 and a size; the exit code is the verdict."))

const inspect = Command.make(
  "inspect",
  {
    file: Args.file({ name: "file", exists: "yes" }),
    context: Options.integer("context").pipe(Options.optional, Options.withDescription("the runtime's context size (-c)")),
    parallel: Options.integer("parallel").pipe(Options.optional, Options.withDescription("the runtime's slots (-np)")),
    config: Options.file("config", { exists: "yes" }).pipe(Options.optional, Options.withDescription("a JSON config file: its context, slots, model policy and RAM ceiling apply"))
  },
  ({ file, ...options }) => report(Effect.flatMap(Effect.promise(() => import("./inspect.js")), (m) => m.inspect(file, options)))
).pipe(Command.withDescription("Read a GGUF file's header (never the weights) and print its summary and memory estimate as JSON; runs nothing."))

const status = Command.make(
  "status",
  { url: Options.text("url").pipe(Options.withDefault(DEFAULT_STATUS_URL)) },
  ({ url }) => report(Effect.flatMap(Effect.promise(() => import("./status.js")), (m) => m.status(url)))
).pipe(Command.withDescription("Ask a running gateway's /health; exit 0 only when ready."))

const root = Command.make("companion-runtime").pipe(Command.withSubcommands([serve, pull, pin, verify, inspect, status]))

/** The command as an Effect of its arguments (`process.argv`), for tests and for `run`. */
export const cli = Command.run(root, { name: "companion-runtime", version: VERSION })

/** Run the command as the program: the `bin` entry calls this, so importing this module does nothing. */
export const run = (argv: ReadonlyArray<string>): void =>
  cli(argv).pipe(
    Effect.provide(NodeContext.layer),
    (effect) => NodeRuntime.runMain(effect, { disableErrorReporting: true })
  )
