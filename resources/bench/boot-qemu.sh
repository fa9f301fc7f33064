#!/usr/bin/env bash
# Boot faultline's guest kernel under QEMU microvm by hand, with the same initramfs and
# command line `faultline bench boot --kernel` uses, and print each console line with the
# milliseconds since QEMU was spawned.
#
#   resources/bench/boot-qemu.sh KERNEL [INITRD]      # KERNEL: bzImage or PVH vmlinux
#   QEMU=/path/to/qemu-system-x86_64 MEMORY=512 VCPUS=2 resources/bench/boot-qemu.sh KERNEL
#
# Without INITRD it builds the busybox initramfs running `true` (resources/initramfs/build.sh);
# our /init prints "faultline-init: running ..." (the benchmark's "init started" marker),
# then writes the exit status to the debug-exit port 0xf4, which QEMU's isa-debug-exit turns
# into QEMU's exit status (status << 1) | 1, so a clean run exits 1.
#
# `faultline bench boot --kernel KERNEL --runs 3` runs the same QEMU command interleaved
# with faultline and reports both (it also timestamps QEMU's firmware handing over to the
# kernel through `-trace enable=fw_cfg_select`, which this script leaves out).
#
# Notes for this (nested, PVM) host, see shared/reference/platform.md:
#   -cpu host,-arch-capabilities   plain `-cpu host` aborts: KVM rejects MSR 0x10a
#   -no-reboot                     a guest reset (reboot=k) ends QEMU instead of rebooting
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
qemu="${QEMU:-qemu-system-x86_64}"
memory="${MEMORY:-256}"
vcpus="${VCPUS:-1}"

die() { echo "boot-qemu: error: $*" >&2; exit 1; }

[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: boot-qemu.sh KERNEL [INITRD]"
kernel="$1"
[ -r "$kernel" ] || die "cannot read kernel $kernel (build one: resources/guest-kernel/build.sh)"
command -v "$qemu" >/dev/null || die "$qemu not found: missing Debian package(s) qemu-system-x86; install them with: sudo apt-get install -y qemu-system-x86"

if [ $# -eq 2 ]; then
  initrd="$2"
  [ -r "$initrd" ] || die "cannot read initrd $initrd"
else
  initrd="$(mktemp --suffix=.cpio)"
  trap 'rm -f "$initrd"' EXIT
  "$repo/resources/initramfs/build.sh" -o "$initrd" -- true >/dev/null
fi

# faultline's default command line (vmm/src/config.rs DEFAULT_CMDLINE), the platform options
# (resources/guest-kernel/cmdline.txt) not already in it, and our init's debug-exit port.
cmdline="console=ttyS0 reboot=k panic=-1 noapic"
for opt in $(cat "$repo/resources/guest-kernel/cmdline.txt"); do
  key="${opt%%=*}"
  case " $cmdline " in
    *" $key="* | *" $key "*) ;;
    *) cmdline="$cmdline $opt" ;;
  esac
done
cmdline="$cmdline faultline.exit_port=0xf4"

args=(
  -enable-kvm -cpu host,-arch-capabilities -m "${memory}M" -smp "$vcpus"
  -M microvm,x-option-roms=off,rtc=off,isa-serial=on
  -nodefaults -no-user-config -no-reboot -display none -serial stdio
  -device isa-debug-exit,iobase=0xf4,iosize=1
  -kernel "$kernel" -initrd "$initrd" -append "$cmdline"
)
echo "boot-qemu: $qemu ${args[*]}" >&2

start=$EPOCHREALTIME
set +e
"$qemu" "${args[@]}" </dev/null | while IFS= read -r line; do
  now=$EPOCHREALTIME
  # Milliseconds since the spawn, from bash's microsecond clock.
  us=$(( (${now/./} - ${start/./}) ))
  printf '%9d.%03d ms  %s\n' $((us / 1000)) $((us % 1000)) "${line%$'\r'}"
done
status=${PIPESTATUS[0]}
set -e
end=$EPOCHREALTIME
us=$(( (${end/./} - ${start/./}) ))
echo "boot-qemu: QEMU exited with status $status after $((us / 1000)) ms (1 = the guest wrote 0 to the debug-exit port)" >&2
[ "$status" -eq 1 ] || [ "$status" -eq 0 ]
