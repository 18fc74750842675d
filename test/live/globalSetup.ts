/**
 * Before any test: make sure a real llama-server exists (`npm run runtime:ensure`, which builds it
 * once from the pinned llama.cpp source, ~10 minutes on 2 cores, then finds it in its cache), and
 * hand its path to the live tests. Nothing is installed by hand.
 */
import { execFileSync } from "node:child_process"
import type { TestProject } from "vitest/node"

declare module "vitest" {
  export interface ProvidedContext {
    llamaServer: string
  }
}

export default function setup(project: TestProject) {
  const out = execFileSync(process.execPath, ["scripts/runtime-ensure.mjs"], {
    stdio: ["ignore", "pipe", "inherit"],
    encoding: "utf8"
  })
  const path = out.trim().split("\n").at(-1)
  if (path === undefined || path === "") throw new Error("runtime:ensure printed no path")
  project.provide("llamaServer", path)
}
