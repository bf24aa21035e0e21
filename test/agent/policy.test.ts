// Which moves a host makes on the repository's word (client-agent/policy.ts): forward always,
// back only with the host's own consent.
import test from 'ava';
import { decideMove } from '../../client-agent/policy.js';
import type { ApplianceConfig } from '../../client-agent/config.js';

const cfg = (allow: boolean) => ({ name: 'sbc', allow_downgrade: allow }) as unknown as ApplianceConfig;

test('forward, sideways and first installs move on a channel', (t) => {
  t.deepEqual(decideMove({ name: 'sbc', from: '1.0.0', to: '1.10.0', via: { channel: 'stable' } }, undefined), { move: true });
  t.deepEqual(decideMove({ name: 'sbc', from: '1.0.0', to: '1.0.0', via: { channel: 'stable' } }, undefined), { move: true });
  t.deepEqual(decideMove({ name: 'sbc', from: null, to: '0.1', via: { newest: true } }, undefined), { move: true });
});

test('a channel or the newest version naming an older version holds, and says why and what consents', (t) => {
  const held = decideMove({ name: 'sbc', from: '1.10.0', to: '1.9.0', via: { channel: 'stable' } }, cfg(false));
  t.false(held.move);
  t.is((held as { reason: string }).reason, 'channel stable names 1.9.0, older than the installed 1.10.0: not downgrading on the repository\'s word (to go back, republish the old content as a new version, or set allow_downgrade: true for sbc in agent.yaml)');
  const newest = decideMove({ name: 'sbc', from: '2.0.0', to: '1.0.0', via: { newest: true } }, undefined);
  t.false(newest.move);
  t.regex((newest as { reason: string }).reason, /^the repository's newest version is 1\.0\.0, older than the installed 2\.0\.0/);
});

test('the host consents: an exact version in agent.yaml, or allow_downgrade for that appliance', (t) => {
  t.deepEqual(decideMove({ name: 'sbc', from: '2.0.0', to: '1.0.0', via: { version: '1.0.0' } }, undefined), { move: true });
  t.deepEqual(decideMove({ name: 'sbc', from: '2.0.0', to: '1.0.0', via: { channel: 'stable' } }, cfg(true)), { move: true });
  t.false(decideMove({ name: 'sbc', from: '2.0.0', to: '1.0.0', via: { channel: 'stable' } }, cfg(false)).move);
  // "~" sorts first, as in Debian: 1.0~rc1 is older than 1.0
  t.false(decideMove({ name: 'sbc', from: '1.0', to: '1.0~rc1', via: { channel: 'stable' } }, undefined).move);
});

test('an aborted rollout sends a host back only with its consent, and says which rollout', (t) => {
  const via = { channel: 'stable', rollout: { id: 'ab'.repeat(8), from: '1.0', to: '1.1', taking: false, reason: 'the rollout of 1.1 was aborted (bad build)' } };
  const held = decideMove({ name: 'sbc', from: '1.1', to: '1.0', via }, cfg(false));
  t.false(held.move);
  t.regex((held as { reason: string }).reason, /^the rollout of 1\.1 was aborted \(bad build\), so channel stable names 1\.0 again, older than the installed 1\.1: not downgrading/);
  t.deepEqual(decideMove({ name: 'sbc', from: '1.1', to: '1.0', via }, cfg(true)), { move: true });
});
