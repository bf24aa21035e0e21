#!/usr/bin/env bash
# An emulated Xen host for the agent: Xen 4.17 + a Debian bookworm dom0, booted under
# QEMU software emulation (no KVM needed). Used by test/xen/ and by developers.
#
#   scripts/xen-host.sh root              build (or reuse) the cached dom0 root tarball
#   scripts/xen-host.sh image             build (or reuse) the dom0 disk image made from it
#   scripts/xen-host.sh run --job DIR [--out DIR] [--serial-log FILE]
#                                          boot, install the agent, run DIR/job.sh in dom0,
#                                          power off, unpack what the job wrote into --out
#   scripts/xen-host.sh shell [--job DIR]  boot with the agent installed and leave a root
#                                          shell on the Xen console (stdio; Ctrl-A X quits)
#
# Every run starts from the same clean dom0 (a throw-away qcow2 layer over the cached
# image). The dom0 reaches the outer machine's 127.0.0.1 as 10.0.2.2 (QEMU user-mode
# networking), so a repository served on 127.0.0.1:PORT is http://10.0.2.2:PORT inside.
#
# Environment: LOOPSHIP_XEN_CACHE (default /var/cache/loopship/xen), LOOPSHIP_MIRROR (Debian
# mirror; default: this machine's apt sources), LOOPSHIP_AGENT_DEB (this .deb installed in
# the dom0 image instead of the built tree copied in at boot), XEN_QEMU_MEM (MiB, default 2560), XEN_DOM0_MEM (default
# 1024M), XEN_TIMEOUT (seconds for a run, default 3600), XEN_SMP (default 2), XEN_CPU
# (QEMU -cpu, default below), XEN_NICE (QEMU's nice value for runs, default 0).
# Needs root, debootstrap, qemu-system-x86, e2fsprogs, zstd, and `npm run build` done.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT=$(cd "$HERE/.." && pwd)
OVERLAY=$PROJECT/test/xen/dom0
CACHE=${LOOPSHIP_XEN_CACHE:-/var/cache/loopship/xen}
SUITE=bookworm
# What dom0 is made of. linux-image-amd64 because the cloud kernel lacks CONFIG_XEN_DOM0;
# e2fsprogs/util-linux for the agent's images and loop mounts; iproute2 for the bridge and
# the vif hotplug script; libstdc++6 for the Node.js runtime copied in; jq for the test's job
# (a Node.js start costs seconds of emulated CPU).
DOM0_PACKAGES=(xen-system-amd64 linux-image-amd64 initramfs-tools systemd-sysv udev kmod procps
  iproute2 e2fsprogs util-linux libstdc++6 ca-certificates less jq)
# Bump when the steps that make the root change (part of the cache key, with the packages).
ROOT_RECIPE=1

log() { echo "xen-host: $*" >&2; }
die() { echo "xen-host: error: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot, mkfs -d with owners)"; }

sha() { sha256sum | cut -c1-16; }
root_key() { printf '%s\n' "$SUITE" "$ROOT_RECIPE" "${DOM0_PACKAGES[@]}" | sha; }
node_bin() { command -v node || die "node not found"; }
# The image adds the overlay, the Node.js binary, the harness's settings and the agent's
# package (when given) to the root.
image_key() {
  { root_key; (cd "$OVERLAY" && find . -type f -print0 | sort -z | xargs -0 sha256sum);
    sha256sum "$(node_bin)"; sed -n '/^# ---- image steps/,/^# ---- end image steps/p' "${BASH_SOURCE[0]}"; deb_identity; } | sha
}
# what a .deb installs: its control files (name, version, maintainer scripts) and the contents
# of its files (the version alone stays the same while the code changes; the .deb's own bytes
# change with each build's timestamps). A failure here must not give a key without the package.
deb_identity() {
  [ -n "${LOOPSHIP_AGENT_DEB:-}" ] || return 0
  [ -f "$LOOPSHIP_AGENT_DEB" ] || die "LOOPSHIP_AGENT_DEB=$LOOPSHIP_AGENT_DEB: no such file"
  local ctrl data
  ctrl=$(dpkg-deb --ctrl-tarfile "$LOOPSHIP_AGENT_DEB" | tar -xOf - | sha256sum) || die "cannot read the control files of $LOOPSHIP_AGENT_DEB"
  data=$(dpkg-deb --fsys-tarfile "$LOOPSHIP_AGENT_DEB" | tar -xOf - | sha256sum) || die "cannot read the files of $LOOPSHIP_AGENT_DEB"
  echo "agent package: $ctrl $data"
}

mirror() {
  if [ -n "${LOOPSHIP_MIRROR:-}" ]; then echo "$LOOPSHIP_MIRROR"; return; fi
  local m
  m=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$m" ] || die "no Debian mirror in this machine's apt sources; set LOOPSHIP_MIRROR"
  echo "$m"
}

lock_cache() { mkdir -p "$CACHE"; exec 9>"$CACHE/.lock"; flock 9; }

# ---- the dom0 root: debootstrap + the kernel, as a tarball keyed by the package list
build_root() {
  need_root; lock_cache
  local key tarball work r t0
  key=$(root_key); tarball=$CACHE/dom0-root-$SUITE-$key.tar.zst
  if [ -s "$tarball" ]; then log "dom0 root: cached $tarball"; echo "$tarball"; return; fi
  t0=$SECONDS
  work=$(mktemp -d "$CACHE/root-build.XXXXXX"); r=$work/root
  # shellcheck disable=SC2064
  trap "umount -R '$r/proc' '$r/sys' '$r/dev' 2>/dev/null || true; rm -rf '$work'" EXIT
  log "dom0 root: debootstrap $SUITE (${#DOM0_PACKAGES[@]} packages; a few minutes)"
  local first=() p
  for p in "${DOM0_PACKAGES[@]}"; do [ "$p" = linux-image-amd64 ] || first+=("$p"); done
  debootstrap --variant=minbase --include="$(IFS=,; echo "${first[*]}")" "$SUITE" "$r" "$(mirror)" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
  # the generic kernel separately, with /proc and /dev, so its initramfs is generated normally
  mount -t proc proc "$r/proc"; mount --rbind /dev "$r/dev"; mount -t sysfs sys "$r/sys"
  DEBIAN_FRONTEND=noninteractive chroot "$r" apt-get install -y -q --no-install-recommends linux-image-amd64 >"$work/kernel.log" 2>&1 \
    || { tail -n 30 "$work/kernel.log" >&2; die "installing linux-image-amd64 failed"; }
  umount -R "$r/proc" "$r/sys" "$r/dev"
  ls "$r"/boot/vmlinuz-*-amd64 >/dev/null 2>&1 && ls "$r"/boot/xen-*.gz >/dev/null 2>&1 || die "no kernel or Xen in the dom0 root"
  rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/*_Packages
  tar --numeric-owner -C "$r" -cf - . | zstd -q -T0 -3 -o "$tarball.tmp"
  mv "$tarball.tmp" "$tarball"
  rm -rf "$work"; trap - EXIT
  for old in "$CACHE"/dom0-root-*.tar.zst; do [ "$old" = "$tarball" ] || rm -f "$old"; done
  log "dom0 root: built $tarball in $((SECONDS - t0)) s"
  echo "$tarball"
}

# ---- the dom0 disk image: root + harness overlay + Node.js, plus Xen and the dom0 kernel
build_image() {
  need_root
  local tarball key dir work r t0
  tarball=$(build_root)
  lock_cache
  key=$(image_key); dir=$CACHE/dom0-image-$key
  if [ -s "$dir/dom0.img" ]; then log "dom0 image: cached $dir"; echo "$dir"; return; fi
  t0=$SECONDS
  work=$(mktemp -d "$CACHE/image-build.XXXXXX"); r=$work/root
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  mkdir -p "$r" "$work/out"
  zstd -q -d -c "$tarball" | tar --numeric-owner -C "$r" -xf -
# ---- image steps (part of the image cache key)
  cp -a --no-preserve=ownership "$OVERLAY/." "$r/"
  install -m 755 "$(node_bin)" "$r/usr/local/bin/node"
  echo xen-dom0 >"$r/etc/hostname"
  printf '127.0.0.1\tlocalhost\n127.0.1.1\txen-dom0\n' >"$r/etc/hosts"
  echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' >"$r/etc/fstab"
  chroot "$r" passwd -d root >/dev/null
  # xenconsoled writes guest consoles to files only when asked: the agent reads them there
  grep -q '^XENCONSOLED_ARGS=' "$r/etc/default/xen" 2>/dev/null ||
    echo 'XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console"' >>"$r/etc/default/xen"
  mkdir -p "$r/var/log/xen/console" "$r/etc/xen/auto"
  # The agent's package is installed the way a site's installer does it (d-i's `in-target
  # dpkg -i`: a chroot into the new root), once per package, instead of at every boot: dpkg
  # in the emulated dom0 took 1-4 minutes of each run.
  if [ -n "${LOOPSHIP_AGENT_DEB:-}" ]; then
    cp "$LOOPSHIP_AGENT_DEB" "$r/tmp/loopship-agent.deb"
    chroot "$r" dpkg --force-unsafe-io -i /tmp/loopship-agent.deb >"$work/dpkg.log" 2>&1 ||
      { cat "$work/dpkg.log" >&2; die "dpkg -i of $LOOPSHIP_AGENT_DEB in the dom0 root failed"; }
    rm -f "$r/tmp/loopship-agent.deb"
  fi
  # dom0's initramfs with only what mounts its root (virtio disk, ext4): the default one
  # (MODULES=most, 35 MB) took seconds of emulated CPU to unpack and its udev to load
  local kver
  kver=$(cd "$r/boot" && ls vmlinuz-*-amd64 | grep -v cloud | sed 's/^vmlinuz-//' | sort -V | tail -n 1)
  echo 'MODULES=list' >"$r/etc/initramfs-tools/conf.d/loopship-xen.conf"
  printf '%s\n' virtio_pci virtio_blk ext4 >>"$r/etc/initramfs-tools/modules"
  mount -t proc proc "$r/proc"; mount --rbind /dev "$r/dev"; mount -t sysfs sys "$r/sys"
  # shellcheck disable=SC2064
  trap "umount -R '$r/proc' '$r/sys' '$r/dev' 2>/dev/null || true; rm -rf '$work'" EXIT
  chroot "$r" update-initramfs -u -k "$kver" >"$work/initramfs.log" 2>&1 ||
    { cat "$work/initramfs.log" >&2; die "update-initramfs in the dom0 root failed"; }
  umount -R "$r/proc" "$r/sys" "$r/dev"
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  systemctl --root="$r" enable loopship-xen-job.service loopship-xen-shell.service >/dev/null 2>&1
  systemctl --root="$r" mask serial-getty@hvc0.service apt-daily.timer apt-daily-upgrade.timer e2scrub_reap.service >/dev/null 2>&1 || true
  mkfs.ext4 -q -F -L dom0root -E lazy_itable_init=1,nodiscard -d "$r" "$work/out/dom0.img" 6G >/dev/null
  zcat "$(ls "$r"/boot/xen-*-amd64.gz | sort -V | tail -n 1)" >"$work/out/xen.elf" # QEMU's multiboot loader needs the ELF
  cp "$r/boot/vmlinuz-$kver" "$work/out/vmlinuz"
  cp "$r/boot/initrd.img-$kver" "$work/out/initrd.img"
# ---- end image steps
  rm -rf "$dir"; mv "$work/out" "$dir"
  rm -rf "$work"; trap - EXIT
  # older images are rebuilt from the tarball in seconds: keep only this one
  for old in "$CACHE"/dom0-image-*; do [ "$old" = "$dir" ] || rm -rf "$old"; done
  log "dom0 image: built $dir in $((SECONDS - t0)) s"
  echo "$dir"
}

# The agent: its .deb is already installed in the image (build_image); else the built tree
# (dist/, production node_modules, package.json, the systemd unit) under agent/ in the job tar.
add_agent() { # job.tar
  local tar=$1
  [ -z "${LOOPSHIP_AGENT_DEB:-}" ] || return 0
  [ -f "$PROJECT/dist/bin/loopship-agent.js" ] || die "no dist/bin/loopship-agent.js: run npm run build first"
  local list
  list=$(mktemp)
  (cd "$PROJECT" && npm ls --omit=dev --parseable --all 2>/dev/null | sed 1d | sed "s#^$PROJECT/##" | sort -u |
    awk 'NR==1 || index($0, prev "/") != 1 { print; prev = $0 }') >"$list"
  [ -s "$list" ] || die "npm ls found no production node_modules in $PROJECT"
  tar -rf "$tar" -C "$PROJECT" --transform 's#^#agent/#' --exclude='*.map' \
    dist package.json -T "$list"
  tar -rf "$tar" -C "$PROJECT/client-agent" --transform 's#^#agent/#' loopship-agent.service
  rm -f "$list"
}

run_host() {
  need_root
  local mode=$1; shift
  local job='' out='' serial_log=''
  while [ $# -gt 0 ]; do
    case $1 in
      --job) job=$(cd "$2" && pwd); shift 2;;
      --out) out=$2; shift 2;;
      --serial-log) serial_log=$2; shift 2;;
      *) die "unknown option $1";;
    esac
  done
  [ "$mode" = shell ] || [ -n "$job" ] || die "run needs --job DIR (a directory with job.sh)"
  [ -z "$job" ] || [ "$mode" = shell ] || [ -f "$job/job.sh" ] || die "$job/job.sh not found"
  local img run
  img=$(build_image)
  run=$(mktemp -d /var/tmp/loopship-xen-run.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$run'" EXIT
  qemu-img create -q -f qcow2 -F raw -b "$img/dom0.img" "$run/dom0.qcow2"
  # the job disk: a tar on a raw read-only disk (no filesystem to make or mount)
  tar -cf "$run/job.tar" --files-from /dev/null
  if [ -n "$job" ]; then
    if [ "$mode" = shell ]; then tar -rf "$run/job.tar" -C "$job" --exclude=./job.sh .; else tar -rf "$run/job.tar" -C "$job" .; fi
  fi
  add_agent "$run/job.tar"
  truncate -s 256M "$run/out.img"
  local serial=(-serial stdio) stdin=/dev/null shell_arg=''
  if [ "$mode" = shell ]; then serial=(-serial mon:stdio); stdin=/dev/stdin; shell_arg=' loopship.shell'; fi
  local mem=${XEN_QEMU_MEM:-2560} dom0=${XEN_DOM0_MEM:-1024M}
  # -cpu: `max` because PVH needs SVM (TCG emulates AMD's, not VMX). Under QEMU 7.2 TCG, SMAP
  # crashes dom0 (#PF in create_bounce_frame), RDTSCP kills PVH guests, and the AVX family
  # (TCG's AVX support is new in 7.2) is left out so that glibc and V8 stay on SSE code paths
  # and Xen's XSAVE area holds no YMM state. Xen is loaded by QEMU's multiboot loader: the
  # dom0 kernel and initrd are its modules (comma-separated -initrd); no bootloader involved.
  local cpu=${XEN_CPU:-max,-smap,-rdtscp,-avx,-avx2,-fma,-f16c,-vaes,-mpx}
  # eager-fpu: on an AMD CPU Xen switches FPU state lazily (CR0.TS, restore on #NM), and
  # under TCG that corrupts dom0's SSE registers once a domU uses the FPU: node computed
  # wrong hashes and died with SIGSEGV in dom0 while a PVH guest booted. Eager switching
  # restores the state on every context switch instead.
  local xen_args=${XEN_ARGS:-spec-ctrl=eager-fpu}
  # -nodefaults: no floppy, CD-ROM, parallel port or VGA for dom0's kernel to probe (seconds
  # each under TCG); the serial line, disks and NIC below are all it uses.
  local qemu=(qemu-system-x86_64 -accel tcg -cpu "$cpu" -smp "${XEN_SMP:-2}" -m "$mem"
    -display none -nodefaults -no-reboot -monitor none "${serial[@]}"
    -kernel "$img/xen.elf"
    -append "console=com1 com1=115200,8n1 dom0_mem=$dom0,max:$dom0 loglvl=warning guest_loglvl=warning $xen_args"
    -initrd "$img/vmlinuz root=/dev/vda rw console=hvc0 quiet$shell_arg,$img/initrd.img"
    -drive "file=$run/dom0.qcow2,format=qcow2,if=virtio,cache=unsafe"
    -drive "file=$run/job.tar,format=raw,if=virtio,readonly=on"
    -drive "file=$run/out.img,format=raw,if=virtio,cache=unsafe"
    -netdev user,id=net0 -device virtio-net-pci,netdev=net0)
  log "booting Xen + dom0 under QEMU (TCG; a minute or two before dom0 answers)"
  local rc=0
  if [ "$mode" = shell ]; then
    "${qemu[@]}" || rc=$?
    return $rc
  fi
  serial_log=${serial_log:-$run/serial.log}
  # XEN_NICE: QEMU's scheduling priority. libxl gives each hotplug script a fixed 40 s, and
  # with QEMU starved on a loaded machine (load 10-15 on 2 cores) the stock block script
  # overran it (xl create failed: domain torn down right after the loop device was set up).
  timeout --kill-after=30 "${XEN_TIMEOUT:-3600}" nice -n "${XEN_NICE:-0}" "${qemu[@]}" <"$stdin" | tee "$serial_log" || rc=$?
  if [ -n "$out" ]; then
    mkdir -p "$out"
    tar -xf "$run/out.img" -C "$out" 2>/dev/null || log "the job wrote no results"
  fi
  local jrc
  jrc=$(sed -n 's/.*XENJOB: .*job end rc=\([0-9]*\).*/\1/p' "$serial_log" | tail -n 1)
  if [ -z "$jrc" ]; then log "no job result on the console (QEMU exit $rc)"; return 2; fi
  return "$jrc"
}

case ${1:-} in
  root) build_root;;
  image) build_image;;
  run) shift; run_host run "$@";;
  shell) shift; run_host shell "$@";;
  *) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; [ -n "${1:-}" ] && exit 64; exit 0;;
esac
