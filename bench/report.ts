/**
 * Shared by the benchmarks: medians, the machine line, and writing one section of
 * docs/benchmarks.md between its markers so each bench updates only its own figures.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs"
import { cpus, totalmem } from "node:os"
import { join } from "node:path"

export const median = (xs: ReadonlyArray<number>): number => {
  const s = [...xs].sort((a, b) => a - b)
  const mid = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2
}

export const machine = (): string => {
  const cpu = cpus()
  return `${cpu[0]?.model.trim() ?? "unknown CPU"}, ${cpu.length} cores, ${Math.round(totalmem() / 1024 ** 3)} GiB, Node ${process.version}, ${process.platform}/${process.arch}`
}

export const today = (): string => new Date().toISOString().slice(0, 10)

const FILE = join(import.meta.dirname, "../docs/benchmarks.md")
const HEADER = `# Benchmarks

Each section is written by its \`npm run bench:*\` script. The machines are shared and noisy, so every
figure compares candidates side by side in one run, alternating them, and reports medians and ratios.
`

export const writeSection = (name: string, body: string): void => {
  const start = `<!-- bench:${name} -->`
  const end = `<!-- /bench:${name} -->`
  const block = `${start}\n${body.trim()}\n${end}`
  const current = existsSync(FILE) ? readFileSync(FILE, "utf8") : HEADER
  const at = current.indexOf(start)
  const next = at === -1
    ? `${current.trimEnd()}\n\n${block}\n`
    : `${current.slice(0, at)}${block}${current.slice(current.indexOf(end) + end.length)}`
  writeFileSync(FILE, next)
  console.log(`wrote the ${name} section of docs/benchmarks.md`)
}
