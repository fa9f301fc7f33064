#!/usr/bin/env bash
# Build faultline's guest kernel (Linux 6.12 from Debian's linux-source-6.12) and cache it.
#
#   resources/guest-kernel/build.sh            # build if needed, print the cached paths
#
# Output on stdout (one `name=path` per line, nothing else):
#   bzImage=<cache>/bzImage        compressed kernel (64-bit boot protocol)
#   vmlinux=<cache>/vmlinux        stripped ELF with its PVH entry note (boots fastest)
#   vmlinux_debug=<cache>/vmlinux.debug  unstripped ELF, to map a guest RIP to a symbol
# Progress goes to stderr. The cache directory is keyed by the hash of guest.fragment,
# pvm-guest.patch and this script, so editing any of them rebuilds; an unchanged kernel is
# never rebuilt. Concurrent callers (e.g. parallel tests) serialise on a lock file.
#
# Environment: FAULTLINE_CACHE (default ~/.cache/faultline), LINUX_SOURCE_TARBALL (default
# /usr/src/linux-source-6.12.tar.xz, from the Debian package linux-source-6.12),
# FAULTLINE_KEEP_KERNEL_SRC=1 keeps the build tree (~1.5 GB) for debugging.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${FAULTLINE_CACHE:-$HOME/.cache/faultline}"
tarball="${LINUX_SOURCE_TARBALL:-/usr/src/linux-source-6.12.tar.xz}"

log() { echo "guest-kernel: $*" >&2; }
die() { echo "guest-kernel: error: $*" >&2; exit 1; }

key="$(cat "$here/guest.fragment" "$here/pvm-guest.patch" "$here/build.sh" | sha256sum | cut -c1-16)"
out="$cache/kernel-$key"
mkdir -p "$cache"

print_paths() {
  echo "bzImage=$out/bzImage"
  echo "vmlinux=$out/vmlinux"
  echo "vmlinux_debug=$out/vmlinux.debug"
}

exec 9>"$cache/kernel-$key.lock"
if ! flock -n 9; then
  log "another build of kernel-$key is running; waiting for its lock"
  flock 9
fi

if [ -f "$out/done" ]; then
  print_paths
  exit 0
fi

[ -r "$tarball" ] || die "$tarball not found: missing Debian package(s) linux-source-6.12; install them with: sudo apt-get install -y linux-source-6.12 (or set LINUX_SOURCE_TARBALL)"
for tool in make gcc flex bison bc lz4 patch xz strip; do
  command -v "$tool" >/dev/null || die "'$tool' is missing: missing Debian package(s) for the kernel build; install them with: sudo apt-get install -y build-essential bc flex bison libelf-dev libssl-dev lz4 xz-utils cpio"
done

rm -rf "$out"
mkdir -p "$out"
src="$out/src"
start=$SECONDS
log "unpacking $tarball into $src"
mkdir -p "$src"
tar -xJf "$tarball" -C "$src" --strip-components=1
log "applying pvm-guest.patch"
patch -d "$src" -p1 --quiet < "$here/pvm-guest.patch"
log "configuring: KCONFIG_ALLCONFIG=guest.fragment make allnoconfig"
make -C "$src" -s KCONFIG_ALLCONFIG="$here/guest.fragment" allnoconfig >&2

# allnoconfig silently drops options whose dependencies are unmet: check each one took.
bad=0
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=n) opt="${line%%=*}"
      if grep -q "^$opt=" "$src/.config"; then log "config: $opt is set, fragment wants it off"; bad=1; fi ;;
    CONFIG_*=*)
      if ! grep -qxF "$line" "$src/.config"; then log "config: '$line' did not take"; bad=1; fi ;;
  esac
done < "$here/guest.fragment"
[ "$bad" = 0 ] || die "guest.fragment does not apply cleanly to this kernel (see above)"

jobs="$(nproc)"
log "building bzImage and vmlinux with -j$jobs (about 6 minutes on 2 cores)"
make -C "$src" -j"$jobs" -s bzImage vmlinux >&2
cp "$src/arch/x86/boot/bzImage" "$out/bzImage"
cp "$src/vmlinux" "$out/vmlinux.debug"
# strip keeps allocated note sections, so the PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) stays.
strip -o "$out/vmlinux" "$src/vmlinux"
cp "$src/.config" "$out/config"
if [ "${FAULTLINE_KEEP_KERNEL_SRC:-0}" != 1 ]; then
  rm -rf "$src"
fi
touch "$out/done"
log "built kernel-$key in $((SECONDS - start)) s"
print_paths
