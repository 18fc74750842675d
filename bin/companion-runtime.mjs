#!/usr/bin/env node
// The `companion-runtime` command. The sources are TypeScript run through tsx; there is no build step.
import { register } from "tsx/esm/api"

register()
process.argv[1] = "companion-runtime"
await import("../src/cli/main.ts")
