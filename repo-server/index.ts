// Public API of the repository server.
export { createApp, type AppOptions } from './app.js';
export { BufferPool, type PoolStats } from './buffer-pool.js';
export { startServer, type StartOptions, type RunningServer } from './server.js';
export { parseServerConfig, loadServerConfig, DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR, type ServerConfig, type Principal } from './config.js';
export { ReportSchema, ApplianceReportSchema, HEALTH_STATES, FileReportStore, type FleetReport, type ReportInput, type ApplianceReport, type StoredReport, type ReportStore } from './reports.js';
export { FileHostRegistry, parseHostToken, type HostCredentials, type HostIdentity, type Enrolment } from './hosts.js';
export type { PackageWriter } from './api.js';
export { ApiError, type ErrorBody } from './api-error.js';
export { uploadPackage, promoteRemote, remoteError, type PublishResponse, type PromoteResponse } from './client.js';
export { createRepositoryWriter, loadIndexKeys } from './writer.js';
