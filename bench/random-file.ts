/** Shared by bench:download and bench:pull: a file of pseudo-random bytes (a new block per MiB) and its SHA-256. */
import { createHash } from "node:crypto"
import { closeSync, openSync, writeSync } from "node:fs"

const MiB = 1024 * 1024

export const makeRandomFile = (path: string, size: number): string => {
  const fd = openSync(path, "w")
  const hash = createHash("sha256")
  const block = Buffer.alloc(MiB)
  let x = 0x9e3779b9
  for (let written = 0; written < size; written += MiB) {
    for (let i = 0; i < MiB; i += 4) {
      x ^= x << 13
      x ^= x >>> 17
      x ^= x << 5
      block.writeUInt32LE(x >>> 0, i)
    }
    hash.update(block)
    writeSync(fd, block)
  }
  closeSync(fd)
  return hash.digest("hex")
}
