// Files every loopship image gets, whatever its recipe: what the image is, the
// filesystem table, the ready marker on the console, and the unit that applies the host
// settings the agent writes into /etc/loopship/host.json (hostname, network, SSH keys,
// users). Pure: returns path -> content; the pipeline writes them.
import type { Recipe } from './recipe.js';

export interface GuestFile {
  content: string;
  mode: number;
}

export function guestFiles(recipe: Recipe, facts: { uuid: string; digest: string }): Map<string, GuestFile> {
  const files = new Map<string, GuestFile>();
  const add = (path: string, content: string, mode = 0o644) => files.set(path, { content, mode });
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
  add(
    'usr/lib/systemd/system/loopship-ready.service',
    `[Unit]
Description=Announce that the loopship appliance reached multi-user
After=multi-user.target loopship-host-config.service

[Service]
Type=oneshot
ExecStart=/usr/lib/loopship/ready
StandardOutput=journal

[Install]
WantedBy=multi-user.target
`,
  );

  add('usr/lib/loopship/host-config', HOST_CONFIG_SCRIPT, 0o755);
  add(
    'usr/lib/systemd/system/loopship-host-config.service',
    `[Unit]
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
`,
  );
  return files;
}

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
if [ -d /usr/lib/systemd/network ] || [ -x /lib/systemd/systemd-networkd ]; then
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
  dns=$(echo "$dns" | tr ',\\n' '  ')
  if [ -n "$dns" ] && [ ! -L /etc/resolv.conf ]; then
    : > /etc/resolv.conf.loopship && for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf.loopship; done && mv /etc/resolv.conf.loopship /etc/resolv.conf || true
  fi
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
exit 0
`;
