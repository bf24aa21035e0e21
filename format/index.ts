// The repository format's public API: used by builder, repo-server and client-agent.
export * from './errors.js';
export { LIMITS, BLOCK_SIZE, zstdCompressBound } from './limits.js';
export {
  SPEC_VERSION, RootSchema, IndexSchema, ManifestSchema, parseMetadata, serialize, describeIssues, printable, compareVersions, latestVersion,
  imageName, imageVersion, channelName, settingType, bridgeName, oneLine, asOneLine, repositoryId, siteName, groupName, rolloutId, PVH_MAX_VCPUS, PV_MAX_CMDLINE_BYTES,
  type Root, type Rollout, type RolloutStage, type Index, type IndexImage, type IndexVersion, type Manifest, type Chunk, type Blob, type SettingType, type MetadataKind, type RoleName,
} from './schema.js';
export * from './paths.js';
export { sha256Hex, compressChunk, decodeChunk, DEFAULT_ZSTD_LEVEL } from './codec.js';
export { chunkFile, IMAGE_CHUNKING, FILE_CHUNKING, type ChunkerOptions, type RawChunk } from './chunker.js';
export { ChunkStore } from './chunkstore.js';
// the one atomic writer lives in base/ (keys/, below format/, uses it too); here for format's users
export { writeFileAtomic, fsyncDir } from '../base/atomic.js';
export { createPackage, readPackage, writePackageTar, manifestChunks, MANIFEST_ENTRY, SIGNATURE_ENTRY, type CreatePackageOptions, type CreatedPackage, type PackageStats, type ReadPackageResult } from './package.js';
export { packLayout, planPackRanges, readPackRange, splitPackRange, frameWhere, writePack, type PackEntry, type PackLayout, type PackRange } from './pack.js';
export { RepositoryWriter, WRITER_DIR, type PublishResult, type RepositoryWriterOptions } from './writer.js';
export { createFetcher, HttpFetcher, DirFetcher, displayUrl, type Fetcher, type HttpFetcherOptions } from './fetcher.js';
export { RepoClient, verifyIndex, verifyManifest, checkNotExpired, type RootPin, type UpdateResult, type Resolved } from './client.js';
export { roleKeys, verifyRole, verifyRootSignature, verifyManifestSignature, verifyRootTransition, checkSameRepository } from './trust.js';
export { parallel, Semaphore } from './parallel.js';
export { holdKey, holdFor, holdHost, releaseHost, type Hold } from './holds.js';
export { parseWindow, parseWindows, checkTimeZone, localTimeZone, isOpen, nextOpening, describeTime, type MaintenanceWindow } from './windows.js';
export {
  rolloutBucket, openStage, nextStage, placeHost, parseStages, parseDuration, startRollout, pauseRollout, resumeRollout, abortRollout, finishRollout,
  dropRollout, shouldHalt, DEFAULT_HALT, type HostPlace, type Placement, type StageSpec, type StartRollout,
} from './rollout.js';
export { exportPackage, mirrorRepository, type ExportOptions, type MirrorOptions, type MirrorResult } from './export.js';
