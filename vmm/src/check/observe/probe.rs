//! Which observables this host really delivers, found out by running a VM.
//!
//! What it observes: for each tracepoint [`tracefs::WANTED_EVENTS`] names, whether this host
//! has it and whether it fires for a real guest; whether pfns and kpageflags are readable.
//!
//! Where it comes from: [`probe_observables`] starts a [`TraceSession`], creates a VM with
//! the built-in `hello` guest (vmm::launch::Vmm, anonymous guest RAM), writes a range of guest
//! RAM from the host, `madvise(MADV_DONTNEED)`s it (KVM's mmu notifier must report exactly
//! that hva range as `kvm_unmap_hva_range`), then runs the guest, which writes and verifies a
//! pattern over 32 MiB (on TDP hosts this installs SPTEs: `kvm_mmu_set_spte`,
//! `kvm_mmu_spte_requested`, `kvm_page_fault`). Every enabled event that fired is counted.
//!
//! Limits: an event that did not fire here may fire for other operations (aging needs
//! reclaim, async PF needs a guest that enables it and a page that is not resident); such
//! events are reported as `silent`, not as absent. On this development host (nested,
//! paravirtualised KVM, shadow MMU) `kvm_unmap_hva_range` fires and the SPTE events do not.
//! The DONTNEED runs before the vCPUs start (the guest ends itself, so there is no safe moment
//! during its run); KVM traces the invalidation whether or not an SPTE maps the range.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::pagemap::PageMap;
use super::tracefs::{self, EventId, PidFilter, TraceError, TraceEvent, TraceSession};
use crate::config::{MemoryConfig, Payload, VmConfig};
use crate::launch::{VmIo, Vmm, VmmError};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// Guest RAM of the probe VM.
pub const PROBE_MEMORY: u64 = 64 << 20;
/// Where in guest RAM the probe writes and then drops pages (above what `hello` touches,
/// 8..40 MiB, and its code at 2 MiB).
pub const PROBE_GPA: u64 = 48 << 20;
/// How much it writes and drops.
pub const PROBE_LEN: u64 = 64 << 10;

/// The probe could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Tracing could not be set up.
    #[error("Probing observables: {0}")]
    Trace(#[from] TraceError),
    /// The probe VM could not be created or run.
    #[error("Probing observables: the probe VM failed: {0}")]
    Vm(#[from] VmmError),
    /// Guest RAM of the probe VM could not be written or advised.
    #[error("Probing observables: guest RAM at gpa {gpa:#x}: {detail}")]
    GuestRam {
        /// The gpa.
        gpa: u64,
        /// What failed.
        detail: String,
    },
    /// The probe guest did not end cleanly.
    #[error("Probing observables: the hello guest ended with status {0}, not 0; run `faultline run` to see why")]
    Guest(i32),
}

/// What this host offers, as found by [`probe_observables`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Observables {
    /// The tracefs mount used.
    pub tracefs: PathBuf,
    /// Wanted events the host has (enabled during the probe).
    pub enabled: Vec<EventId>,
    /// Wanted events the host does not have.
    pub absent: Vec<EventId>,
    /// Events that fired, with counts (`system:name`).
    pub fired: BTreeMap<String, usize>,
    /// Enabled events that did not fire during the probe.
    pub silent: Vec<EventId>,
    /// Whether the probe's DONTNEED came back as a `kvm_unmap_hva_range` of exactly its range.
    pub invalidation_range_exact: bool,
    /// Events the kernel dropped (buffer full).
    pub lost: u64,
    /// Trace lines that did not parse (a format change: see them with `--record`).
    pub unparsed: Vec<String>,
    /// Whether /proc/self/pagemap shows pfns (root).
    pub pagemap_pfns: bool,
    /// Whether /proc/kpageflags is readable (root).
    pub kpageflags: bool,
}

impl Observables {
    /// Whether `system:name` fired during the probe.
    pub fn fired(&self, system: &str, name: &str) -> bool {
        self.fired.contains_key(&format!("{system}:{name}"))
    }

    /// Whether KVM's SPTE levels and writability can be observed (an SPTE event fired).
    pub fn spte_observable(&self) -> bool {
        self.fired("kvmmmu", "kvm_mmu_set_spte")
            || self.fired("kvmmmu", "kvm_tdp_mmu_spte_changed")
            || self.fired("kvmmmu", "kvm_mmu_spte_requested")
    }
}

/// Starts a session, runs the probe VM and reports which observables this host offers.
pub fn probe_observables() -> Result<Observables, ProbeError> {
    let mut session = TraceSession::start(PidFilter::ThisProcess)?;
    let config = VmConfig {
        memory: MemoryConfig {
            size: PROBE_MEMORY,
            ..MemoryConfig::default()
        },
        payload: Payload::Guest("hello".into()),
        ..VmConfig::default()
    };
    let (io, _console) = VmIo::captured();
    let vmm = Vmm::new(config, io)?;
    let mem = vmm.guest_memory();
    let ram = mem
        .iter()
        .map(|r| {
            let start = r.as_ptr() as u64;
            start..start + r.len()
        })
        .collect::<Vec<_>>();
    session.set_hva_ranges(ram);
    let gpa = GuestAddress(PROBE_GPA);
    let ram_err = |detail: String| ProbeError::GuestRam {
        gpa: PROBE_GPA,
        detail,
    };
    let len = usize::try_from(PROBE_LEN).map_err(|e| ram_err(e.to_string()))?;
    mem.write_slice(&vec![0x5a; len], gpa)
        .map_err(|e| ram_err(e.to_string()))?;
    let region = mem
        .iter()
        .find(|r| r.start_addr() <= gpa && gpa.0 + PROBE_LEN <= r.start_addr().0 + r.len())
        .ok_or_else(|| ram_err("not inside one region".into()))?;
    let hva = region.as_ptr() as u64 + (PROBE_GPA - region.start_addr().0);
    // SAFETY: [hva, hva + len) lies inside `region`, a live private anonymous mapping of
    // guest RAM that `vmm` owns; MADV_DONTNEED only drops its pages (reads then see zero), and
    // no vCPU runs yet, so nothing uses them.
    let rc = unsafe { libc::madvise(hva as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    if rc != 0 {
        return Err(ram_err(format!(
            "madvise(DONTNEED): {}",
            std::io::Error::last_os_error()
        )));
    }
    let mut records = session.drain()?;
    let outcome = vmm.run()?;
    let after = session.drain()?;
    if outcome.exit.status() != 0 {
        return Err(ProbeError::Guest(outcome.exit.status()));
    }
    let invalidation_range_exact = records.records.iter().any(|r| {
        r.event
            == TraceEvent::UnmapHvaRange {
                start: hva,
                end: hva + PROBE_LEN,
            }
    });
    records.records.extend(after.records);
    records.unparsed.extend(after.unparsed);
    records.lost += after.lost;
    let mut fired = BTreeMap::new();
    for r in &records.records {
        *fired.entry(r.event.id().to_string()).or_insert(0) += 1;
    }
    let silent = session
        .enabled_events()
        .iter()
        .filter(|e| !fired.contains_key(&e.to_string()))
        .cloned()
        .collect();
    let pm = PageMap::open().ok();
    // A word of our own heap, written just now, so it is present.
    let word = std::hint::black_box(Box::new(1u64));
    let pagemap_pfns = pm
        .as_ref()
        .and_then(|p| p.state(std::ptr::from_ref::<u64>(&word) as u64).ok())
        .is_some_and(|s| s.pfn.is_some());
    Ok(Observables {
        tracefs: session.tracefs().to_path_buf(),
        enabled: session.enabled_events().to_vec(),
        absent: session.absent_events().to_vec(),
        fired,
        silent,
        invalidation_range_exact,
        lost: records.lost,
        unparsed: records.unparsed,
        pagemap_pfns,
        kpageflags: pm.is_some_and(|p| p.kpageflags_error.is_none()),
    })
}

/// The wanted events, for callers that list what a host could offer.
pub fn wanted_events() -> &'static [(&'static str, &'static str)] {
    tracefs::WANTED_EVENTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_probe_finds_the_invalidation_and_names_what_is_silent() {
        if !std::path::Path::new("/dev/kvm").exists() {
            eprintln!("SKIPPED real_probe: no /dev/kvm");
            return;
        }
        let o = match probe_observables() {
            Err(ProbeError::Trace(e)) => {
                eprintln!("SKIPPED real_probe: {e}");
                return;
            }
            r => r.unwrap(),
        };
        eprintln!("{o:#?}");
        assert!(o.fired("kvm", "kvm_unmap_hva_range"), "{o:#?}");
        assert!(
            o.invalidation_range_exact,
            "the DONTNEED range was not traced exactly: {o:#?}"
        );
        assert_eq!(o.lost, 0);
        assert!(o.unparsed.is_empty(), "{:?}", o.unparsed);
        for e in &o.silent {
            assert!(!o.fired(&e.system, &e.name));
        }
        assert_eq!(o.enabled.len(), o.silent.len() + o.fired.len());
        if std::path::Path::new("/sys/module/kvm_pvm").exists() {
            // This development host: shadow MMU, no SPTE tracepoints fire (platform.md).
            assert!(!o.spte_observable(), "{o:#?}");
        }
        assert!(o.pagemap_pfns && o.kpageflags, "run as root");
    }

    /// Measured on the real kernel (the model's seed: MADV_DONTNEED of one 4K page inside a
    /// PMD-mapped THP). With a VM in the process, the trace shows the 4K range and the whole
    /// 2M range (the PMD split's own invalidation), and pagemap shows the rest of the folio
    /// still mapped, now by PTEs, as tails of the same large folio.
    #[test]
    fn real_dontneed_4k_inside_a_thp_invalidates_the_whole_2m() {
        use crate::check::observe::pagemap::{PageKind, PAGE_SIZE};
        const MB2: u64 = 2 << 20;
        if !std::path::Path::new("/dev/kvm").exists() {
            eprintln!("SKIPPED real_dontneed_4k_inside_a_thp: no /dev/kvm");
            return;
        }
        let host = crate::check::observe::host::HostConditions::read();
        if host.thp_enabled.value.as_deref() == Some("never") {
            eprintln!("SKIPPED real_dontneed_4k_inside_a_thp: THP is never");
            return;
        }
        let mut s = match TraceSession::start(PidFilter::ThisProcess) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("SKIPPED real_dontneed_4k_inside_a_thp: {e}");
                return;
            }
        };
        let config = VmConfig {
            memory: MemoryConfig {
                size: 32 << 20,
                ..MemoryConfig::default()
            },
            ..VmConfig::default()
        };
        let vmm = Vmm::new(config, VmIo::captured().0).unwrap();
        const SZ: usize = 2 << 20;
        let len = 2 * SZ;
        // SAFETY: a fresh private anonymous mapping, unmapped at the end of the test.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p as u64;
        let a = (base + MB2 - 1) & !(MB2 - 1);
        let (sz, ptr) = (SZ, a as *mut u8);
        // SAFETY: [a, a + 2M) lies inside the mapping (2 x 2M, `a` the first 2M boundary).
        unsafe {
            assert_eq!(libc::madvise(ptr.cast(), sz, libc::MADV_HUGEPAGE), 0);
            std::ptr::write_bytes(ptr, 1, sz);
        }
        let pm = PageMap::open().unwrap();
        if pm.state(a).unwrap().kind != (PageKind::AnonThp { head: true }) {
            eprintln!("SKIPPED real_dontneed_4k_inside_a_thp: no THP was allocated");
            // SAFETY: unmaps exactly the mapping made above.
            unsafe { libc::munmap(p, len) };
            return;
        }
        s.set_hva_ranges(std::iter::once(base..base + 2 * MB2).collect());
        s.drain().unwrap();
        let hole = a + 3 * PAGE_SIZE;
        // SAFETY: one page inside the mapping; nothing else uses it.
        let rc = unsafe { libc::madvise(hole as *mut libc::c_void, 4096, libc::MADV_DONTNEED) };
        assert_eq!(rc, 0);
        let got: Vec<TraceEvent> = s
            .drain()
            .unwrap()
            .records
            .into_iter()
            .map(|r| r.event)
            .collect();
        eprintln!("DONTNEED 4K inside a THP traced: {got:x?}");
        let small = TraceEvent::UnmapHvaRange {
            start: hole,
            end: hole + PAGE_SIZE,
        };
        let whole = TraceEvent::UnmapHvaRange {
            start: a,
            end: a + MB2,
        };
        assert!(got.contains(&small), "{got:x?}");
        assert!(
            got.contains(&whole),
            "the PMD split invalidates the whole 2M: {got:x?}"
        );
        let st = pm.states(a, MB2, PAGE_SIZE).unwrap();
        assert_eq!(st[3].kind, PageKind::NotPresent);
        let head = st[0].pfn.unwrap();
        eprintln!(
            "after: page 0 {:?} size {}, page 4 {:?} size {}",
            st[0].kind, st[0].size, st[4].kind, st[4].size
        );
        for (i, p) in st.iter().enumerate().filter(|(i, _)| *i != 3) {
            assert!(p.present, "page {i}");
            assert_eq!(p.pfn, Some(head + i as u64), "page {i} moved");
        }
        // SAFETY: unmaps exactly the mapping made above.
        unsafe { libc::munmap(p, len) };
        drop(vmm);
    }
}
