//! The stuck-guest watchdog: when no vCPU has exited to userspace (no port or MMIO access, so
//! no console output either) for the limit, the VMM kicks every vCPU out of `KVM_RUN`, each
//! vCPU thread records where its guest is (RIP, RSP, CR3, RFLAGS, the instruction bytes at
//! RIP), and the VM ends with [`devices::exit::STATUS_GUEST_STALLED`] and that report,
//! symbolized when the guest's symbols are known.
//!
//! The activity clock is per VM (several VMs run in one test process).

use kvm_ioctls::VcpuFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Where one vCPU was when the watchdog fired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VcpuDump {
    /// vCPU index.
    pub vcpu: usize,
    /// Guest RIP.
    pub rip: u64,
    /// Guest RSP.
    pub rsp: u64,
    /// Guest CR3.
    pub cr3: u64,
    /// Guest RFLAGS.
    pub rflags: u64,
    /// Up to 15 bytes at RIP (empty when RIP does not translate to guest RAM).
    pub insn: Vec<u8>,
}

/// One VM's watchdog.
#[derive(Debug)]
pub struct Watchdog {
    limit: Duration,
    start: Instant,
    last_ms: AtomicU64,
    dump: AtomicBool,
    dumps: Mutex<Vec<VcpuDump>>,
}

impl Watchdog {
    /// A watchdog that fires after `limit` without a userspace exit.
    pub fn new(limit: Duration) -> Self {
        Watchdog {
            limit,
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            dump: AtomicBool::new(false),
            dumps: Mutex::new(Vec::new()),
        }
    }

    /// The limit.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A vCPU exited to userspace: the guest is alive.
    pub fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Time since the last userspace exit (or since the watchdog was made).
    pub fn idle(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_ms.load(Ordering::Relaxed)),
        )
    }

    /// Whether the limit has passed.
    pub fn expired(&self) -> bool {
        self.idle() >= self.limit
    }

    /// Asks every vCPU thread to record where it is at its next return from `KVM_RUN`.
    pub fn request_dump(&self) {
        self.dump.store(true, Ordering::Release);
    }

    /// Whether a dump was asked for.
    pub fn dump_requested(&self) -> bool {
        self.dump.load(Ordering::Acquire)
    }

    /// Records one vCPU's state (once per vCPU).
    pub fn record(&self, d: VcpuDump) {
        let mut v = self.dumps.lock().unwrap_or_else(|e| e.into_inner());
        if !v.iter().any(|x| x.vcpu == d.vcpu) {
            v.push(d);
        }
    }

    /// The dumps recorded so far, by vCPU.
    pub fn dumps(&self) -> Vec<VcpuDump> {
        let mut v = self.dumps.lock().unwrap_or_else(|e| e.into_inner()).clone();
        v.sort_by_key(|d| d.vcpu);
        v
    }
}

/// Reads where `vcpu` is (called on its own thread, out of `KVM_RUN`).
pub fn dump_vcpu(vcpu: &VcpuFd, index: usize, mem: &GuestMemoryMmap) -> VcpuDump {
    let mut d = VcpuDump {
        vcpu: index,
        ..VcpuDump::default()
    };
    if let Ok(r) = vcpu.get_regs() {
        d.rip = r.rip;
        d.rsp = r.rsp;
        d.rflags = r.rflags;
    }
    if let Ok(s) = vcpu.get_sregs() {
        d.cr3 = s.cr3;
    }
    if let Ok(t) = vcpu.translate_gva(d.rip) {
        if t.valid != 0 {
            let mut buf = [0u8; 15];
            if mem
                .read_slice(&mut buf, GuestAddress(t.physical_address))
                .is_ok()
            {
                d.insn = buf.to_vec();
            }
        }
    }
    d
}

/// A guest's symbols, from an ELF symbol table: `symbolize(rip)` gives `name+0xoff`.
#[derive(Debug, Clone, Default)]
pub struct Symbols {
    /// (address, size, name), sorted by address.
    syms: Vec<(u64, u64, String)>,
}

impl Symbols {
    /// The function and object symbols of an ELF image (none when it has no symbol table or
    /// is not an ELF: a bzImage or a stripped vmlinux).
    pub fn from_elf(bytes: &[u8]) -> Symbols {
        use object::{Object, ObjectSymbol, SymbolKind};
        let file = match object::File::parse(bytes) {
            Ok(f) => f,
            Err(_) => return Symbols::default(),
        };
        let mut syms: Vec<(u64, u64, String)> = file
            .symbols()
            .filter(|s| {
                matches!(
                    s.kind(),
                    SymbolKind::Text | SymbolKind::Data | SymbolKind::Unknown
                )
            })
            .filter(|s| s.address() != 0)
            .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_string())))
            .filter(|(_, _, n)| !n.is_empty())
            .collect();
        syms.sort();
        Symbols { syms }
    }

    /// Whether there are any.
    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// `name+0xoff` for `addr`, when a symbol covers it (or is the closest one below it and
    /// has no size).
    pub fn symbolize(&self, addr: u64) -> Option<String> {
        let i = self.syms.partition_point(|s| s.0 <= addr).checked_sub(1)?;
        let (start, size, name) = &self.syms[i];
        let off = addr - start;
        (*size == 0 || off < *size).then(|| format!("{name}+{off:#x}"))
    }
}

/// The watchdog's report.
pub fn report(limit: Duration, dumps: &[VcpuDump], n: usize, syms: &Symbols) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "no vCPU exited to userspace for {} s (watchdog); where the vCPUs are:",
        limit.as_secs()
    );
    for d in dumps {
        let insn: Vec<String> = d.insn.iter().map(|b| format!("{b:02x}")).collect();
        let _ = write!(
            out,
            "\n  vCPU {}: RIP {:#x}{} RSP {:#x} CR3 {:#x} RFLAGS {:#x} bytes at RIP [{}]",
            d.vcpu,
            d.rip,
            syms.symbolize(d.rip)
                .map_or(String::new(), |s| format!(" <{s}>")),
            d.rsp,
            d.cr3,
            d.rflags,
            insn.join(" ")
        );
    }
    if dumps.len() < n {
        let _ = write!(
            out,
            "\n  ({} vCPU(s) did not answer the kick within 2 s)",
            n - dumps.len()
        );
    }
    if syms.is_empty() {
        out.push_str("\n  (no symbols: pass --symbols with the unstripped vmlinux)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_time_grows_until_touched() {
        let w = Watchdog::new(Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(40));
        assert!(w.expired());
        w.touch();
        assert!(!w.expired());
        w.record(VcpuDump {
            vcpu: 1,
            ..Default::default()
        });
        w.record(VcpuDump {
            vcpu: 0,
            ..Default::default()
        });
        w.record(VcpuDump {
            vcpu: 0,
            rip: 5,
            ..Default::default()
        });
        let d = w.dumps();
        assert_eq!((d.len(), d[0].vcpu, d[0].rip), (2, 0, 0));
    }

    #[test]
    fn symbols_of_a_built_in_guest_resolve_its_entry() {
        let g = crate::guests::find("hello").expect("hello is built in");
        let syms = Symbols::from_elf(g.elf);
        let start = syms
            .syms
            .iter()
            .find(|s| s.2 == "_start")
            .map(|s| s.0)
            .expect("_start in the symbol table");
        assert_eq!(syms.symbolize(start).as_deref(), Some("_start+0x0"));
        assert!(Symbols::from_elf(b"not an elf").is_empty());
        let r = report(
            Duration::from_secs(3),
            &[VcpuDump {
                vcpu: 0,
                rip: start,
                insn: vec![0xeb, 0xfe],
                ..Default::default()
            }],
            2,
            &syms,
        );
        assert!(
            r.contains("<_start+0x0>") && r.contains("eb fe") && r.contains("did not answer"),
            "{r}"
        );
    }
}
