/**
 * A throwaway certificate authority and a server certificate for 127.0.0.1 and localhost, made at
 * test time with the `openssl` command (P-256 keys: milliseconds to generate). Nothing is written
 * outside a fresh temporary directory, which is removed at once.
 */
import { execFileSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

export interface TestPki {
  readonly caPem: string
  readonly certPem: string
  readonly keyPem: string
}

export const makeTestPki = (): TestPki => {
  const dir = mkdtempSync(join(tmpdir(), "companion-pki-"))
  const run = (...args: Array<string>) => execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] })
  try {
    run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
    run("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=companion-runtime test CA", "-days", "2", "-out", "ca.pem")
    run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "server.key")
    run("req", "-new", "-key", "server.key", "-subj", "/CN=127.0.0.1", "-out", "server.csr")
    writeFileSync(
      join(dir, "ext.cnf"),
      "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    run(
      "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
      "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem"
    )
    return {
      caPem: readFileSync(join(dir, "ca.pem"), "utf8"),
      certPem: readFileSync(join(dir, "server.pem"), "utf8"),
      keyPem: readFileSync(join(dir, "server.key"), "utf8")
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}
