// The real-Xen acceptance suite (test/xen): the second half of `npm test`, after the main
// suite (never beside it: it boots Xen + dom0 + domUs under TCG on the same 2 cores, ~10-11 min
// quiet with its caches warm, 2-3x that on a busy machine). `npm run test:xen` runs it alone.
export default {
  extensions: { ts: 'module' },
  nodeArguments: ['--import=tsx'],
  files: ['test/xen/**/*.test.ts'],
  timeout: '90m',
  concurrency: 1,
  workerThreads: false,
};
