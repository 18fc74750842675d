/**
 * The benchmark's HTTPS origin, in its own process so its CPU and memory are not the measured
 * process's. Serves `<file>` at /bench/model.bin; prints `<port> <ca file>` once listening.
 */
import { statSync, writeFileSync } from "node:fs"
import { startOrigin, serveFile } from "../scripts/lib/origin.js"
import { makeTestPki } from "../scripts/lib/pki.js"

const [file = "", caFile = ""] = process.argv.slice(2)
const pki = makeTestPki()
writeFileSync(caFile, pki.caPem)
const origin = await startOrigin(pki, { "/bench/model.bin": serveFile(file, statSync(file).size) })
process.stdout.write(`${origin.port}\n`)
process.on("SIGTERM", () => void origin.close().then(() => process.exit(0)))
