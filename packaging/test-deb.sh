#!/usr/bin/env bash
# Builds the Debian package (packaging/build-deb.sh) and checks it without installing anything:
#   control fields, every expected path with its owner and mode, the conffile list; the extracted
#   binary's --version and `check` of the shipped config; the man pages (one per subcommand, each
#   rendered by man or groff) and the shell completions; `systemd-analyze verify` of the shipped
#   unit; lintian when installed; and the maintainer scripts run against stub systemctl,
#   deb-systemd-helper and deb-systemd-invoke in a private mount namespace where /run and /etc are
#   throwaway (tmpfs, overlay), with and without systemd "running".
# Needs: what build-deb.sh needs, plus systemd-analyze (systemd) for the unit check. Optional:
# lintian (apt-get install lintian), unshare with root for the maintainer-script runs (skipped
# otherwise). Environment as build-deb.sh; LINTIAN_ALLOW (default: the tags the placeholder
# maintainer address fulcrum@localhost causes) lists lintian errors that do not fail the test.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export LC_ALL=C.UTF-8

FAILED=0
pass() { echo "ok    $*"; }
fail() { echo "FAIL  $*"; FAILED=$((FAILED + 1)); }
skip() { echo "skip  $*"; }
check() { # check DESCRIPTION COMMAND...: pass when the command succeeds
    local what=$1; shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# --- build --------------------------------------------------------------------------------------
DEB=$(packaging/build-deb.sh | tail -n 1)
[ -f "$DEB" ] || { echo "build-deb.sh printed no package path" >&2; exit 1; }
CARGO_VERSION=$(cargo pkgid --locked --offline 2>/dev/null || cargo pkgid --locked)
CARGO_VERSION=${CARGO_VERSION##*[#@]}
VERSION=${CARGO_VERSION/-/\~}
ARCH=$(dpkg --print-architecture)
echo "package: $DEB ($(stat -c %s "$DEB") bytes)"
check "file name is fulcrum_${VERSION}_${ARCH}.deb" test "$(basename "$DEB")" = "fulcrum_${VERSION}_${ARCH}.deb"

# --- control ------------------------------------------------------------------------------------
dpkg-deb --info "$DEB"
field() { dpkg-deb --field "$DEB" "$1"; }
check "Package: fulcrum" test "$(field Package)" = fulcrum
check "Version: $VERSION" test "$(field Version)" = "$VERSION"
check "Architecture: $ARCH" test "$(field Architecture)" = "$ARCH"
check "Section: net" test "$(field Section)" = net
check "Priority: optional" test "$(field Priority)" = optional
check "Maintainer is set" test -n "$(field Maintainer)"
check "Depends has libc6 (>= ...)" grep -Eq '(^|, )libc6 \(>= [0-9.]+\)' <<<"$(field Depends)"
check "Description has a synopsis and a long text" \
    test "$(field Description | sed -n 1p)" != "" -a "$(field Description | wc -l)" -gt 3
check "conffiles lists /etc/fulcrum/fulcrum.toml" \
    test "$(dpkg-deb --info "$DEB" conffiles)" = /etc/fulcrum/fulcrum.toml
CTRL=$(dpkg-deb --ctrl-tarfile "$DEB" | tar -tvf -)
for script in postinst prerm postrm; do
    check "DEBIAN/$script is root-owned 0755" grep -Eq "^-rwxr-xr-x root/root .* \./$script\$" <<<"$CTRL"
done

# --- contents -----------------------------------------------------------------------------------
CONTENTS=$(dpkg-deb --contents "$DEB")
echo "$CONTENTS"
expect_path() { # MODE PATH
    check "$2 is $1 root/root" grep -Eq "^$1 root/root +[0-9]+ [0-9-]+ [0-9:]+ \.$2\$" <<<"$CONTENTS"
}
expect_path -rwxr-xr-x /usr/bin/fulcrum
expect_path -rw-r--r-- /lib/systemd/system/fulcrum.service
expect_path -rw-r--r-- /etc/fulcrum/fulcrum.toml
expect_path -rw-r--r-- /usr/share/doc/fulcrum/README.md.gz
expect_path -rw-r--r-- /usr/share/doc/fulcrum/copyright
expect_path -rw-r--r-- /usr/share/doc/fulcrum/changelog.gz
expect_path -rw-r--r-- /usr/share/man/man1/fulcrum.1.gz
expect_path -rw-r--r-- /usr/share/bash-completion/completions/fulcrum
expect_path -rw-r--r-- /usr/share/zsh/vendor-completions/_fulcrum
expect_path -rw-r--r-- /usr/share/fish/vendor_completions.d/fulcrum.fish
check "every directory is root/root 0755" \
    test -z "$(grep '^d' <<<"$CONTENTS" | grep -v '^drwxr-xr-x root/root ' || true)"
check "nothing but root/root owners" test -z "$(grep -v ' root/root ' <<<"$CONTENTS" || true)"

# --- extracted files ----------------------------------------------------------------------------
X=$TMP/root
dpkg-deb -x "$DEB" "$X"
dpkg-deb -e "$DEB" "$TMP/DEBIAN"
check "the binary is stripped" sh -c "! objdump -h '$X/usr/bin/fulcrum' | grep -q ' \.symtab '"
out=$("$X/usr/bin/fulcrum" --version)
echo "$out"
check "fulcrum --version prints $CARGO_VERSION" test "$out" = "fulcrum $CARGO_VERSION"
out=$("$X/usr/bin/fulcrum" check -c "$X/etc/fulcrum/fulcrum.toml" 2>&1) || true
echo "$out"
check "fulcrum check accepts the shipped configuration" test "$out" = "configuration OK"
check "the shipped configuration is etc/production.toml" cmp -s etc/production.toml "$X/etc/fulcrum/fulcrum.toml"
check "the shipped unit is systemd/fulcrum.service" cmp -s systemd/fulcrum.service "$X/lib/systemd/system/fulcrum.service"
check "the copyright file names Apache-2.0" grep -q '^License: Apache-2.0$' "$X/usr/share/doc/fulcrum/copyright"
check "the README is the source tree's" sh -c "zcat '$X/usr/share/doc/fulcrum/README.md.gz' | cmp -s - README.md"
for script in postinst prerm postrm; do
    check "DEBIAN/$script parses (sh -n)" sh -n "$TMP/DEBIAN/$script"
done
if (cd "$X" && md5sum --quiet -c "$TMP/DEBIAN/md5sums"); then pass "md5sums match"; else fail "md5sums match"; fi

# --- man pages and completions ------------------------------------------------------------------
# Generated from the clap definitions: a page per subcommand `fulcrum --help` lists, each of which
# must decode, carry its .TH title and render without a groff warning; completions that parse and,
# for bash, offer every subcommand when run.
SUBCOMMANDS=$("$X/usr/bin/fulcrum" --help | sed -n '/^Commands:$/,/^$/p' | awk 'NR > 1 && NF && $1 != "help" { print $1 }')
echo "subcommands: "$SUBCOMMANDS
check "fulcrum --help lists run, check and completions" \
    test "$(grep -cxE 'run|check|completions' <<<"$SUBCOMMANDS")" = 3
MAN=$X/usr/share/man/man1
check "man1 holds fulcrum.1.gz and one page per subcommand, nothing else" test "$(ls "$MAN")" = \
    "$({ echo fulcrum.1.gz; for s in $SUBCOMMANDS; do echo "fulcrum-$s.1.gz"; done; } | sort)"
for page in "$MAN"/*.1.gz; do
    name=$(basename "$page" .1.gz)
    title=$(tr '[:lower:]' '[:upper:]' <<<"$name")
    check "$name.1.gz decodes and has .TH $title 1" sh -c "gzip -dc '$page' | grep -q '^\.TH $title 1 '"
    if command -v man >/dev/null 2>&1; then
        warnings=$(MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null) || warnings="man failed: $warnings"
        rendered=$(MANWIDTH=80 man -l "$page" 2>/dev/null) || true
        [ -z "$warnings" ] || echo "$warnings"
        check "man -l $name.1.gz renders without warnings" test -z "$warnings"
        check "man -l $name.1.gz shows $title(1) and NAME" \
            bash -c 'grep -q "^$1(1) " <<<"$2" && grep -qx NAME <<<"$2"' _ "$title" "$rendered"
    elif command -v groff >/dev/null 2>&1; then
        check "groff renders $name.1.gz without warnings" \
            sh -c "gzip -dc '$page' | groff -man -Tutf8 -ww -z 2>&1 | awk 'END { exit NR > 0 }'"
    else
        skip "rendering $name.1.gz (neither man nor groff installed)"
    fi
done
for s in $SUBCOMMANDS; do
    check "fulcrum(1) refers to fulcrum-$s(1)" sh -c "gzip -dc '$MAN/fulcrum.1.gz' | grep -qxF 'fulcrum\\-$s(1)'"
done
BASH_COMP=$X/usr/share/bash-completion/completions/fulcrum
check "bash completion parses (bash -n)" bash -n "$BASH_COMP"
offered=$(bash --norc --noprofile -c 'source "$1"; COMP_WORDS=(fulcrum ""); COMP_CWORD=1
    _fulcrum fulcrum "" fulcrum; printf "%s\n" "${COMPREPLY[@]}"' _ "$BASH_COMP")
for s in $SUBCOMMANDS; do
    check "bash completes 'fulcrum <TAB>' with $s" grep -qxF "$s" <<<"$offered"
done
check "zsh completion starts #compdef fulcrum" \
    test "$(head -n 1 "$X/usr/share/zsh/vendor-completions/_fulcrum")" = "#compdef fulcrum"
check "fish completion completes fulcrum" grep -q '^complete -c fulcrum ' \
    "$X/usr/share/fish/vendor_completions.d/fulcrum.fish"
for shell in zsh fish; do
    comp=$(ls "$X/usr/share/$shell/"*/*fulcrum*)
    if command -v "$shell" >/dev/null 2>&1; then
        check "$shell completion parses ($shell -n)" "$shell" -n "$comp"
    else
        skip "$shell -n (not installed)"
    fi
done

# --- systemd unit -------------------------------------------------------------------------------
# The unit names /usr/bin/fulcrum and /etc/fulcrum/fulcrum.toml; verify a copy pointing into the
# extracted tree so nothing needs installing. Any diagnostic counts as a failure.
if command -v systemd-analyze >/dev/null 2>&1; then
    mkdir "$TMP/unit"
    sed -e "s|/usr/bin/fulcrum|$X/usr/bin/fulcrum|g" -e "s|/etc/fulcrum/|$X/etc/fulcrum/|g" \
        "$X/lib/systemd/system/fulcrum.service" >"$TMP/unit/fulcrum.service"
    if out=$(systemd-analyze verify --man=no "$TMP/unit/fulcrum.service" 2>&1) && [ -z "$out" ]; then
        pass "systemd-analyze verify"
    else
        echo "$out"
        fail "systemd-analyze verify"
    fi
    systemd-analyze security --offline=true "$TMP/unit/fulcrum.service" 2>/dev/null | tail -n 1 || true
else
    skip "systemd-analyze verify (systemd-analyze not installed)"
fi

# --- lintian ------------------------------------------------------------------------------------
LINTIAN_ALLOW=${LINTIAN_ALLOW:-bogus-mail-host bogus-mail-host-in-debian-changelog}
if command -v lintian >/dev/null 2>&1; then
    out=$(lintian --allow-root -EvIL +pedantic "$DEB" 2>&1) || true
    echo "$out"
    errors=$(grep '^E: ' <<<"$out" | awk '{ print $3 }' | sort -u | grep -vxF -f <(tr ' ' '\n' <<<"$LINTIAN_ALLOW") || true)
    if [ -z "$errors" ]; then pass "lintian: no errors (allowed: $LINTIAN_ALLOW)"; else fail "lintian errors: $errors"; fi
else
    skip "lintian (not installed: apt-get install lintian)"
fi

# --- maintainer scripts -------------------------------------------------------------------------
# Run DEBIAN/{postinst,prerm,postrm} as dpkg would, in a private mount namespace: /run is a fresh
# tmpfs (with or without /run/systemd/system), /etc an overlay whose writes land in $TMP, and
# systemctl, deb-systemd-helper and deb-systemd-invoke are stubs that log their arguments. The
# real fulcrum (extracted) does the config check.
cat >"$TMP/scripts-test.sh" <<'EOF'
set -eu
T=$1
mount -t tmpfs tmpfs /run
mkdir -p "$T/up" "$T/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$T/up,workdir=$T/work" /etc
mkdir -p "$T/bin"
for stub in systemctl deb-systemd-helper deb-systemd-invoke; do
    cat >"$T/bin/$stub" <<STUB
#!/bin/sh
echo "$stub \$*" >>"$T/calls"
case " \$* " in *" was-enabled "*) exit "\${WAS_ENABLED:-0}" ;; esac
STUB
    chmod +x "$T/bin/$stub"
done
ln -s "$T/root/usr/bin/fulcrum" "$T/bin/fulcrum"
export PATH="$T/bin:/usr/sbin:/usr/bin:/sbin:/bin"
fails=0
# case NAME SYSTEMD(yes|no) EXPECTED-CALLS SCRIPT ARGS...: runs the script, compares the stub calls
case_() {
    name=$1 systemd=$2 expected=$3 script=$4; shift 4
    rm -rf /run/systemd; [ "$systemd" = no ] || mkdir -p /run/systemd/system
    : >"$T/calls"
    if ! "$T/DEBIAN/$script" "$@" >"$T/out" 2>&1; then
        echo "FAIL  $name: $script $* exited non-zero"; cat "$T/out"; fails=$((fails + 1)); return
    fi
    calls=$(cat "$T/calls")
    if [ "$calls" = "$(printf '%b' "$expected")" ]; then
        echo "ok    $name"
    else
        echo "FAIL  $name: expected calls:"; printf '%b\n' "$expected" | sed 's/^/        /'
        echo "      got:"; sed 's/^/        /' "$T/calls"
        fails=$((fails + 1))
    fi
    sed 's/^/        | /' "$T/out"
}
expect_out() { # expect_out NAME PATTERN: the last case printed PATTERN
    if grep -q "$2" "$T/out"; then echo "ok    $1"; else echo "FAIL  $1"; fails=$((fails + 1)); fi
}
mkdir -p /etc/fulcrum
cp "$T/root/etc/fulcrum/fulcrum.toml" /etc/fulcrum/fulcrum.toml

ENABLE='deb-systemd-helper --quiet was-enabled fulcrum.service\ndeb-systemd-helper enable fulcrum.service'
case_ "no systemd: install enables via deb-systemd-helper only" no "$ENABLE" postinst configure
expect_out "install tells how to start" "systemctl start fulcrum"
case_ "no systemd: upgrade calls no systemctl" no "$ENABLE" postinst configure 0.0.1
case_ "no systemd: prerm remove does nothing" no "" prerm remove
case_ "no systemd: postrm remove does nothing" no "" postrm remove
case_ "systemd: install enables, reloads, does not start" yes "$ENABLE\nsystemctl --system daemon-reload" postinst configure
case_ "systemd: upgrade restarts only a running daemon" yes \
    "$ENABLE\nsystemctl --system daemon-reload\ndeb-systemd-invoke try-restart fulcrum.service" postinst configure 0.0.1
WAS_ENABLED=1 case_ "systemd: an admin's disable survives an upgrade" yes \
    'deb-systemd-helper --quiet was-enabled fulcrum.service\ndeb-systemd-helper update-state fulcrum.service\nsystemctl --system daemon-reload\ndeb-systemd-invoke try-restart fulcrum.service' \
    postinst configure 0.0.1
DPKG_ROOT=/x case_ "DPKG_ROOT set: no systemctl, no check" yes "$ENABLE" postinst configure 0.0.1
echo 'bogus = 1' >>/etc/fulcrum/fulcrum.toml
case_ "bad config: install warns and succeeds" yes "$ENABLE\nsystemctl --system daemon-reload" postinst configure
expect_out "the warning names the file and key" "does not pass 'fulcrum check'.*" 
expect_out "the warning shows fulcrum's error" "bogus"
case_ "bad config: upgrade keeps the old daemon running" yes "$ENABLE\nsystemctl --system daemon-reload" postinst configure 0.0.1
expect_out "the upgrade says it does not restart" "not restarting"
case_ "systemd: prerm upgrade does not stop" yes "" prerm upgrade 0.0.2
case_ "systemd: prerm remove stops" yes "deb-systemd-invoke stop fulcrum.service" prerm remove
case_ "systemd: postrm remove reloads" yes "systemctl --system daemon-reload" postrm remove
# purge: dpkg has deleted the conffile itself by now; leftovers beside it go, and the directory.
rm /etc/fulcrum/fulcrum.toml
touch /etc/fulcrum/fulcrum.toml.dpkg-old /etc/fulcrum/fulcrum.toml.dpkg-dist
case_ "purge forgets the enablement state" yes "deb-systemd-helper purge fulcrum.service" postrm purge
if [ ! -e /etc/fulcrum ]; then echo "ok    purge removes /etc/fulcrum"; else echo "FAIL  purge removes /etc/fulcrum"; ls -la /etc/fulcrum; fails=$((fails + 1)); fi
mkdir /etc/fulcrum && touch /etc/fulcrum/admin-notes
case_ "purge with an admin's file" no "deb-systemd-helper purge fulcrum.service" postrm purge
if [ -e /etc/fulcrum/admin-notes ]; then echo "ok    purge keeps files it did not install"; else echo "FAIL  purge keeps files it did not install"; fails=$((fails + 1)); fi
exit "$fails"
EOF
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null 2>&1 &&
    unshare --mount --propagation private true 2>/dev/null; then
    mkdir "$TMP/ns"
    cp -a "$TMP/DEBIAN" "$X" "$TMP/ns/"
    if unshare --mount --propagation private bash "$TMP/scripts-test.sh" "$TMP/ns"; then
        pass "maintainer scripts"
    else
        fail "maintainer scripts ($? failed cases)"
    fi
else
    skip "maintainer scripts (needs root and unshare --mount)"
fi

# -----------------------------------------------------------------------------------------------
if [ "$FAILED" -eq 0 ]; then
    echo "test-deb: all checks passed for $DEB"
else
    echo "test-deb: $FAILED check(s) failed" >&2
    exit 1
fi
