/**
 * The benchmark's HTTPS origin, in its own process so its CPU and memory are not the measured
 * process's. Serves `<file>` at /bench/model.bin, paced to `<rate>` bytes/s when given (0: as fast
 * as it can); prints `<port>` once listening.
 */
import { createReadStream, statSync, writeFileSync } from "node:fs"
import { Transform } from "node:stream"
import { serveBody, startOrigin } from "../scripts/lib/origin.js"
import { makeTestPki } from "../scripts/lib/pki.js"

const [file = "", caFile = "", rateArg = "0"] = process.argv.slice(2)
const rate = Number(rateArg)

/** Holds each chunk until the bytes sent so far are due at `rate` (a link of that speed). */
const paced = () => {
  const started = performance.now()
  let sent = 0
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      sent += chunk.length
      const due = started + (sent / rate) * 1000
      const wait = due - performance.now()
      if (wait <= 0) done(null, chunk)
      else setTimeout(() => done(null, chunk), wait)
    }
  })
}

const pki = makeTestPki()
writeFileSync(caFile, pki.caPem)
const open = (start: number) => {
  const body = createReadStream(file, { start, highWaterMark: 256 * 1024 })
  return rate > 0 ? body.pipe(paced()) : body
}
const origin = await startOrigin(pki, { "/bench/model.bin": serveBody(statSync(file).size, open) })
process.stdout.write(`${origin.port}\n`)
process.on("SIGTERM", () => void origin.close().then(() => process.exit(0)))
