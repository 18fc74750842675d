/**
 * Before any test: compile src/ to dist/ (`npm run build`), so the command's tests and the consumer
 * test run the JavaScript that ships, never a stale build.
 */
import { execFileSync } from "node:child_process"

export default function setup() {
  execFileSync("npm", ["run", "--silent", "build"], { stdio: ["ignore", "inherit", "inherit"] })
}
