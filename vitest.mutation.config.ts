import { defineConfig } from "vitest/config"

// Mutation testing measures the domain suite against src/domain: the manager's suite (with its
// 10,000-request flood) would multiply the run time without saying anything about the domain tests.
export default defineConfig({
  test: {
    include: ["test/domain/**/*.test.ts"],
    testTimeout: 30_000
  }
})
