import { defineConfig } from "vitest/config"

// The review's own tests only: no build, no llama-server (no globalSetup).
export default defineConfig({
  root: new URL("../..", import.meta.url).pathname,
  test: { include: ["test/review/**/*.test.ts"], testTimeout: 30_000 }
})
