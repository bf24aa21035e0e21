// Files every loopship image gets, whatever its recipe: what the image is, the
// filesystem table, the ready marker on the console, and the unit that applies the host
// settings the agent writes into /etc/loopship/host.json (hostname, network, SSH keys,
// users). With boot.init busybox, also busybox init's inittab and the boot and shutdown
// scripts that stand in for systemd. Pure: returns path -> content; the pipeline writes them.
import type { Recipe } from './recipe.js';

export type GuestFile = { content: string; mode: number } | { link: string };

export function guestFiles(recipe: Recipe, facts: { uuid: string; digest: string }): Map<string, GuestFile> {
  const files = new Map<string, GuestFile>();
  const add = (path: string, content: string, mode = 0o644) => files.set(path, { content, mode });
  const link = (path: string, target: string) => files.set(path, { link: target });
  const marker = recipe.boot.ready_marker;

  add('etc/loopship/image.json', JSON.stringify({ name: recipe.name, version: recipe.version, arch: recipe.arch, recipe_digest: facts.digest }, null, 2) + '\n');
  // Declared settings, so the image can tell which keys it understands.
  add('etc/loopship/settings.json', JSON.stringify(recipe.settings, null, 2) + '\n');
  add('etc/fstab', `# loopship: the image is one ext4 filesystem, no partitions\nUUID=${facts.uuid} / ext4 defaults,noatime,errors=remount-ro 0 1\n`);
  add('etc/hostname', `${recipe.name.replace(/[^a-z0-9-]/g, '-').slice(0, 63)}\n`);
  add('etc/hosts', '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n');

  add(
    'usr/lib/loopship/ready',
    `#!/bin/sh
# Tells whoever watches the console (the agent, a test) that the appliance is up.
line="${marker} hostname=$(hostname) version=${recipe.version}"
# /dev/console is whatever console= the agent chose (ttyS0 under QEMU, hvc0 under Xen)
{ echo "$line" > /dev/console; } 2>/dev/null || true
echo "$line"
`,
    0o755,
  );
  add('usr/lib/loopship/host-config', HOST_CONFIG_SCRIPT, 0o755);
  if (recipe.boot.init === 'systemd') {
    add('usr/lib/systemd/system/loopship-ready.service', READY_UNIT);
    add('usr/lib/systemd/system/loopship-host-config.service', HOST_CONFIG_UNIT);
  } else {
    // busybox decides what to be by the name it is called by: init as PID 1, poweroff for
    // the kernel's orderly shutdown (xl shutdown runs /sbin/poweroff in the guest), and
    // acpid's handler under QEMU (system_powerdown is an ACPI power button press)
    for (const applet of ['init', 'poweroff', 'reboot', 'halt']) link(`usr/sbin/${applet}`, '/bin/busybox');
    add('etc/inittab', INITTAB);
    add('usr/lib/loopship/rc.sysinit', RC_SYSINIT, 0o755);
    add('usr/lib/loopship/rc.shutdown', RC_SHUTDOWN, 0o755);
    add('usr/lib/loopship/udhcpc.script', UDHCPC_SCRIPT, 0o755);
    add('etc/acpi/PWRF/00000080', '#!/bin/sh\n# ACPI power button (QEMU system_powerdown): an orderly shutdown\nexec /usr/sbin/poweroff\n', 0o755);
  }
  return files;
}

const READY_UNIT = `[Unit]
Description=Announce that the loopship appliance reached multi-user
After=multi-user.target loopship-host-config.service

[Service]
Type=oneshot
ExecStart=/usr/lib/loopship/ready
StandardOutput=journal

[Install]
WantedBy=multi-user.target
`;

const HOST_CONFIG_UNIT = `[Unit]
Description=Apply loopship host settings (/etc/loopship/host.json)
DefaultDependencies=no
After=local-fs.target systemd-remount-fs.service
Before=network-pre.target ssh.service systemd-networkd.service xrdp.service display-manager.service sysinit.target
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/loopship/host-config

[Install]
WantedBy=sysinit.target
`;

// boot.init busybox: what systemd does for a loopship image, in the same order, as three
// small scripts. busybox init runs sysinit first and waits for it, then the ready marker.
const INITTAB = `# loopship (boot.init: busybox): written by the builder
::sysinit:/usr/lib/loopship/rc.sysinit
::wait:/bin/sh -c '/usr/lib/loopship/ready >/dev/null'
::ctrlaltdel:/usr/sbin/reboot
::shutdown:/usr/lib/loopship/rc.shutdown
`;

const RC_SYSINIT = `#!/bin/sh
# busybox init's sysinit (boot.init: busybox): filesystems, modules, host name, host
# settings (network included), then the appliance's own programs in /etc/loopship/init.d/
# (run in name order with "start"; each returns, leaving its daemon in the background).
PATH=/usr/sbin:/usr/bin:/sbin:/bin; export PATH
bb=/bin/busybox
log() { echo "loopship-rc: $*"; }
# (an initramfs moves its /proc, /sys and /dev here; a boot without one has none)
mounted() { $bb grep -qs "^[^ ]* $1 " /proc/mounts; }
mounted /proc || $bb mount -t proc -o nosuid,nodev,noexec proc /proc
mounted /sys || $bb mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mounted /dev || $bb mount -t devtmpfs -o mode=755,nosuid devtmpfs /dev
$bb mkdir -p /dev/pts /dev/shm
$bb mount -t devpts -o gid=5,mode=620,ptmxmode=000 devpts /dev/pts
$bb mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm
$bb mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run && $bb mkdir -p /run/lock
$bb mount -o remount,rw / || log "cannot remount / read-write"
$bb mount -a 2>/dev/null
# drivers for the devices present (no udev here): NICs, the ACPI power button (evdev for
# acpid); not the CPU's feature modules (kvm and the like), which cost seconds under emulation
modprobe=modprobe; command -v modprobe >/dev/null || modprobe="$bb modprobe"
$bb find /sys/devices -name modalias -exec $bb cat {} + 2>/dev/null | $bb grep -v '^cpu:' | $bb sort -u | $bb xargs $modprobe -qab 2>/dev/null
$modprobe -q evdev 2>/dev/null
$bb hostname -F /etc/hostname 2>/dev/null
$bb ip link set lo up
/usr/lib/loopship/host-config
$bb acpid -c /etc/acpi -l /dev/null 2>/dev/null || true
for f in /etc/loopship/init.d/*; do
  [ -x "$f" ] && { "$f" start || log "$f start failed ($?)"; }
done
exit 0
`;

const RC_SHUTDOWN = `#!/bin/sh
# busybox init runs this on poweroff or reboot, before it signals every process: stop the
# appliance's programs, then leave the filesystem clean.
PATH=/usr/sbin:/usr/bin:/sbin:/bin; export PATH
bb=/bin/busybox
for f in $($bb ls -r /etc/loopship/init.d/ 2>/dev/null); do
  [ -x "/etc/loopship/init.d/$f" ] && "/etc/loopship/init.d/$f" stop
done
$bb sync
$bb umount -a -r 2>/dev/null
$bb mount -o remount,ro / 2>/dev/null
exit 0
`;

// udhcpc calls this with the lease in its environment (ip, mask, router, dns, interface)
const UDHCPC_SCRIPT = `#!/bin/sh
bb=/bin/busybox
case "$1" in
  deconfig) $bb ip addr flush dev "$interface"; $bb ip link set "$interface" up ;;
  bound|renew)
    $bb ip addr flush dev "$interface"
    $bb ip addr add "$ip/\${mask:-24}" dev "$interface"
    for r in $router; do $bb ip route replace default via "$r" dev "$interface"; break; done
    if [ -n "$dns" ] && [ ! -L /etc/resolv.conf ]; then
      for d in $dns; do echo "nameserver $d"; done > /etc/resolv.conf.udhcpc && $bb mv /etc/resolv.conf.udhcpc /etc/resolv.conf
    fi ;;
esac
exit 0
`;

// POSIX sh + jq (when installed). Runs every boot and is idempotent: the agent may change
// host.json between boots. Settings it understands: hostname, network.address (CIDR;
// empty = DHCP), network.gateway, network.dns (list), ssh.authorized_keys (list or
// newline-separated), users (list of {name, groups?, ssh_keys?} or "name,name").
// Anything else stays in host.json for the appliance's own units to read.
const HOST_CONFIG_SCRIPT = `#!/bin/sh
set -eu
conf=/etc/loopship/host.json
log() { echo "loopship-host-config: $*"; }

# SSH host keys are never shipped in an image: each host makes its own, once.
# Ed25519 and ECDSA only: RSA generation takes a minute on slow (emulated) CPUs.
if [ -x /usr/bin/ssh-keygen ] && [ -d /etc/ssh ]; then
  for t in ed25519 ecdsa; do
    [ -f /etc/ssh/ssh_host_\${t}_key ] || { ssh-keygen -q -t $t -N '' -f /etc/ssh/ssh_host_\${t}_key && log "generated SSH $t host key"; }
  done
fi

[ -f "$conf" ] || { log "no $conf; defaults (DHCP)"; }
if [ -f "$conf" ] && ! command -v jq >/dev/null 2>&1; then log "jq missing; only files written by the agent apply"; conf=/dev/null; fi
h='' addr='' gw='' dns='' keys=''
# One jq run reads every setting (settings at the top level or under "settings"; lists
# or strings), as shell-quoted assignments: jq is slow to start on emulated CPUs.
if [ -f "$conf" ] && [ "$conf" != /dev/null ]; then
  eval "$(jq -r '(. + (.settings // {})) as $s
    | def v($k): ($s[$k] // "") | if type == "array" then join("\\n") else tostring end;
    "h=\\(v("hostname") | @sh) addr=\\(v("network.address") | @sh) gw=\\(v("network.gateway") | @sh) dns=\\(v("network.dns") | @sh) keys=\\(v("ssh.authorized_keys") | @sh)"' "$conf")" ||
    log "cannot read $conf"
fi

if [ -n "$h" ]; then
  [ "$(cat /etc/hostname 2>/dev/null)" = "$h" ] || echo "$h" > /etc/hostname 2>/dev/null || true
  hostname "$h" 2>/dev/null || true
fi

# Network for systemd-networkd, in /run: files the agent wrote into /etc take precedence.
# (udev ships .link files in /usr/lib/systemd/network too: the daemon is what tells)
if [ -x /lib/systemd/systemd-networkd ]; then
  mkdir -p /run/systemd/network
  {
    echo "[Match]"; echo "Name=en* eth*"; echo; echo "[Network]"
    if [ -n "$addr" ]; then
      echo "Address=$addr"
      [ -n "$gw" ] && echo "Gateway=$gw"
      for d in $(echo "$dns" | tr ',' ' '); do echo "DNS=$d"; done
    else
      echo "DHCP=yes"
    fi
  } > /run/systemd/network/90-loopship.network
elif [ -x /usr/lib/loopship/udhcpc.script ]; then
  # boot.init busybox (no network daemon): the first NIC, now; DHCP waits in the background
  nic=''
  for n in /sys/class/net/*; do
    if [ -e "$n/device" ]; then nic=\${n##*/}; break; fi
  done
  if [ -n "$nic" ]; then
    busybox ip link set "$nic" up
    if [ -n "$addr" ]; then
      busybox ip addr replace "$addr" dev "$nic" && log "$nic: $addr"
      [ -z "$gw" ] || busybox ip route replace default via "$gw" dev "$nic"
    else
      busybox udhcpc -b -S -i "$nic" -s /usr/lib/loopship/udhcpc.script >/dev/null 2>&1 &
    fi
  fi
fi
dns=$(echo "$dns" | tr ',\\n' '  ')
if [ -n "$dns" ] && [ ! -L /etc/resolv.conf ]; then
  : > /etc/resolv.conf.loopship && for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf.loopship; done && mv /etc/resolv.conf.loopship /etc/resolv.conf || true
fi

if [ -n "$keys" ]; then
  install -d -m 700 /root/.ssh
  printf '%s\\n' "$keys" > /root/.ssh/authorized_keys.loopship && chmod 600 /root/.ssh/authorized_keys.loopship && mv /root/.ssh/authorized_keys.loopship /root/.ssh/authorized_keys
fi

# Users from host settings: never a password from the image; log in with keys or the
# appliance's own mechanism (e.g. xrdp against a password the site sets).
if [ -f "$conf" ] && [ "$conf" != /dev/null ]; then
  # users: a JSON list (possibly as a string, as the agent stores every setting) or "a,b"
  jq -c '(.users // .settings.users // []) | if type=="string" then (if startswith("[") then fromjson else (split(",") | map(select(length > 0) | {name: .})) end) else . end | .[] | if type=="string" then {name: .} else . end' "$conf" 2>/dev/null |
  while read -r u; do
    name=$(printf '%s' "$u" | jq -r '.name // empty')
    case "$name" in ''|*[!a-z0-9_-]*) log "skipping invalid user name"; continue;; esac
    id "$name" >/dev/null 2>&1 || useradd -m -s /bin/bash "$name"
    groups=$(printf '%s' "$u" | jq -r '(.groups // []) | join(",")')
    [ -n "$groups" ] && usermod -aG "$groups" "$name" 2>/dev/null || true
    ukeys=$(printf '%s' "$u" | jq -r '(.ssh_keys // []) | if type=="array" then .[] else . end')
    if [ -n "$ukeys" ]; then
      home=$(getent passwd "$name" | cut -d: -f6)
      install -d -m 700 -o "$name" -g "$name" "$home/.ssh"
      printf '%s\\n' "$ukeys" > "$home/.ssh/authorized_keys"; chown "$name:" "$home/.ssh/authorized_keys"; chmod 600 "$home/.ssh/authorized_keys"
    fi
    pw=$(printf '%s' "$u" | jq -r '.password_hash // empty')
    # an if, not "[ ] && ...": a user without a hash must not end the loop with a failure (set -e)
    if [ -n "$pw" ]; then usermod -p "$pw" "$name"; fi
  done
fi
# on disk before the appliance says it is ready: a guest cut off right after its marker
# (a test, a host's power) must come back with its host keys and settings (CI lost the
# authorized_keys written ~10 s before the marker to a kill right after it)
sync
exit 0
`;
