// Where each file lives in the repository tree (relative, '/'-separated). The only
// place that knows the layout: the writer, the server and the verifier all ask here.
import { imageName, imageVersion } from './schema.js';

export const ROOT_FILE = 'root.json';
export const INDEX_FILE = 'index.json';
export const SIG_SUFFIX = '.asc';

export const rootHistoryPath = (version: number): string => `root/${version}.json`;
/** every index version is also kept under its number: readers racing a publish verify against it */
export const indexHistoryPath = (version: number): string => `index/${version}.json`;
export const manifestPath = (sha256: string): string => `manifests/${sha256}.json`;
export const chunkPath = (sha256: string): string => `chunks/${sha256.slice(0, 2)}/${sha256}`;
/** all chunk frames of one version, in manifest order (format/pack.ts); optional, unsigned */
export const packPath = (manifestSha256: string): string => `packs/${manifestSha256}.pack`;
export const sigPath = (path: string): string => path + SIG_SUFFIX;

export function packageFileName(name: string, version: string, arch: string): string {
  return `${imageName.parse(name)}_${imageVersion.parse(version)}_${arch}.tar`;
}
export const packagePath = (name: string, version: string, arch: string): string => `packages/${packageFileName(name, version, arch)}`;

/** Is this a path that can exist in a repository tree? (Used by the server to refuse everything else.) */
export function isRepositoryPath(path: string): boolean {
  return (
    /^(root|index)\.json(\.asc)?$/.test(path) ||
    /^(root|index)\/[1-9][0-9]{0,8}\.json(\.asc)?$/.test(path) ||
    /^manifests\/[0-9a-f]{64}\.json(\.asc)?$/.test(path) ||
    /^chunks\/([0-9a-f]{2})\/\1[0-9a-f]{62}$/.test(path) ||
    /^packs\/[0-9a-f]{64}\.pack$/.test(path) ||
    /^packages\/[a-z0-9][a-z0-9._-]{0,63}_[0-9A-Za-z][0-9A-Za-z.+~_-]{0,63}_[a-z0-9]+\.tar$/.test(path)
  );
}

/** Content-addressed files never change once written: caches may keep them forever. */
export function isImmutablePath(path: string): boolean {
  return path.startsWith('chunks/') || path.startsWith('packs/') || path.startsWith('manifests/') || path.startsWith('root/') || path.startsWith('index/');
}
