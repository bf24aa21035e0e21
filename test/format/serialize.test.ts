// The metadata layout: 2-space JSON, objects and arrays of scalars on one line (a chunk a line).
import test from 'ava';
import { parseMetadata, serialize, type Manifest } from '../../format/index.js';
import { baseManifest } from '../helpers/repo.js';

const chunk = (i: number, offset = i * 8192) => ({ offset, length: 8192, sha256: (i + 1).toString(16).padStart(64, '0'), csize: 100 + (i % 1000) });

function manifest(chunks: number): Manifest {
  const m = baseManifest() as unknown as Manifest;
  return {
    ...m,
    image: { fs: 'ext4', uuid: '0b1c2d3e-0000-4000-8000-000000000000', size: chunks * 8192, chunks: Array.from({ length: chunks }, (_, i) => chunk(i)) },
    kernel: { size: 8192, sha256: 'b'.repeat(64), chunks: [chunk(9999, 0)] },
    initrd: null,
  } as Manifest;
}

test('a manifest serializes to valid metadata with one line per chunk, the same value as JSON.stringify, a quarter smaller than indented', (t) => {
  const m = manifest(500);
  const bytes = serialize(m);
  const text = bytes.toString('utf8');
  t.deepEqual(JSON.parse(text), JSON.parse(JSON.stringify(m)));
  t.deepEqual(parseMetadata('manifest', bytes, 'serialized'), parseMetadata('manifest', Buffer.from(JSON.stringify(m)), 'plain'));
  const chunkLines = text.split('\n').filter((l) => /^\s+\{"offset":\d+,"length":\d+,"sha256":"[0-9a-f]{64}","csize":\d+\},?$/.test(l));
  t.is(chunkLines.length, 501, 'every image and kernel chunk on a line of its own');
  t.true(text.endsWith('}\n'));
  t.true(bytes.length < 0.8 * Buffer.byteLength(JSON.stringify(m, null, 2)), `${bytes.length} vs ${Buffer.byteLength(JSON.stringify(m, null, 2))} indented`);
});

test('nesting, empty containers and undefined fields are laid out as JSON.stringify would keep them', (t) => {
  const v = { a: 1, empty: [], none: {}, gone: undefined, keys: ['x', 'y'], deep: { list: [[1, 2], { b: null }] } };
  const text = serialize(v as never).toString();
  t.deepEqual(JSON.parse(text), JSON.parse(JSON.stringify(v)));
  t.false(text.includes('gone'));
  t.is(text, '{\n  "a": 1,\n  "empty": [],\n  "none": {},\n  "keys": ["x","y"],\n  "deep": {\n    "list": [\n      [1,2],\n      {"b":null}\n    ]\n  }\n}\n');
});
