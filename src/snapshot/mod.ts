/**
 * Snapshots of a program's own memory (Mappings, WebAssembly.Memory, raw ranges): capture,
 * incremental diffs from dirty tracking, lazy or eager restore, inspect and rebase.
 * @module
 */
export {
  DEFAULT_CHUNK,
  DirtyTracker,
  MAX_PASSES,
  snapshot,
  type SnapshotTarget,
  type TrackOptions,
} from "./capture.ts";
export { type LayerInfo, MANIFEST, readManifest, type SnapshotManifest } from "./manifest.ts";
export {
  inspectSnapshot,
  type LayerReport,
  rebaseSnapshotDir,
  restore,
  type RestoredMemory,
  type RestoreOptions,
  type SnapshotReport,
  verifyAll,
} from "./restore.ts";
export { type ChunkDigests } from "./digest.ts";
