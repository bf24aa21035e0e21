import test from 'ava';
import { validateSetting, resolveSettings, parseSetOptions } from '../../client-agent/settings.js';
import type { Manifest } from '../../format/index.js';

// a real ed25519 public key line (generated for this test)
const KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBJqRCGpQXYEvvN2xu3HgHFWp4oeW6J7rTLxqxwVTqQm ops@site';

const good: [Parameters<typeof validateSetting>[1], string, string][] = [
  ['hostname', 'TS-01.Example.org.', 'ts-01.example.org'],
  ['ip', '192.0.2.10', '192.0.2.10'],
  ['ip', '2001:db8::1', '2001:db8::1'],
  ['cidr', '192.0.2.10/24', '192.0.2.10/24'],
  ['cidr', '2001:db8::5/64', '2001:db8::5/64'],
  ['ip-list', '192.0.2.1, 192.0.2.2 2001:db8::53', '192.0.2.1,192.0.2.2,2001:db8::53'],
  ['url', 'https://broker.example.org:8443/rdp', 'https://broker.example.org:8443/rdp'],
  ['port', '3389', '3389'],
  ['boolean', 'yes', 'true'],
  ['boolean', 'OFF', 'false'],
  ['users', 'alice, bob', 'alice,bob'],
  ['ssh-keys', `# comment\n${KEY}\n\n`, KEY],
  ['string', 'anything at all', 'anything at all'],
];
for (const [type, input, want] of good) {
  test(`setting ${type} accepts ${JSON.stringify(input)}`, (t) => {
    t.is(validateSetting('x', type, input), want);
  });
}

const bad: [Parameters<typeof validateSetting>[1], string, RegExp][] = [
  ['hostname', '-bad-', /not a host name/],
  ['hostname', 'a_b', /not a host name/],
  ['hostname', 'x'.repeat(64), /not a host name/],
  ['ip', '192.0.2.300', /not an IPv4/],
  ['cidr', '192.0.2.1', /address\/prefix/],
  ['cidr', '192.0.2.1/33', /too long/],
  ['ip-list', '192.0.2.1,nope', /"nope"/],
  ['url', 'broker', /not an absolute URL/],
  ['port', '0', /port number/],
  ['port', '65536', /port number/],
  ['boolean', 'maybe', /true or false/],
  ['users', 'Root', /not a user name/],
  ['users', 'a,a', /twice/],
  ['ssh-keys', 'ssh-ed25519 AAAAnotakey', /damaged/],
  ['ssh-keys', 'ssh-foo AAAAC3NzaC1lZDI1NTE5', /unknown key type/],
  ['ssh-keys', KEY.replace('AAAAC3NzaC1lZDI1NTE5', 'AAAAB3NzaC1yc2EAAAA'), /damaged|does not match/],
  ['string', 'a\0b', /NUL/],
];
for (const [type, input, re] of bad) {
  test(`setting ${type} refuses ${JSON.stringify(input.slice(0, 30))}`, (t) => {
    const err = t.throws(() => validateSetting('net.x', type, input));
    t.is((err as { code?: string }).code, 'USAGE');
    t.regex(err!.message, /^setting net\.x: invalid /);
    t.regex(err!.message, re);
  });
}

const declared: Manifest['settings'] = {
  hostname: { type: 'hostname', required: true },
  'broker.url': { type: 'url', default: 'https://broker.invalid/' },
  'ssh.authorized_keys': { type: 'ssh-keys' },
};

test('resolveSettings: defaults, overrides, canonical values', (t) => {
  t.deepEqual(resolveSettings(declared, { hostname: 'TS1' }, 'img 1'), { hostname: 'ts1', 'broker.url': 'https://broker.invalid/' });
  t.deepEqual(resolveSettings(declared, { hostname: 'ts1', 'broker.url': 'http://b:8080' }, 'img 1')['broker.url'], 'http://b:8080/');
});

test('resolveSettings: an unknown setting names what the image accepts', (t) => {
  const err = t.throws(() => resolveSettings(declared, { hostname: 'a', hostnme: 'b' }, 'sbc 1.2'));
  t.regex(err!.message, /setting hostnme: unknown setting "hostnme"; sbc 1\.2 accepts broker\.url, hostname, ssh\.authorized_keys/);
});

test('resolveSettings: a missing required setting is an error', (t) => {
  const err = t.throws(() => resolveSettings(declared, {}, 'sbc 1.2'));
  t.regex(err!.message, /setting hostname: required by sbc 1\.2/);
});

test('--set parsing', (t) => {
  t.deepEqual(parseSetOptions(['a=1', 'b.c=x=y', 'd=']), { a: '1', 'b.c': 'x=y', d: '' });
  t.throws(() => parseSetOptions(['novalue']), { message: /--set: expected key=value/ });
});
