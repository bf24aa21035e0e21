#!/bin/bash
# Builds dist/loopship-agent_<version>_amd64.deb from the compiled project (dist/), bundled with
# the packages it imports (esbuild: packaging/bundle-agent.mjs), and the native zstd binding. See docs/remote-sites.md.
#
#   packaging/build-deb.sh [--version VER] [--bundle-node [PATH]] [--no-build] [--out DIR] [--compress xz|zstd|gzip]
#                          [--maintainer "NAME <EMAIL>"]
#
#   --version VER        Debian version (default: debian/changelog's newest, if of package.json's
#                        version, else that + "-1")
#   --bundle-node [PATH] carry the node binary (default: the one on PATH) in the package
#                        instead of depending on Debian's nodejs (>= 20): for bookworm dom0s,
#                        whose nodejs is 18. The version gets "+node<major>" appended.
#   --no-build           use dist/ as it is instead of running `npm run build`
#   --out DIR            where the .deb goes (default: dist/)
#   --compress TYPE      dpkg-deb compression: xz (default, smallest), zstd (much faster to
#                        build, needs dpkg >= 1.21.18 on the host, bookworm has it; bookworm's
#                        lintian cannot read it: check an xz build), gzip
#   --maintainer M       the Maintainer field and changelog signature (default: $DEBFULLNAME
#                        <$DEBEMAIL> as dch uses them, else git's user.name <user.email>)
#
# Needs: dpkg-deb, debhelper (dh_strip, dh_shlibdeps, dh_gencontrol, ...), npm, node, the
# project's node_modules (npm ci: esbuild). Runs as any user (Rules-Requires-Root: no: files are
# root-owned through dpkg-deb --root-owner-group). Not a source package: the tree is staged
# here and debhelper's per-package steps run on it (debian/control + debian/changelog are
# generated in the staging dir), which is what a debian/rules would call after the build.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
version=""
bundle_node=""
build=1
out="$top/dist"
compress=xz
maintainer=""

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
    --maintainer) [ $# -ge 2 ] || die "--maintainer needs NAME <EMAIL>"; maintainer=$2; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

for tool in dpkg-deb npm node dh_gencontrol dh_strip dh_shlibdeps; do
  command -v "$tool" >/dev/null || die "$tool is not installed (dh_*: apt-get install debhelper)"
done

cd "$top"
upstream=$(node -p 'require("./package.json").version')
# the newest packaging/debian/changelog entry when it is of this upstream version, else -1
if [ -z "$version" ]; then
  version=$(sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' "$here/debian/changelog")
  [ "${version%-*}" = "$upstream" ] || version="$upstream-1"
fi
if [ -n "$bundle_node" ]; then
  node_version=$("$bundle_node" --version | sed 's/^v//')
  version="$version+node${node_version%%.*}"
fi
# Debian versions: digits first, then [A-Za-z0-9.+~-]
[[ "$version" =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || die "not a valid Debian version: $version"
# who built it: a real address (lintian: bogus-mail-host), never one made up here
if [ -z "$maintainer" ] && [ -n "${DEBEMAIL:-}" ]; then
  case "$DEBEMAIL" in *'<'*) maintainer=$DEBEMAIL ;; *) maintainer="${DEBFULLNAME:-loopship maintainers} <$DEBEMAIL>" ;; esac
fi
if [ -z "$maintainer" ] && name=$(git -C "$top" config user.name 2>/dev/null) && email=$(git -C "$top" config user.email 2>/dev/null); then
  maintainer="$name <$email>"
fi
[ -n "$maintainer" ] || die "no maintainer: pass --maintainer \"NAME <EMAIL>\" or set DEBEMAIL (and DEBFULLNAME)"
[[ "$maintainer" =~ ^[^\<\>]+\ \<[^@\<\>\ ]+@[^@\<\>\ ]+\>$ ]] || die "--maintainer: expected NAME <EMAIL>, got $maintainer"

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
# debhelper's layout: debian/control, debian/changelog, and the package's tree in debian/PACKAGE
pkg="$stage/debian/loopship-agent"
lib="$pkg/usr/lib/loopship-agent"
mkdir -p "$lib" "$pkg/DEBIAN"

# --- the agent bundled: one ES module, its decode worker and chunks loaded on first use
# (packaging/bundle-agent.mjs: a start reads a few files instead of ~700), and the one package that cannot be bundled: the
# native zstd binding, only what it loads at run time
command -v node >/dev/null && [ -f node_modules/esbuild/package.json ] || die "esbuild is missing: npm ci (it is a devDependency)"
bundled=$(LOOPSHIP_PACKAGE_VERSION=$version node "$here/bundle-agent.mjs" "$lib") || die "bundling the agent failed"
[ -f "$lib/loopship-agent.js" ] && [ -f "$lib/decode-worker.js" ] || die "the bundle is incomplete"
# a module the wrapper below hands to node, not a command: no #! line (lintian would want a
# dependency on the node it names, which the +node build does not have), not executable
sed -i '1{/^#!/d}' "$lib/loopship-agent.js"
chmod 0644 "$lib/loopship-agent.js"
z=node_modules/zstd-napi
[ -f "$z/build/Release/binding.node" ] || die "zstd-napi has no compiled binding (npm rebuild zstd-napi)"
mkdir -p "$lib/node_modules/zstd-napi/build/Release"
cp -a "$z/package.json" "$z/binding.js" "$z/dist" "$lib/node_modules/zstd-napi/"
# its licence with the others (lintian: documentation belongs in /usr/share/doc)
for f in "$z/LICENSE" "$z/NOTICE"; do
  [ -f "$f" ] && install -D -m 0644 "$f" "$pkg/usr/share/doc/loopship-agent/licenses/zstd-napi/$(basename "$f")"
done
# a shared object node dlopen()s: not executable (lintian: shared-library-is-executable); dh_strip strips it below
install -m 0644 "$z/build/Release/binding.node" "$lib/node_modules/zstd-napi/build/Release/"
find "$lib/node_modules" \( -name '*.d.ts' -o -name '*.map' \) -type f -delete
node -e '
  const pkg = require(process.argv[1]);
  process.stdout.write(JSON.stringify({ name: "loopship-agent", version: pkg.version, private: true, type: "module" }, null, 2) + "\n");
' "$top/package.json" > "$lib/package.json"
# the bundled packages' licences (their files are no longer shipped as such)
licences="$pkg/usr/share/doc/loopship-agent/licenses"
while IFS= read -r dir; do
  [ -n "$dir" ] || continue
  # node_modules/NAME, or OTHER/node_modules/NAME when node_modules is a link to another checkout
  name=${dir#*node_modules/}
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
  # stripped by dh_strip, its libraries (libc6, libstdc++6, libgcc-s1) found by dh_shlibdeps
  install -D -m 0755 "$bundle_node" "$lib/node/bin/node"
  node_dep=""
  # what lintian says about Node.js's own release binary, which this variant carries because
  # bookworm's nodejs is 18: it is built by Node.js, not by Debian
  install -D -m 0644 /dev/stdin "$pkg/usr/share/lintian/overrides/loopship-agent" <<'EOF'
# Node.js links its own zlib (and OpenSSL, ICU...) statically: the release binary as Node.js builds it
loopship-agent: embedded-library zlib [usr/lib/loopship-agent/node/bin/node]
# Node.js's release binaries are not position-independent executables, nor built with _FORTIFY_SOURCE
loopship-agent: hardening-no-pie [usr/lib/loopship-agent/node/bin/node]
loopship-agent: hardening-no-fortify-functions [usr/lib/loopship-agent/node/bin/node]
# strings in V8 and Node.js's own messages
loopship-agent: spelling-error-in-binary * [usr/lib/loopship-agent/node/bin/node]
EOF
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
# the configuration's example, not /etc/loopship/agent.yaml: init writes that file, and a
# conffile it rewrote made every later upgrade stop at dpkg's prompt (see debian/preinst).
# Not under /usr/share/doc, which minimal installs may leave out (dpkg path-exclude).
install -D -m 0644 "$here/debian/agent.example.yaml" "$pkg/usr/share/loopship-agent/agent.yaml"
install -D -m 0644 "$here/loopship-agent.8" "$pkg/usr/share/man/man8/loopship-agent.8"
install -d -m 0755 "$pkg/usr/share/doc/loopship-agent"
install -m 0644 "$here/debian/copyright" "$pkg/usr/share/doc/loopship-agent/copyright"
[ -f "$top/docs/remote-sites.md" ] && install -m 0644 "$top/docs/remote-sites.md" "$pkg/usr/share/doc/loopship-agent/remote-sites.md"
# /var/lib/loopship is not shipped: the postinst makes it (0700, the agent's alone) and so
# does the unit's StateDirectory=; a shipped one would be reset to dpkg's mode on every upgrade

# maintainer scripts: dh_installdeb puts them into DEBIAN/
for s in preinst postinst prerm postrm; do install -m 0755 "$here/debian/$s" "$stage/debian/loopship-agent.$s"; done

# the changelog: its entries, signed by this build's maintainer, and one for this build's
# version when it is not the newest entry's (a +node build, a --version of the caller's)
{
  top_version=$(sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' "$here/debian/changelog")
  if [ "$top_version" != "$version" ]; then
    printf 'loopship-agent (%s) unstable; urgency=medium\n\n  * Built from loopship %s%s.\n\n -- %s  %s\n\n' \
      "$version" "$upstream" "${bundle_node:+ with Node.js $node_version of the build host}" "$maintainer" "$(date -R -u ${SOURCE_DATE_EPOCH:+-d @$SOURCE_DATE_EPOCH})"
  fi
  sed "s|@MAINTAINER@|$maintainer|" "$here/debian/changelog"
} > "$stage/debian/changelog"

deps="e2fsprogs, mount, init-system-helpers (>= 1.50)"
[ -z "$node_dep" ] || deps="$node_dep, $deps"
cat > "$stage/debian/control" <<EOF
Source: loopship-agent
Section: admin
Priority: optional
Maintainer: $maintainer
Build-Depends: debhelper-compat (= 13)
Standards-Version: 4.6.2
Rules-Requires-Root: no

Package: loopship-agent
Architecture: amd64
Depends: \${shlibs:Depends}, \${misc:Depends}, $deps
Recommends: xen-utils | qemu-system-x86
Suggests: xen-system-amd64
Description: loopship agent: signed appliance images on Xen hosts
 Fetches, verifies, installs, configures, boots and upgrades loopship
 appliance images (signed loopback ext4 disk images) on a Xen dom0 or,
 without Xen, under QEMU. Trusts only the pinned root key; only chunks not
 already on the host are fetched; upgrades are health-checked and rolled
 back on failure.
 .
 The service starts once /etc/loopship/agent.yaml exists (loopship-agent
 init writes it; /usr/share/loopship-agent/agent.yaml is a commented
 example). Purging the package removes /etc/loopship and /var/lib/loopship,
 including the installed appliance images.
EOF

# Debian's own steps where they do the job (util-linux is Essential: no dependency on it).
# dh_strip: binding.node (and node) without debug symbols; dh_shlibdeps: the libraries they
# link, as ${shlibs:Depends} (binding.node's napi_* symbols come from node itself, not from a
# library: dpkg-shlibdeps says so, which is dropped unless it fails); dh_installchangelogs +
# dh_compress: changelog.Debian.gz, the man page and larger docs compressed; dh_installdeb:
# the maintainer scripts (and conffiles: none, on purpose); dh_gencontrol: DEBIAN/control
# with Installed-Size; dh_md5sums: for `dpkg --verify`; dh_builddeb: dpkg-deb.
mkdir -p "$out"
(
  cd "$stage"
  dh_installchangelogs
  dh_compress
  dh_strip --no-automatic-dbgsym
  dh_shlibdeps 2>"$stage/shlibdeps.log" || { cat "$stage/shlibdeps.log" >&2; exit 1; }
  dh_installdeb
  dh_gencontrol -- "-v$version"
  dh_md5sums
  dh_builddeb --destdir="$out" -- "-Z$compress"
) >&2  # no `|| die` here: it would turn set -e off inside; dh_* say what failed
deb="$out/loopship-agent_${version}_amd64.deb"
[ -f "$deb" ] || die "dh_builddeb wrote no $deb"
echo "$deb"
