// The trust boundary at the host: ways through it that an outside hostile suite found, one
// test each; each failed on the code before its fix. They drive the agent on copies of the
// hostile harness's template host (sbc 1.0.0 running in a fake xl backend). The format-level
// ones (signature times, root keys, mirrors, repository ids) are in trust-format.test.ts.
import test, { type ExecutionContext } from 'ava';
import { readFile, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { sigPath, indexHistoryPath, RepositoryWriter, type Index } from '../../format/index.js';
import { signRoot, buildRoot } from '../../keys/index.js';
import {
  buildWorld, hostileServer, context, copyHost, hostConfig, hashTree, runningBackend, agentFor, fileSha, type World, type Host,
} from './harness.js';

async function rejects(t: ExecutionContext, p: Promise<unknown>, code: string, message: RegExp) {
  const err = (await t.throwsAsync(p)) as Error & { code?: string };
  t.is(err?.code, code, err?.message);
  t.regex(err?.message ?? '', message);
  return err;
}

// ---------- the host: trust moves forward only ----------

const worldP = buildWorld();
test.after.always(async () => (await worldP.catch(() => null))?.cleanup());

let seq = 0;
async function hostileTree(w: World, f: (ctx: ReturnType<typeof context>) => Promise<void>) {
  const tree = join(w.dir, 'trees', `tb${++seq}`);
  await mkdir(join(w.dir, 'trees'), { recursive: true });
  await execa('cp', ['-a', w.repoDir, tree]);
  const ctx = context(w, tree);
  await f(ctx);
  return { ctx, server: await hostileServer(tree) };
}

async function hostFor(w: World, t: ExecutionContext, name: string): Promise<Host> {
  const host = await copyHost(w, `${name}-${++seq}`);
  return host;
}

test('init again with the same pin keeps the trusted root and the rollback floor: an old genuine index is still refused', async (t) => {
  const w = await worldP;
  const host = await hostFor(w, t, 'reinit');
  const floor = await readFile(join(host.stateDir, 'trust', 'index-version'), 'utf8');
  const trusted = await readFile(join(host.stateDir, 'trust', 'root.json'));
  const { server } = await hostileTree(w, async (c) => {
    await c.write('index.json', await c.read(indexHistoryPath(3)));
    await c.write('index.json.asc', await c.read(sigPath(indexHistoryPath(3))));
  });
  t.teardown(server.close);
  const agent = agentFor(host, runningBackend(w, host));
  const r = await agent.init({ repos: [server.url], rootKeyFile: join(w.templateHost, 'root.asc') });
  t.like(r, { kept: true, reset: null, repository: w.repository });
  t.is(await readFile(join(host.stateDir, 'trust', 'index-version'), 'utf8'), floor, 'the rollback floor is kept');
  t.deepEqual(await readFile(join(host.stateDir, 'trust', 'root.json')), trusted, 'the trusted root is kept');
  await rejects(t, agentFor(host, runningBackend(w, host)).upgrade('sbc'), 'ROLLBACK', /index\.json: index version 3 is older than version/);
});

test('init with the pin of another repository needs --force, changes nothing without it, and says what it resets', async (t) => {
  const w = await worldP;
  const host = await hostFor(w, t, 'repin');
  // the team's second repository, from the same key store: same root key, another repository id
  const other = join(w.dir, `other-repo-${++seq}`);
  await RepositoryWriter.init(other, await signRoot(await buildRoot(w.keystore, 1), w.rootKeys), { indexKeys: w.indexKeys });
  const before = await hashTree(host.dir);
  const agent = agentFor(host, runningBackend(w, host));
  const err = await rejects(t, agent.init({ repos: [other], rootKeyFile: join(w.templateHost, 'root.asc') }), 'USAGE', /trusts another repository already; init --force replaces the trusted root \(repository [0-9a-f]{32}, root version 1\) and the rollback floor \(index version \d+\)/);
  t.regex(err.message, /trust\/root\.json/);
  t.deepEqual((await hashTree(host.dir)).files, before.files, 'config and state untouched');
  const r = await agentFor(host, runningBackend(w, host)).init({ repos: [other], rootKeyFile: join(w.templateHost, 'root.asc'), force: true });
  t.false(r.kept);
  t.regex(r.reset ?? '', /rollback floor \(index version \d+\)/);
  t.not(r.repository, w.repository);
  t.false(await readFile(join(host.stateDir, 'trust', 'index-version')).then(() => true, () => false), 'the floor was reset');
});

// ---------- downgrades need the host's consent ----------

test('a channel moved back to an older version (one online key or token) does not downgrade the host; agent.yaml can allow it', async (t) => {
  const w = await worldP;
  const host = await hostFor(w, t, 'downgrade');
  const backend = runningBackend(w, host);
  await hostConfig(host.dir, [w.goodServer.url]);
  t.like((await agentFor(host, backend).upgrade('sbc'))[0], { from: '1.0.0', to: '2.0.0', status: 'upgraded' });
  // stable -> 1.0.0, validly signed by the index keys: what a stolen publisher token gets the server to sign
  const { server } = await hostileTree(w, async (c) => {
    const index: Index = await c.index();
    index.images.sbc.channels.stable = '1.0.0';
    index.version += 1;
    await c.writeIndex(index);
  });
  t.teardown(server.close);
  await hostConfig(host.dir, [server.url]);
  const starts = backend.starts.length;
  const logs: string[] = [];
  const r = await agentFor(host, backend, { logs }).upgrade('sbc');
  t.like(r[0], { name: 'sbc', from: '2.0.0', to: '1.0.0', status: 'held' });
  t.regex(r[0].message ?? '', /channel stable names 1\.0\.0, older than the installed 2\.0\.0: not downgrading.*allow_downgrade/);
  t.is(backend.running.get('sbc')?.version, '2.0.0', '2.0.0 still runs');
  t.is(backend.starts.length, starts, 'nothing was started');
  t.true(logs.some((l) => /not downgrading/.test(l)), logs.join('\n'));
  const state = JSON.parse(await readFile(join(host.stateDir, 'state.json'), 'utf8'));
  t.regex(state.appliances.sbc.last_error, /not downgrading/, 'the fleet report will say why');

  // the channel back on the installed version: up to date, and the held message goes
  const { server: back } = await hostileTree(w, async (c) => {
    const index: Index = await c.index();
    index.version += 2;
    await c.writeIndex(index);
  });
  t.teardown(back.close);
  await hostConfig(host.dir, [back.url]);
  t.like((await agentFor(host, backend).upgrade('sbc'))[0], { from: '2.0.0', to: '2.0.0', status: 'up-to-date' });
  t.is(JSON.parse(await readFile(join(host.stateDir, 'state.json'), 'utf8')).appliances.sbc.last_error, null, 'the held message cleared');
  const { server: again } = await hostileTree(w, async (c) => {
    const index: Index = await c.index();
    index.images.sbc.channels.stable = '1.0.0';
    index.version += 3;
    await c.writeIndex(index);
  });
  t.teardown(again.close);
  await hostConfig(host.dir, [again.url]);

  // the host's own word: allow_downgrade for this appliance
  await writeFile(host.configPath, (await readFile(host.configPath, 'utf8')).replace('    channel: stable\n', '    channel: stable\n    allow_downgrade: true\n'));
  t.like((await agentFor(host, backend).upgrade('sbc'))[0], { from: '2.0.0', to: '1.0.0', status: 'upgraded' });
  t.is(backend.running.get('sbc')?.version, '1.0.0');
});

test('a version the backend would refuse is found before the running version is stopped', async (t) => {
  const w = await worldP;
  const host = await hostFor(w, t, 'plan');
  const backend = runningBackend(w, host);
  backend.invalid.add('2.0.0');
  await hostConfig(host.dir, [w.goodServer.url]);
  const v1disk = await fileSha(join(host.stateDir, 'appliances', 'sbc', '1.0.0', 'disk.img'));
  await rejects(t, agentFor(host, backend).upgrade('sbc'), 'CONFIG_INVALID', /sbc 2\.0\.0 cannot be booted here: fake: sbc 2\.0\.0 refused/);
  t.deepEqual([backend.stops.length, backend.starts.length], [0, 0], 'the running appliance was not touched');
  t.is(backend.running.get('sbc')?.version, '1.0.0');
  t.is(await fileSha(join(host.stateDir, 'appliances', 'sbc', '1.0.0', 'disk.img')), v1disk);
  t.true(backend.validated.some((s) => s.version === '2.0.0'));
});

// ---------- host settings: a broken agent.yaml is an error, never silently ignored ----------

test('a broken agent.yaml stops configure with an error naming the file and field; status works on a host with none', async (t) => {
  const w = await worldP;
  const host = await hostFor(w, t, 'badcfg');
  const backend = runningBackend(w, host);
  backend.running.delete('sbc'); // stopped: configure may mount it
  await writeFile(host.configPath, (await readFile(host.configPath, 'utf8')).replace('    channel: stable\n', '    channel: stable\n    autostart: maybe\n'));
  const before = await hashTree(host.dir);
  await rejects(t, agentFor(host, backend).configure('sbc'), 'CONFIG_INVALID', /agent\.yaml: .*appliances\.0\.autostart/);
  t.deepEqual((await hashTree(host.dir)).files, before.files, 'nothing configured without the host settings');
  const bare = agentFor({ ...host, configPath: join(host.dir, 'no-such-agent.yaml') }, backend);
  t.deepEqual((await bare.status()).map((a) => a.name), ['sbc']);
});


test('an installed version missing a boot file is refused before the running version is stopped, naming the file', async (t) => {
  const w = await worldP;
  const host = await hostFor(w, t, 'bootfiles');
  const backend = runningBackend(w, host);
  await hostConfig(host.dir, [w.goodServer.url]);
  // 2.0.0 installed beside the running 1.0.0, then damaged
  await agentFor(host, backend).install('sbc@2.0.0', { start: false });
  const kernel = join(host.stateDir, 'appliances', 'sbc', '2.0.0', 'kernel');
  await execa('rm', [kernel]);
  const stops = backend.stops.length;
  await rejects(t, agentFor(host, backend).upgrade('sbc'), 'IO', new RegExp(`${kernel.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: missing: sbc 2\\.0\\.0 cannot be booted without it`));
  t.is(backend.stops.length, stops, 'nothing was stopped');
  t.is(backend.running.get('sbc')?.version, '1.0.0');
});

test('an unreadable trust root stops init with an error naming it; only --force replaces it, saying so', async (t) => {
  const w = await worldP;
  const host = await hostFor(w, t, 'badroot');
  const rootFile = join(host.stateDir, 'trust', 'root.json');
  await writeFile(rootFile, '{"type": "loopship/root"');
  const before = await hashTree(host.dir);
  const opts = { repos: [w.goodServer.url], rootKeyFile: join(w.templateHost, 'root.asc') };
  await rejects(t, agentFor(host, runningBackend(w, host)).init(opts), 'METADATA_INVALID', /trust\/root\.json: not valid JSON/);
  t.deepEqual((await hashTree(host.dir)).files, before.files, 'nothing changed without --force');
  const r = await agentFor(host, runningBackend(w, host)).init({ ...opts, force: true });
  t.like(r, { kept: false, repository: w.repository });
  t.regex(r.reset ?? '', /^the unreadable trusted root and the rollback floor \(index version \d+\)$/);
  t.is(JSON.parse(await readFile(rootFile, 'utf8')).repository, w.repository);
});

// The floor only goes when there is none: a damaged trust/index-version (bit rot, a hand edit,
// a file system repaired by fsck) read as "no floor" let an old genuine index in again.
for (const [what, content] of [['garbage', 'x\n'], ['empty', ''], ['zero', '0\n'], ['negative', '-5\n']] as const) {
  test(`a damaged rollback floor (${what}) is an error naming it, not "no floor": an old genuine index is still refused; init --force resets it, saying so`, async (t) => {
    const w = await worldP;
    const host = await hostFor(w, t, `floor-${what}`);
    const floorFile = join(host.stateDir, 'trust', 'index-version');
    await writeFile(floorFile, content);
    const { server } = await hostileTree(w, async (c) => {
      await c.write('index.json', await c.read(indexHistoryPath(3)));
      await c.write('index.json.asc', await c.read(sigPath(indexHistoryPath(3))));
    });
    t.teardown(server.close);
    await hostConfig(host.dir, [server.url]);
    await rejects(t, agentFor(host, runningBackend(w, host)).upgrade('sbc'), 'METADATA_INVALID', /trust\/index-version: .*not an index version/);
    t.is(await readFile(floorFile, 'utf8'), content, 'left for a human to see');
    const opts = { repos: [w.goodServer.url], rootKeyFile: join(w.templateHost, 'root.asc') };
    await rejects(t, agentFor(host, runningBackend(w, host)).init(opts), 'METADATA_INVALID', /trust\/index-version/);
    const r = await agentFor(host, runningBackend(w, host)).init({ ...opts, force: true });
    t.like(r, { kept: false, repository: w.repository });
    t.regex(r.reset ?? '', /rollback floor \(index version unreadable\)/);
  });
}
