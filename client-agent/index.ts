// The client agent's public API.
export { Agent, AGENT_VERSION, parseNameSpec, type AgentDeps, type ApplianceStatus } from './agent.js';
export { register } from './cli.js';
export { loadConfig, parseConfig, updateConfigFile, parseSize, AgentConfigSchema, DEFAULT_CONFIG, DEFAULT_STATE_DIR, type AgentConfig } from './config.js';
export { StateDir } from './state.js';
export { installVersion, planChunks, writeSparse, type ChunkSource, type InstallResult, type VerifiedManifest } from './install.js';
export { validateSetting, resolveSettings, parseSetOptions, type Settings } from './settings.js';
export { planHostFiles, writeHostSettings, SETTING } from './configure.js';
export { withMountedImage, cleanStale } from './mount.js';
export { waitReady } from './health.js';
export { verifyVersionDir, checkBlob } from './verify.js';
export { XlBackend, renderXlConfig } from './backends/xl.js';
export { QemuBackend, qemuArgs, qemuCmdline } from './backends/qemu.js';
export { stableMac, type Backend, type DomainSpec } from './backends/types.js';
export { defaultExec, type Exec } from './exec.js';
