#!/usr/bin/env bash
# Installs what loopship needs on a Debian 12 machine (run as root): the Debian tools the
# builder, agent and tests call, then the npm packages. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  debootstrap e2fsprogs zstd util-linux mount gnupg   # build, image, sign, loop-mount
  debhelper lintian                                   # the agent .deb: dh_strip, dh_shlibdeps, ... (packaging/build-deb.sh), and its check
  eatmydata                                           # builder: apt in the scratch chroot without fsyncs (optional, faster)
  qemu-system-x86                                     # the agent's qemu backend, boot tests, the emulated Xen host
  qemu-utils                                          # qemu-img: the Xen test's throw-away dom0 layer (only Recommended by qemu-system-x86)
  chromium                                            # dashboard test in a real browser
  curl nginx-light                                    # benchmarks: the plain pipeline and nginx as peers
  busybox                                             # the shell of boot.init busybox images: the tests parse their scripts with it, list the minimal initrd
  build-essential python3                             # node-gyp: loopship serve's optional sendfile addon
  freerdp2-x11 xvfb ovmf openssh-client openssl       # appliance tests: RDP client in a virtual display, UEFI for the kiosk's framebuffer
  softhsm2 opensc gnupg-pkcs11-scd scdaemon           # key custody: a PKCS#11 token (SoftHSM2) behind gpg-agent, smartcards/YubiKeys (test/keys/pkcs11.test.ts)
  prometheus                                          # promtool: /metrics and the agent's textfile metrics are checked by Prometheus' own checker
)
missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then echo "setup: need root to install: ${missing[*]}" >&2; exit 1; fi
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm packages (npm ci)"
  # Native modules (zstd-napi) build with node-gyp; without a prebuilt binary it would fetch
  # Node's headers from the internet. The Node installation ships them: use those.
  if [ -z "${npm_config_nodedir:-}" ] && [ -f /usr/include/node/node_api.h ]; then export npm_config_nodedir=/usr; fi
  npm ci --no-audit --no-fund
fi
npm run build --silent
echo "setup: done"
