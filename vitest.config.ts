import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Property and flood tests do real work; keep the default per-test timeout generous but bounded.
    testTimeout: 30_000,
    // Compiles dist/ (what the command and the package run), and builds or finds the real
    // llama-server once, before any test runs.
    globalSetup: ["test/buildSetup.ts", "test/live/globalSetup.ts"]
  }
})
