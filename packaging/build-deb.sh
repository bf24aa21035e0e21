#!/bin/bash
# Builds dist/loopship-agent_<version>_amd64.deb from the compiled project (dist/) and the
# production node_modules the agent imports at run time. See docs/remote-sites.md.
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
# Needs: dpkg-deb, npm, node. Runs as any user (ownership is set to root by dpkg-deb --root-owner-group).
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
for f in dist/bin/loopship-agent.js dist/bin/run.js dist/client-agent/cli.js dist/format/index.js dist/keys/index.js; do
  [ -f "$f" ] || die "$f is missing: run npm run build"
done

stage=$(mktemp -d "${TMPDIR:-/tmp}/loopship-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
pkg="$stage/pkg"
lib="$pkg/usr/lib/loopship-agent"
mkdir -p "$lib/dist" "$pkg/DEBIAN"

# --- the compiled agent: only the parts it imports (no builder, repo server, bench)
for d in bin client-agent format keys; do
  mkdir -p "$lib/dist/$d"
  (cd "dist/$d" && find . -name '*.js' -print0 | xargs -0 cp --parents -t "$lib/dist/$d")
done
rm -f "$lib/dist/bin/loopship.js"   # the publisher CLI is not part of the agent

# --- run-time node_modules: the packages the agent's code imports, and what they need.
# A package.json listing only those, pruned from a copy of the project's tree (no registry access).
needed=$(grep -rhoE "(from|import\(|require\() ?'[^./'][^']*'" "$lib/dist" \
  | sed -E "s/^[^']*'([^']*)'.*/\1/" | grep -v '^node:' \
  | sed -E 's#^(@[^/]+/[^/]+|[^@/][^/]*).*#\1#' | sort -u)
[ -n "$needed" ] || die "found no imports in the compiled agent"
mkdir -p "$stage/npm"
cp package.json package-lock.json "$stage/npm/"
# hard links when on the same file system: prune only unlinks, it never writes into a file
cp -al node_modules "$stage/npm/node_modules" 2>/dev/null || { rm -rf "$stage/npm/node_modules"; cp -a node_modules "$stage/npm/node_modules"; }
NEEDED="$needed" node -e '
  const fs = require("fs"); const p = process.argv[1];
  const pkg = JSON.parse(fs.readFileSync(p, "utf8"));
  const keep = new Set(process.env.NEEDED.split("\n"));
  const missing = [...keep].filter((n) => !(n in pkg.dependencies));
  if (missing.length) { console.error("build-deb: error: imported but not in dependencies: " + missing.join(", ")); process.exit(2); }
  pkg.dependencies = Object.fromEntries(Object.entries(pkg.dependencies).filter(([n]) => keep.has(n)));
  delete pkg.devDependencies; delete pkg.scripts;
  fs.writeFileSync(p, JSON.stringify(pkg, null, 2));
' "$stage/npm/package.json"
(cd "$stage/npm" && npm prune --omit=dev --ignore-scripts --no-audit --no-fund --offline --silent >&2)
mv "$stage/npm/node_modules" "$lib/node_modules"
# native zstd: only the compiled binding is needed, not its sources or static library
z="$lib/node_modules/zstd-napi"
if [ -d "$z" ]; then
  [ -f "$z/build/Release/binding.node" ] || die "zstd-napi has no compiled binding (npm rebuild zstd-napi)"
  rm -rf "$z/deps" "$z/src" "$z/build/Release/obj.target" "$z/build/Release/.deps" "$z/build/Release/zstd.a" "$z/build/Release/obj" "$z/build/"*.mk "$z/build/Makefile" "$z/build/config.gypi"
fi
# type declarations, source maps, docs and tests are not needed at run time
find "$lib/node_modules" \( -name '*.d.ts' -o -name '*.d.mts' -o -name '*.d.cts' -o -name '*.map' -o -name '*.md' -o -name '*.markdown' \) -type f -delete
find "$lib/node_modules" -depth -type d \( -name test -o -name tests -o -name __tests__ -o -name docs -o -name example -o -name examples \) -exec rm -rf {} +
rm -rf "$lib/node_modules/.package-lock.json" "$lib/node_modules/.bin" "$lib/node_modules/.cache"
find "$lib/node_modules" -depth -type d -empty -delete
node -e '
  const pkg = require(process.argv[1]);
  process.stdout.write(JSON.stringify({ name: "loopship-agent", version: pkg.version, private: true, type: "module" }, null, 2) + "\n");
' "$top/package.json" > "$lib/package.json"

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
exec "$node" "$lib/dist/bin/loopship-agent.js" "$@"
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
install -d -m 0755 "$pkg/var/lib/loopship"

for s in postinst prerm postrm; do install -m 0755 "$here/debian/$s" "$pkg/DEBIAN/$s"; done
printf '/etc/loopship/agent.yaml\n' > "$pkg/DEBIAN/conffiles"

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
