// boot.initrd minimal: the builder's own initrd instead of initramfs-tools'. A loopship
// image is always one ext4 filesystem on a whole disk (xvda under Xen, vda under QEMU), so
// all an initrd has to do is load the disk driver, find the filesystem by its UUID and
// switch to it. initramfs-tools does that through udev (udevd, trigger, settle), which
// took 18 of the 33 s before the root was mounted under QEMU's software emulation; this one
// is busybox, its libraries and the block drivers (~1.5 MB). Made in the chroot by
// minimalInitrdScript(); pure text here, run by the customize stage.

/** Block drivers (with what they depend on): Xen's blkfront, virtio for QEMU. */
export const INITRD_MODULES = ['xen-blkfront', 'virtio_blk', 'virtio_pci'];

// /init of the initrd. Kernel arguments it reads: root= (UUID=, LABEL= or a device), init=,
// rw, loopship.rootwait= (seconds, default 60). A root that never appears is reported and the
// guest powers off: the agent's health check then sees it stopped at once instead of waiting
// for a marker.
const INIT = `#!/bin/busybox sh
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs -o mode=755,nosuid devtmpfs /dev
root='' init=/sbin/init mode=ro wait=60
for a in $($bb cat /proc/cmdline); do
  case $a in root=*) root=\${a#root=};; init=*) init=\${a#init=};; rw) mode=rw;; loopship.rootwait=*) wait=\${a#*=};; esac
done
case $wait in ''|*[!0-9]*) wait=60;; esac
fail() { echo "loopship-initrd: $*" >/dev/console; $bb sleep 2; $bb poweroff -f; }
[ -n "$root" ] || fail "no root= on the kernel command line"
# in dependency order; a driver whose hardware is absent loads and finds nothing
while read -r m; do $bb insmod "$m" 2>/dev/null; done </modules.order
uptime() { read -r u _ </proc/uptime; echo "\${u%.*}"; }
deadline=$(($(uptime) + wait)) dev=''
while :; do
  case $root in UUID=*|LABEL=*) dev=$($bb findfs "$root" 2>/dev/null);; *) dev=$root;; esac
  [ -n "$dev" ] && [ -b "$dev" ] && break
  [ "$(uptime)" -lt $deadline ] || fail "root $root did not appear within $wait s"
  $bb usleep 100000
done
$bb mount -t ext4 -o $mode "$dev" /newroot || fail "cannot mount $dev ($root) on /"
[ -e "/newroot$init" ] || [ -L "/newroot$init" ] || fail "no init $init in the root filesystem"
for d in dev proc sys; do $bb mount --move /$d /newroot/$d; done
exec $bb switch_root /newroot "$init"
`;

/**
 * Shell script (run in the image's chroot, sh -e) that writes /boot/initrd.img-<kernel>:
 * busybox with the libraries it loads, the drivers in load order, /init. Reproducible:
 * sorted entries, times at SOURCE_DATE_EPOCH, owner root, cpio --reproducible, gzip -n.
 */
export function minimalInitrdScript(modules = INITRD_MODULES): string {
  return `set -eu
k=$(ls /lib/modules | sort -V | tail -n 1)
[ -n "$k" ] || { echo "no kernel modules in /lib/modules" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "busybox is not installed" >&2; exit 1; }
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
mkdir -p "$w/bin" "$w/dev" "$w/proc" "$w/sys" "$w/newroot"
cp /bin/busybox "$w/bin/busybox"
# the libraries busybox loads, at the paths the loader looks for them
for lib in $(ldd /bin/busybox | sed -n 's/.*=> \\(\\/[^ ]*\\).*/\\1/p; s/^[[:space:]]*\\(\\/[^ ]*\\) (.*/\\1/p'); do
  mkdir -p "$w$(dirname "$lib")"; cp -L "$lib" "$w$lib"
done
: >"$w/modules.order"
modprobe -S "$k" --show-depends -a ${modules.join(' ')} >"$w/deps"
while read -r how path _; do
  [ "$how" = insmod ] || continue
  if grep -qxF "$path" "$w/modules.order"; then continue; fi
  mkdir -p "$w$(dirname "$path")"; cp "$path" "$w$path"; echo "$path" >>"$w/modules.order"
done <"$w/deps"
rm "$w/deps"
cat >"$w/init" <<'LOOPSHIP_INIT'
${INIT}LOOPSHIP_INIT
chmod 755 "$w/init"
find "$w" -exec touch -h -d "@\${SOURCE_DATE_EPOCH:-0}" {} +
(cd "$w" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet --reproducible -o -H newc -R 0:0) | gzip -n -9 >"/boot/initrd.img-$k"
echo "initrd.img-$k: $(grep -c . "$w/modules.order") modules, $(wc -c <"/boot/initrd.img-$k") bytes"
`;
}
