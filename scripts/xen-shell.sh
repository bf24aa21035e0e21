#!/usr/bin/env bash
# Brings up the emulated Xen host (Xen 4.17 + Debian dom0 under QEMU TCG, see xen-host.sh)
# with this checkout's agent installed, and leaves a root shell on the Xen console here.
#
#   npm run build && sudo scripts/xen-shell.sh [--job DIR]
#
# In dom0: `loopship-agent --help`, `xl list`, guest consoles in /var/log/xen/console/.
# A repository served on this machine's 127.0.0.1:PORT (loopship serve --repo DIR --port PORT)
# is http://10.0.2.2:PORT in dom0, e.g.
#   loopship-agent init --repo http://10.0.2.2:8080 --root-fingerprint FPR --backend xl
#   loopship-agent install tiny --set hostname=demo
# --job DIR copies DIR's files (except job.sh) to /var/lib/xenjob in dom0. Leave with `poweroff`,
# or Ctrl-A X (QEMU). The dom0 disk is thrown away afterwards: every start is a clean host.
# The first start builds the dom0 root (debootstrap, a few minutes) into
# ${LOOPSHIP_XEN_CACHE:-/var/cache/loopship/xen}; later starts reuse it.
set -euo pipefail
case ${1:-} in -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0;; esac
exec "$(dirname "$0")/xen-host.sh" shell "$@"
