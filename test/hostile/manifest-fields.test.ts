// Signed manifest fields as the programs of dom0 read them: a name is what xl takes as a
// domain, so it must be one xl cannot take for anything else. Fast (no repository, no host).
import test from 'ava';
import { imageName, parseMetadata } from '../../format/index.js';
import { parseConfig } from '../../client-agent/config.js';
import { renderXlConfig } from '../../client-agent/backends/xl.js';
import type { DomainSpec } from '../../client-agent/backends/types.js';
import { baseManifest } from '../helpers/repo.js';

const blob = { size: 4096, chunks: [{ offset: 0, length: 4096, sha256: 'b'.repeat(64), csize: 100 }] };
const manifestBytes = (name: string) => Buffer.from(JSON.stringify({ ...baseManifest(name), image: { ...blob, fs: 'ext4' }, kernel: blob, initrd: null }));

const spec = (name: string): DomainSpec => ({
  name, version: '1.0.0', type: 'pvh', kernel: '/v/kernel', initrd: null, disk: '/v/disk.img', dataDisk: null,
  cmdline: 'root=/dev/xvda ro', memory: 256, vcpus: 1, nics: 0, macs: [],
});

// xl (libxl_domain_qualifier_to_domid) takes an argument of digits only for a domain id: an
// appliance "0" would have `xl shutdown 0`, `xl destroy 3` aim at dom0 or another guest.
for (const name of ['0', '7', '0123']) {
  test(`an image named "${name}" (digits only: a domain id to xl) is refused in a manifest, in agent.yaml and by the xl backend`, (t) => {
    t.is(manifestBytes('sbc').length > 0 && parseMetadata('manifest', manifestBytes('sbc'), 'm').name, 'sbc');
    t.throws(() => parseMetadata('manifest', manifestBytes(name), 'manifests/x.json'), { message: /invalid manifest metadata: name:/ });
    t.false(imageName.safeParse(name).success);
    t.throws(() => parseConfig({ repos: ['/r'], trust: { root_fingerprint: 'a'.repeat(40) }, appliances: [{ name }] }, 'agent.yaml'), { message: /appliances\.0\.name/ });
    t.throws(() => renderXlConfig(spec(name)), { message: /domain id/ });
  });
}

test('names with digits and letters stay good ones', (t) => {
  for (const name of ['sbc', 'sbc2', '7a', 'a7', '0-x', '1.2']) {
    t.true(imageName.safeParse(name).success, name);
    t.notThrows(() => renderXlConfig(spec(name)), name);
  }
});

// Xen builds no PVH (HVM) domain of more than HVM_MAX_VCPUS (128): such a version was taken,
// installed, and refused by xl create only after the running version had been stopped.
test('a pvh manifest of more than 128 vcpus is refused by the schema; agent.yaml\'s vcpus for a pvh domain by the xl backend, before anything stops', (t) => {
  const withVcpus = (type: string, vcpus: number) => {
    const m = JSON.parse(manifestBytes('sbc').toString());
    m.boot.type = type;
    m.xen.vcpus = vcpus;
    return Buffer.from(JSON.stringify(m));
  };
  t.throws(() => parseMetadata('manifest', withVcpus('pvh', 129), 'm'), { message: /xen\.vcpus: a pvh domain has at most 128 vcpus/ });
  t.is(parseMetadata('manifest', withVcpus('pvh', 128), 'm').xen.vcpus, 128);
  t.is(parseMetadata('manifest', withVcpus('pv', 256), 'm').xen.vcpus, 256);
  t.throws(() => renderXlConfig({ ...spec('sbc'), vcpus: 200 }), { message: /vcpus 200: a pvh domain has at most 128/ });
  t.notThrows(() => renderXlConfig({ ...spec('sbc'), type: 'pv', vcpus: 200 }));
});

// A PV guest's command line is start_info.cmd_line[1024]: Xen cuts off what is longer, the
// console=hvc0 the agent appends first, so the ready marker was never seen (an outage, a rollback).
test('a pv command line longer than Xen keeps is refused by the schema; with the console appended, by the xl backend', (t) => {
  const withCmdline = (type: string, cmdline: string) => {
    const m = JSON.parse(manifestBytes('sbc').toString());
    m.boot.type = type;
    m.boot.cmdline = cmdline;
    return Buffer.from(JSON.stringify(m));
  };
  t.throws(() => parseMetadata('manifest', withCmdline('pv', 'x'.repeat(1024)), 'm'), { message: /boot\.cmdline: a pv guest's command line has at most 1023 bytes/ });
  t.throws(() => parseMetadata('manifest', withCmdline('pv', 'é'.repeat(600)), 'm'), { message: /at most 1023 bytes/ }, 'bytes, not characters');
  t.notThrows(() => parseMetadata('manifest', withCmdline('pvh', 'x'.repeat(4000)), 'm'));
  t.throws(() => renderXlConfig({ ...spec('sbc'), type: 'pv', cmdline: 'x'.repeat(1015) }), { message: /is 1028 bytes: a pv guest gets at most 1023/ });
  t.notThrows(() => renderXlConfig({ ...spec('sbc'), type: 'pv', cmdline: 'x'.repeat(1010) }));
  t.notThrows(() => renderXlConfig({ ...spec('sbc'), type: 'pvh', cmdline: 'x'.repeat(4000) }));
});

// A bridge this host does not have: xl create fails in the vif hotplug script, which was
// found only after the running version had been stopped (an outage, then a rollback).
test('a bridge the host has no interface for is refused by the xl backend\'s check (run before anything stops)', async (t) => {
  const { mkdtemp, mkdir, rm } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { XlBackend } = await import('../../client-agent/backends/xl.js');
  const dir = await mkdtemp(join(tmpdir(), 'hostile-net-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await mkdir(join(dir, 'xenbr0'));
  const xl = new XlBackend({ sysClassNet: dir });
  const s = { ...spec('sbc'), nics: 1, macs: ['00:16:3e:00:00:01'] };
  t.throws(() => xl.validate({ ...s, bridge: 'br-lan' }), { message: /no network interface br-lan/ });
  t.notThrows(() => xl.validate({ ...s, bridge: 'xenbr0' }));
  t.notThrows(() => xl.validate({ ...s, bridge: 'br-lan', nics: 0 }), 'no vif, no bridge needed');
  t.notThrows(() => xl.validate(s), 'none named: xl.conf\'s default');
});
