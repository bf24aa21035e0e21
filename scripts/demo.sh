#!/usr/bin/env bash
# The main job end to end, on this machine, with the same commands a real deployment uses:
# keys -> repository -> build recipes/tiny -> serve -> publish over HTTP -> agent: pin the
# root, install, configure a hostname, boot (qemu backend: there is no Xen here), wait for the
# guest's ready marker -> report to the server. Cleans up its processes, loop devices and
# mounts on exit, also on Ctrl-C.
#
#   sudo npm run demo                     # or: sudo bash scripts/demo.sh
#   LOOPSHIP_DEMO_DIR=/srv/demo LOOPSHIP_DEMO_PORT=8780 sudo -E npm run demo
#   LOOPSHIP_DEMO_KEEP=1 ...              # leave the server and the appliance running
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
if [ "$(id -u)" -ne 0 ]; then echo "demo: run as root (debootstrap, loop devices, mounts)" >&2; exit 1; fi

WORK=${LOOPSHIP_DEMO_DIR:-/var/tmp/loopship-demo}
PORT=${LOOPSHIP_DEMO_PORT:-8780}
URL=http://127.0.0.1:$PORT
HOSTNAME_SET=${LOOPSHIP_DEMO_HOSTNAME:-demo-tiny}
mkdir -p "$WORK"

T0=$(date +%s.%N)
step_start=$T0
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; step_start=$(date +%s.%N); }
elapsed() { awk -v a="$(date +%s.%N)" -v b="$1" 'BEGIN { printf "%.1f", a - b }'; }
done_step() { echo "   done in $(elapsed "$step_start") s"; }

say "1/7 setup: Debian tools and npm packages"
bash scripts/setup.sh
done_step

L() { node "$SRC/dist/bin/loopship.js" "$@"; }
A() { node "$SRC/dist/bin/loopship-agent.js" --config "$WORK/host/agent.yaml" --state-dir "$WORK/host/state" "$@"; }

SERVER_PID=
cleanup() {
  status=$?
  trap - EXIT INT TERM
  if [ -z "${LOOPSHIP_DEMO_KEEP:-}" ]; then
    echo
    echo "== cleaning up (set LOOPSHIP_DEMO_KEEP=1 to keep things running)"
    [ -f "$WORK/host/agent.yaml" ] && A stop tiny >/dev/null 2>&1 || true
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
    # anything of ours still attached (the agent cleans its own; this is the belt to its braces)
    for dev in $(losetup -nO NAME,BACK-FILE 2>/dev/null | awk -v w="$WORK" 'index($2, w) == 1 {print $1}'); do losetup -d "$dev" || true; done
  fi
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "2/7 keys and an empty signed repository in $WORK"
[ -f "$WORK/keys/keystore.json" ] || L keys init --dir "$WORK/keys"
# A fresh repository each run (versions are immutable: a rebuilt 1.0.0 could not replace the old one).
rm -rf "$WORK/repo" "$WORK/server-state"
L repo init --dir "$WORK/repo" --keys "$WORK/keys"
ROOT_FPR=$(L keys list --dir "$WORK/keys" --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).keys.find(k=>k.role==="root").fingerprint))')
echo "   root fingerprint (what a site pins): $ROOT_FPR"
done_step

say "3/7 build recipes/tiny (debootstrap is cached after the first run)"
# The package is kept for as long as the recipe and the code that makes it are unchanged.
DIGEST=$(find recipes/tiny builder format keys -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
PKG="$WORK/tiny-$DIGEST.tar"
if [ -f "$PKG" ]; then
  echo "   recipe and builder unchanged since the last run: reusing $PKG"
else
  rm -f "$WORK"/tiny-*.tar
  L build recipes/tiny --keys "$WORK/keys" --out "$WORK/tiny-building.tar" --cache-dir "$WORK/cache"
  mv "$WORK/tiny-building.tar" "$PKG"
fi
done_step

say "4/7 start the repository server on $URL"
if [ ! -f "$WORK/server.yaml" ]; then
  PUB_TOKEN=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
  SITE_TOKEN=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
  umask 077
  printf '%s\n' "$PUB_TOKEN" > "$WORK/publisher.token"
  printf '%s\n' "$SITE_TOKEN" > "$WORK/site.token"
  cat > "$WORK/server.yaml" <<YAML
publishers:
  - name: packaging
    token: "$PUB_TOKEN"
sites:
  - name: demo-site
    token: "$SITE_TOKEN"
YAML
  umask 022
fi
if curl -s -o /dev/null "$URL/" 2>/dev/null; then echo "demo: port $PORT is already in use (set LOOPSHIP_DEMO_PORT)" >&2; exit 1; fi
# the demo's host is made anew each run and enrols again: forget the last run's enrolment
rm -rf "$WORK/server-state/hosts"
# node itself in the background (not the L function: its subshell would hide the server's pid)
node "$SRC/dist/bin/loopship.js" serve --repo "$WORK/repo" --port "$PORT" --config "$WORK/server.yaml" --keys "$WORK/keys" \
  --state-dir "$WORK/server-state" --log-format json > "$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do curl -fsS -o /dev/null "$URL/index.json" 2>/dev/null && break; sleep 0.1; done
kill -0 "$SERVER_PID" 2>/dev/null && curl -fsS -o /dev/null "$URL/index.json" || { echo "server did not start; see $WORK/server.log" >&2; tail "$WORK/server.log" >&2; exit 1; }
done_step

say "5/7 publish the package through the server's API"
L publish "$PKG" --server "$URL" --token-file "$WORK/publisher.token" --channel stable
done_step

say "6/7 the agent, as on a remote Xen host: pin the root, install, configure, boot"
A stop tiny >/dev/null 2>&1 || true
rm -rf "$WORK/host"
mkdir -p "$WORK/host"
A init --repo "$URL" --root-fingerprint "$ROOT_FPR" --backend qemu
cat >> "$WORK/host/agent.yaml" <<YAML
report:
  url: $URL
  site: demo-site
  token: "$(cat "$WORK/site.token")"
YAML
A install tiny:stable --set "hostname=$HOSTNAME_SET"
done_step

say "7/7 check and report"
A status tiny
CONSOLE="$WORK/host/state/log/tiny.console.log"
if [ -f "$CONSOLE" ]; then
  grep -m1 'LOOPSHIP-READY' "$CONSOLE" | sed 's/^/   guest console: /' || true
fi
A daemon --once >/dev/null 2>&1 || echo "   (report to the server failed; see above)"
done_step

printf '\n\033[1mAll done in %s s.\033[0m\n' "$(elapsed "$T0")"
cat <<TXT
Where to look next:
  dashboard        $URL/   (private: the token in $WORK/publisher.token as the password; only while the server runs: LOOPSHIP_DEMO_KEEP=1)
  server log       $WORK/server.log
  agent state      $WORK/host/state   (loopship-agent --config $WORK/host/agent.yaml --state-dir $WORK/host/state status)
  guest console    ${CONSOLE:-$WORK/host/state}
  verify the repo  node dist/bin/loopship.js verify --repo $URL --root-fingerprint $ROOT_FPR
TXT
