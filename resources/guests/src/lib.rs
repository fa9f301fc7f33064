//! The runtime every built-in guest links: entry, stacks, ucall client, panic handler.
//!
//! The VMM (vmm::guests) loads a guest ELF at its link address and starts every vCPU at
//! `_start` in 64-bit long mode with the first 4 GiB identity mapped, interrupts off, no
//! IDT (any exception triple-faults), and:
//!
//! - RDI = this vCPU's index (0..n), RDX = n, the number of vCPUs,
//! - RSI = bytes of guest RAM below 4 GiB.
//!
//! `_start` picks this vCPU's stack and calls the guest's `main(&Cpu)` (declared with
//! [`guest_main!`]). When `main` returns a status, vCPU 0 reports `done(status)`; other
//! vCPUs halt. Guests talk to the host only through [`ucall`] and [`debug_exit`].
//!
//! Rules for guest code on faultline's hosts (its nested, paravirtualised development host
//! among them; see resources/guests/README.md): no `int3`, no
//! xsave/xrstor, no rdtsc timing, no floating point, no SSE (the crate is built without
//! it), and format integers with [`Dec`]/[`Hex`], not `{}`/`{:x}` (libcore's integer
//! formatting is prebuilt with SSE).
#![no_std]

use core::fmt::{self, Write};

pub use faultline_abi as abi;
/// Most vCPUs a built-in guest supports (one stack each).
pub use faultline_abi::MAX_VCPUS;
/// Bytes of stack per vCPU.
pub const STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(4096))]
struct Stacks([[u8; STACK_SIZE]; MAX_VCPUS]);

#[no_mangle]
static mut GUEST_STACKS: Stacks = Stacks([[0; STACK_SIZE]; MAX_VCPUS]);

// Entry: RDI = vCPU index, RSI = RAM size, RDX = vCPU count (set by the VMM).
core::arch::global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    "_start:",
    "    cmp rdi, {max}",             // an index past the stacks would smash memory:
    "    jae 2f",                     //   halt instead
    "    lea rax, [rdi + 1]",         // rax = index + 1
    "    shl rax, {shift}",           // rax = (index + 1) * STACK_SIZE
    "    lea rsp, [rip + GUEST_STACKS]",
    "    add rsp, rax",               // rsp = top of this vCPU's stack
    "    xor rbp, rbp",
    "    call {start}",               // start(index, ram, count) never returns
    "2:  hlt",
    "    jmp 2b",
    max = const MAX_VCPUS,
    shift = const 14,
    start = sym start,
);

const _: () = assert!(STACK_SIZE == 1 << 14);

/// What a guest's `main` knows about where it runs.
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    /// This vCPU's index (0 is the boot vCPU).
    pub index: u64,
    /// Number of vCPUs.
    pub count: u64,
    /// Bytes of guest RAM below 4 GiB (all of it is identity mapped).
    pub ram: u64,
}

extern "Rust" {
    fn __guest_main(cpu: &Cpu) -> u64;
}

extern "C" fn start(index: u64, ram: u64, count: u64) -> ! {
    let cpu = Cpu { index, count, ram };
    // SAFETY: `__guest_main` is defined by the `guest_main!` macro in the guest binary.
    let status = unsafe { __guest_main(&cpu) };
    if index == 0 {
        done(status);
    }
    halt()
}

/// Declares the guest's main function: `fn main(cpu: &Cpu) -> u64` (the status).
#[macro_export]
macro_rules! guest_main {
    ($main:path) => {
        #[no_mangle]
        fn __guest_main(cpu: &$crate::Cpu) -> u64 {
            $main(cpu)
        }
    };
}

/// Halts this vCPU forever (interrupts are off).
pub fn halt() -> ! {
    loop {
        // SAFETY: hlt only stops this vCPU.
        unsafe { core::arch::asm!("hlt", options(nomem, nostack)) };
    }
}

/// Port the ucall device listens on, the debug-exit port (from the ABI crate).
pub use faultline_abi::ucall::UCALL_PORT;
pub use faultline_abi::DEBUG_EXIT_PORT;

/// Ucall commands (faultline_abi::ucall::cmd).
pub use faultline_abi::ucall::cmd;

use faultline_abi::ucall::UcallRaw;

/// Makes a ucall: writes the structure's address to the ucall port (devices::ucall).
pub fn ucall(cmd: u64, args: [u64; 6]) {
    let u = UcallRaw { cmd, args };
    let addr = &u as *const UcallRaw as u64;
    // SAFETY: the host only reads `u` (identity mapped, below 4 GiB) during the `out`.
    // No `nomem`: the compiler must have stored `u` before the instruction.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") UCALL_PORT, in("eax") addr as u32, options(nostack));
    }
    core::hint::black_box(&u);
}

/// Prints `s` on the host console.
pub fn print(s: &str) {
    ucall(cmd::PRINT, [s.as_ptr() as u64, s.len() as u64, 0, 0, 0, 0]);
}

/// Tells the host this vCPU reached `stage`.
pub fn sync(stage: u64) {
    ucall(cmd::SYNC, [stage, 0, 0, 0, 0, 0]);
}

/// Ends the VM with `status` (0 = success).
pub fn done(status: u64) -> ! {
    ucall(cmd::DONE, [status, 0, 0, 0, 0, 0]);
    halt()
}

/// Ends the VM through the debug-exit port with `status`.
pub fn debug_exit(status: u32) -> ! {
    outl(DEBUG_EXIT_PORT, status);
    halt()
}

/// Reports a failed assertion at `file:line` and stops.
pub fn assert_failed(file: &str, line: u32, msg: &str) -> ! {
    ucall(
        cmd::ASSERT,
        [
            file.as_ptr() as u64,
            file.len() as u64,
            u64::from(line),
            msg.as_ptr() as u64,
            msg.len() as u64,
            0,
        ],
    );
    halt()
}

/// `out dx, al`.
pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O exits to the VMM; it cannot touch guest memory.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack)) };
}

/// `out dx, eax`.
pub fn outl(port: u16, v: u32) {
    // SAFETY: as `outb`.
    unsafe { core::arch::asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack)) };
}

/// `in al, dx`.
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as `outb`.
    unsafe { core::arch::asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack)) };
    v
}

/// CPUID leaf 1 EBX[31:24]: this vCPU's initial APIC id.
pub fn apic_id() -> u64 {
    let r = core::arch::x86_64::__cpuid(1);
    u64::from(r.ebx >> 24)
}

/// A fixed buffer that `write!` formats into.
pub struct Buf {
    data: [u8; 256],
    len: usize,
}

impl Buf {
    /// An empty buffer.
    pub const fn new() -> Self {
        Buf {
            data: [0; 256],
            len: 0,
        }
    }
    /// The text so far.
    pub fn as_str(&self) -> &str {
        // Only whole `&str`s are appended, truncated at a char boundary.
        core::str::from_utf8(&self.data[..self.len]).unwrap_or("<bad utf-8>")
    }
}

impl Default for Buf {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for Buf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.data.len() - self.len;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.data[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// A number shown in decimal without libcore's integer formatting (which uses SSE; see
/// resources/guests/.cargo/config.toml). Use it instead of `{}` on integers: `println!("{}", Dec(n))`.
#[derive(Debug, Clone, Copy)]
pub struct Dec(pub u64);

/// A number shown as `0x...` hex, SSE-free like [`Dec`].
#[derive(Debug, Clone, Copy)]
pub struct Hex(pub u64);

fn write_digits(f: &mut fmt::Formatter<'_>, mut v: u64, base: u64, prefix: &str) -> fmt::Result {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        let d = (v % base) as u8;
        buf[i] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
        v /= base;
        if v == 0 {
            break;
        }
    }
    f.write_str(prefix)?;
    // Only ASCII digits were written.
    f.write_str(core::str::from_utf8(&buf[i..]).unwrap_or("?"))
}

impl fmt::Display for Dec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_digits(f, self.0, 10, "")
    }
}

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_digits(f, self.0, 16, "0x")
    }
}

/// Integers [`guest_assert_eq!`] can show (as u64 bit patterns).
pub trait AsU64: Copy + PartialEq {
    /// The value widened (or reinterpreted) to u64.
    fn as_u64(self) -> u64;
}

macro_rules! as_u64 {
    ($($t:ty),*) => {$(
        impl AsU64 for $t {
            fn as_u64(self) -> u64 {
                self as u64
            }
        }
    )*};
}
as_u64!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

impl AsU64 for bool {
    fn as_u64(self) -> u64 {
        u64::from(self)
    }
}

/// Formats into a [`Buf`].
pub fn format(args: fmt::Arguments) -> Buf {
    let mut b = Buf::new();
    let _ = b.write_fmt(args);
    b
}

/// Prints a formatted line on the host console (at most 255 bytes).
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        let b = $crate::format(format_args!("{}\n", format_args!($($arg)*)));
        $crate::print(b.as_str());
    }};
}

/// Asserts in the guest; a failure becomes the host's error with this file:line.
#[macro_export]
macro_rules! guest_assert {
    ($cond:expr) => {
        if !$cond {
            $crate::assert_failed(file!(), line!(), concat!("assertion failed: ", stringify!($cond)));
        }
    };
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            let b = $crate::format(format_args!($($arg)+));
            $crate::assert_failed(file!(), line!(), b.as_str());
        }
    };
}

/// Asserts two integers are equal, showing both (decimal and hex) on failure.
#[macro_export]
macro_rules! guest_assert_eq {
    ($a:expr, $b:expr $(,)?) => {{
        let (a, b) = ($crate::AsU64::as_u64($a), $crate::AsU64::as_u64($b));
        if a != b {
            let m = $crate::format(format_args!(
                "assertion `{} == {}` failed: {} ({}) != {} ({})", stringify!($a), stringify!($b),
                $crate::Dec(a), $crate::Hex(a), $crate::Dec(b), $crate::Hex(b)
            ));
            $crate::assert_failed(file!(), line!(), m.as_str());
        }
    }};
    ($a:expr, $b:expr, $($arg:tt)+) => {{
        let (a, b) = ($crate::AsU64::as_u64($a), $crate::AsU64::as_u64($b));
        if a != b {
            let m = $crate::format(format_args!(
                "{}: {} ({}) != {} ({})", format_args!($($arg)+),
                $crate::Dec(a), $crate::Hex(a), $crate::Dec(b), $crate::Hex(b)
            ));
            $crate::assert_failed(file!(), line!(), m.as_str());
        }
    }};
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let (file, line) = info
        .location()
        .map(|l| (l.file(), l.line()))
        .unwrap_or(("<unknown>", 0));
    let m = format(format_args!("panic: {}", info.message()));
    assert_failed(file, line, m.as_str())
}

/// The prebuilt libcore references the unwinding personality even though guests are
/// built with panic=abort; it is never called.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

// The C runtime is absent: provide the memory intrinsics rustc's codegen may call. Volatile
// accesses keep LLVM from turning these loops back into calls to themselves.

/// memcpy.
///
/// # Safety
/// As C's memcpy.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees both ranges are valid for n bytes.
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
        i += 1;
    }
    dst
}

/// memmove.
///
/// # Safety
/// As C's memmove.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) {
        // SAFETY: forwards copy is correct when dst is below src.
        return unsafe { memcpy(dst, src, n) };
    }
    let mut i = n;
    while i > 0 {
        i -= 1;
        // SAFETY: as memcpy; backwards so overlapping ranges copy correctly.
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
    }
    dst
}

/// memset.
///
/// # Safety
/// As C's memset.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees the range is valid for n bytes.
        unsafe { dst.add(i).write_volatile(c as u8) };
        i += 1;
    }
    dst
}

/// memcmp.
///
/// # Safety
/// As C's memcmp.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees both ranges are valid for n bytes.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// bcmp.
///
/// # Safety
/// As C's bcmp.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}
