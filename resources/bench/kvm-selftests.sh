#!/usr/bin/env bash
# Side-by-side fault-latency comparison: `faultline bench faults` against the kernel's own
# KVM selftests, demand_paging_test (uffd demand paging) and kvm_page_table_test (first
# touch, its KVM_CREATE_MAPPINGS stage), run one after the other with the same size,
# vCPUs and backing.
#
# The selftests are built from Debian's linux-source-6.12 tarball into a cache directory
# outside the repository (their code and binaries are never committed):
#   ${FAULTLINE_CACHE:-~/.cache/faultline}/kvm-selftests-6.12/
#
# Usage:
#   resources/bench/kvm-selftests.sh build                 # build the two selftests (cached)
#   resources/bench/kvm-selftests.sh compare [SIZE] [VCPUS] [BACKING]
#                                                          # default: 256M per vCPU, 1 vCPU, anonymous
# Needs: root (userfaultfd for KVM faults, /dev/kvm), linux-source-6.12, build-essential,
# python3; builds faultline in release mode.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${FAULTLINE_CACHE:-$HOME/.cache/faultline}/kvm-selftests-6.12"
tarball="${LINUX_SOURCE_TARBALL:-/usr/src/linux-source-6.12.tar.xz}"
tests=(demand_paging_test kvm_page_table_test)

build() {
    if [ -x "$cache/bin/demand_paging_test" ] && [ -x "$cache/bin/kvm_page_table_test" ]; then
        return 0
    fi
    if [ ! -r "$tarball" ]; then
        echo "kvm-selftests: $tarball is missing: missing Debian package(s) linux-source-6.12; install them with: sudo apt-get install -y linux-source-6.12" >&2
        exit 1
    fi
    mkdir -p "$cache"
    exec 9>"$cache.lock"
    flock 9
    local src="$cache/src"
    if [ ! -f "$src/Makefile" ]; then
        echo "kvm-selftests: unpacking $tarball (tools/, include/, arch/x86, scripts/) ..." >&2
        rm -rf "$src" && mkdir -p "$src"
        # Only what the selftests and `make headers` need.
        tar -xJf "$tarball" -C "$src" --strip-components=1 \
            --wildcards 'linux-source-6.12/Makefile' 'linux-source-6.12/tools' \
            'linux-source-6.12/include' 'linux-source-6.12/arch/x86' 'linux-source-6.12/scripts' \
            'linux-source-6.12/Kbuild' 'linux-source-6.12/Kconfig' \
            'linux-source-6.12/arch/Kconfig' 'linux-source-6.12/usr'
    fi
    echo "kvm-selftests: make headers ..." >&2
    make -s -C "$src" ARCH=x86 headers >&2
    echo "kvm-selftests: building ${tests[*]} ..." >&2
    local out="$cache/out"
    mkdir -p "$out"
    make -s -C "$src/tools/testing/selftests/kvm" OUTPUT="$out" -j"$(nproc)" \
        "${tests[@]/#/$out/}" >&2
    mkdir -p "$cache/bin"
    for t in "${tests[@]}"; do
        cp "$out/$t" "$cache/bin/$t"
    done
    echo "kvm-selftests: built into $cache/bin" >&2
}

# pages/s of a faultline JSON report's first run.
faultline_rate() {
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))["runs"][0]
pages = sum(v["pages"] for v in r["per_vcpu"])
print("%.0f" % (pages / r["wall_seconds"]))' "$1"
}

compare() {
    local size="${1:-256M}" vcpus="${2:-1}" backing="${3:-anonymous}"
    build
    echo "kvm-selftests: building faultline (release) ..." >&2
    (cd "$repo" && cargo build -q --release -p vmm --bin faultline)
    local fl="$repo/target/release/faultline" bin="$cache/bin" out
    out="$(mktemp -d)"
    local bytes
    bytes=$(python3 -c '
import sys
s = sys.argv[1]; m = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
print(int(s[:-1]) * m[s[-1].upper()] if s[-1].upper() in m else int(s))' "$size")
    local pages=$((bytes * vcpus / 4096))

    echo "== uffd MISSING, 4K UFFDIO_COPY per fault: $size per vCPU, $vcpus vCPU(s), $backing"
    set -x
    "$bin/demand_paging_test" -u MISSING -b "$size" -v "$vcpus" -s "$backing" >"$out/dpt.txt" 2>&1
    { set +x; } 2>/dev/null
    local dpt
    dpt=$(sed -n 's/.*Overall demand paging rate:[[:space:]]*\([0-9.]*\).*/\1/p' "$out/dpt.txt" | head -1)
    echo "demand_paging_test -u MISSING: ${dpt:-?} pages/s"
    # faultline's service in each wait mode: reader threads busy-polling or in poll() (as
    # demand_paging_test's), and no readers at all (vcpu: the faulting vCPU resolves it).
    local wait fl_uffd
    for wait in busy poll vcpu; do
        set -x
        "$fl" bench faults -q -b "$size" -v "$vcpus" -s "$backing" -u MISSING --uffd-wait "$wait" \
            --json "$out/fl-uffd-$wait.json" >"$out/fl-uffd-$wait.txt"
        { set +x; } 2>/dev/null
        fl_uffd=$(faultline_rate "$out/fl-uffd-$wait.json")
        echo "faultline uffd MISSING, --uffd-wait $wait: $fl_uffd pages/s"
        [ -n "$dpt" ] && python3 -c 'import sys; print("ratio faultline (%s) / demand_paging_test: %.2fx" % (sys.argv[3], float(sys.argv[1]) / float(sys.argv[2])))' "$fl_uffd" "$dpt" "$wait"
    done

    echo "== first touch without uffd: $size per vCPU, $vcpus vCPU(s), $backing"
    set -x
    "$fl" bench faults -q -b "$size" -v "$vcpus" -s "$backing" -u none --json "$out/fl-none.json" >"$out/fl-none.txt"
    "$bin/kvm_page_table_test" -b "$size" -v "$vcpus" -s "$backing" >"$out/kptt.txt" 2>&1
    { set +x; } 2>/dev/null
    local fl_none secs kptt
    fl_none=$(faultline_rate "$out/fl-none.json")
    secs=$(sed -n 's/.*KVM_CREATE_MAPPINGS: total execution time: \([0-9.]*\)s.*/\1/p' "$out/kptt.txt" | head -1)
    # kvm_page_table_test's -b is the whole test region, shared by its vCPUs.
    local kpages=$((bytes / 4096))
    kptt=$(python3 -c 'import sys; print("%.0f" % (float(sys.argv[1]) / float(sys.argv[2])))' "$kpages" "${secs:-0}" 2>/dev/null || echo "?")
    echo "faultline first touch:                        $fl_none pages/s"
    echo "kvm_page_table_test KVM_CREATE_MAPPINGS:      $kptt pages/s ($kpages pages in ${secs:-?} s)"
    [ "$kptt" != "?" ] && python3 -c 'import sys; print("ratio faultline / kvm_page_table_test: %.2fx" % (float(sys.argv[1]) / float(sys.argv[2])))' "$fl_none" "$kptt"
    echo "(raw outputs in $out)"
}

case "${1:-}" in
    build) build ;;
    compare) shift; compare "$@" ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
esac
