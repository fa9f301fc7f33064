#!/usr/bin/env bash
# Fetch a stock Debian cloud kernel (linux-image-cloud-amd64) and cache its vmlinuz.
#
#   resources/debian-kernel/fetch.sh        # prints the cached path of the bzImage
#
# The tests boot it to show that faultline loads an unmodified distribution kernel (its
# banner reaches the serial port) and reports its early death on the nested KVM here
# cleanly (see shared/reference/platform.md). Uses `apt-get download` (no install) and
# `dpkg-deb -x`; the result goes to ${FAULTLINE_CACHE:-~/.cache/faultline}/debian-<package>_<version>/
# under a lock. Progress on stderr; the path alone on stdout.
set -euo pipefail

cache="${FAULTLINE_CACHE:-$HOME/.cache/faultline}"
meta="linux-image-cloud-amd64"

log() { echo "debian-kernel: $*" >&2; }
die() { echo "debian-kernel: error: $*" >&2; exit 1; }

command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
  die "apt-get and dpkg-deb are needed (a Debian or Ubuntu host)"

resolve() {
  apt-cache depends "$meta" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*-cloud-amd64\)$/\1/p' | head -n1
}
pkg="$(resolve)"
if [ -z "$pkg" ]; then
  if [ "$(id -u)" = 0 ]; then
    log "$meta unknown to apt-cache; running apt-get update"
    apt-get update -qq >&2 || true
    pkg="$(resolve)"
  fi
  [ -n "$pkg" ] || die "apt-cache does not know $meta; run 'apt-get update' (as root) first"
fi
version="$(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: //p')"
[ -n "$version" ] && [ "$version" != "(none)" ] || die "no candidate version of $pkg; run 'apt-get update'"

out="$cache/debian-${pkg}_${version}"
mkdir -p "$cache"
exec 9>"$out.lock"
flock 9
if [ -f "$out/vmlinuz" ]; then
  echo "$out/vmlinuz"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 777 "$work"   # apt-get download runs as the _apt user where it can
log "downloading $pkg $version"
(cd "$work" && apt-get download -q "$pkg=$version" >&2) || die "apt-get download $pkg=$version failed"
deb="$(ls "$work"/*.deb)"
log "extracting $(basename "$deb")"
dpkg-deb -x "$deb" "$work/root"
vmlinuz="$(ls "$work"/root/boot/vmlinuz-* | head -n1)"
[ -f "$vmlinuz" ] || die "$deb has no /boot/vmlinuz-*"
rm -rf "$out"
mkdir -p "$out"
cp "$vmlinuz" "$out/vmlinuz"
cp "$work"/root/boot/config-* "$out/" 2>/dev/null || true
log "cached $out/vmlinuz"
echo "$out/vmlinuz"
