/** The model policy and the preflight, on generated headers: each refusal alone, and the order. */
import { Either } from "effect"
import { describe, expect, it } from "vitest"
import * as Gguf from "../../src/domain/Gguf.js"
import * as MemoryFit from "../../src/domain/MemoryFit.js"
import * as ModelPolicy from "../../src/domain/ModelPolicy.js"
import { makeGguf, TINY } from "../../src/testing/ModelFixtures.js"
import { sha256Hex } from "./fixtures.js"

const TEMPLATE = "{% for m in messages %}{{ m.content }}{% endfor %}"
const header = (shape = TINY) => {
  const bytes = makeGguf(shape)
  return Either.getOrThrow(Gguf.read(bytes, bytes.length)) as Gguf.GgufFile
}
const policy: ModelPolicy.ModelPolicy = { architectures: ["llama"], maxChatTemplateBytes: 1000, chatTemplateSha256s: [], templateReplaced: false }
const options = (patch: Partial<ModelPolicy.ModelPolicy> = {}, maxRamBytes = 1024 ** 3): ModelPolicy.PreflightOptions => ({
  policy: { ...policy, ...patch },
  contextSize: 512,
  parallel: 1,
  maxRamBytes
})
const reasonOf = <A>(result: Either.Either<A, { readonly reason: string }>) => (Either.isLeft(result) ? result.left.reason : "passed")

describe("ModelPolicy", () => {
  it("passes a model on the list, within its template length, and returns the estimate", () => {
    const result = ModelPolicy.preflight(header({ ...TINY, chatTemplate: TEMPLATE }), options())
    expect(reasonOf(result)).toBe("passed")
    const summary = Either.getOrThrow(Gguf.summarize(header({ ...TINY, chatTemplate: TEMPLATE })))
    expect(Either.getOrThrow(result)).toEqual(MemoryFit.estimate(summary, { contextSize: 512, parallel: 1 }))
  })

  it("each refusal alone", () => {
    expect(reasonOf(ModelPolicy.preflight(header(), options({ architectures: ["qwen3"] })))).toBe("architecture_not_allowed")
    expect(reasonOf(ModelPolicy.preflight(header({ ...TINY, chatTemplate: TEMPLATE }), options({ maxChatTemplateBytes: TEMPLATE.length - 1 })))).toBe("chat_template_too_long")
    expect(reasonOf(ModelPolicy.preflight(header({ ...TINY, chatTemplate: TEMPLATE }), options({ maxChatTemplateBytes: TEMPLATE.length })))).toBe("passed")
    expect(reasonOf(ModelPolicy.preflight(header({ ...TINY, chatTemplate: TEMPLATE }), options({ chatTemplateSha256s: ["ab".repeat(32)] })))).toBe("chat_template_not_allowed")
    // A model with no template, when templates are vetted: not one of them.
    expect(reasonOf(ModelPolicy.preflight(header(), options({ chatTemplateSha256s: ["ab".repeat(32)] })))).toBe("chat_template_not_allowed")
    expect(reasonOf(ModelPolicy.preflight(header({ ...TINY, chatTemplate: TEMPLATE }), options({ chatTemplateSha256s: [sha256Hex(new TextEncoder().encode(TEMPLATE))] })))).toBe("passed")
    expect(reasonOf(ModelPolicy.preflight(header(), options({}, 1024)))).toBe("model_too_large")
  })

  it("a vetted template file replaces the model's: length and list are not judged, the architecture still is", () => {
    const long = header({ ...TINY, chatTemplate: "x".repeat(5000) })
    expect(reasonOf(ModelPolicy.preflight(long, options({ templateReplaced: true, chatTemplateSha256s: ["ab".repeat(32)] })))).toBe("passed")
    expect(reasonOf(ModelPolicy.preflight(long, options({ templateReplaced: true, architectures: [] })))).toBe("architecture_not_allowed")
  })

  it("the order: architecture, then template, then the fit", () => {
    const result = ModelPolicy.preflight(header({ ...TINY, chatTemplate: "x".repeat(5000) }), options({ architectures: ["qwen3"] }, 1024))
    expect(reasonOf(result)).toBe("architecture_not_allowed")
    expect(reasonOf(ModelPolicy.preflight(header({ ...TINY, chatTemplate: "x".repeat(5000) }), options({}, 1024)))).toBe("chat_template_too_long")
  })

  it("the default architectures are distinct names llama.cpp knows, and include the tiny model's", () => {
    expect(new Set(ModelPolicy.DEFAULT_ARCHITECTURES).size).toBe(ModelPolicy.DEFAULT_ARCHITECTURES.length)
    expect(ModelPolicy.DEFAULT_ARCHITECTURES).toContain("llama")
    expect(ModelPolicy.DEFAULT_ARCHITECTURES).toContain("qwen35")
  })
})
