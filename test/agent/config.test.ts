import test from 'ava';
import { mkdtemp, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig, parseSize, defaultBackend } from '../../client-agent/config.js';

const FPR = 'ab'.repeat(20);

async function withConfig(t: import('ava').ExecutionContext, text: string) {
  const dir = await mkdtemp(join(tmpdir(), 'agent-cfg-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'agent.yaml');
  await writeFile(path, text);
  return path;
}

test('a full config parses, with defaults filled in', async (t) => {
  const path = await withConfig(t, `
repos: [http://127.0.0.1:8080/, /srv/mirror]
trust: { root_fingerprint: "${FPR.toUpperCase().match(/.{4}/g)!.join(' ')}" }
backend: qemu
appliances:
  - name: sbc-desktop
    channel: stable
    settings: { hostname: ts1, network.dns: [192.0.2.1, 192.0.2.2] }
    data_size: 4G
  - name: tiny
    version: 1.0.0
    xen: { bridge: br-lan, memory: 512, tsc_mode: native }
report: { url: "http://127.0.0.1:9/report", token: t0k, site: lab }
daemon: { interval_s: 600 }
`);
  const c = await loadConfig(path);
  t.deepEqual(c.repos, ['http://127.0.0.1:8080/', '/srv/mirror']);
  t.is(c.trust.root_fingerprint, FPR); // spaces removed, lowercased
  t.is(c.appliances[0].data_size, '4G');
  t.true(c.appliances[0].autostart);
  t.is(c.daemon.interval_s, 600);
  t.is(c.daemon.jitter_s, 120);
  t.is(c.health_timeout_s, 300);
  t.deepEqual(c.appliances[1].xen, { bridge: 'br-lan', memory: 512, tsc_mode: 'native' });
});

const bad: [string, string, RegExp][] = [
  ['unknown top-level field', `repos: [http://a/]\ntrust: {root_fingerprint: ${FPR}}\nrepo: x\n`, /agent\.yaml: .*(top level|repo)/],
  ['misspelt appliance field', `repos: [http://a/]\ntrust: {root_fingerprint: ${FPR}}\nappliances: [{name: a, chanel: stable}]\n`, /appliances\.0.*chanel/],
  ['bad fingerprint', `repos: [http://a/]\ntrust: {root_fingerprint: 1234}\n`, /trust\.root_fingerprint/],
  ['both pins', `repos: [http://a/]\ntrust: {root_fingerprint: ${FPR}, root_key_file: /k}\n`, /trust.*exactly one/],
  ['no pin', `repos: [http://a/]\ntrust: {}\n`, /trust.*exactly one/],
  ['no repos', `repos: []\ntrust: {root_fingerprint: ${FPR}}\n`, /repos: at least one/],
  ['ftp repo', `repos: [ftp://a/]\ntrust: {root_fingerprint: ${FPR}}\n`, /repos\.0: expected an http/],
  ['channel and version', `repos: [http://a/]\ntrust: {root_fingerprint: ${FPR}}\nappliances: [{name: a, channel: stable, version: "1"}]\n`, /appliances\.0\.version: give either/],
  ['bad data size', `repos: [http://a/]\ntrust: {root_fingerprint: ${FPR}}\nappliances: [{name: a, data_size: lots}]\n`, /appliances\.0\.data_size/],
  ['duplicate appliance', `repos: [http://a/]\ntrust: {root_fingerprint: ${FPR}}\nappliances: [{name: a}, {name: a}]\n`, /listed twice/],
  ['bad bridge', `repos: [http://a/]\ntrust: {root_fingerprint: ${FPR}}\nappliances: [{name: a, xen: {bridge: "br lan; rm"}}]\n`, /appliances\.0\.xen\.bridge/],
  ['bad tsc_mode', `repos: [http://a/]\ntrust: {root_fingerprint: ${FPR}}\nappliances: [{name: a, xen: {tsc_mode: fast}}]\n`, /appliances\.0\.xen\.tsc_mode/],
  ['bad backend', `repos: [http://a/]\ntrust: {root_fingerprint: ${FPR}}\nbackend: kvm\n`, /backend/],
  ['bad appliance name', `repos: [http://a/]\ntrust: {root_fingerprint: ${FPR}}\nappliances: [{name: "../etc"}]\n`, /appliances\.0\.name/],
  ['not YAML', `repos: [http://a/\n  : :`, /not valid YAML/],
  ['duplicate key', `repos: [http://a/]\nrepos: [http://b/]\ntrust: {root_fingerprint: ${FPR}}\n`, /not valid YAML/],
];

for (const [what, text, re] of bad) {
  test(`config error: ${what} names the file and the field`, async (t) => {
    const path = await withConfig(t, text);
    const err = await t.throwsAsync(loadConfig(path));
    t.is((err as { code?: string }).code, 'CONFIG_INVALID');
    t.true(err!.message.startsWith(path), err!.message);
    t.regex(err!.message, re);
  });
}

test('a missing config file says to run init', async (t) => {
  const err = await t.throwsAsync(loadConfig('/nonexistent/agent.yaml'));
  t.regex(err!.message, /\/nonexistent\/agent\.yaml: no such file.*init/);
});

test('sizes', (t) => {
  t.is(parseSize('512M'), 512 * 1024 ** 2);
  t.is(parseSize('4G'), 4 * 1024 ** 3);
  t.is(parseSize('10GiB'), 10 * 1024 ** 3);
  t.is(parseSize('1048576'), 1048576);
  t.is(parseSize(4096), 4096);
  t.throws(() => parseSize('0'), { message: /size/ });
  t.throws(() => parseSize('-1G'));
  t.throws(() => parseSize('1.5G'));
});

test('default backend: xl only on a Xen dom0', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'agent-path-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'xl'), '#!/bin/sh\n', { mode: 0o755 });
  t.is(defaultBackend({ PATH: dir }, dir), 'xl');
  t.is(defaultBackend({ PATH: dir }, join(dir, 'no-proc-xen')), 'qemu');
  t.is(defaultBackend({ PATH: '/nonexistent' }, dir), 'qemu');
});

test('init updates only its fields: comments and other settings stay, defaults are not written, appending works', async (t) => {
  const { updateConfigFile } = await import('../../client-agent/config.js');
  const path = await withConfig(t, `# site 42, managed by preseed\nappliances:\n  - name: sbc # the desktop\n    channel: stable\n`);
  await updateConfigFile(path, { repos: ['http://127.0.0.1:1/'], trust: { root_fingerprint: FPR }, backend: 'qemu' });
  const text = await (await import('node:fs/promises')).readFile(path, 'utf8');
  t.regex(text, /# site 42, managed by preseed/);
  t.regex(text, /# the desktop/);
  t.notRegex(text, /health_timeout_s|daemon|fetch_concurrency/);
  // what a provisioning script does next: append top-level keys
  await (await import('node:fs/promises')).appendFile(path, 'health_timeout_s: 420\nreport:\n  url: http://127.0.0.1:2/\n  site: s\n');
  const c = await loadConfig(path);
  t.is(c.health_timeout_s, 420);
  t.is(c.appliances[0].name, 'sbc');
  t.is(c.backend, 'qemu');
  // an update that would make the file invalid is refused and the file is left as it was
  await t.throwsAsync(updateConfigFile(path, { repos: [] }), { message: /repos: at least one/ });
  t.is((await loadConfig(path)).repos[0], 'http://127.0.0.1:1/');
});
