/**
 * uffd: Linux userfaultfd for Deno and Bun. Handle page faults of your own memory in
 * user space: lazy restore, dirty tracking, zero-copy page placement.
 *
 * @example
 * ```ts
 * import { Mapping, pageSize, Userfaultfd } from "@uffd/userfaultfd";
 * using uffd = Userfaultfd.open();
 * using mem = Mapping.anonymous(4 * pageSize);
 * uffd.register(mem);
 * uffd.zeropage({ start: mem.start, len: pageSize });
 * ```
 *
 * @module
 */
export {
  FEATURE_NAMES,
  featureBit,
  type FeatureName,
  featureNames,
  ioctl,
  type IoctlName,
  ioctlNames,
  UFFD_EVENT,
} from "./src/abi.ts";
export { ERRNO, errnoName, type ErrorSource, UffdError, type UffdErrorOptions } from "./src/errors.ts";
export {
  decodeEvent,
  EventBuffer,
  type ForkEvent,
  type PagefaultEvent,
  type PagefaultKind,
  type RangeEvent,
  type RemapEvent,
  type UffdEvent,
} from "./src/events.ts";
export {
  alignedSharedBytes,
  type AnonymousOptions,
  freeHugePages,
  hugePageSize,
  Mapping,
  type MappingKind,
  type MemfdOptions,
  pageSize,
} from "./src/memory.ts";
export {
  PAGE_IS,
  type PagemapEntry,
  PagemapScanner,
  type PageRegion,
  PM_SCAN_CHECK_WPASYNC,
  PM_SCAN_WP_MATCHING,
  type ScanOptions,
} from "./src/pagemap.ts";
export {
  type ContinueOptions,
  type CopyOptions,
  type DontwakeRange,
  type MoveOptions,
  type OpenOptions,
  type OpenVia,
  type ProbeResult,
  type Range,
  rawIoctl,
  type ReadOptions,
  type RegisterOptions,
  type RegisterResult,
  Userfaultfd,
  type WriteprotectOptions,
} from "./src/userfaultfd.ts";
export {
  type ErrorPolicy,
  FaultServer,
  type FaultServerOptions,
  type FaultServerState,
  type FaultServerStats,
  type FillFunction,
  type PageSource,
  type Placement,
  type RemoteRange,
  type RemoteRegion,
} from "./src/server/fault_server.ts";
export { dataExtents } from "./src/server/sources.ts";
export {
  checkWorkingSet,
  formatWorkingSet,
  loadWorkingSet,
  parseWorkingSet,
  saveWorkingSet,
  type WorkingSet,
  workingSetPages,
} from "./src/server/working_set.ts";
export { recvFd, sendFd, socketPair } from "./src/fdpass.ts";
export {
  connectUnix,
  hungUp,
  peerCredentials,
  type ReceivedMessage,
  recvMessage,
  sendMessage,
  UnixListener,
  waitReadable,
  waitReadableAsync,
  watchHangUp,
} from "./src/unix.ts";
export {
  FIRECRACKER_PAGE_SIZES,
  FirecrackerListener,
  type FirecrackerRegion,
  type FirecrackerServeOptions,
  FirecrackerSession,
  type FirecrackerSummary,
  type Handshake,
  MAX_HANDSHAKE_FDS,
  parseRegions,
  readHandshake,
} from "./src/firecracker.ts";
export { type RebaseResult, rebaseSnapshot } from "./src/rebase.ts";
export {
  type ChunkDigests,
  DEFAULT_CHUNK,
  DirtyTracker,
  inspectSnapshot,
  type LayerInfo,
  type LayerReport,
  MANIFEST,
  MAX_PASSES,
  readManifest,
  rebaseSnapshotDir,
  restore,
  type RestoredMemory,
  type RestoreOptions,
  snapshot,
  type SnapshotManifest,
  type SnapshotReport,
  type SnapshotTarget,
  type TrackOptions,
  verifyAll,
} from "./src/snapshot/mod.ts";
export { type SnapshotChecksums } from "./src/server/sources.ts";
export { openUrlSource, type UrlPageSource, type UrlSourceOptions } from "./src/server/url.ts";
