/**
 * The package as an app gets it: `npm pack`, installed into a scratch project next to its own
 * `effect`, typechecked against the shipped `.d.ts` and run with plain `node`. Dependencies come
 * from this project's `node_modules` (`file:` links, `--offline`), so the test needs no network.
 * The tarball is packed with `--ignore-scripts` from the `dist/` the global setup built.
 */
import { execFile } from "node:child_process"
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { promisify } from "node:util"
import { afterAll, assert, beforeAll, describe, it } from "vitest"

const exec = promisify(execFile)
const ROOT = resolve(import.meta.dirname, "../..")
const FIXTURE = join(import.meta.dirname, "fixture")
const TSC = join(ROOT, "node_modules/typescript/bin/tsc")
const own = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as {
  name: string
  version: string
  dependencies: Record<string, string>
  peerDependencies: Record<string, string>
}

let app: string
let packed: { files: ReadonlyArray<{ path: string }>; filename: string }

const npm = (args: ReadonlyArray<string>, cwd: string) =>
  exec("npm", [...args, "--no-audit", "--no-fund", "--loglevel=error"], { cwd, timeout: 120_000, maxBuffer: 16 << 20 })

beforeAll(async () => {
  app = mkdtempSync(join(tmpdir(), "companion-consumer-"))
  cpSync(FIXTURE, app, { recursive: true })
  const { stdout } = await npm(["pack", "--ignore-scripts", "--json", "--pack-destination", app], ROOT)
  packed = (JSON.parse(stdout) as Array<typeof packed>)[0]!
  // The app's own dependencies (and the command's) from this project's node_modules, by link.
  const linked = ["effect", "@effect/platform", "@effect/platform-node", "@types/node", ...Object.keys(own.dependencies)]
  writeFileSync(
    join(app, "package.json"),
    JSON.stringify({
      name: "consumer-app",
      private: true,
      type: "module",
      dependencies: {
        [own.name]: `file:./${packed.filename}`,
        ...Object.fromEntries(linked.map((name) => [name, `file:${join(ROOT, "node_modules", name)}`]))
      }
    })
  )
  // --legacy-peer-deps: npm's peer placement fails on linked peers (an arborist bug); the peers are
  // the app's links above, and the test below checks the declared ranges.
  await npm(["install", "--offline", "--ignore-scripts", "--legacy-peer-deps"], app)
}, 240_000)

afterAll(() => {
  if (app !== undefined) rmSync(app, { recursive: true, force: true })
})

describe("the packed package, installed into an app", () => {
  it("ships the compiled JavaScript, its types and the command, and no tests, scripts or config", () => {
    const paths = packed.files.map((file) => file.path)
    for (const path of ["dist/index.js", "dist/index.d.ts", "dist/index.d.ts.map", "dist/testing.js", "dist/domain/index.d.ts", "dist/http/index.js", "dist/cli/main.js", "bin/companion-runtime.mjs", "package.json", "README.md"]) {
      assert.include(paths, path)
    }
    for (const path of paths) {
      assert.match(path, /^(dist|src|bin|docs)\/|^(package\.json|README\.md|LICENSE)$/, path)
      assert.notMatch(path, /\.test\.|^test\/|^scripts\/|^bench\/|\.tgz$|tsconfig/, path)
    }
  })

  it("declares effect and the platform as peers, and nothing that runs TypeScript", () => {
    const installed = JSON.parse(readFileSync(join(app, "node_modules", own.name, "package.json"), "utf8")) as typeof own
    assert.deepStrictEqual(Object.keys(installed.peerDependencies).sort(), ["@effect/platform", "@effect/platform-node", "effect"])
    for (const peer of Object.keys(installed.peerDependencies)) assert.notProperty(installed.dependencies, peer)
    assert.notProperty(installed.dependencies, "tsx")
    assert.notProperty(installed.dependencies, "typescript")
    // One copy of effect: the app's. A second copy under the package would split every Context tag.
    assert.isFalse(existsSync(join(app, "node_modules", own.name, "node_modules")))
  })

  it("typechecks an app against the shipped .d.ts: the Test layers with the manager, and the README's embedding", async () => {
    const tsc = (...args: Array<string>) =>
      exec(process.execPath, [TSC, "-p", "tsconfig.json", "--noEmit", ...args], { cwd: app, timeout: 120_000 }).then(
        ({ stdout }) => stdout,
        (error: { stdout: string }) => error.stdout
      )
    // As an Effect app compiles (skipLibCheck, as Effect's templates set it): clean.
    assert.strictEqual(await tsc(), "")
    // And the package's own declaration files checked too: effect's need DOM and ws types an app
    // may not have, so only lines about this package count.
    const strict = await tsc("--skipLibCheck", "false")
    assert.notInclude(strict, `node_modules/${own.name}/`)
    assert.notInclude(strict, "src/app.ts")
  }, 150_000)

  it("runs the Test-layer program with plain node: verified, started, served, drained, no process left", async () => {
    await exec(process.execPath, [TSC, "-p", "tsconfig.json"], { cwd: app, timeout: 120_000 })
    const { stdout } = await exec(process.execPath, ["out/app.js"], { cwd: app, timeout: 30_000 })
    const result = JSON.parse(stdout) as { answer: string; state: string; runtimeAlive: boolean }
    assert.match(result.answer, /^http:\/\/127\.0\.0\.1:\d+ with a \d+-character key$/)
    assert.notStrictEqual(result.answer, "http://127.0.0.1:0 with a 0-character key")
    assert.strictEqual(result.state, "stopped")
    assert.isFalse(result.runtimeAlive)
  }, 150_000)

  it("the installed command answers --help from the compiled JavaScript", async () => {
    const { stdout } = await exec(join(app, "node_modules/.bin/companion-runtime"), ["--help"], { cwd: app, timeout: 30_000 })
    for (const command of ["serve", "pull", "verify", "status"]) assert.include(stdout, command)
    assert.include(stdout, own.version)
  })

  it("the README's install line and its embedding code are this app's, verbatim", () => {
    const readme = readFileSync(join(ROOT, "README.md"), "utf8")
    const install = /## Install in your Effect app\n([\s\S]*?)\n## /.exec(readme)?.[1] ?? ""
    assert.include(install, "npm install companion-runtime effect @effect/platform @effect/platform-node")
    const embedding = /## Embedding\n([\s\S]*?)\n## /.exec(readme)?.[1] ?? ""
    const blocks = [...embedding.matchAll(/```ts\n([\s\S]*?)```/g)].map((match) => match[1])
    assert.deepStrictEqual(blocks, [
      readFileSync(join(FIXTURE, "src/embedding.ts"), "utf8"),
      readFileSync(join(FIXTURE, "src/app.ts"), "utf8")
    ])
  })
})
