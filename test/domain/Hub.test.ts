/** Pinning from a hub, the pure decisions (src/domain/Hub.ts): each HubError reason they return. */
import { assert, describe, it } from "@effect/vitest"
import { Either, Option } from "effect"
import * as Hub from "../../src/domain/Hub.js"

const SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
const COMMIT = "3c8d0f1e2a4b5c6d7e8f90a1b2c3d4e5f6a7b8c9"
const reason = <A>(result: Either.Either<A, { readonly reason: string }>) => (Either.isLeft(result) ? result.left.reason : "accepted")

describe("Hub", () => {
  it("references, URLs, the ETag, and the config patch that keeps every other key", () => {
    const origin = new URL("https://huggingface.co")
    assert.isTrue(Hub.isRepoId("unsloth/Qwen3.5-0.8B-GGUF"))
    for (const bad of ["../x", "a/b/c", "a//b", "", "a/..", "-a/b", "a--b/c"]) assert.isFalse(Hub.isRepoId(bad), bad)
    for (const bad of ["", "/x", "a/../b", "a\\b", "a%2fb", "x?y", "x#y", "a//b"]) assert.isFalse(Hub.isRepoFile(bad), bad)
    assert.strictEqual(Hub.resolveUrl(origin, "o/r", "refs/pr/1", "dir/a b.gguf").href, "https://huggingface.co/o/r/resolve/refs%2Fpr%2F1/dir/a%20b.gguf")
    assert.strictEqual(Hub.normalizeEtag(`W/"${SHA}"`), SHA)
    assert.strictEqual(Hub.normalizeEtag(`"${SHA}"`), SHA)
    const ref = Hub.parseResolveUrl(new URL(`https://huggingface.co/o/r/resolve/${COMMIT}/d/f.gguf`), origin)
    assert.deepStrictEqual(ref._tag === "Some" ? ref.value : undefined, { repo: "o/r", revision: COMMIT, file: "d/f.gguf" })
    assert.strictEqual(Hub.parseResolveUrl(new URL(`https://evil.example/o/r/resolve/${COMMIT}/f.gguf`), origin)._tag, "None")
    const pin = { repo: "o/r", commit: COMMIT, file: "f.gguf", sha256: SHA, sizeBytes: 10 }
    const patched = Hub.applyPin({ storeDir: "/s", allowedSources: ["https://mirror.example/m/", `https://huggingface.co/o/r/resolve/${"0".repeat(40)}/`] }, pin, origin, "f")
    assert.deepStrictEqual(patched, {
      storeDir: "/s",
      model: { source: `https://huggingface.co/o/r/resolve/${COMMIT}/f.gguf`, sha256: SHA, sizeBytes: 10, name: "f" },
      allowedSources: ["https://mirror.example/m/", `https://huggingface.co/o/r/resolve/${COMMIT}/`]
    })
    for (const bad of ["http://huggingface.co", "https://huggingface.co/api", "https://u:p@huggingface.co", "not a url"]) {
      assert.strictEqual(Hub.parseHub(bad)._tag, "Left", bad)
    }
  })

  it("a config of several models gets the entry of that name (its other fields kept); a prefix another model still uses stays", () => {
    const origin = new URL("https://huggingface.co")
    const old = `https://huggingface.co/o/r/resolve/${"0".repeat(40)}/`
    const pin = { repo: "o/r", commit: COMMIT, file: "e.gguf", sha256: SHA, sizeBytes: 10 }
    const config = {
      models: {
        chat: { source: `${old}c.gguf`, sha256: "1".repeat(64), sizeBytes: 5 },
        embed: { source: `${old}e.gguf`, sha256: "2".repeat(64), sizeBytes: 6, kind: "embedding", preload: true }
      },
      allowedSources: [old]
    }
    const patched = Hub.applyPin(config, pin, origin, "embed")
    assert.deepStrictEqual(patched, {
      models: {
        chat: config.models.chat,
        embed: { source: `https://huggingface.co/o/r/resolve/${COMMIT}/e.gguf`, sha256: SHA, sizeBytes: 10, kind: "embedding", preload: true }
      },
      // chat still comes from the old commit: its prefix stays beside the new one.
      allowedSources: [old, `https://huggingface.co/o/r/resolve/${COMMIT}/`]
    })
    assert.isFalse("model" in patched)
    // Once nothing uses the old prefix, it goes.
    const again = Hub.applyPin(patched, { ...pin, file: "c.gguf" }, origin, "chat")
    assert.deepStrictEqual(again["allowedSources"], [`https://huggingface.co/o/r/resolve/${COMMIT}/`])
  })

  it("the environment's token goes to the default hub only; printed references carry no control or bidi characters", () => {
    assert.isTrue(Hub.takesEnvironmentToken(new URL("https://huggingface.co")))
    for (const other of ["https://attacker.example", "https://huggingface.co:8443", "https://hf.co"]) assert.isFalse(Hub.takesEnvironmentToken(new URL(other)), other)
    for (const bad of ["main\u009b2J", "ma\u202ein", "a\u2066b"]) {
      assert.isFalse(Hub.isRevision(bad), JSON.stringify(bad))
      assert.isFalse(Hub.isRepoFile(`${bad}.gguf`), JSON.stringify(bad))
    }
    assert.strictEqual(Hub.parseResolveUrl(new URL(`https://huggingface.co/o/r/resolve/%C2%9B2J/f.gguf`), new URL("https://huggingface.co"))._tag, "None")
  })

  it("commitOf: a 40-hex sha, else hub_error", () => {
    assert.strictEqual(Either.getOrThrow(Hub.commitOf({ sha: COMMIT })), COMMIT)
    for (const bad of [null, [], {}, { sha: "main" }, { sha: COMMIT.toUpperCase() }, { sha: 7 }]) assert.strictEqual(reason(Hub.commitOf(bad)), "hub_error")
  })

  it("lfsOf reads paths-info, tree and siblings shapes; refuses what they do not say", () => {
    const lfs = { sha256: SHA, sizeBytes: 10 }
    assert.deepStrictEqual(Either.getOrThrow(Hub.lfsOf([{ type: "file", path: "f", size: 10, lfs: { oid: SHA, size: 10 } }], "f")), lfs)
    assert.deepStrictEqual(Either.getOrThrow(Hub.lfsOf({ siblings: [{ rfilename: "f", lfs: { sha256: SHA, size: 10 } }] }, "f")), lfs)
    assert.strictEqual(reason(Hub.lfsOf("nope", "f")), "hub_error")
    assert.strictEqual(reason(Hub.lfsOf([], "f")), "repo_not_found")
    assert.strictEqual(reason(Hub.lfsOf([{ type: "directory", path: "f" }], "f")), "repo_not_found")
    assert.strictEqual(reason(Hub.lfsOf([{ type: "file", path: "f", size: 10 }], "f")), "not_lfs")
    assert.strictEqual(reason(Hub.lfsOf([{ type: "file", path: "f", lfs: { oid: "a".repeat(40), size: 10 } }], "f")), "not_lfs")
    assert.strictEqual(reason(Hub.lfsOf([{ type: "file", path: "f", lfs: { oid: SHA, size: 0 } }], "f")), "not_lfs")
    assert.strictEqual(reason(Hub.lfsOf([{ type: "file", path: "f", size: 11, lfs: { oid: SHA, size: 10 } }], "f")), "hub_disagrees")
  })

  it("crossCheck: a pin only when commit, ETag and size agree", () => {
    const lfs = { sha256: SHA, sizeBytes: 10 }
    const head = { repoCommit: COMMIT, linkedEtag: `W/"${SHA}"`, linkedSize: "10" }
    const ref = { repo: "o/r", file: "f" }
    assert.deepStrictEqual(Either.getOrThrow(Hub.crossCheck(ref, COMMIT, lfs, head)), { repo: "o/r", commit: COMMIT, file: "f", sha256: SHA, sizeBytes: 10 })
    assert.strictEqual(reason(Hub.crossCheck(ref, COMMIT, lfs, { ...head, linkedEtag: undefined })), "not_lfs")
    assert.strictEqual(reason(Hub.crossCheck(ref, COMMIT, lfs, { ...head, linkedSize: undefined })), "not_lfs")
    assert.strictEqual(reason(Hub.crossCheck(ref, COMMIT, lfs, { ...head, repoCommit: "f".repeat(40) })), "hub_disagrees")
    assert.strictEqual(reason(Hub.crossCheck(ref, COMMIT, lfs, { ...head, repoCommit: undefined })), "hub_disagrees")
    assert.strictEqual(reason(Hub.crossCheck(ref, COMMIT, lfs, { ...head, linkedEtag: `"${"0".repeat(64)}"` })), "hub_disagrees")
    for (const size of ["11", "1e1", "-10", "", "0x0a"]) assert.strictEqual(reason(Hub.crossCheck(ref, COMMIT, lfs, { ...head, linkedSize: size })), "hub_disagrees", size)
    // As huggingface_hub: the ETag when there is no X-Linked-Etag; Content-Length only when not a redirect.
    assert.deepStrictEqual(Hub.headFacts({ etag: `"${SHA}"`, "content-length": "10" }, false), { repoCommit: undefined, linkedEtag: `"${SHA}"`, linkedSize: "10" })
    assert.strictEqual(Hub.headFacts({ "content-length": "0" }, true).linkedSize, undefined)
  })
})

describe("Hub: the boundaries of what a reference may be", () => {
  it("a repository file: not empty, at most 1024 characters, no empty, `.` or `..` segment, none of the printed-unsafe characters", () => {
    assert.isTrue(Hub.isRepoFile("a"))
    assert.isTrue(Hub.isRepoFile("x".repeat(1024)))
    assert.isFalse(Hub.isRepoFile("x".repeat(1025)))
    assert.isFalse(Hub.isRepoFile(""))
    for (const file of ["a//b", "/a", "a/", ".", "..", "a/./b", "a/../b", "./a", "a/.."]) assert.isFalse(Hub.isRepoFile(file), file)
    assert.isTrue(Hub.isRepoFile("a/.b/..c/b..")) // dots inside a name are a name
    for (const bad of ["a\u0000", "a\u001f", "a\u007f", "a\u009f", "a\u202e", "a\u2066", "a\\b", "a%2e", "a?x", "a#x"]) assert.isFalse(Hub.isRepoFile(bad), JSON.stringify(bad))
  })

  it("a revision: not empty, at most 256 characters, no `..`, no control or bidi character, no backslash; a commit is exactly 40 lowercase hex", () => {
    assert.isTrue(Hub.isRevision("main"))
    assert.isTrue(Hub.isRevision("r".repeat(256)))
    assert.isFalse(Hub.isRevision("r".repeat(257)))
    assert.isFalse(Hub.isRevision(""))
    for (const bad of ["a..b", "..", "a\u0000", "a\u202a", "a\\b", "a\u007f"]) assert.isFalse(Hub.isRevision(bad), JSON.stringify(bad))
    const sha = "0123456789abcdef0123456789abcdef01234567"
    assert.isTrue(Hub.isCommit(sha))
    for (const bad of [`x${sha}`, `${sha}x`, sha.slice(1), sha.toUpperCase(), `${sha.slice(0, 39)}g`]) assert.isFalse(Hub.isCommit(bad), bad)
  })

  it("an ETag: spaces, a weak prefix and one pair of quotes dropped, nothing else", () => {
    assert.strictEqual(Hub.normalizeEtag(' W/"abc" '), "abc")
    assert.strictEqual(Hub.normalizeEtag('"abc"'), "abc")
    assert.strictEqual(Hub.normalizeEtag("abc"), "abc")
    assert.strictEqual(Hub.normalizeEtag('xW/"abc"'), 'xW/"abc"')
    assert.strictEqual(Hub.normalizeEtag('"abc"d'), '"abc"d')
    assert.strictEqual(Hub.normalizeEtag('d"abc"'), 'd"abc"')
  })

  it("a resolve URL is read only whole, on the hub's origin", () => {
    const hub = new URL("https://huggingface.co/")
    const sha = "0123456789abcdef0123456789abcdef01234567"
    const ok = Hub.parseResolveUrl(new URL(`https://huggingface.co/org/repo/resolve/${sha}/dir/m.gguf`), hub)
    assert.deepStrictEqual(Option.getOrUndefined(ok), { repo: "org/repo", revision: sha, file: "dir/m.gguf" })
    assert.deepStrictEqual(Option.getOrUndefined(Hub.parseResolveUrl(new URL(`https://huggingface.co/repo/resolve/main/m.gguf`), hub)), { repo: "repo", revision: "main", file: "m.gguf" })
    for (const path of [`/x/org/repo/resolve/${sha}/m.gguf`, `/org/repo/blob/${sha}/m.gguf`, `/org/repo/resolve/${sha}/`, `/org/repo/resolve//m.gguf`]) {
      assert.isTrue(Option.isNone(Hub.parseResolveUrl(new URL(`https://huggingface.co${path}`), hub)), path)
    }
    assert.isTrue(Option.isNone(Hub.parseResolveUrl(new URL(`https://evil.example/org/repo/resolve/${sha}/m.gguf`), hub)))
  })
})
