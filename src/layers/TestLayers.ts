/**
 * Everything the RuntimeManager needs, in memory: a file system, POSIX paths, and scriptable
 * downloader, spawner, health probe and resource stat, each with its control service.
 */
import { Path } from "@effect/platform"
import { Layer } from "effect"
import * as DownloaderTest from "./DownloaderTest.js"
import * as HealthProbeTest from "./HealthProbeTest.js"
import * as MemoryFileSystem from "./MemoryFileSystem.js"
import * as ResourceStatTest from "./ResourceStatTest.js"
import * as SpawnerTest from "./SpawnerTest.js"

export const layer = Layer.mergeAll(
  MemoryFileSystem.layer,
  Path.layer,
  DownloaderTest.layer,
  SpawnerTest.layer,
  HealthProbeTest.layer,
  ResourceStatTest.layer
)
