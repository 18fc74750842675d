#!/usr/bin/env node
// The `companion-runtime` command: the compiled JavaScript in dist/ (`npm run build`, run by
// `prepare` on install). No TypeScript loader at run time.
import { run } from "../dist/cli/main.js"

run(process.argv)
