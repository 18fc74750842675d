import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Property and flood tests do real work; keep the default per-test timeout generous but bounded.
    testTimeout: 30_000,
    // Builds or finds the real llama-server once, before any live test runs.
    globalSetup: ["test/live/globalSetup.ts"]
  }
})
