// Bundles the compiled agent (dist/) into one ES module and its decode worker (plus a chunk
// for what is loaded on first use), for the .deb.
//
//   [LOOPSHIP_PACKAGE_VERSION=VER] node packaging/bundle-agent.mjs OUTDIR
//
// Why: the unbundled agent loads ~700 files (execa, zod, yaml, openpgp, ... one file each) on
// every start. On a dom0 that is slow to open files (the emulated Xen host of test/xen: seconds
// per start) a start is mostly that. A few files are read and compiled instead.
// The native zstd binding cannot be bundled: it stays a package under OUTDIR/node_modules
// (copied by build-deb.sh), found by the bundle's own require.
// Prints the bundled npm packages' directories (node_modules/NAME), one per line, so that their
// licences go into the package's documentation.
import { build } from 'esbuild';

const [outdir] = process.argv.slice(2);
if (!outdir) {
  console.error('usage: node packaging/bundle-agent.mjs OUTDIR');
  process.exit(2);
}

const result = await build({
  entryPoints: {
    'loopship-agent': 'dist/bin/loopship-agent.js',
    // decode-pool.ts starts it as new URL('./decode-worker.js', import.meta.url): beside the bundle
    'decode-worker': 'dist/client-agent/decode-worker.js',
  },
  outdir,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  external: ['zstd-napi'],
  // what is imported on first use only (openpgp.js, keys/pgp.ts) goes into a chunk file of
  // its own (chunk-HASH.js beside the entries), read only by commands that check signatures
  splitting: true,
  chunkNames: 'chunk-[hash]',
  // CommonJS packages inside an ES module bundle call require() for Node's own modules
  banner: { js: "import { createRequire as __loopshipCreateRequire } from 'node:module'; const require = __loopshipCreateRequire(import.meta.url);" },
  // smaller to read and compile; names kept for readable stack traces
  minifyWhitespace: true,
  minifySyntax: true,
  legalComments: 'none', // the licences themselves are shipped (see above)
  // the package's own version for --version (format/version.ts); unset: package.json's
  define: process.env.LOOPSHIP_PACKAGE_VERSION ? { LOOPSHIP_PACKAGE_VERSION: JSON.stringify(process.env.LOOPSHIP_PACKAGE_VERSION) } : {},
  metafile: true,
  logLevel: 'warning',
});

const packages = new Set();
for (const input of Object.keys(result.metafile.inputs)) {
  const m = /^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(input);
  if (m) packages.add(m[1]);
}
process.stdout.write([...packages].sort().join('\n') + '\n');
