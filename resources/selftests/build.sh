#!/usr/bin/env bash
# Build the kernel's MM selftests (tools/testing/selftests/mm) statically linked, from the same
# Linux 6.12 source tarball as faultline's guest kernel, and cache them.
#
#   resources/selftests/build.sh        # build if needed; prints the output directory
#
# Output on stdout: one line, the directory holding the test binaries, run_vmtests.sh, its
# helper scripts, `settings` (kselftest's default timeout) and `unavailable.txt` (one
# `NAME<TAB>REASON` line per test run_vmtests.sh knows that was not built or is not static).
# Progress goes to stderr. The cache directory is keyed by the tarball (path, size, mtime) and
# the hash of this script; an unchanged key is never rebuilt. Concurrent callers serialise on
# a lock file. The sources and binaries never enter the repository.
#
# Environment: FAULTLINE_CACHE (default ~/.cache/faultline), LINUX_SOURCE_TARBALL (default
# /usr/src/linux-source-6.12.tar.xz), FAULTLINE_KEEP_SELFTEST_SRC=1 keeps the source tree.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${FAULTLINE_CACHE:-$HOME/.cache/faultline}"
tarball="${LINUX_SOURCE_TARBALL:-/usr/src/linux-source-6.12.tar.xz}"

log() { echo "mm-selftests: $*" >&2; }
die() { echo "mm-selftests: error: $*" >&2; exit 1; }

[ -r "$tarball" ] || die "$tarball not found: install it with: sudo apt-get install -y linux-source-6.12 (or set LINUX_SOURCE_TARBALL)"
# numa.h/libnuma.a (ksm_tests, migration) and sys/capability.h/libcap.a (memfd_secret,
# mlock-random-test): without them those tests are listed as unavailable, not fatal.
for tool in make gcc tar xz file; do
  command -v "$tool" >/dev/null || die "'$tool' is missing; install it with: sudo apt-get install -y build-essential xz-utils file"
done

key="$( { stat -Lc '%n %s %Y' "$tarball"; cat "$here/build.sh"; } | sha256sum | cut -c1-16)"
out="$cache/mm-selftests-$key"
mkdir -p "$cache"

exec 9>"$cache/mm-selftests-$key.lock"
if ! flock -n 9; then
  log "another build of mm-selftests-$key is running; waiting for its lock"
  flock 9
fi
if [ -f "$out/done" ]; then
  echo "$out/mm"
  exit 0
fi

rm -rf "$out"
mkdir -p "$out/src" "$out/mm"
src="$out/src"
start=$SECONDS
log "unpacking $tarball into $src"
tar -xJf "$tarball" -C "$src" --strip-components=1
log "make headers (the uapi headers the tests include)"
make -C "$src" -s headers >&2
jobs="$(nproc)"
log "building tools/testing/selftests/mm statically with -j$jobs (a few minutes on 2 cores)"
# -static in EXTRA_CFLAGS too: the x86 pkey tests are linked by rules that ignore LDFLAGS.
# -k: one test that does not build must not stop the others; what is missing is listed below.
make -C "$src/tools/testing/selftests/mm" -j"$jobs" -k LDFLAGS=-static EXTRA_CFLAGS=-static >"$out/build.log" 2>&1 \
  || log "some tests did not build; see $out/build.log (they are listed in unavailable.txt)"
sel="$src/tools/testing/selftests/mm"

# Everything run_vmtests.sh may call: built binaries, its scripts, the settings file.
: >"$out/mm/unavailable.txt"
for f in "$sel"/run_vmtests.sh "$sel"/*.sh "$sel"/settings; do
  [ -f "$f" ] && cp "$f" "$out/mm/"
done
# The binaries the Makefile would build (TEST_GEN_FILES, plus the x86 pkey pairs).
targets="$(make -C "$sel" -s --no-print-directory -f - print-targets <<'MK' 2>/dev/null || true
include Makefile
print-targets:
	@echo $(notdir $(TEST_GEN_FILES)) protection_keys_32 protection_keys_64 pkey_sighandler_tests_32 pkey_sighandler_tests_64
MK
)"
[ -n "$targets" ] || die "could not list the mm selftest targets from $sel/Makefile"
for t in $(printf '%s\n' $targets | sort -u); do
  bin="$sel/$t"
  if [ ! -x "$bin" ]; then
    # The first compiler error names what is missing (a header: a -dev package).
    err="$(grep -m1 -E "^$t\.c:[0-9]+:[0-9]+: (fatal )?error:" "$out/build.log" | sed -E 's/^[^ ]+ (fatal )?error: //' || true)"
    reason="did not build${err:+: $err}"
    case "$t" in
      *_32) reason="no 32-bit toolchain (gcc-multilib) on the build host" ;;
    esac
    printf '%s\t%s\n' "$t" "$reason" >>"$out/mm/unavailable.txt"
    continue
  fi
  if file -b "$bin" | grep -q 'dynamically linked'; then
    printf '%s\t%s\n' "$t" "dynamically linked (a library has no static archive on the build host)" >>"$out/mm/unavailable.txt"
    continue
  fi
  cp "$bin" "$out/mm/"
done
# hmm-tests and test_vmalloc.sh need kernel modules (TEST_HMM, TEST_VMALLOC); the guest
# kernel has CONFIG_MODULES=n.
printf '%s\t%s\n' hmm-tests "needs the test_hmm kernel module; the guest kernel is built without modules" >>"$out/mm/unavailable.txt"
printf '%s\t%s\n' test_vmalloc.sh "needs the test_vmalloc kernel module; the guest kernel is built without modules" >>"$out/mm/unavailable.txt"
cp "$out/build.log" "$out/mm/build.log"
if [ "${FAULTLINE_KEEP_SELFTEST_SRC:-0}" != 1 ]; then
  rm -rf "$src"
fi
touch "$out/done"
log "built mm-selftests-$key in $((SECONDS - start)) s ($(ls "$out/mm" | wc -l) files; $(wc -l <"$out/mm/unavailable.txt") unavailable)"
echo "$out/mm"
