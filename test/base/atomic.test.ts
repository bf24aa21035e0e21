// The one atomic writer: whole replacement, never through a link, mode never widened, and
// a temporary name even for a file name near NAME_MAX.
import test from 'ava';
import { mkdtemp, readFile, readdir, rm, stat, symlink, writeFile, chmod, lstat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeFileAtomic, createFileExclusive, isTempName, tempName } from '../../base/atomic.js';

async function dir(t: { teardown: (fn: () => Promise<void>) => void }): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'atomic-'));
  t.teardown(() => rm(d, { recursive: true, force: true }));
  return d;
}

test('replaces a file whole, leaves no temporary file, makes the directory when asked', async (t) => {
  const d = await dir(t);
  const f = join(d, 'sub', 'a.json');
  await writeFileAtomic(f, 'one\n', { mkdir: true });
  await writeFileAtomic(f, 'two\n');
  t.is(await readFile(f, 'utf8'), 'two\n');
  t.deepEqual(await readdir(join(d, 'sub')), ['a.json']);
});

test('a symlink at the destination is refused, its target untouched', async (t) => {
  const d = await dir(t);
  const target = join(d, 'target');
  await writeFile(target, 'keep');
  await symlink(target, join(d, 'link'));
  const err = await t.throwsAsync(writeFileAtomic(join(d, 'link'), 'new'));
  t.is((err as NodeJS.ErrnoException).code, 'ELOOP');
  t.is(await readFile(target, 'utf8'), 'keep');
  t.true((await lstat(join(d, 'link'))).isSymbolicLink());
  t.deepEqual((await readdir(d)).sort(), ['link', 'target']);
});

test('an existing narrower mode is kept; a new file gets the mode asked', async (t) => {
  const d = await dir(t);
  const f = join(d, 'secret');
  await writeFileAtomic(f, 'x', { mode: 0o600 });
  t.is((await stat(f)).mode & 0o777, 0o600);
  await writeFileAtomic(f, 'y', { mode: 0o644 });
  t.is((await stat(f)).mode & 0o777, 0o600);
  await chmod(f, 0o400);
  await writeFileAtomic(f, 'z', { mode: 0o600 });
  t.is((await stat(f)).mode & 0o777, 0o400);
});

test('the existing-file check runs first and its error is what the caller sees', async (t) => {
  const d = await dir(t);
  await symlink('/etc/passwd', join(d, 'planted'));
  const err = await t.throwsAsync(writeFileAtomic(join(d, 'planted'), 'x', { checkExisting: () => { throw new Error('planted entry'); } }));
  t.is(err!.message, 'planted entry');
});

test('a file name near NAME_MAX still gets a temporary name, recognised as one', async (t) => {
  const d = await dir(t);
  const name = 'h'.repeat(250) + '.json';
  await writeFileAtomic(join(d, name), 'x');
  t.is(await readFile(join(d, name), 'utf8'), 'x');
  const tmp = tempName(join(d, name)).slice(d.length + 1);
  t.true(Buffer.byteLength(tmp) <= 255);
  t.true(isTempName(tmp));
  t.false(isTempName(name));
});

test('createFileExclusive writes a new name once, and never over anything there (a link included)', async (t) => {
  const d = await dir(t);
  const f = join(d, 'host.json');
  t.true(await createFileExclusive(f, 'first'));
  t.false(await createFileExclusive(f, 'second'));
  t.is(await readFile(f, 'utf8'), 'first');
  t.is((await stat(f)).mode & 0o777, 0o600);
  await symlink(join(d, 'elsewhere'), join(d, 'link.json'));
  t.false(await createFileExclusive(join(d, 'link.json'), 'x'));
  t.deepEqual((await readdir(d)).sort(), ['host.json', 'link.json']);
});
