#!/usr/bin/env bash
# Build faultline's busybox initramfs (uncompressed newc cpio) by hand.
#
#   resources/initramfs/build.sh                      # base initramfs, prints its cached path
#   resources/initramfs/build.sh -o out.cpio -- CMD ARGS...
#                                                     # base + CMD baked in, written to out.cpio
#   resources/initramfs/build.sh -a ...              # every applet linked, not only /bin/sh
#
# The base archive holds a static busybox, /bin/sh and /init (this directory's
# `init`): it mounts proc/sys/dev, runs /faultline/cmd (or a shell), prints the exit status and
# hands it to the VMM through the debug-exit port. A command is a second cpio archive
# appended to the base one; the kernel unpacks both. `faultline run --kernel K -- CMD` builds
# the same thing in memory (vmm::boot::initramfs), so this script is for other VMMs (e.g.
# `qemu-system-x86_64 -M microvm -initrd out.cpio`) and for looking inside.
#
# Uncompressed on purpose: a gzip initramfs takes ~27 s to unpack on the nested KVM here.
# Only /bin/sh is linked by default: busybox's shell runs its applets without their links, and
# the kernel's unpacking of busybox's 280 links cost ~2.3 s of boot here (vmm::boot::initramfs).
# The base archive is cached in ${FAULTLINE_CACHE:-~/.cache/faultline}/initramfs-<hash>.cpio,
# keyed by init, this script and the busybox binary. Progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${FAULTLINE_CACHE:-$HOME/.cache/faultline}"
busybox="${FAULTLINE_BUSYBOX:-/bin/busybox}"
out=""
all_applets=""

log() { echo "initramfs: $*" >&2; }
die() { echo "initramfs: error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    -o) [ $# -ge 2 ] || die "-o needs a file name"; out="$2"; shift 2 ;;
    -a) all_applets=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (usage: build.sh [-a] [-o OUT] [-- CMD ARGS...])" ;;
  esac
done
[ $# -eq 0 ] || [ -n "$out" ] || die "a command needs -o OUT to write the initramfs to"

[ -x "$busybox" ] || die "$busybox not found: missing Debian package(s) busybox-static; install them with: sudo apt-get install -y busybox-static (or set FAULTLINE_BUSYBOX)"
if readelf -l "$busybox" 2>/dev/null | grep -q "program interpreter"; then
  die "$busybox is dynamically linked: missing Debian package(s) busybox-static; install them with: sudo apt-get install -y busybox-static"
fi
command -v cpio >/dev/null || die "cpio not found: missing Debian package(s) cpio; install them with: sudo apt-get install -y cpio"

key="$( (cat "$here/init" "$here/build.sh" "$busybox"; echo "all=$all_applets") | sha256sum | cut -c1-16)"
base="$cache/initramfs-$key.cpio"
mkdir -p "$cache"
exec 9>"$base.lock"
flock 9
if [ ! -f "$base" ]; then
  log "building $base"
  stage="$(mktemp -d)"
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,root,etc,faultline}
  cp "$busybox" "$stage/bin/busybox"
  install -m 0755 "$here/init" "$stage/init"
  "$busybox" --list-full | while read -r applet; do
    [ "$applet" = bin/busybox ] && continue
    [ -n "$all_applets" ] || [ "$applet" = bin/sh ] || continue
    prefix=""
    rest="$applet"
    while [ "${rest#*/}" != "$rest" ]; do prefix="../$prefix"; rest="${rest#*/}"; done
    target="${prefix}bin/busybox"
    ln -sf "$target" "$stage/$applet"
  done
  # /dev/console lets the kernel give /init its console before devtmpfs is mounted; only
  # root can create it, and init reopens the console from devtmpfs anyway.
  if [ "$(id -u)" = 0 ]; then mknod -m 600 "$stage/dev/console" c 5 1; fi
  (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) > "$base.tmp"
  mv "$base.tmp" "$base"
  log "built $(du -h "$base" | cut -f1) initramfs"
fi

if [ -z "$out" ]; then
  echo "$base"
  exit 0
fi

cp "$base" "$out.tmp"
if [ $# -gt 0 ]; then
  # /faultline/cmd: one single-quoted word per argument (' written as '\'').
  cmdstage="$(mktemp -d)"
  mkdir -p "$cmdstage/faultline"
  for word in "$@"; do
    printf "'%s' " "$(printf '%s' "$word" | sed "s/'/'\\\\''/g")"
  done | sed 's/ $//' > "$cmdstage/faultline/cmd"
  echo >> "$cmdstage/faultline/cmd"
  (cd "$cmdstage" && printf 'faultline\nfaultline/cmd\n' | cpio -o -H newc -R 0:0 --quiet) >> "$out.tmp"
  rm -rf "$cmdstage"
fi
mv "$out.tmp" "$out"
log "wrote $out"
echo "$out"
