// Screenshots as plain RGB pixels: QEMU's screendump writes PPM, Xvfb's -fbdir screen is
// an XWD file. What a test asks of a picture is said with colours and regions, no OCR:
// "a third of the screen is xrdp's login background", "the top strip is one panel colour".
import { deflateSync, inflateSync } from 'node:zlib';

export interface Rgb {
  width: number;
  height: number;
  /** 3 bytes per pixel, rows top to bottom */
  data: Buffer;
}

export interface Region {
  x: number;
  y: number;
  w: number;
  h: number;
}

/** Binary PPM (P6, maxval 255), as QEMU's screendump writes it. */
export function parsePpm(buf: Buffer): Rgb {
  const head = /^P6\s+(?:#[^\n]*\n\s*)*(\d+)\s+(\d+)\s+(\d+)\s/.exec(buf.subarray(0, 200).toString('latin1'));
  if (!head) throw new Error('not a binary PPM (P6)');
  const [width, height, max] = [Number(head[1]), Number(head[2]), Number(head[3])];
  if (max !== 255) throw new Error(`PPM maxval ${max}, expected 255`);
  const data = buf.subarray(head[0].length, head[0].length + width * height * 3);
  if (data.length !== width * height * 3) throw new Error('PPM shorter than its header says');
  return { width, height, data: Buffer.from(data) };
}

/** XWD (X11 window dump, version 7) in ZPixmap with 24 or 32 bits per pixel: Xvfb's -fbdir file. */
export function parseXwd(buf: Buffer): Rgb {
  if (buf.length < 100) throw new Error('XWD file too short');
  const u32 = (i: number) => buf.readUInt32BE(i * 4);
  const headerSize = u32(0);
  if (u32(1) !== 7) throw new Error(`XWD version ${u32(1)}, expected 7`);
  if (u32(2) !== 2) throw new Error('XWD is not ZPixmap');
  const width = u32(4);
  const height = u32(5);
  const byteOrder = u32(7); // 0 LSBFirst, 1 MSBFirst
  const bpp = u32(11);
  const bytesPerLine = u32(12);
  const masks = [u32(14), u32(15), u32(16)];
  const ncolors = u32(19);
  if (bpp !== 32 && bpp !== 24) throw new Error(`XWD with ${bpp} bits per pixel is not handled`);
  const start = headerSize + ncolors * 12;
  if (buf.length < start + bytesPerLine * height) throw new Error('XWD shorter than its header says');
  const shifts = masks.map((m) => (m === 0 ? 0 : Math.log2(m & -m)));
  const out = Buffer.alloc(width * height * 3);
  const step = bpp / 8;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const o = start + y * bytesPerLine + x * step;
      let px = 0;
      for (let b = 0; b < step; b++) px |= buf[o + (byteOrder === 0 ? b : step - 1 - b)] << (8 * b);
      px >>>= 0;
      const d = (y * width + x) * 3;
      for (let c = 0; c < 3; c++) out[d + c] = ((px & masks[c]) >>> 0) >>> shifts[c];
    }
  }
  return { width, height, data: out };
}

/** A PNG of the picture, kept next to the logs for a person to look at. */
export function encodePng(img: Rgb): Buffer {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (b: Buffer) => {
    let c = 0xffffffff;
    for (const x of b) c = crcTable[(c ^ x) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type: string, body: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(body.length);
    const tb = Buffer.concat([Buffer.from(type, 'latin1'), body]);
    const c = Buffer.alloc(4);
    c.writeUInt32BE(crc(tb));
    return Buffer.concat([len, tb, c]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(img.width, 0);
  ihdr.writeUInt32BE(img.height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
  const raw = Buffer.alloc((img.width * 3 + 1) * img.height);
  for (let y = 0; y < img.height; y++) img.data.copy(raw, y * (img.width * 3 + 1) + 1, y * img.width * 3, (y + 1) * img.width * 3);
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}

/** Reads an 8-bit RGB or RGBA, non-interlaced PNG (what encodePng writes; test fixtures). */
export function decodePng(buf: Buffer): Rgb {
  if (buf.readUInt32BE(0) !== 0x89504e47) throw new Error('not a PNG');
  let off = 8;
  let width = 0;
  let height = 0;
  let channels = 3;
  const idat: Buffer[] = [];
  while (off < buf.length) {
    const len = buf.readUInt32BE(off);
    const type = buf.toString('latin1', off + 4, off + 8);
    const body = buf.subarray(off + 8, off + 8 + len);
    if (type === 'IHDR') {
      width = body.readUInt32BE(0);
      height = body.readUInt32BE(4);
      const [depth, colourType, , , interlace] = body.subarray(8, 13);
      if (depth !== 8 || (colourType !== 2 && colourType !== 6) || interlace !== 0) throw new Error('only 8-bit RGB/RGBA non-interlaced PNGs are read');
      channels = colourType === 6 ? 4 : 3;
    } else if (type === 'IDAT') idat.push(body);
    else if (type === 'IEND') break;
    off += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const cur = Buffer.alloc(stride);
  const prev = Buffer.alloc(stride);
  const out = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++) {
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const filter = raw[y * (stride + 1)];
    for (let i = 0; i < stride; i++) {
      const a = i >= channels ? cur[i - channels] : 0;
      const b = prev[i];
      const c = i >= channels ? prev[i - channels] : 0;
      const p = a + b - c;
      const pred = [0, a, b, (a + b) >> 1, Math.abs(p - a) <= Math.abs(p - b) && Math.abs(p - a) <= Math.abs(p - c) ? a : Math.abs(p - b) <= Math.abs(p - c) ? b : c][filter];
      if (pred === undefined) throw new Error(`PNG filter ${filter} unknown`);
      cur[i] = (line[i] + pred) & 0xff;
    }
    for (let x = 0; x < width; x++) cur.copy(out, (y * width + x) * 3, x * channels, x * channels + 3);
    cur.copy(prev);
  }
  return { width, height, data: out };
}

/** Calls `f` with the data offset of every pixel in the region (a plain loop: screens are millions of pixels). */
function eachPixel(img: Rgb, r: Region | undefined, f: (o: number) => void): number {
  const x0 = r?.x ?? 0;
  const y0 = r?.y ?? 0;
  const x1 = Math.min(img.width, r ? r.x + r.w : img.width);
  const y1 = Math.min(img.height, r ? r.y + r.h : img.height);
  for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) f((y * img.width + x) * 3);
  return Math.max(0, x1 - x0) * Math.max(0, y1 - y0);
}

/** "rrggbb" -> [r, g, b] */
export function hex(c: string): [number, number, number] {
  return [0, 2, 4].map((i) => parseInt(c.slice(i, i + 2), 16)) as [number, number, number];
}

/** Share of the region's pixels within `tolerance` (per channel) of `colour`. */
export function shareOf(img: Rgb, colour: string, tolerance = 8, region?: Region): number {
  const [r, g, b] = hex(colour);
  const d = img.data;
  let hit = 0;
  const n = eachPixel(img, region, (o) => {
    if (Math.abs(d[o] - r) <= tolerance && Math.abs(d[o + 1] - g) <= tolerance && Math.abs(d[o + 2] - b) <= tolerance) hit++;
  });
  return n ? hit / n : 0;
}

/** The most common colours of a region, as "rrggbb" with their share, most common first. */
export function topColours(img: Rgb, region?: Region, n = 5): { colour: string; share: number }[] {
  const counts = new Map<number, number>();
  const d = img.data;
  const total = eachPixel(img, region, (o) => {
    const k = (d[o] << 16) | (d[o + 1] << 8) | d[o + 2];
    counts.set(k, (counts.get(k) ?? 0) + 1);
  });
  return [...counts.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([k, c]) => ({ colour: k.toString(16).padStart(6, '0'), share: c / total }));
}

/** Number of distinct colours (a blank or single-colour screen has one or two). */
export function distinctColours(img: Rgb, region?: Region): number {
  const seen = new Set<number>();
  const d = img.data;
  eachPixel(img, region, (o) => seen.add((d[o] << 16) | (d[o + 1] << 8) | d[o + 2]));
  return seen.size;
}
