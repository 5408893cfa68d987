#!/usr/bin/env bash
# Builds the Debian package of fulcrum without debhelper or cargo-deb:
#   cargo build --release --locked, then dpkg-deb --build --root-owner-group into
#   <target dir>/debian/fulcrum_<version>_<arch>.deb and prints that path as the last line.
# Needs: cargo, dpkg-deb and dpkg (both in dpkg), strip and objdump (binutils), gzip, install.
# dpkg-shlibdeps (dpkg-dev) computes Depends when present; without it NEEDED libraries are mapped
# to packages by hand. Runs as any user: file owners in the package are root:root either way.
#
# Environment: CARGO_TARGET_DIR (default: target/ in the source tree), DEB_OUT_DIR (default:
# <target dir>/debian), DEB_MAINTAINER (default: "Fulcrum developers <fulcrum@localhost>"),
# SOURCE_DATE_EPOCH (default: the last commit's time, so rebuilding a commit gives the same package).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
umask 022
export LC_ALL=C.UTF-8

die() { echo "build-deb: $*" >&2; exit 1; }
for tool in cargo dpkg dpkg-deb strip objdump gzip install; do
    command -v "$tool" >/dev/null 2>&1 || die "needs $tool"
done

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
OUT_DIR=${DEB_OUT_DIR:-$TARGET_DIR/debian}
case "$OUT_DIR" in /*) ;; *) OUT_DIR=$ROOT/$OUT_DIR ;; esac

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH # dpkg-deb clamps file times to it and stamps the ar members with it

# --- build ------------------------------------------------------------------------------------
cargo build --release --locked --bin fulcrum
BIN=$TARGET_DIR/release/fulcrum
[ -x "$BIN" ] || die "no binary at $BIN"

# Cargo's semver to a Debian version: a pre-release sorts before its release ("1.0.0-rc.1"
# becomes "1.0.0~rc.1"); build metadata after "+" is valid as it is.
CARGO_VERSION=$(cargo pkgid --locked --offline 2>/dev/null || cargo pkgid --locked)
CARGO_VERSION=${CARGO_VERSION##*[#@]}
VERSION=${CARGO_VERSION/-/\~}
ARCH=$(dpkg --print-architecture)
PKG=fulcrum
MAINTAINER=${DEB_MAINTAINER:-"Fulcrum developers <fulcrum@localhost>"}
DEB=$OUT_DIR/${PKG}_${VERSION}_${ARCH}.deb

# --- stage the tree ---------------------------------------------------------------------------
mkdir -p "$OUT_DIR"
STAGE=$(mktemp -d "$OUT_DIR/.stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
chmod 0755 "$STAGE"
mkdir "$STAGE/DEBIAN"
DOC=$STAGE/usr/share/doc/$PKG

# The binary, stripped as dh_strip does (symbols, .comment and .note go; the build id stays).
install -d "$STAGE/usr/bin"
strip --remove-section=.comment --remove-section=.note -o "$STAGE/usr/bin/fulcrum" "$BIN"
chmod 0755 "$STAGE/usr/bin/fulcrum"

install -D -m 0644 systemd/fulcrum.service "$STAGE/lib/systemd/system/fulcrum.service"
install -D -m 0644 etc/production.toml "$STAGE/etc/fulcrum/fulcrum.toml"

# Documentation, compressed as dh_compress and Debian policy 12.3 ask (gzip -9n).
install -d "$DOC" "$STAGE/usr/share/man/man1"
gzip -9nc README.md >"$DOC/README.md.gz"

# The version has no Debian revision, so this is a native package: its changelog is changelog.gz.
DATE_RFC2822=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
{
    echo "$PKG ($VERSION) unstable; urgency=medium"
    echo
    echo "  * Package built from the fulcrum source tree ($(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "version $CARGO_VERSION"))."
    echo "    Changes are listed in the project's git history."
    echo
    echo " -- $MAINTAINER  $DATE_RFC2822"
} | gzip -9n >"$DOC/changelog.gz"

# Man pages and shell completions, rendered by the binary from its clap definitions (src/cli.rs):
# fulcrum.1 and one page per subcommand, dated by SOURCE_DATE_EPOCH so a rebuild is identical.
GEN=$(mktemp -d "$OUT_DIR/.man.XXXXXX")
trap 'rm -rf "$STAGE" "$GEN"' EXIT
"$BIN" generate-man --date "$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)" "$GEN" >/dev/null
for page in "$GEN"/*.1; do
    gzip -9nc "$page" >"$STAGE/usr/share/man/man1/$(basename "$page").gz"
done
[ -f "$STAGE/usr/share/man/man1/fulcrum.1.gz" ] || die "generate-man wrote no fulcrum.1"
# Where bash-completion, zsh and fish look for completions a package installs.
install -d "$STAGE/usr/share/bash-completion/completions" "$STAGE/usr/share/zsh/vendor-completions" \
    "$STAGE/usr/share/fish/vendor_completions.d"
"$BIN" completions bash >"$STAGE/usr/share/bash-completion/completions/fulcrum"
"$BIN" completions zsh >"$STAGE/usr/share/zsh/vendor-completions/_fulcrum"
"$BIN" completions fish >"$STAGE/usr/share/fish/vendor_completions.d/fulcrum.fish"
chmod 0644 "$STAGE/usr/share/man/man1/"*.gz "$STAGE/usr/share/bash-completion/completions/fulcrum" \
    "$STAGE/usr/share/zsh/vendor-completions/_fulcrum" "$STAGE/usr/share/fish/vendor_completions.d/fulcrum.fish"

# copyright: the package's licence, plus every crate linked into the binary (normal dependencies
# without proc-macros, for this host's platform) with its declared licence.
CRATES=$(cargo tree --locked --offline -e normal,no-proc-macro --prefix none -f '{p} ({l})' 2>/dev/null |
    sed -e 's/ (\*)$//' | grep -v '^fulcrum ' | sort -u |
    sed -e 's/^\([^ ]*\) v/\1 /' -e 's/^/  /') || true
[ -n "$CRATES" ] || CRATES="  (list unavailable: cargo tree failed; see Cargo.lock)"
YEAR_LAST=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y)
YEAR_FIRST=$(git -C "$ROOT" log --reverse --format=%ad --date=format:%Y 2>/dev/null | sed -n 1p) || true
YEARS=${YEAR_FIRST:-$YEAR_LAST}
[ "$YEARS" = "$YEAR_LAST" ] || YEARS="$YEARS-$YEAR_LAST"
awk -v crates="$CRATES" -v years="$YEARS" \
    '$0 == "@CRATES@" { print crates; next } { sub(/@YEARS@/, years); print }' \
    packaging/debian/copyright >"$DOC/copyright"
chmod 0644 "$DOC"/*

# --- control files ----------------------------------------------------------------------------
shlib_depends() {
    local dir out
    if command -v dpkg-shlibdeps >/dev/null 2>&1; then
        dir=$(mktemp -d)
        mkdir "$dir/debian"
        printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$PKG" "$PKG" >"$dir/debian/control"
        out=$(cd "$dir" && dpkg-shlibdeps -O "-e$STAGE/usr/bin/fulcrum" 2>/dev/null) || out=
        rm -rf "$dir"
        out=$(printf '%s\n' "$out" | sed -n 's/^shlibs:Depends=//p')
        if [ -n "$out" ]; then echo "$out"; return; fi
    fi
    # By hand: each NEEDED library's package; libc6 at least at the newest GLIBC_ symbol version.
    local lib path pkg deps=() glibc
    for lib in $(objdump -p "$STAGE/usr/bin/fulcrum" | awk '$1 == "NEEDED" { print $2 }'); do
        path=$(/sbin/ldconfig -p | awk -v l="$lib" '$1 == l { print $NF; exit }')
        [ -n "$path" ] || die "cannot find $lib"
        pkg=$(dpkg -S "$path" 2>/dev/null || dpkg -S "$(readlink -f "$path")" 2>/dev/null ||
            dpkg -S "${path#/usr}" 2>/dev/null || dpkg -S "/usr$path" 2>/dev/null) ||
            die "no package owns $path"
        pkg=${pkg%%:*}
        if [ "$pkg" = libc6 ]; then
            glibc=$(objdump -T "$STAGE/usr/bin/fulcrum" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
            pkg="libc6 (>= $glibc)"
        fi
        deps+=("$pkg")
    done
    printf '%s\n' "${deps[@]}" | sort -u | paste -sd, | sed 's/,/, /g'
}
DEPENDS=$(shlib_depends)
[ -n "$DEPENDS" ] || die "could not compute Depends"

# Installed-Size as dpkg-gencontrol counts it: KiB per file rounded up, 1 per directory or link.
INSTALLED_SIZE=$(cd "$STAGE" && find . -path ./DEBIAN -prune -o ! -path . -printf '%y %s\n' |
    awk '$1 == "f" { s += int(($2 + 1023) / 1024); next } { s += 1 } END { print s }')

cat >"$STAGE/DEBIAN/control" <<EOF
Package: $PKG
Version: $VERSION
Architecture: $ARCH
Maintainer: $MAINTAINER
Installed-Size: $INSTALLED_SIZE
Depends: $DEPENDS
Section: net
Priority: optional
Description: L4/L7 load balancer daemon
 Fulcrum sits in front of a service's instances and spreads HTTP (L7) and
 raw TCP (L4) traffic across them. It is configured with one TOML file and
 takes the place of nginx upstream blocks or HAProxy backend sections.
 .
 It proxies HTTP/1.1 and h2c with pooled keep-alive upstream connections,
 streaming bodies and WebSocket tunnelling, and TCP with half-close. Servers
 are picked per upstream by weighted round robin, least connections, two
 random choices, peak EWMA or consistent hashing, with backup and down
 servers, retries on other servers, active health checks and passive
 ejection. SIGTERM drains in-flight work gracefully, and an admin endpoint
 serves health, Prometheus metrics and status.
 .
 The package ships a systemd unit (Type=notify, with a watchdog and reload)
 that runs the daemon as a dynamic user with only CAP_NET_BIND_SERVICE, man
 pages, and completions for bash, zsh and fish. The unit is enabled on
 installation but not started until the example configuration in
 /etc/fulcrum/fulcrum.toml is edited.
EOF
echo /etc/fulcrum/fulcrum.toml >"$STAGE/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "packaging/debian/$script" "$STAGE/DEBIAN/$script"
done
(cd "$STAGE" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
    xargs -0 md5sum) >"$STAGE/DEBIAN/md5sums"
chmod 0644 "$STAGE/DEBIAN/control" "$STAGE/DEBIAN/conffiles" "$STAGE/DEBIAN/md5sums"
find "$STAGE" -type d -exec chmod 0755 {} +

# --- build the .deb ---------------------------------------------------------------------------
dpkg-deb --build --root-owner-group "$STAGE" "$DEB" >&2
echo "$DEB"
