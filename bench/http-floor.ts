/**
 * bench:http-floor — what a request costs the server process on the platform's HttpServer itself,
 * before any gateway code: \`node:http\` answering a static JSON body, beside \`@effect/platform\`'s
 * HttpServer (NodeHttpServer, HttpRouter, tracer off) answering the same, in one child process,
 * alternated, 3 rounds × 6,000 requests at concurrency 8 from this process. The floor under any
 * gateway built on the platform. Writes docs/benchmarks.md.
 */
import { createServer, request, Agent } from "node:http"
import { HttpRouter, HttpServer, HttpServerResponse, HttpMiddleware } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import { readFileSync } from "node:fs"
import { performance } from "node:perf_hooks"
import { fork } from "node:child_process"
import { machine, median, today, writeSection } from "./report.js"
if (process.argv[2] === "server") {
  const plain = createServer((req, res) => { req.resume(); req.on("end", () => res.writeHead(200, { "content-type": "application/json" }).end('{"ok":true}')) })
  plain.listen(0, "127.0.0.1", () => {
    const app = HttpRouter.empty.pipe(HttpRouter.post("/x", Effect.succeed(HttpServerResponse.unsafeJson({ ok: true }))))
    const layer = HttpServer.serveEffect(app).pipe(Layer.scopedDiscard, (l) => HttpMiddleware.withTracerDisabledWhen(l, () => true), Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" })))
    Effect.runFork(Effect.gen(function*() {
      const s = yield* HttpServer.HttpServer
      const port = s.address._tag === "TcpAddress" ? s.address.port : 0
      process.send!({ plain: (plain.address() as any).port, effect: port })
      yield* Effect.never
    }).pipe(Effect.provide(layer)))
  })
} else {
  const child = fork(process.argv[1]!, ["server"], { execArgv: ["--import", "tsx"] })
  const ports = await new Promise<any>((r) => child.once("message", r))
  const cpu = () => { const f = readFileSync(`/proc/${child.pid}/stat`, "utf8"); const x = f.slice(f.lastIndexOf(")") + 2).split(" "); return (Number(x[11]) + Number(x[12])) / 100 }
  const run = async (port: number, N = 6000, C = 8) => {
    const agent = new Agent({ keepAlive: true, maxSockets: C }); let next = 0
    const c0 = cpu(); const t0 = performance.now()
    await Promise.all(Array.from({ length: C }, async () => { while (next++ < N) await new Promise<void>((res) => { const rq = request({ port, host: "127.0.0.1", path: "/x", method: "POST", agent, headers: { "content-type": "application/json", "content-length": 2 } }, (r) => { r.resume(); r.on("end", () => res()) }); rq.end("{}") }) }))
    return { rps: N / ((performance.now() - t0) / 1000), cpuUs: (cpu() - c0) / N * 1e6 }
  }
  await run(ports.plain, 2000)
  await run(ports.effect, 2000) // warm both
  const got: Record<string, Array<{ rps: number; cpuUs: number }>> = { plain: [], effect: [] }
  for (let i = 0; i < 3; i++) {
    for (const k of i % 2 === 0 ? ["plain", "effect"] : ["effect", "plain"]) {
      const r = await run(ports[k])
      got[k]!.push(r)
      console.log(k, r.rps.toFixed(0), "rps", r.cpuUs.toFixed(0), "µs cpu/req")
    }
  }
  child.kill()
  const cpuOf = (k: string) => median(got[k]!.map((r) => r.cpuUs))
  const rps = (k: string) => median(got[k]!.map((r) => r.rps))
  writeSection("http-floor", `## bench:http-floor — ${today()}

${machine()}. \`npm run bench:http-floor\`: a static JSON answer to \`POST /x\`, 3 rounds × 6,000 requests at
concurrency 8, alternated, medians; CPU per request is the server process's (/proc), load generator
in another process on the same cores.

| server | requests/s | CPU per request |
|---|---:|---:|
| \`node:http\` | ${rps("plain").toFixed(0)} | ${cpuOf("plain").toFixed(0)} µs |
| \`@effect/platform\` HttpServer + HttpRouter (tracer off) | ${rps("effect").toFixed(0)} | ${cpuOf("effect").toFixed(0)} µs |

The platform's own server costs ${(cpuOf("effect") / cpuOf("plain")).toFixed(1)}× \`node:http\`'s CPU for an empty answer, about
${(cpuOf("effect") - cpuOf("plain")).toFixed(0)} µs more per request: a real but small part of what the gateway adds over the bare proxy
(bench:gateway), so most of that is the gateway's own pipeline on the Effect runtime.`)
}
