// The screen checks of the acceptance suite, on real screenshots taken by it (xfreerdp in
// Xvfb against sbc-desktop, and the thin-client's own display): each screen is recognised
// as what it is and as nothing else. Plus the image formats the suite reads. Fast.
import test from 'ava';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { decodePng, encodePng, parsePpm, parseXwd, shareOf, type Rgb } from './pixels.js';
import { isXfceDesktop, isXrdpLogin, isXrdpRefusal } from './screens.js';
import { keysFor } from './guest.js';

const fixture = async (name: string) => decodePng(await readFile(join(import.meta.dirname, 'fixtures', name)));
const solid = (w: number, h: number, rgb: [number, number, number]): Rgb => {
  const data = Buffer.alloc(w * h * 3);
  for (let i = 0; i < w * h; i++) data.set(rgb, i * 3);
  return { width: w, height: h, data };
};

test('each real screen is recognised as what it is, and as nothing else', async (t) => {
  const screens: Record<string, Rgb> = {
    'xrdp-login': await fixture('xrdp-login.png'), // xfreerdp without credentials, 1024x768
    'kiosk-login': await fixture('kiosk-login.png'), // the thin-client's own display, 1280x800
    'xrdp-refused': await fixture('xrdp-refused.png'), // wrong password
    'xfce-desktop': await fixture('xfce-desktop.png'), // right password
    'kiosk-desktop': await fixture('kiosk-desktop.png'), // typed in at the kiosk
    black: solid(1024, 768, [0, 0, 0]), // a session that has not painted yet
  };
  const expect: Record<string, [boolean, boolean, boolean]> = {
    'xrdp-login': [true, false, false],
    'kiosk-login': [true, false, false],
    'xrdp-refused': [false, true, false],
    'xfce-desktop': [false, false, true],
    'kiosk-desktop': [false, false, true],
    black: [false, false, false],
  };
  for (const [name, img] of Object.entries(screens)) {
    t.deepEqual([isXrdpLogin(img), isXrdpRefusal(img), isXfceDesktop(img)], expect[name], name);
  }
  t.is(screens['kiosk-login'].width, 1280, 'the kiosk fills its whole display');
});

test('PNG round trip, PPM and XWD (32 bpp, LSB first, as Xvfb writes it) give the same pixels', (t) => {
  const img: Rgb = { width: 3, height: 2, data: Buffer.from([0, 0x9c, 0xb5, 1, 2, 3, 255, 255, 255, 0xde, 0xde, 0xde, 0, 0, 0, 10, 20, 30]) };
  t.deepEqual(decodePng(encodePng(img)), img);
  t.deepEqual(parsePpm(Buffer.concat([Buffer.from('P6\n# comment\n3 2\n255\n'), img.data])), img);

  const header = Buffer.alloc(100 + 8); // 25 fields + "Xvfb\0" padded
  const fields = [108, 7, 2, 24, 3, 2, 0, 0, 32, 0, 32, 32, 12, 4, 0xff0000, 0xff00, 0xff, 8, 256, 0, 3, 2, 0, 0, 0];
  fields.forEach((v, i) => header.writeUInt32BE(v, i * 4));
  const px = Buffer.alloc(12 * 2);
  for (let i = 0; i < 6; i++) px.writeUInt32LE((img.data[i * 3] << 16) | (img.data[i * 3 + 1] << 8) | img.data[i * 3 + 2], i * 4);
  t.deepEqual(parseXwd(Buffer.concat([header, px])), img);
  t.is(shareOf(img, '009cb5', 0), 1 / 6);
  t.throws(() => parsePpm(Buffer.from('P3\n1 1\n255\n0 0 0\n')), { message: /not a binary PPM/ });
});

test('keys for typing at a kiosk: letters, shifted letters and symbols, Tab and Enter', (t) => {
  t.deepEqual(keysFor('b'), ['b']);
  t.deepEqual(keysFor('C'), ['shift', 'c']);
  t.deepEqual(keysFor('-'), ['minus']);
  t.deepEqual(keysFor('\t'), ['tab']);
  t.deepEqual(keysFor('\n'), ['ret']);
  t.throws(() => keysFor('é'), { message: /no key/ });
});
