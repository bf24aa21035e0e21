#!/bin/bash
# Builds dist/loopship-agent_<version>_amd64.deb from the compiled project (dist/), bundled with
# the packages it imports (esbuild: packaging/bundle-agent.mjs), and the native zstd binding. See docs/remote-sites.md.
#
#   packaging/build-deb.sh [--version VER] [--bundle-node [PATH]] [--no-build] [--out DIR] [--compress xz|zstd|gzip]
#
#   --version VER        Debian version (default: package.json version + "-1")
#   --bundle-node [PATH] carry the node binary (default: the one on PATH) in the package
#                        instead of depending on Debian's nodejs (>= 20): for bookworm dom0s,
#                        whose nodejs is 18. The version gets "+node<major>" appended.
#   --no-build           use dist/ as it is instead of running `npm run build`
#   --out DIR            where the .deb goes (default: dist/)
#   --compress TYPE      dpkg-deb compression: xz (default, smallest), zstd (much faster to
#                        build, needs dpkg >= 1.21.18 on the host, bookworm has it), gzip
#
# Needs: dpkg-deb, npm, node, the project's node_modules (npm ci: esbuild). Runs as any user (ownership is set to root by dpkg-deb --root-owner-group).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
version=""
bundle_node=""
build=1
out="$top/dist"
compress=xz

die() { echo "build-deb: error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --version) [ $# -ge 2 ] || die "--version needs a value"; version=$2; shift 2 ;;
    --bundle-node)
      if [ $# -ge 2 ] && [ "${2#-}" = "$2" ]; then bundle_node=$2; shift 2; else bundle_node=$(command -v node || true); shift; fi
      [ -n "$bundle_node" ] && [ -x "$bundle_node" ] || die "--bundle-node: no executable node binary found"
      ;;
    --no-build) build=0; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
    --compress)
      [ $# -ge 2 ] || die "--compress needs xz, zstd or gzip"
      case "$2" in xz|zstd|gzip) compress=$2 ;; *) die "--compress: expected xz, zstd or gzip, got $2" ;; esac
      shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

for tool in dpkg-deb npm node; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done

cd "$top"
upstream=$(node -p 'require("./package.json").version')
[ -n "$version" ] || version="$upstream-1"
if [ -n "$bundle_node" ]; then
  node_version=$("$bundle_node" --version | sed 's/^v//')
  version="$version+node${node_version%%.*}"
fi
# Debian versions: digits first, then [A-Za-z0-9.+~-]
[[ "$version" =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || die "not a valid Debian version: $version"

if [ "$build" = 1 ]; then
  # tsc emits even when someone else's in-progress file has a type error; the agent's
  # own files must be there, which is checked below
  npm run --silent build >&2 || echo "build-deb: warning: tsc reported errors (checked below that the agent's files were emitted)" >&2
fi
for f in dist/bin/loopship-agent.js dist/client-agent/cli.js dist/client-agent/decode-worker.js; do
  [ -f "$f" ] || die "$f is missing: run npm run build"
done

stage=$(mktemp -d "${TMPDIR:-/tmp}/loopship-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
pkg="$stage/pkg"
lib="$pkg/usr/lib/loopship-agent"
mkdir -p "$lib" "$pkg/DEBIAN"

# --- the agent bundled: one ES module, its decode worker and chunks loaded on first use
# (packaging/bundle-agent.mjs: a start reads a few files instead of ~700), and the one package that cannot be bundled: the
# native zstd binding, only what it loads at run time
command -v node >/dev/null && [ -f node_modules/esbuild/package.json ] || die "esbuild is missing: npm ci (it is a devDependency)"
bundled=$(LOOPSHIP_PACKAGE_VERSION=$version node "$here/bundle-agent.mjs" "$lib") || die "bundling the agent failed"
[ -f "$lib/loopship-agent.js" ] && [ -f "$lib/decode-worker.js" ] || die "the bundle is incomplete"
z=node_modules/zstd-napi
[ -f "$z/build/Release/binding.node" ] || die "zstd-napi has no compiled binding (npm rebuild zstd-napi)"
mkdir -p "$lib/node_modules/zstd-napi/build/Release"
cp -a "$z/package.json" "$z/binding.js" "$z/dist" "$z/LICENSE" "$lib/node_modules/zstd-napi/"
[ -f "$z/NOTICE" ] && cp -a "$z/NOTICE" "$lib/node_modules/zstd-napi/"
cp -a "$z/build/Release/binding.node" "$lib/node_modules/zstd-napi/build/Release/"
find "$lib/node_modules" \( -name '*.d.ts' -o -name '*.map' \) -type f -delete
node -e '
  const pkg = require(process.argv[1]);
  process.stdout.write(JSON.stringify({ name: "loopship-agent", version: pkg.version, private: true, type: "module" }, null, 2) + "\n");
' "$top/package.json" > "$lib/package.json"
# the bundled packages' licences (their files are no longer shipped as such)
licences="$pkg/usr/share/doc/loopship-agent/licenses"
while IFS= read -r dir; do
  [ -n "$dir" ] || continue
  name=${dir#node_modules/}
  found=0
  for f in "$dir"/LICEN[CS]E* "$dir"/license* "$dir"/COPYING* "$dir"/NOTICE*; do
    [ -f "$f" ] || continue
    install -D -m 0644 "$f" "$licences/$name/$(basename "$f")"; found=1
  done
  # a package without a licence file: its package.json names the licence
  [ "$found" = 1 ] || install -D -m 0644 "$dir/package.json" "$licences/$name/package.json"
done <<<"$bundled"

# --- the runtime, if carried
if [ -n "$bundle_node" ]; then
  install -D -m 0755 "$bundle_node" "$lib/node/bin/node"
  strip --strip-unneeded "$lib/node/bin/node" 2>/dev/null || true
  node_dep="libc6 (>= 2.28), libstdc++6 (>= 9), libgcc-s1"
else
  node_dep="nodejs (>= 20)"
fi

# --- wrapper, unit, configuration, man page, docs
install -D -m 0755 /dev/stdin "$pkg/usr/bin/loopship-agent" <<'EOF'
#!/bin/sh
# loopship-agent: runs the agent with the node the package carries, else Debian's
lib=/usr/lib/loopship-agent
if [ -x "$lib/node/bin/node" ]; then node="$lib/node/bin/node"; else node=/usr/bin/node; fi
exec "$node" "$lib/loopship-agent.js" "$@"
EOF
# bookworm's systemd still looks in /lib as well; /usr/lib works with and without usrmerge
install -D -m 0644 client-agent/loopship-agent.service "$pkg/usr/lib/systemd/system/loopship-agent.service"
install -D -m 0644 "$here/debian/loopship-agent.service.d/debian.conf" "$pkg/usr/lib/systemd/system/loopship-agent.service.d/debian.conf"
install -D -m 0644 "$here/debian/agent.yaml" "$pkg/etc/loopship/agent.yaml"
install -D -m 0644 /dev/null "$pkg/usr/share/man/man8/loopship-agent.8.gz"
gzip -9n < "$here/loopship-agent.8" > "$pkg/usr/share/man/man8/loopship-agent.8.gz"
install -d -m 0755 "$pkg/usr/share/doc/loopship-agent"
gzip -9n < "$here/debian/changelog" > "$pkg/usr/share/doc/loopship-agent/changelog.Debian.gz"
install -m 0644 "$here/debian/copyright" "$pkg/usr/share/doc/loopship-agent/copyright"
[ -f "$top/docs/remote-sites.md" ] && install -m 0644 "$top/docs/remote-sites.md" "$pkg/usr/share/doc/loopship-agent/remote-sites.md"
# state lives under /var/lib/loopship (mode set again in postinst)
install -d -m 0700 "$pkg/var/lib/loopship"

for s in postinst prerm postrm; do install -m 0755 "$here/debian/$s" "$pkg/DEBIAN/$s"; done
printf '/etc/loopship/agent.yaml\n' > "$pkg/DEBIAN/conffiles"
# md5sums of every shipped file but the conffiles (as dh_md5sums): `dpkg --verify loopship-agent`
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -print | sed 's#^\./##' | grep -vxF -f <(sed 's#^/##' DEBIAN/conffiles) |
  LC_ALL=C sort | xargs -d '\n' md5sum) > "$pkg/DEBIAN/md5sums"

installed_kib=$(du -sk --apparent-size "$pkg" | cut -f1)
cat > "$pkg/DEBIAN/control" <<EOF
Package: loopship-agent
Version: $version
Architecture: amd64
Maintainer: loopship maintainers <loopship@localhost>
Installed-Size: $installed_kib
Depends: $node_dep, e2fsprogs, util-linux, mount, init-system-helpers (>= 1.50)
Recommends: xen-utils | qemu-system-x86
Suggests: xen-system-amd64
Section: admin
Priority: optional
Description: loopship agent: signed appliance images on Xen hosts
 Fetches, verifies, installs, configures, boots and upgrades loopship
 appliance images (signed loopback ext4 disk images) on a Xen dom0 or,
 without Xen, under QEMU. Trusts only the pinned root key; only chunks not
 already on the host are fetched; upgrades are health-checked and rolled
 back on failure.
 .
 The service starts once /etc/loopship/agent.yaml is configured
 (loopship-agent init). Purging the package removes /etc/loopship and
 /var/lib/loopship, including the installed appliance images.
EOF

mkdir -p "$out"
deb="$out/loopship-agent_${version}_amd64.deb"
dpkg-deb --root-owner-group "-Z$compress" --build "$pkg" "$deb" >&2
echo "$deb"
