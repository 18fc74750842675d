#!/usr/bin/env node
// npm run runtime:ensure — make sure a llama-server binary exists, and print its path last.
//
// Order: $LLAMA_SERVER, then `llama-server` on PATH, then a build cached outside the repo. The
// build uses the llama.cpp source that the npm package node-llama-cpp ships as a git bundle
// (pinned below), so it needs only the npm registry, git, cmake and a C++ compiler. It takes
// several minutes on 2 cores, once; later calls find the cached binary.
import { execFileSync, spawn } from "node:child_process"
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs"
import { homedir, tmpdir } from "node:os"
import { delimiter, join } from "node:path"

const NODE_LLAMA_CPP = "3.22.1"
const log = (line) => process.stderr.write(`runtime:ensure: ${line}\n`)

const works = (binary) => {
  try {
    execFileSync(binary, ["--version"], { stdio: "ignore", timeout: 20_000 })
    return true
  } catch {
    return false
  }
}

const fromEnv = process.env.LLAMA_SERVER
if (fromEnv && works(fromEnv)) done(fromEnv)

for (const dir of (process.env.PATH ?? "").split(delimiter)) {
  const candidate = join(dir, "llama-server")
  if (dir && existsSync(candidate) && works(candidate)) done(candidate)
}

const cacheRoot = join(process.env.XDG_CACHE_HOME || join(homedir(), ".cache"), "companion-runtime")
const home = join(cacheRoot, `llama.cpp-node-llama-cpp-${NODE_LLAMA_CPP}`)
const binary = join(home, "build", "bin", "llama-server")
if (existsSync(binary) && works(binary)) done(binary)

await build()
if (!works(binary)) fail("the build finished but llama-server does not run")
done(binary)

function done(path) {
  process.stdout.write(`${path}\n`)
  process.exit(0)
}

function fail(message) {
  log(`failed: ${message}`)
  process.exit(1)
}

async function build() {
  mkdirSync(cacheRoot, { recursive: true })
  const work = mkdtempSync(join(tmpdir(), "companion-runtime-build-"))
  try {
    log(`fetching node-llama-cpp@${NODE_LLAMA_CPP} (llama.cpp source) from the npm registry`)
    const tarball = execFileSync("npm", ["pack", `node-llama-cpp@${NODE_LLAMA_CPP}`, "--silent"], { cwd: work, encoding: "utf8" }).trim().split("\n").at(-1)
    execFileSync("tar", ["xzf", tarball, "package/llama/gitRelease.bundle", "package/llama/binariesGithubRelease.json"], { cwd: work })
    const release = JSON.parse(readFileSync(join(work, "package/llama/binariesGithubRelease.json"), "utf8")).release
    log(`llama.cpp release ${release}`)

    const staging = `${home}.partial`
    rmSync(staging, { recursive: true, force: true })
    execFileSync("git", ["-c", "advice.detachedHead=false", "clone", "--quiet", join(work, "package/llama/gitRelease.bundle"), staging], { stdio: "inherit" })
    await run("cmake", [
      "-S", staging, "-B", join(staging, "build"),
      "-DCMAKE_BUILD_TYPE=Release",
      "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
      "-DGGML_NATIVE=OFF",
      // $ORIGIN-relative library paths: the build is renamed into the cache when complete.
      "-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON"
    ])
    log("building llama-server (several minutes on 2 cores; progress below)")
    await run("cmake", ["--build", join(staging, "build"), "--target", "llama-server", "-j", "2"], true)
    writeFileSync(join(staging, "companion-runtime.json"), `${JSON.stringify({ nodeLlamaCpp: NODE_LLAMA_CPP, release }, null, 2)}\n`)
    rmSync(home, { recursive: true, force: true })
    renameSync(staging, home) // the cache holds only complete builds
  } finally {
    rmSync(work, { recursive: true, force: true })
  }
}

// Run a command; with `progress`, print one line each time the build passes another 10 %.
function run(command, args, progress = false) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] })
    let shown = -10
    let tail = ""
    const onData = (data) => {
      tail = (tail + data).slice(-4000)
      if (!progress) return
      for (const match of String(data).matchAll(/\[\s*(\d+)%\]/g)) {
        const percent = Number(match[1])
        if (percent >= shown + 10) {
          shown = percent - (percent % 10)
          log(`build ${percent}%`)
        }
      }
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.on("error", reject)
    child.on("close", (code) => {
      if (code === 0) resolve()
      else reject(new Error(`${command} exited with ${code}:\n${tail}`))
    })
  })
}
