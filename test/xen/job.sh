#!/bin/bash
# Runs inside the emulated dom0 (started by loopship-xen-job with the output directory as
# $1): the agent's whole life on a Xen host against the repository on the outer machine.
# Settings come from ./job.env (written by xen.test.ts). Each step leaves its evidence in
# $OUT/<step>/ (command output, exit code, xl state, the generated config, the guest
# console, loop devices, mounts); the test reads them after power-off and asserts.
# "XENJOB: WANT promote NAME VERSION" asks the outer side to move the stable channel; the
# agent then sees it the way a site does, by polling the repository.
set -u
OUT=$1
. ./job.env
: "${REPO_URL:?}" "${ROOT_FPR:?}" "${APP:?}" "${GUEST_HOSTNAME:?}" "${V2:?}" "${VBAD:?}"
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-600}
CMD_TIMEOUT=${CMD_TIMEOUT:-2400}
CONSOLE=/var/log/xen/console/guest-$APP.log

say() { echo "XENJOB: [$(cut -d' ' -f1 /proc/uptime)] $*"; }
# jget KEY...: a value from the JSON on stdin (empty if absent). jq, not node: every Node.js
# start costs seconds of emulated CPU here
jget() { local path=''; for k in "$@"; do path="$path[\"$k\"]"; done; jq -r "try (.$path // \"\") catch \"\"" 2>/dev/null; }

# agent STEP ARGS...: one agent command, bounded (xl create can hang), with its evidence.
# A download cut off by the network is retried (installs resume where they stopped, as the
# daemon's next round would); each failed attempt's messages are kept as stderr.N.
agent() {
  local step=$1; shift
  local d=$OUT/$step t0=$SECONDS rc=0 attempt=1
  mkdir -p "$d"
  while :; do
    say "$step: loopship-agent $* (attempt $attempt)"
    rc=0
    # stderr with dom0's uptime on each line (stderr.timed: where a step spends its time),
    # and as the agent wrote it (stderr)
    timeout --kill-after=20 "$CMD_TIMEOUT" loopship-agent --json "$@" 2>&1 >"$d/stdout" |
      while IFS= read -r line; do read -r up _ </proc/uptime; printf '[%s] %s\n' "$up" "$line"; done >"$d/stderr.timed"
    rc=${PIPESTATUS[0]}
    sed 's/^\[[0-9.]*\] //' "$d/stderr.timed" >"$d/stderr"
    # only the final error counts: a notice such as "cannot use the pack (...no data for 30 s)" does not
    [ "$rc" != 0 ] && [ $attempt -lt 5 ] && grep 'loopship-agent: error:' "$d/stderr" | tail -n 1 | grep -q 'request failed\|download failed\|connection closed\|no data for' || break
    say "$step: network failure, retrying: $(tail -n 1 "$d/stderr")"
    cp "$d/stderr.timed" "$d/stderr.$attempt"; attempt=$((attempt + 1))
  done
  echo "$rc" >"$d/rc"; echo $((SECONDS - t0)) >"$d/seconds"; echo "$attempt" >"$d/attempts"
  say "$step: rc=$rc after $((SECONDS - t0)) s"
  # the guest's boot time and any xl trouble, also when the step passed
  grep -h 'is ready after\|did not become ready\|xl create\|xl destroy\|did not shut down\|still running\|already running\|installed \|configured \|starting \|switching back' "$d/stderr.timed" | cut -c1-300 | sed "s/^/XENJOB: $step: /"
  [ "$rc" = 0 ] || sed "s/^/XENJOB: $step stderr: /" "$d/stderr" | tail -n 15
  snapshot "$step" "${SNAPSHOT_STATUS:-}"
  return "$rc"
}

# what dom0 looks like now
snapshot() {
  local d=$OUT/$1
  mkdir -p "$d"
  xl list >"$d/xl-list" 2>&1
  xl list -l "$APP" >"$d/xl-list-l.json" 2>/dev/null || rm -f "$d/xl-list-l.json"
  cp "/etc/xen/$APP.cfg" "$d/xl.cfg" 2>/dev/null || true
  readlink "/etc/xen/auto/$APP.cfg" >"$d/auto-link" 2>/dev/null || true
  cp "$CONSOLE" "$d/console.log" 2>/dev/null || true
  losetup -a >"$d/losetup" 2>&1
  cat /proc/mounts >"$d/mounts"
  readlink "/var/lib/loopship/appliances/$APP/current" >"$d/current" 2>/dev/null || true
  # the agent's own view costs a Node.js start (slow under emulation): only where asserted
  [ "${2:-}" != status ] || loopship-agent --json status >"$d/status.json" 2>/dev/null || true
}

# waits until the repository's stable channel names $1. It reads index.json as it is served
# (no signature check: only to know when; the upgrade that follows checks everything) over
# bash's /dev/tcp: a poll by the agent cost a Node.js start (seconds in the emulated dom0).
await_stable() {
  local want=$1 t0=$SECONDS got=''
  say "WANT promote $APP $want"
  while [ $((SECONDS - t0)) -lt 600 ]; do
    got=$(http_get /index.json | jget images "$APP" channels stable)
    [ "$got" = "$want" ] && { say "stable is $want"; return 0; }
    sleep 2
  done
  say "stable still '$got' after $((SECONDS - t0)) s"; return 1
}

# http_get PATH: the repository's body for PATH on stdout when the status is 200 (HTTP/1.0 over
# bash's /dev/tcp: dom0 has no curl, and a Node.js start is slow here)
http_get() {
  local hp=${REPO_URL#http://} status='' line
  hp=${hp%%/*}
  { exec 3<>"/dev/tcp/${hp%:*}/${hp##*:}"; } 2>/dev/null || return 1
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" "$hp" >&3
  read -r -t 20 _ status _ <&3 || { exec 3<&-; return 1; }
  while IFS= read -r -t 20 line <&3 && [ "${line%$'\r'}" != '' ]; do :; done
  [ "$status" = 200 ] && timeout 20 cat <&3
  local rc=$?
  exec 3<&-
  return $rc
}

mkdir -p "$OUT"
say "job: $APP from $REPO_URL, hostname $GUEST_HOSTNAME"
# how the agent got here: its Debian package, installed into the dom0 image by xen-host.sh
# (dpkg -i in a chroot of the new root, as a site's installer does)
mkdir -p "$OUT/00-agent"
dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\n' loopship-agent >"$OUT/00-agent/dpkg" 2>&1
dpkg -S "$(command -v loopship-agent)" >"$OUT/00-agent/owner" 2>&1
systemctl is-enabled loopship-agent.service >"$OUT/00-agent/unit-enabled" 2>&1
loopship-agent --version >"$OUT/00-agent/version" 2>&1

# 0. the repository server answers (root.json served)
t0=$SECONDS
until http_get /root.json >/dev/null || [ $((SECONDS - t0)) -gt 300 ]; do sleep 3; done
# 1. trust: pin the root by its fingerprint (the install media's only secret-free fact)
agent 01-init init --repo "$REPO_URL" --root-fingerprint "$ROOT_FPR" --backend xl || exit 1
# emulated guests boot slowly: a longer health check than the default (init writes no default)
if grep -q '^health_timeout_s:' /etc/loopship/agent.yaml; then
  sed -i "s/^health_timeout_s: .*/health_timeout_s: $HEALTH_TIMEOUT/" /etc/loopship/agent.yaml
else
  echo "health_timeout_s: $HEALTH_TIMEOUT" >>/etc/loopship/agent.yaml
fi
# The appliance with one host setting for Xen, tsc_mode native (no RDTSC exits), so that the
# run uses and checks a host override. It was tried against the emulator's PVH faults (3 of 4
# right after an rdtsc) and did not stop them (README: Pitfalls).
printf 'appliances:\n  - name: %s\n    channel: stable\n    xen: { tsc_mode: native }\n' "$APP" >>/etc/loopship/agent.yaml
cp /etc/loopship/agent.yaml "$OUT/01-init/agent.yaml"

# libxl allows a hotplug script 40 s: read what the block and vif scripts run into the page
# cache now, not during the first xl create
cat /etc/xen/scripts/* /usr/sbin/losetup /usr/bin/logger /usr/bin/xenstore* /usr/bin/flock >/dev/null 2>&1
# 2. install what stable names (PVH) with a host setting, boot it, wait for ready.
# QEMU 7.2's nested SVM kills PVH guests in about half of their boots (README: Pitfalls):
# a triple fault in xl dmesg, or a kernel panic in the guest's exception entry; xl brings
# the domain up again and the agent reports 'restarted' (or 'stopped', when it looked in
# between). Only then, the boot is tried again with `start` (at most 5 times); each failed
# attempt is kept as 02-install.attemptN with the evidence, which the test checks.
xl dmesg -c >/dev/null 2>&1
emulator_fault() { # dir: the failed step's evidence
  xl dmesg -c >"$1/xl-dmesg" 2>&1
  grep -q 'did not become ready: \(restarted\|stopped\)' "$1/stderr" &&
    { grep -q 'Triple fault' "$1/xl-dmesg" || grep -q 'Kernel panic - not syncing: Fatal exception' "$1/console.log" 2>/dev/null; }
}
rc=0; agent 02-install install "$APP" --set "hostname=$GUEST_HOSTNAME" || rc=$?
n=0
while [ "$rc" != 0 ] && [ $n -lt 5 ] && emulator_fault "$OUT/02-install"; do
  n=$((n + 1))
  say "02-install: the emulator killed the PVH guest (attempt $n), booting it again"
  rm -rf "$OUT/02-install.attempt$n"; mv "$OUT/02-install" "$OUT/02-install.attempt$n"
  # the crash-looping domain goes (the agent's stop would wait for a shutdown it never
  # answers); start boots the installed version and waits for ready
  xl destroy "$APP" >/dev/null 2>&1
  rc=0; agent 02-install start "$APP" || rc=$?
done
# A PVH boot the emulator killed every time is the test's failure to report, but not a
# reason to leave the PV half (upgrade, rollback, stop) untested: carry on from there.
if [ "$rc" != 0 ]; then
  emulator_fault "$OUT/02-install" || exit 1
  say "02-install: no PVH boot survived the emulator; going on with the PV steps"
  xl destroy "$APP" >/dev/null 2>&1
fi

# 3. upgrade to the next version (built as PV): switch, boot, health check
await_stable "$V2" || exit 1
agent 03-upgrade upgrade "$APP" || exit 1

# 4. a broken version (never ready): the upgrade fails its health check and rolls back
await_stable "$VBAD" || exit 1
SNAPSHOT_STATUS=status agent 04-upgrade-broken upgrade "$APP"
echo "rc=$?" >"$OUT/04-upgrade-broken/expected-failure"

# 5. stop: nothing of the domain may stay behind in dom0
agent 05-stop stop "$APP" || exit 1
sleep 2
snapshot 05-stop-after
xl list >"$OUT/05-stop/xl-list-final" 2>&1

# 6. one daemon round under the package's own systemd unit, with its sandbox (ProtectSystem,
# DevicePolicy, the capability set...): the appliance is stopped but should run (autostart), so
# the round boots it through xl from inside the sandbox and waits for its health check.
mkdir -p "$OUT/06-unit"
systemctl reset-failed loopship-agent.service >/dev/null 2>&1
systemctl start loopship-agent.service >"$OUT/06-unit/start" 2>&1
t0=$SECONDS
until journalctl -u loopship-agent.service --no-pager -o cat 2>/dev/null | grep -q '^round \(complete\|failed\)' ||
  [ $((SECONDS - t0)) -gt "$HEALTH_TIMEOUT" ]; do sleep 5; done
journalctl -u loopship-agent.service --no-pager -o cat >"$OUT/06-unit/journal" 2>&1
systemctl show loopship-agent.service -p ActiveState -p SubState -p NRestarts -p Result >"$OUT/06-unit/show" 2>&1
xl list >"$OUT/06-unit/xl-list" 2>&1
systemctl stop loopship-agent.service >/dev/null 2>&1
say "done"
exit 0
