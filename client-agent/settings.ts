// Host settings an image declares it accepts (manifest.settings), checked by declared type
// before anything touches an image. Values are kept in one canonical string form each.
import { isIP } from 'node:net';
import type { Manifest, SettingType } from '../format/index.js';
import { UsageError } from '../format/index.js';
import type { SettingInput } from './config.js';

export type Settings = Record<string, string>;

const HOSTNAME_LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;
const USER = /^[a-z_][a-z0-9_-]{0,31}$/;
const SSH_KEY_TYPES = new Set([
  'ssh-ed25519', 'ssh-rsa', 'ssh-dss', 'ecdsa-sha2-nistp256', 'ecdsa-sha2-nistp384', 'ecdsa-sha2-nistp521',
  'sk-ssh-ed25519@openssh.com', 'sk-ecdsa-sha2-nistp256@openssh.com',
]);

function splitList(v: string): string[] {
  return v.split(/[\s,]+/).filter(Boolean);
}

/** Returns the canonical form of `raw` for `type`, or throws naming the setting. */
export function validateSetting(name: string, type: SettingType, raw: SettingInput, where = `setting ${name}`): string {
  const bad = (why: string): never => {
    throw new UsageError(`invalid ${type}: ${why}`, { where });
  };
  const text = Array.isArray(raw) ? raw.join('\n') : String(raw);
  if (text.includes('\0')) bad('contains a NUL byte');
  if (text.length > 64 * 1024) bad('longer than 64 KiB');
  switch (type) {
    case 'string':
      return text;
    case 'hostname': {
      const h = text.trim().toLowerCase().replace(/\.$/, '');
      if (!h || h.length > 253 || !h.split('.').every((l) => HOSTNAME_LABEL.test(l))) bad(`"${text}" is not a host name (letters, digits, "-", labels of 1-63, dots between)`);
      return h;
    }
    case 'url': {
      let u: URL;
      try {
        u = new URL(text.trim());
      } catch {
        return bad(`"${text}" is not an absolute URL`);
      }
      if (!u.host) bad(`"${text}" has no host`);
      return u.toString();
    }
    case 'ip': {
      const ip = text.trim();
      if (!isIP(ip)) bad(`"${text}" is not an IPv4 or IPv6 address`);
      return ip;
    }
    case 'cidr': {
      const m = /^([^/\s]+)\/(\d{1,3})$/.exec(text.trim());
      const family = m ? isIP(m[1]) : 0;
      if (!m || !family) return bad(`"${text}" is not an address/prefix such as 192.0.2.10/24`);
      const prefix = Number(m[2]);
      if (prefix > (family === 4 ? 32 : 128)) bad(`prefix /${prefix} is too long for IPv${family}`);
      return `${m[1]}/${prefix}`;
    }
    case 'ip-list': {
      const ips = splitList(text);
      for (const ip of ips) if (!isIP(ip)) bad(`"${ip}" is not an IPv4 or IPv6 address`);
      return ips.join(',');
    }
    case 'port': {
      const t = text.trim();
      if (!/^\d{1,5}$/.test(t) || Number(t) < 1 || Number(t) > 65535) bad(`"${text}" is not a port number 1-65535`);
      return String(Number(t));
    }
    case 'boolean': {
      const t = text.trim().toLowerCase();
      if (['true', 'yes', 'on', '1'].includes(t)) return 'true';
      if (['false', 'no', 'off', '0'].includes(t)) return 'false';
      return bad(`"${text}" is not true or false`);
    }
    case 'ssh-keys': {
      const lines = text.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
      lines.forEach((line, i) => {
        const [kind, b64] = line.split(/\s+/);
        if (!SSH_KEY_TYPES.has(kind)) bad(`key ${i + 1}: unknown key type "${kind.slice(0, 40)}"`);
        const blob = Buffer.from(b64 ?? '', 'base64');
        // the key blob starts with its own type name: catches truncated or pasted-wrong keys
        if (!b64 || !/^[A-Za-z0-9+/]+={0,2}$/.test(b64) || blob.length < 4 || blob.subarray(4, 4 + blob.readUInt32BE(0)).toString() !== kind) {
          bad(`key ${i + 1}: the base64 key data is damaged or does not match "${kind}"`);
        }
      });
      return lines.join('\n');
    }
    case 'users': {
      const users = splitList(text);
      for (const u of users) if (!USER.test(u)) bad(`"${u}" is not a user name (lowercase letters, digits, "_", "-"; max 32)`);
      if (new Set(users).size !== users.length) bad('a user is listed twice');
      return users.join(',');
    }
  }
}

/**
 * The full set of settings for an image: declared defaults, overridden by the given
 * values; unknown names and missing required values are errors naming what is accepted.
 */
export function resolveSettings(declared: Manifest['settings'], given: Record<string, SettingInput>, imageLabel: string): Settings {
  const accepted = Object.keys(declared).sort();
  for (const name of Object.keys(given)) {
    if (!declared[name]) {
      throw new UsageError(`unknown setting "${name}"; ${imageLabel} accepts ${accepted.length ? accepted.join(', ') : 'no settings'}`, { where: `setting ${name}` });
    }
  }
  const out: Settings = {};
  for (const name of accepted) {
    const decl = declared[name];
    const value = given[name] ?? decl.default;
    if (value === undefined) {
      if (decl.required) throw new UsageError(`required by ${imageLabel} but not given (use --set ${name}=...)`, { where: `setting ${name}` });
      continue;
    }
    out[name] = validateSetting(name, decl.type, value);
  }
  return out;
}

/** Parses repeated `--set key=value` options. */
export function parseSetOptions(pairs: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of pairs) {
    const i = p.indexOf('=');
    if (i <= 0) throw new UsageError(`expected key=value, got "${p}"`, { where: '--set' });
    out[p.slice(0, i).trim()] = p.slice(i + 1);
  }
  return out;
}
