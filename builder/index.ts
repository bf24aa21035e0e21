// The builder's public API: recipes in, images and signed packages out.
export { build, preflight, REQUIRED_TOOLS, chooseEpoch, snapshotMirror, builderVersion, type BuildOptions, type BuildResult, type BuildOutput, type BuildReporter, type StageName } from './build.js';
export { loadRecipe, parseRecipe, recipeDigest, RecipeSchema, RecipeError, kernelCmdline, parseSize, type Recipe, type LoadedRecipe } from './recipe.js';
export { readAptSources, parseDeb822Sources, parseOneLineSources, pickMirror, resolveMirror, type AptSource } from './apt-sources.js';
export { BootstrapCache, cacheKey, DEFAULT_CACHE_DIR, type BootstrapKey } from './cache.js';
export { withChroot, guardDirectory, mountsUnder, unmountAll } from './chroot.js';
export { defaultExec, type Exec, type ExecOptions } from './exec.js';
export { imageUuid, imageSize } from './image.js';
export { register } from './cli.js';
