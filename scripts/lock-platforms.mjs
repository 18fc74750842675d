#!/usr/bin/env node
// Completes package-lock.json with the other platforms' optional native packages.
//
// Why: the registry mirror these machines use serves only the linux builds of some packages at
// their newest versions, so `npm install` cannot record the darwin/win32/... variants, and
// `npm ci` then refuses the lockfile as out of sync. Each added entry carries its os/cpu/libc, so
// npm skips it on a machine it does not fit and never fetches it. Run after `npm install`
// whenever dependencies change: `npm run lock:platforms`.
import { execFileSync } from "node:child_process"
import { readFileSync, writeFileSync } from "node:fs"

const FILE = new URL("../package-lock.json", import.meta.url)
const lock = JSON.parse(readFileSync(FILE, "utf8"))
const packages = lock.packages

// Where npm would look for `name` when required from the package at `from` (node resolution).
const resolve = (from, name) => {
  let dir = from
  for (;;) {
    const candidate = `${dir ? `${dir}/` : ""}node_modules/${name}`
    if (packages[candidate]) return candidate
    if (!dir) return undefined
    const at = dir.lastIndexOf("node_modules/")
    dir = at <= 0 ? "" : dir.slice(0, at - 1)
  }
}

const platformOf = (name, version) => {
  for (const spec of [`${name}@${version}`, name]) {
    try {
      const out = execFileSync("npm", ["view", spec, "os", "cpu", "libc", "--json"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] })
      const parsed = JSON.parse(out || "{}")
      const latest = Array.isArray(parsed) ? parsed.at(-1) : parsed
      return latest
    } catch {
      // not on this registry at that version; try the newest one it has
    }
  }
  return undefined
}

let added = 0
for (const [path, entry] of Object.entries(packages)) {
  for (const [name, version] of Object.entries(entry.optionalDependencies ?? {})) {
    if (resolve(path, name)) continue
    const platform = platformOf(name, version)
    if (!platform || (!platform.os && !platform.cpu)) {
      console.error(`skipped ${name}: no platform fields known`)
      continue
    }
    const target = `node_modules/${name}`
    packages[packages[target] ? `${path}/node_modules/${name}` : target] = {
      version,
      ...(platform.cpu ? { cpu: [platform.cpu].flat() } : {}),
      ...(entry.dev ? { dev: true } : {}),
      ...(platform.libc ? { libc: [platform.libc].flat() } : {}),
      optional: true,
      ...(platform.os ? { os: [platform.os].flat() } : {})
    }
    added++
  }
}

lock.packages = Object.fromEntries(Object.entries(packages).sort(([a], [b]) => (a === "" ? -1 : b === "" ? 1 : a.localeCompare(b))))
writeFileSync(FILE, `${JSON.stringify(lock, null, 2)}\n`)
console.log(`package-lock.json: added ${added} optional platform entries`)
