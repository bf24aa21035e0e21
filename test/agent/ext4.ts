// Publishes an appliance built from a real ext4 image (mkfs.ext4 -d, as the builder makes
// them) into a test repository. Versions differ in one same-sized file, so the layout stays.
import { mkdtemp, writeFile, mkdir } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { createPackage } from '../../format/index.js';
import { baseManifest, seeded, type Fixture } from '../helpers/repo.js';

export async function publishExt4(fx: Fixture, name: string, version: string, opts: { motd?: string; channel?: string; bulkFiles?: number } = {}) {
  const work = await mkdtemp(join(fx.dir, `${name}-${version}-`));
  const root = join(work, 'rootfs');
  await mkdir(join(root, 'etc'), { recursive: true });
  await mkdir(join(root, 'usr', 'share', 'doc'), { recursive: true });
  await writeFile(join(root, 'etc', 'hostname'), 'buildhost\n');
  await writeFile(join(root, 'etc', 'hosts'), '127.0.0.1\tlocalhost\n');
  for (let i = 0; i < (opts.bulkFiles ?? 40); i++) await writeFile(join(root, 'usr', 'share', 'doc', `f${i}`), seeded(`doc${i}`, 16 * 1024));
  await writeFile(join(root, 'etc', 'motd'), (opts.motd ?? 'version one').padEnd(32) + '\n');
  const image = join(work, 'disk.img');
  await execa('mkfs.ext4', ['-q', '-F', '-U', '0c5e6d1a-1111-4222-8333-444455556666', '-E', 'hash_seed=0c5e6d1a-1111-4222-8333-444455556666', '-d', root, image, '16M'], {
    env: { E2FSPROGS_FAKE_TIME: '1700000000' },
  });
  await writeFile(join(work, 'vmlinuz'), seeded(`kernel-${name}`, 100_000));
  await writeFile(join(work, 'initrd'), seeded(`initrd-${name}`, 50_000));
  const manifest = baseManifest(name, version);
  manifest.settings = {
    hostname: { type: 'hostname', required: true },
    'ssh.authorized_keys': { type: 'ssh-keys' },
    'broker.url': { type: 'url', default: 'https://broker.invalid/' },
  };
  const tarPath = join(work, 'pkg.tar');
  await createPackage({
    manifest, imagePath: image, kernelPath: join(work, 'vmlinuz'), initrdPath: join(work, 'initrd'),
    publisherKey: await fx.keystore.privateKey(fx.keystore.find('publisher')), out: { tarPath },
  });
  await fx.writer.addPackage(createReadStream(tarPath));
  if (opts.channel) await fx.writer.promote(name, opts.channel, version);
  return { tarPath, image };
}
