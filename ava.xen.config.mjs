// `npm run test:xen`: the real-Xen acceptance suite (test/xen), kept out of `npm test`
// because it boots Xen + dom0 + domUs under TCG (45-70 min on a busy 2-core machine).
export default {
  extensions: { ts: 'module' },
  nodeArguments: ['--import=tsx'],
  files: ['test/xen/**/*.test.ts'],
  timeout: '90m',
  concurrency: 1,
  workerThreads: false,
};
