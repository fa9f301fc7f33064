//! The TDP fault path: from a guest access to an installed SPTE.
//!
//! Models `kvm_tdp_page_fault()` → `kvm_tdp_mmu_page_fault()` (arch/x86/kvm/mmu/mmu.c):
//! `fast_page_fault()`, `kvm_faultin_pfn()` (snapshot of `mmu_invalidate_seq`, pre-check,
//! `__kvm_faultin_pfn()`, post-check), `is_page_fault_stale()`, `kvm_tdp_mmu_map()` and the
//! release of the page reference (6.12 `kvm_release_pfn_clean()` after unlock; 6.13+
//! `kvm_release_faultin_page()` under `mmu_lock`). gfn → hva → pfn follows
//! `__gfn_to_pfn_memslot()` / `hva_to_pfn()` (virt/kvm/kvm_main.c) on [`crate::gup`], one
//! `FollowPfn` (`struct kvm_follow_pfn`) per lookup.
//!
//! The fault is a sequence of steps ([`Kvm::fault_snapshot`], [`Kvm::fault_precheck`],
//! [`Kvm::fault_gup`], [`Kvm::fault_stale_check`], [`Kvm::fault_install`],
//! [`Kvm::fault_finish`]) so that [`crate::explore`] can interleave invalidations between
//! them; [`Kvm::page_fault`] runs them back to back.
//!
//! # Divergence
//! No private memory, no APIC-access page, no write tracking (so no unsync and no
//! `RET_PF_WRITE_PROTECTED` from `make_spte()`), no NX huge pages. Async page faults
//! complete at once: the work's `get_user_pages_remote(FOLL_WRITE)` runs when the fault is
//! queued and the vCPU then faults again (no `KVM_REQ_APF_HALT`). Dirty/accessed state is
//! moved to the folio when the reference is released, not when the SPTE is zapped
//! (`handle_changed_spte()`'s `kvm_set_pfn_dirty()` is not modelled). A guest access stops
//! after [`MAX_ROUNDS`] rounds and reports its last result.

use super::level;
use super::spte::{bits, level_num, MapOutcome, Spte};
use super::Kvm;
use crate::gup::{self, FollFlags, GupError, GupPath, PageRef};
use crate::host::{FaultFlags, HostFault, Mm, UffdMode, VmFlags};
use crate::notifier::NotifierRange;
use crate::types::{Gfn, Gpa, Hva, KernelVersion, Level, Pfn};
use serde::{Deserialize, Serialize};

/// A guest access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// A load.
    Read,
    /// A store.
    Write,
    /// An instruction fetch.
    Exec,
}

/// The outcome of one guest access or fault (`RET_PF_*`, plus "hit").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PfResult {
    /// The SPTE already allowed the access: no fault.
    Hit,
    /// `RET_PF_FIXED`.
    Fixed,
    /// `RET_PF_SPURIOUS`.
    Spurious,
    /// `RET_PF_RETRY`.
    Retry,
    /// `RET_PF_EMULATE` (not MMIO).
    Emulate,
    /// -EFAULT out of `KVM_RUN`.
    Efault,
    /// MMIO: no memslot (an MMIO SPTE was installed or hit).
    Mmio,
    /// `RET_PF_WRITE_PROTECTED`.
    WriteProtected,
    /// `kvm_handle_signal_exit()`: a signal is pending (`KVM_PFN_ERR_SIGPENDING`); KVM_RUN
    /// returns -EINTR (`KVM_EXIT_INTR`).
    Intr,
    /// `KVM_PFN_ERR_HWPOISON`: `kvm_send_hwpoison_signal()` queues SIGBUS (BUS_MCEERR_AR)
    /// and the fault returns `RET_PF_RETRY`; the vCPU exits to deliver it.
    Hwpoison,
    /// The blocking GUP reached `handle_userfault()` (no async PF): the vCPU thread sleeps
    /// inside `KVM_RUN` until userspace resolves the fault ([`Kvm::uffd_wake`]).
    UffdWait,
}

/// `kvm_pfn_t` error values (`KVM_PFN_ERR_*`, `KVM_PFN_NOSLOT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PfnError {
    /// `KVM_PFN_ERR_FAULT`.
    Fault,
    /// `KVM_PFN_ERR_HWPOISON`.
    Hwpoison,
    /// `KVM_PFN_ERR_RO_FAULT`.
    RoFault,
    /// `KVM_PFN_ERR_SIGPENDING`.
    SigPending,
    /// `KVM_PFN_NOSLOT`.
    NoSlot,
    /// `KVM_PFN_ERR_NEEDS_IO` [6.13+] / `*async = true` (6.12).
    NeedsIo,
    /// Not a kernel value: the blocking `get_user_pages_unlocked()` sleeps in
    /// `handle_userfault()` and has not returned yet.
    UffdWait,
}

/// A guest access whose blocking GUP sleeps in `handle_userfault()` (fs/userfaultfd.c):
/// without async PF, `__kvm_faultin_pfn()`'s second `__gfn_to_pfn_memslot()` waits there
/// (one `uffd_msg` is queued: the NOWAIT pass before it returned `VM_FAULT_RETRY` without
/// one) until `userfaultfd_wake_function()` wakes it for a range that covers the address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UffdBlocked {
    /// The access's gpa.
    pub gpa: Gpa,
    /// Its kind.
    pub access: Access,
    /// The address the uffd event names (page aligned).
    pub hva: Hva,
    /// Which registration mode made it wait (`handle_userfault()`'s reason, the
    /// `uffd_msg` flags: WP -> `UFFD_PAGEFAULT_FLAG_WP`, MINOR -> `UFFD_PAGEFAULT_FLAG_MINOR`).
    pub reason: UffdMode,
    /// `UFFD_PAGEFAULT_FLAG_WRITE`: the fault was a write.
    pub write: bool,
    /// `fault->mmu_seq`, checked when the GUP returns.
    pub mmu_seq: u64,
    /// `fault->slot`.
    pub slot: u16,
    /// The hva may be mapped writable (not a read-only slot).
    pub want_writable: bool,
    /// `fault->present`.
    pub present: bool,
    /// Host fault handlers and RET_PF_RETRY rounds so far.
    pub report: AccessReport,
    /// The scenario step that made the access (set by the scenario runner).
    pub step: Option<usize>,
    /// The step's vCPU (set by the scenario runner).
    pub vcpu: u32,
}

/// What the GUP-like path did for one fault.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GupTrace {
    /// Path that produced the pfn ("fast", "slow", "remapped"), or none.
    pub path: GupPath,
    /// FOLL flags of the last GUP call (the one that produced the pfn, if any).
    pub flags: FollFlags,
    /// GUP-like calls made (fast, slow and remapped attempts).
    pub calls: u32,
}

/// One in-flight fault (`struct kvm_page_fault`).
#[derive(Debug)]
pub struct PageFault {
    /// Faulting address.
    pub gpa: Gpa,
    /// `fault->gfn`.
    pub gfn: Gfn,
    /// `fault->write`.
    pub write: bool,
    /// `fault->exec`.
    pub exec: bool,
    /// `fault->present` (the SPTE was hardware-present).
    pub present: bool,
    /// `fault->prefetch`.
    pub prefetch: bool,
    /// `fault->max_level`.
    pub max_level: Level,
    /// `fault->goal_level`.
    pub goal_level: Level,
    /// Memslot id (`fault->slot`), None for noslot.
    pub slot: Option<u16>,
    /// `fault->mmu_seq`.
    pub mmu_seq: u64,
    /// `fault->pfn`.
    pub pfn: Result<Pfn, PfnError>,
    /// `fault->hva`.
    pub hva: Option<Hva>,
    /// `fault->map_writable`.
    pub map_writable: bool,
    /// The reference to drop once done (GUP page; 6.12 refcounted remapped page).
    pub page: Option<PageRef>,
    /// GUP report.
    pub gup: GupTrace,
    /// Host fault handlers run on behalf of this fault.
    pub host_faults: Vec<HostFault>,
}

/// One hva → pfn lookup (`struct kvm_follow_pfn`, virt/kvm/kvm_mm.h, 6.13+; 6.12 passes the
/// same as `hva_to_pfn()`'s arguments): what to look up, and where the results go.
#[derive(Debug)]
struct FollowPfn<'a> {
    /// `kfp->slot`: the memslot's id.
    slot: u16,
    /// `kfp->hva`: what `__gfn_to_hva_many()` gave for `kfp->gfn` (the caller's, so the
    /// model keeps no gfn here).
    hva: Hva,
    /// `kfp->flags`: `FOLL_WRITE`, `FOLL_NOWAIT`, `FOLL_INTERRUPTIBLE`; `FOLL_TRIED` for the
    /// retry after a `handle_userfault()` wait (which mm/gup.c sets inside GUP).
    flags: FollFlags,
    /// `kfp->map_writable`: None (NULL) when the pfn may not be mapped writable (a
    /// read-only memslot), else set to whether it may.
    map_writable: Option<&'a mut bool>,
    /// `kfp->refcounted_page`: the page reference the caller drops once done.
    refcounted_page: &'a mut Option<PageRef>,
    /// Set when the NOWAIT lookup needs I/O (6.12 `*async`; 6.13+ returns
    /// `KVM_PFN_ERR_NEEDS_IO`).
    needs_io: bool,
    /// The model's report: GUP calls, path and FOLL flags.
    gup: &'a mut GupTrace,
    /// The model's report: the host fault handlers the lookup ran.
    host_faults: &'a mut Vec<HostFault>,
}

/// Result of one step: go on, or the fault is over with this result.
pub type Step = Result<(), PfResult>;

/// What one guest access did (scenario step record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccessReport {
    /// Final outcome.
    pub result: PfResult,
    /// `RET_PF_RETRY` rounds.
    pub retries: u32,
    /// GUP of the last fault taken.
    pub gup: Option<GupTrace>,
    /// Host fault handlers that ran (GUP, fixup and emulation), in order.
    pub host_faults: Vec<HostFault>,
    /// Async page faults queued.
    pub async_pf: u32,
}

/// Bound on the rounds one access may take before the model reports a livelock.
pub const MAX_ROUNDS: u32 = 16;

impl PageFault {
    fn new(gpa: Gpa, access: Access, present: bool) -> Self {
        PageFault {
            gpa,
            gfn: gpa.gfn(),
            write: access == Access::Write,
            exec: access == Access::Exec,
            present,
            prefetch: false,
            max_level: Level::Pud1G,
            goal_level: Level::Pte4K,
            slot: None,
            mmu_seq: 0,
            pfn: Err(PfnError::Fault),
            hva: None,
            map_writable: false,
            page: None,
            gup: GupTrace::default(),
            host_faults: Vec::new(),
        }
    }

    /// `is_access_allowed()`.
    fn allows(&self, s: Spte) -> bool {
        allows(s, self.write)
    }
}

fn allows(s: Spte, write: bool) -> bool {
    s.is_present() && !s.is_access_tracked() && (!write || s.is_writable())
}

impl Kvm {
    /// Runs one guest access to completion, as a vCPU would: "hit" when the SPTE allows it;
    /// otherwise faults (`kvm_mmu_page_fault()` (arch/x86/kvm/mmu/mmu.c)), re-entering the guest
    /// after `RET_PF_RETRY` / `RET_PF_FIXED` until the access completes, is emulated (through the
    /// host mapping, like the emulator's `copy_to/from_user`) or fails.
    pub fn guest_access(&mut self, mm: &mut Mm, gpa: Gpa, access: Access) -> AccessReport {
        let write = access == Access::Write;
        let mut rep = AccessReport {
            result: PfResult::Hit,
            retries: 0,
            gup: None,
            host_faults: Vec::new(),
            async_pf: 0,
        };
        let mut faulted = false;
        for _ in 0..MAX_ROUNDS {
            let spte = self.tdp.lookup(gpa.gfn());
            match spte {
                Some((s, _)) if s.is_mmio() => {
                    // EPT misconfig → handle_mmio_page_fault() → emulate the MMIO access.
                    self.stats.faults.mmio += 1;
                    rep.result = PfResult::Mmio;
                    return rep;
                }
                Some((s, l)) if allows(s, write) => {
                    // The CPU sets A (and D on a write) itself.
                    let mut n = s.with(bits::ACCESSED);
                    if write {
                        n = n.with(bits::DIRTY);
                    }
                    if n != s {
                        self.tdp.update_leaf(gpa.gfn(), l, n);
                    }
                    if !faulted {
                        rep.result = PfResult::Hit;
                    }
                    return rep;
                }
                _ => {}
            }
            let present = spte.is_some_and(|(s, _)| s.is_present() && !s.is_access_tracked());
            faulted = true;
            let (r, f) = self.page_fault(mm, gpa, access, present);
            if let Some(mut f) = f {
                if rep.host_faults.is_empty() {
                    // The first round's handlers: take the buffer, not a copy.
                    std::mem::swap(&mut rep.host_faults, &mut f.host_faults);
                } else {
                    rep.host_faults.extend(f.host_faults.iter().copied());
                }
                if f.gup.path != GupPath::None || f.gup.calls > 0 {
                    rep.gup = Some(f.gup);
                }
            }
            rep.result = r;
            match r {
                PfResult::Retry => {
                    rep.retries += 1;
                    self.stats.retries += 1;
                }
                PfResult::Fixed | PfResult::Spurious => {}
                PfResult::Emulate => {
                    self.emulate_access(mm, gpa, write, &mut rep);
                    return rep;
                }
                PfResult::UffdWait => {
                    if let Some(b) = self.uffd_blocked.as_mut() {
                        b.report = rep.clone();
                    }
                    return rep;
                }
                PfResult::Efault
                | PfResult::Mmio
                | PfResult::WriteProtected
                | PfResult::Hit
                | PfResult::Intr
                | PfResult::Hwpoison => {
                    return rep;
                }
            }
            if r == PfResult::Retry && self.take_async_pf_event() {
                rep.async_pf += 1;
            }
        }
        rep
    }

    /// The emulator's access through the host mapping (`kvm_read_guest()` /
    /// `kvm_write_guest()` → `copy_from/to_user()`), host faults included. A write to a
    /// read-only memslot is an MMIO exit to userspace instead.
    fn emulate_access(&mut self, mm: &mut Mm, gpa: Gpa, write: bool, rep: &mut AccessReport) {
        let Some(slot) = self.slots.find(gpa.gfn()) else {
            return;
        };
        if write && slot.flags.readonly {
            return;
        }
        let hva = slot.gfn_to_hva(gpa.gfn()).add(gpa.0 & 0xfff);
        match mm.user_access(hva, write, self) {
            Ok(op) => rep.host_faults.extend(op.host_faults),
            Err(crate::host::AccessError::Fault { faults, .. }) => {
                for f in faults {
                    rep.host_faults.extend(f.handlers);
                }
            }
            Err(_) => {}
        }
    }

    /// One fault, all steps back to back (`kvm_mmu_do_page_fault()`
    /// (arch/x86/kvm/mmu/mmu_internal.h) → `kvm_tdp_page_fault()`). Returns the result and the
    /// fault (None when it ended in `fast_page_fault()` or before any state was built).
    pub fn page_fault(
        &mut self,
        mm: &mut Mm,
        gpa: Gpa,
        access: Access,
        present: bool,
    ) -> (PfResult, Option<PageFault>) {
        let mut f = match self.fault_snapshot(gpa, access, present) {
            Ok(f) => f,
            Err(r) => return (self.count(r), None),
        };
        let r = self
            .fault_precheck(&mut f, mm)
            .and_then(|()| self.fault_gup(&mut f, mm))
            .and_then(|()| self.fault_stale_check(&f))
            .map(|()| self.fault_install(&mut f, mm));
        let r = r.unwrap_or_else(|e| e);
        self.fault_finish(&mut f, mm, r);
        (self.count(r), Some(f))
    }

    fn count(&mut self, r: PfResult) -> PfResult {
        let c = &mut self.stats.faults;
        match r {
            PfResult::Hit => {}
            PfResult::Fixed => c.fixed += 1,
            PfResult::Spurious => c.spurious += 1,
            PfResult::Retry => c.retry += 1,
            PfResult::Emulate => c.emulate += 1,
            PfResult::Efault => c.efault += 1,
            PfResult::Mmio => c.mmio += 1,
            PfResult::WriteProtected => c.write_protected += 1,
            PfResult::Intr => c.intr += 1,
            PfResult::Hwpoison => c.hwpoison += 1,
            // Not counted: the fault has not ended (its end is counted on wake-up).
            PfResult::UffdWait => {}
        }
        r
    }

    /// Step 1: `fast_page_fault()` (arch/x86/kvm/mmu/mmu.c), then `kvm_faultin_pfn()` up to and
    /// including the snapshot of `mmu_invalidate_seq` and the memslot checks.
    pub fn fault_snapshot(
        &mut self,
        gpa: Gpa,
        access: Access,
        present: bool,
    ) -> Result<PageFault, PfResult> {
        let mut f = PageFault::new(gpa, access, present);
        if let Some(r) = self.fast_page_fault(&f) {
            return Err(r);
        }
        f.mmu_seq = self.inval.seq;
        match self.slots.find(f.gfn) {
            None => {
                // kvm_handle_noslot_fault()
                if !self.config.mmio_caching {
                    return Err(PfResult::Mmio);
                }
                f.pfn = Err(PfnError::NoSlot);
                f.map_writable = false;
            }
            Some(s) if s.invalid => return Err(PfResult::Retry),
            Some(s) => f.slot = Some(s.id),
        }
        Ok(f)
    }

    /// Step 2: the lockless pre-check `mmu_invalidate_retry_gfn_unsafe()`
    /// (include/linux/kvm_host.h), before GUP.
    pub fn fault_precheck(&mut self, f: &mut PageFault, _mm: &mut Mm) -> Step {
        if f.slot.is_some() && self.inval.retry_gfn_unsafe(f.mmu_seq, f.gfn) {
            return Err(PfResult::Retry);
        }
        Ok(())
    }

    /// Step 3: `__kvm_faultin_pfn()` (arch/x86/kvm/mmu/mmu.c) (NOWAIT pass, async PF or blocking
    /// pass), error pfns (`kvm_handle_error_pfn()`), then the post-check.
    pub fn fault_gup(&mut self, f: &mut PageFault, mm: &mut Mm) -> Step {
        let Some(slot_id) = f.slot else {
            return Ok(()); // noslot: nothing to resolve
        };
        // __kvm_mmu_faultin_pfn(): foll = FOLL_WRITE for a write, FOLL_NOWAIT first.
        let foll = if f.write {
            FollFlags::WRITE
        } else {
            FollFlags::empty()
        };
        if self.gfn_to_pfn(f, mm, slot_id, foll | FollFlags::NOWAIT) {
            if !f.prefetch && self.config.async_pf {
                // kvm_arch_setup_async_pf(): the work runs get_user_pages_remote(FOLL_WRITE)
                // and the vCPU re-enters the guest.
                self.async_pf_work(f, mm);
                return Err(PfResult::Retry);
            }
            self.gfn_to_pfn(f, mm, slot_id, foll | FollFlags::INTERRUPTIBLE);
        }
        if f.pfn == Err(PfnError::UffdWait) {
            self.block_on_userfault(f, mm);
        }
        self.pfn_post_check(f)
    }

    /// The end of `__kvm_faultin_pfn()` / `kvm_faultin_pfn()`: error pfns
    /// (`kvm_handle_error_pfn()`), then the post-GUP `mmu_invalidate_retry_gfn_unsafe()`.
    fn pfn_post_check(&mut self, f: &PageFault) -> Step {
        match f.pfn {
            Ok(_) => {}
            Err(PfnError::NoSlot) => {}
            Err(PfnError::RoFault) => return Err(PfResult::Emulate),
            Err(PfnError::Hwpoison) => return Err(PfResult::Hwpoison),
            Err(PfnError::SigPending) => return Err(PfResult::Intr),
            Err(PfnError::UffdWait) => return Err(PfResult::UffdWait),
            Err(PfnError::Fault) | Err(PfnError::NeedsIo) => return Err(PfResult::Efault),
        }
        if self.config.stale_check && self.inval.retry_gfn_unsafe(f.mmu_seq, f.gfn) {
            return Err(PfResult::Retry);
        }
        Ok(())
    }

    /// Records the fault `f` as asleep in `handle_userfault()` (see [`UffdBlocked`]).
    fn block_on_userfault(&mut self, f: &PageFault, mm: &Mm) {
        let (Some(hva), Some(slot)) = (f.hva, f.slot) else {
            return;
        };
        let page = hva.align_down(Level::Pte4K);
        let reason = match mm.lookup(page) {
            Some(m) if m.present && m.entry.is_uffd_wp() => UffdMode::Wp,
            Some(m) if m.present => UffdMode::Missing,
            _ if mm.uffd_minor_pending(page) => UffdMode::Minor,
            _ => UffdMode::Missing,
        };
        let access = if f.write {
            Access::Write
        } else if f.exec {
            Access::Exec
        } else {
            Access::Read
        };
        let want_writable = self.slots.by_id(slot).is_some_and(|s| !s.flags.readonly);
        self.uffd_blocked = Some(UffdBlocked {
            gpa: f.gpa,
            access,
            hva: page,
            reason,
            write: f.write,
            mmu_seq: f.mmu_seq,
            slot,
            want_writable,
            present: f.present,
            report: AccessReport {
                result: PfResult::UffdWait,
                retries: 0,
                gup: None,
                host_faults: Vec::new(),
                async_pf: 0,
            },
            step: None,
            vcpu: 0,
        });
    }

    /// Models the wake-up of a vCPU asleep in `handle_userfault()` by an ioctl that resolves
    /// `start..start+len` (`wake_userfault()` from `UFFDIO_COPY`/`ZEROPAGE`/`CONTINUE`, an
    /// un-protecting `UFFDIO_WRITEPROTECT`, or `UFFDIO_WAKE`; fs/userfaultfd.c): nothing
    /// happens unless the blocked address lies in the range (`userfaultfd_wake_function()`).
    /// Otherwise `handle_userfault()` returns `VM_FAULT_RETRY`, `__get_user_pages_locked()`
    /// (mm/gup.c) faults again with `FOLL_TRIED` (which may sleep again), and
    /// `hva_to_pfn_slow()` and `kvm_faultin_pfn()` finish the fault: the post-check against
    /// the snapshot taken before the wait (an invalidation meanwhile makes it
    /// `RET_PF_RETRY`), install, release, and the vCPU re-enters the guest until the access
    /// completes. Returns the access's report once it has ended.
    pub fn uffd_wake(&mut self, mm: &mut Mm, start: Hva, len: u64) -> Option<AccessReport> {
        let b = self.uffd_blocked.take()?;
        if b.hva.0 < start.0 || b.hva.0 - start.0 >= len {
            self.uffd_blocked = Some(b);
            return None;
        }
        let mut rep = b.report.clone();
        // The report of the ended access names what ran after the wake-up.
        rep.host_faults.clear();
        let mut f = PageFault::new(b.gpa, b.access, b.present);
        f.slot = Some(b.slot);
        f.mmu_seq = b.mmu_seq;
        let hva = self
            .slots
            .by_id(b.slot)
            .map(|s| s.gfn_to_hva(f.gfn))
            .unwrap_or(b.hva);
        f.hva = Some(hva);
        let mut flags = FollFlags::INTERRUPTIBLE | FollFlags::TRIED;
        if f.write {
            flags |= FollFlags::WRITE;
        }
        f.pfn = {
            let mut kfp = f.follow_pfn(b.slot, hva, flags, b.want_writable);
            self.hva_to_pfn_slow(&mut kfp, mm)
        };
        rep.host_faults.extend(f.host_faults.iter().copied());
        rep.gup = Some(f.gup.clone());
        if f.pfn == Err(PfnError::UffdWait) {
            // Woken, faulted again, and asleep again (the ioctl resolved another page).
            let mut again = b;
            again.report = rep;
            self.uffd_blocked = Some(again);
            return None;
        }
        let r = self
            .pfn_post_check(&f)
            .and_then(|()| self.fault_stale_check(&f))
            .map(|()| self.fault_install(&mut f, mm));
        let r = r.unwrap_or_else(|e| e);
        self.fault_finish(&mut f, mm, r);
        let r = self.count(r);
        rep.result = r;
        match r {
            PfResult::Retry | PfResult::Fixed | PfResult::Spurious => {
                if r == PfResult::Retry {
                    rep.retries += 1;
                    self.stats.retries += 1;
                }
                // The vCPU re-enters the guest and repeats the access.
                let next = self.guest_access(mm, b.gpa, b.access);
                rep.retries += next.retries;
                rep.host_faults.extend(next.host_faults);
                rep.async_pf += next.async_pf;
                if next.gup.is_some() {
                    rep.gup = next.gup;
                }
                if next.result != PfResult::Hit {
                    rep.result = next.result;
                }
            }
            PfResult::Emulate => self.emulate_access(mm, b.gpa, b.write, &mut rep),
            _ => {}
        }
        if rep.result == PfResult::UffdWait {
            if let Some(nb) = self.uffd_blocked.as_mut() {
                nb.step = b.step;
                nb.vcpu = b.vcpu;
            }
        }
        Some(rep)
    }

    /// Step 5 (under `mmu_lock`): `is_page_fault_stale()` (arch/x86/kvm/mmu/mmu.c); no notifier
    /// check for MMIO.
    pub fn fault_stale_check(&self, f: &PageFault) -> Step {
        if self.config.stale_check && f.slot.is_some() && self.inval.retry_gfn(f.mmu_seq, f.gfn) {
            return Err(PfResult::Retry);
        }
        Ok(())
    }

    /// Step 6 (under `mmu_lock`): `kvm_mmu_hugepage_adjust()` (arch/x86/kvm/mmu/mmu.c) then
    /// `kvm_tdp_mmu_map()`.
    pub fn fault_install(&mut self, f: &mut PageFault, mm: &mut Mm) -> PfResult {
        self.hugepage_adjust(f, mm);
        let goal = level_num(f.goal_level);
        let Some(slot_id) = f.slot else {
            // make_mmio_spte()
            let out = self.tdp.map(
                f.gfn.align_down(f.goal_level),
                goal,
                Spte::mmio(f.gfn),
                &mut |_| {},
            );
            return match out {
                MapOutcome::Spurious => PfResult::Spurious,
                MapOutcome::Installed { .. } => PfResult::Mmio,
            };
        };
        let Ok(pfn) = f.pfn else {
            return PfResult::Efault;
        };
        let old = self.tdp.lookup(f.gfn);
        let new = self.make_spte(f, pfn, goal, old);
        // make_spte(): mark_page_dirty_in_slot() for a writable SPTE under dirty logging
        // (before the spurious check, as in KVM).
        if new.is_writable() {
            if let Some(s) = self.slots.by_id_mut(slot_id) {
                if s.dirty_logging() {
                    s.mark_dirty(f.gfn);
                }
            }
        }
        let trace = &mut self.trace;
        let mut removed = 0u64;
        let out = self.tdp.map(f.gfn, goal, new, &mut |c| {
            removed += 1;
            Kvm::record_zap(trace, c);
        });
        match out {
            MapOutcome::Spurious => PfResult::Spurious,
            MapOutcome::Installed {
                replaced_table,
                splits,
                ..
            } => {
                self.stats.splits += u64::from(splits);
                if replaced_table {
                    // kvm_flush_remote_tlbs_gfn()
                    self.stats.zaps += removed;
                    self.flush_remote_tlbs();
                }
                PfResult::Fixed
            }
        }
    }

    /// Releases the page reference: 6.12 `kvm_release_pfn_clean()` (virt/kvm/kvm_main.c) (mark
    /// accessed, put); 6.13+ `kvm_release_faultin_page()` (retry: put only; map_writable: dirty,
    /// accessed, put; else accessed, put).
    pub fn fault_finish(&mut self, f: &mut PageFault, mm: &mut Mm, r: PfResult) {
        let Some(page) = f.page.take() else {
            return;
        };
        if self.config.kernel >= KernelVersion::V6_13 {
            if r != PfResult::Retry {
                if f.map_writable {
                    gup::set_page_dirty(mm, &page);
                }
                gup::mark_page_accessed(mm, &page);
            }
        } else {
            gup::mark_page_accessed(mm, &page);
        }
        gup::put_page(mm, page);
    }

    /// `make_spte()` for a TDP leaf with `ACC_ALL`.
    fn make_spte(&self, f: &PageFault, pfn: Pfn, goal: u8, old: Option<(Spte, u8)>) -> Spte {
        let mut s = bits::PRESENT;
        if !f.prefetch {
            s |= bits::ACCESSED;
        }
        if goal > 1 {
            s |= bits::HUGE;
        }
        if f.map_writable {
            s |= bits::HOST_WRITABLE | bits::WRITABLE | bits::MMU_WRITABLE;
            let old_writable_leaf = matches!(old, Some((o, l)) if l == goal && o.is_writable());
            if !old_writable_leaf {
                s |= bits::DIRTY;
            }
        }
        let mut spte = Spte::leaf(pfn, s);
        if f.prefetch && !self.config.ad_enabled {
            spte = spte.with(bits::ACCESS_TRACKED);
        }
        spte
    }

    /// `kvm_mmu_hugepage_adjust()`.
    fn hugepage_adjust(&mut self, f: &mut PageFault, mm: &Mm) {
        f.goal_level = Level::Pte4K;
        let Some(slot) = f.slot.and_then(|id| self.slots.by_id(id)) else {
            return;
        };
        let Ok(pfn) = f.pfn else { return };
        if f.max_level == Level::Pte4K || slot.dirty_logging() {
            return;
        }
        let req = level::max_mapping_level(
            mm,
            slot,
            f.gfn,
            f.max_level,
            self.config.max_huge_page_level,
        );
        if req == Level::Pte4K {
            return;
        }
        f.goal_level = req;
        f.pfn = Ok(pfn.align_down(req));
    }

    /// `fast_page_fault()`: fix a present SPTE in place (write to an MMU-writable SPTE,
    /// access-tracked SPTE) without GUP. None is `RET_PF_INVALID`.
    fn fast_page_fault(&mut self, f: &PageFault) -> Option<PfResult> {
        // page_fault_can_be_fast()
        let can = if !f.present {
            !self.config.ad_enabled
        } else {
            f.write
        };
        if !can {
            return None;
        }
        let (spte, level) = self.tdp.lookup(f.gfn)?;
        if !spte.is_present() {
            return None;
        }
        if f.allows(spte) {
            self.stats.faults.fast += 1;
            return Some(PfResult::Spurious);
        }
        let mut new = spte;
        if !self.config.ad_enabled && spte.is_access_tracked() {
            new = new.without(bits::ACCESS_TRACKED);
        }
        let slot = self.slots.find(f.gfn);
        if f.write && spte.is_mmu_writable() {
            new = new.with(bits::WRITABLE);
            if level > 1 && slot.is_some_and(|s| s.dirty_logging()) {
                return None;
            }
        }
        if new == spte || !f.allows(new) {
            return None;
        }
        if new.is_writable() && !spte.is_writable() {
            // fast_pf_fix_direct_spte(): mark_page_dirty_in_slot(). The CPU sets D itself
            // when the access is retried.
            if let Some(s) = self.slots.find_mut(f.gfn) {
                s.mark_dirty(f.gfn);
            }
        }
        self.tdp
            .update_leaf(f.gfn.align_down(super::spte::level_of(level)), level, new);
        self.stats.faults.fast += 1;
        Some(PfResult::Fixed)
    }

    /// `__kvm_faultin_pfn()` → `kvm_follow_pfn()` (virt/kvm/kvm_main.c, 6.13+; 6.12
    /// `__gfn_to_pfn_memslot()`): `foll` is the caller's FOLL flags (`FOLL_WRITE` for a write,
    /// plus `FOLL_NOWAIT` on the first (async) pass or `FOLL_INTERRUPTIBLE` on the blocking
    /// one). Sets `f.pfn`, `f.hva`, `f.map_writable`, `f.page`; returns whether the NOWAIT
    /// pass needs I/O (6.12 `*async`, 6.13+ `KVM_PFN_ERR_NEEDS_IO`).
    fn gfn_to_pfn(
        &mut self,
        f: &mut PageFault,
        mm: &mut Mm,
        slot_id: u16,
        foll: FollFlags,
    ) -> bool {
        let Some(slot) = self.slots.by_id(slot_id) else {
            f.pfn = Err(PfnError::NoSlot);
            return false;
        };
        // __gfn_to_hva_many()
        if slot.flags.readonly && foll.contains(FollFlags::WRITE) {
            f.pfn = Err(PfnError::RoFault);
            return false;
        }
        // RO slot: writable == NULL, never mapped writable.
        let want_writable = !slot.flags.readonly;
        let hva = slot.gfn_to_hva(f.gfn);
        f.hva = Some(hva);
        f.map_writable = false;
        let (pfn, needs_io) = {
            let mut kfp = f.follow_pfn(slot_id, hva, foll, want_writable);
            (self.hva_to_pfn(&mut kfp, mm), kfp.needs_io)
        };
        f.pfn = pfn;
        needs_io
    }

    /// `hva_to_pfn()` (virt/kvm/kvm_main.c, 6.12; 6.13+ differences noted).
    fn hva_to_pfn(&mut self, kfp: &mut FollowPfn<'_>, mm: &mut Mm) -> Result<Pfn, PfnError> {
        if let Some(pfn) = self.hva_to_pfn_fast(kfp, mm) {
            return Ok(pfn);
        }
        self.hva_to_pfn_slow(kfp, mm)
    }

    /// `hva_to_pfn_fast()` (virt/kvm/kvm_main.c): only with FOLL_WRITE, even for reads
    /// ("never fast-GUP for read-only: that could race with CoW").
    fn hva_to_pfn_fast(&mut self, kfp: &mut FollowPfn<'_>, mm: &mut Mm) -> Option<Pfn> {
        if !kfp.flags.contains(FollFlags::WRITE) && kfp.map_writable.is_none() {
            return None;
        }
        let page = gup::get_user_page_fast_only(mm, kfp.hva, FollFlags::WRITE);
        kfp.gup.calls += 1;
        let p = page?;
        self.stats.gup.fast += 1;
        if let Some(w) = kfp.map_writable.as_deref_mut() {
            *w = true;
        }
        let pfn = p.pfn();
        *kfp.refcounted_page = Some(p);
        kfp.gup.path = GupPath::Fast;
        kfp.gup.flags = FollFlags::WRITE | FollFlags::GET | FollFlags::FAST_ONLY;
        Some(pfn)
    }

    /// `hva_to_pfn_slow()` and what `hva_to_pfn()` does when it fails (virt/kvm/kvm_main.c);
    /// `FOLL_TRIED` in `kfp.flags` is the retry after a `handle_userfault()` wait.
    fn hva_to_pfn_slow(&mut self, kfp: &mut FollowPfn<'_>, mm: &mut Mm) -> Result<Pfn, PfnError> {
        let write = kfp.flags.contains(FollFlags::WRITE);
        let nowait = kfp.flags.contains(FollFlags::NOWAIT);
        let hva = kfp.hva;
        let flags = FollFlags::HWPOISON | FollFlags::HONOR_NUMA_FAULT | kfp.flags;
        if let Some(w) = kfp.map_writable.as_deref_mut() {
            *w = write;
        }
        self.stats.gup.slow += 1;
        let res = gup::get_user_pages_unlocked(mm, hva, flags, self);
        let used = flags | FollFlags::TOUCH | FollFlags::UNLOCKABLE | FollFlags::GET;
        kfp.host_faults
            .extend(mm.last_gup().host_faults.iter().copied());
        kfp.gup.calls += 1;
        kfp.gup.flags = used;
        let err = match res {
            Ok(mut page) => {
                // The writable fallback: a read pinned the page read-only; take it writable
                // if the PTE is writable now.
                if !write {
                    if let Some(w) = kfp.map_writable.as_deref_mut() {
                        if let Some(wp) = gup::get_user_page_fast_only(mm, hva, FollFlags::WRITE) {
                            gup::put_page(mm, page);
                            page = wp;
                            *w = true;
                        }
                    }
                }
                let pfn = page.pfn();
                *kfp.refcounted_page = Some(page);
                kfp.gup.path = GupPath::Slow;
                kfp.gup.flags = used;
                return Ok(pfn);
            }
            Err(e) => e,
        };
        // -EINTR (6.12; [6.13+] also -EAGAIN, which a single-page unlocked GUP does not
        // return in the model) is a pending signal.
        if matches!(err, GupError::Eintr(_)) {
            return Err(PfnError::SigPending);
        }
        if matches!(err, GupError::Ehwpoison(_)) {
            return Err(PfnError::Hwpoison);
        }
        // Without FOLL_NOWAIT, handle_userfault() does not return VM_FAULT_RETRY at once: it
        // queues the event and sleeps until userspace wakes it (the model's GUP reports the
        // unfinished fault as "0 pages").
        if !nowait
            && matches!(err, GupError::NoPage(_))
            && mm.last_gup().host_faults.last() == Some(&HostFault::Userfault)
        {
            return Err(PfnError::UffdWait);
        }
        // mmap_read_lock; vma = vma_lookup(hva)
        let Some(vma) = mm.find_vma(hva) else {
            return Err(PfnError::Fault);
        };
        if vma.flags.intersects(VmFlags::IO | VmFlags::PFNMAP) {
            // hva_to_pfn_remapped(); the model's fixup_user_fault() does not report a
            // dropped lock, so the -EAGAIN re-lookup never happens.
            return self.hva_to_pfn_remapped(kfp, mm);
        }
        let readable = vma.flags.contains(VmFlags::READ);
        let writable_vma = vma.flags.contains(VmFlags::WRITE);
        if nowait && readable && (!write || writable_vma) {
            kfp.needs_io = true;
            Err(if self.config.kernel >= KernelVersion::V6_13 {
                PfnError::NeedsIo
            } else {
                PfnError::Fault
            })
        } else {
            Err(PfnError::Fault)
        }
    }

    /// `hva_to_pfn_remapped()`: `follow_pfnmap_start()`, faulting with
    /// `fixup_user_fault()` only when nothing is present; a write to a present read-only
    /// entry is `KVM_PFN_ERR_RO_FAULT` (no upgrade attempted). 6.12 takes a reference on a
    /// refcounted pfn (`kvm_try_get_pfn()`), failing on a zero refcount.
    fn hva_to_pfn_remapped(
        &mut self,
        kfp: &mut FollowPfn<'_>,
        mm: &mut Mm,
    ) -> Result<Pfn, PfnError> {
        self.stats.gup.remapped += 1;
        let write = kfp.flags.contains(FollFlags::WRITE);
        let hva = kfp.hva;
        let args = match gup::follow_pfnmap_start(mm, hva) {
            Ok(a) => a,
            Err(_) => {
                let flags = if write {
                    FaultFlags::WRITE
                } else {
                    FaultFlags::empty()
                };
                match gup::fixup_user_fault(mm, hva, flags, self) {
                    Ok(reports) => {
                        for r in reports {
                            kfp.host_faults.extend(r.handlers);
                        }
                    }
                    Err(_) => return Err(PfnError::Fault),
                }
                match gup::follow_pfnmap_start(mm, hva) {
                    Ok(a) => a,
                    Err(_) => return Err(PfnError::Fault),
                }
            }
        };
        kfp.gup.path = GupPath::Remapped;
        kfp.gup.flags = if write {
            FollFlags::WRITE
        } else {
            FollFlags::empty()
        };
        kfp.gup.calls += 1;
        let pfn = if write && !args.writable {
            Err(PfnError::RoFault)
        } else {
            // The memslot as it is now: one deleted while the vCPU slept in
            // handle_userfault() is not mapped writable.
            let slot_writable = self
                .slots
                .by_id(kfp.slot)
                .is_some_and(|s| !s.flags.readonly);
            if let Some(w) = kfp.map_writable.as_deref_mut() {
                *w = args.writable && slot_writable;
            }
            let mut pfn = Ok(args.pfn);
            if self.config.kernel < KernelVersion::V6_13 {
                // kvm_try_get_pfn()
                if let Some(info) = mm.folio_info(args.pfn) {
                    let refcounted =
                        !info.reserved || info.zero || info.zone == crate::host::Zone::Device;
                    if refcounted {
                        match gup::get_page_unless_zero(mm, args.pfn) {
                            Some(p) => *kfp.refcounted_page = Some(p),
                            None => pfn = Err(PfnError::Fault),
                        }
                    }
                }
            }
            pfn
        };
        gup::follow_pfnmap_end(mm, args);
        pfn
    }

    /// Runs the async page fault's work at once (`async_pf_execute()`:
    /// `get_user_pages_remote(FOLL_WRITE)`, result ignored) and records the event.
    fn async_pf_work(&mut self, f: &mut PageFault, mm: &mut Mm) {
        if let Some(hva) = f.hva {
            if let Ok(p) =
                gup::get_user_pages_unlocked(mm, hva, FollFlags::WRITE | FollFlags::REMOTE, self)
            {
                gup::put_page(mm, p);
            }
            f.host_faults
                .extend(mm.last_gup().host_faults.iter().copied());
        }
        self.async_pf_pending = true;
    }

    fn take_async_pf_event(&mut self) -> bool {
        std::mem::take(&mut self.async_pf_pending)
    }

    /// Delivers `range` as a complete `invalidate_range_start` + `_end` pair with no host
    /// change in between (what a host operation whose entries were already gone sends).
    pub fn invalidate(&mut self, range: &NotifierRange) {
        use crate::notifier::MmuNotifier;
        self.invalidate_range_start(range);
        self.invalidate_range_end(range);
    }
}

impl PageFault {
    /// The [`FollowPfn`] `__kvm_faultin_pfn()` builds for this fault, its outputs pointing
    /// into the fault (`&fault->map_writable`, `&fault->refcounted_page`); `want_writable`
    /// false passes a NULL `map_writable` (a read-only memslot).
    fn follow_pfn(
        &mut self,
        slot: u16,
        hva: Hva,
        flags: FollFlags,
        want_writable: bool,
    ) -> FollowPfn<'_> {
        FollowPfn {
            slot,
            hva,
            flags,
            map_writable: want_writable.then_some(&mut self.map_writable),
            refcounted_page: &mut self.page,
            needs_io: false,
            gup: &mut self.gup,
            host_faults: &mut self.host_faults,
        }
    }
}

#[cfg(test)]
mod tests {
    //! Fault-path rules, each driven through a small scenario on the real host model.
    use crate::scenario::{run_scenario, StepRecord};

    const SLOT: &str =
        "[[memslot]]\nid = 0\ngpa = \"0x0\"\nsize = \"1G\"\nhva = \"0x7f0000000000\"\n";

    fn run(body: &str) -> Vec<StepRecord> {
        run_scenario(body)
            .unwrap_or_else(|e| panic!("{e}\n{body}"))
            .steps
    }

    fn anon(extra: &str) -> String {
        format!("{SLOT}[[vma]]\nstart = \"0x7f0000000000\"\nsize = \"1G\"\nprot = \"rw\"\nkind = \"anon\"\n{extra}\n")
    }

    fn step(op: &str, gpa: u64) -> String {
        format!("[[step]]\nop = \"{op}\"\ngpa = \"{gpa:#x}\"\n")
    }

    #[test]
    fn read_fault_tries_fast_gup_with_foll_write_then_slow_gup_honours_numa() {
        let r = run(&(anon("") + &step("write", 0x1000) + &step("read", 0x5000)));
        // A populated writable PTE: the fast path (FOLL_WRITE) maps it writable at once.
        let g = r[0].gup.as_ref().unwrap();
        assert_eq!(g.path, "slow");
        assert!(g.flags.contains(&"HONOR_NUMA_FAULT"));
        assert!(g.flags.contains(&"WRITE"));
        // An untouched page read: zero page, read-only SPTE, no FOLL_WRITE in the slow call.
        let g = r[1].gup.as_ref().unwrap();
        assert!(!g.flags.contains(&"WRITE"));
        assert_eq!(r[1].writable, Some(false));
    }

    #[test]
    fn readonly_memslot_write_is_emulated_and_never_maps_writable() {
        let body = format!(
            "[[memslot]]\nid = 0\ngpa = \"0x0\"\nsize = \"2M\"\nhva = \"0x7f0000000000\"\nflags = [\"readonly\"]\n\
             [[vma]]\nstart = \"0x7f0000000000\"\nsize = \"2M\"\nprot = \"rw\"\nkind = \"anon\"\n{}{}{}",
            step("write", 0x1000),
            step("read", 0x2000),
            step("write", 0x2000)
        );
        let r = run(&body);
        assert_eq!(r[0].result, "emulate");
        assert!(
            r[0].host_faults.is_empty(),
            "a write to a RO slot exits to userspace as MMIO"
        );
        assert_eq!(r[1].writable, Some(false));
        assert_eq!(r[2].result, "emulate");
    }

    #[test]
    fn gpa_without_memslot_installs_an_mmio_spte_then_hits_it() {
        let mmio = step("read", 0x1_0000_0000) + "mmio = true\n";
        let r = run(&(anon("") + &mmio + &mmio));
        assert_eq!(r[0].result, "mmio");
        assert_eq!(r[1].result, "mmio");
        assert!(
            r[1].gup.is_none(),
            "the MMIO SPTE short-circuits the fault path"
        );
    }

    #[test]
    fn incongruent_memslot_hva_forces_4k_even_over_a_thp() {
        let body = "[[memslot]]\nid = 0\ngpa = \"0x1000\"\nsize = \"8M\"\nhva = \"0x7f0000200000\"\n\
             [[vma]]\nstart = \"0x7f0000000000\"\nsize = \"16M\"\nprot = \"rw\"\nkind = \"anon\"\nthp = true\n"
            .to_string()
            + &step("write", 0x20_1000);
        let r = run(&body);
        assert_eq!(r[0].result, "fixed");
        assert_eq!(r[0].level, Some(crate::types::Level::Pte4K));
    }

    #[test]
    fn thp_write_maps_2m_and_dirty_logging_forces_4k() {
        let mut body = anon("thp = true\n");
        body = body.replace("[[vma]]", "[[memslot]]\nid = 1\ngpa = \"0x40000000\"\nsize = \"1G\"\nhva = \"0x7f0040000000\"\nflags = [\"dirty-log\"]\n[[vma]]");
        body += "[[vma]]\nstart = \"0x7f0040000000\"\nsize = \"1G\"\nprot = \"rw\"\nkind = \"anon\"\nthp = true\n";
        body += &step("write", 0x20_0000);
        body += &step("write", 0x4020_0000);
        let r = run(&body);
        assert_eq!(r[0].level, Some(crate::types::Level::Pmd2M));
        assert_eq!(r[1].level, Some(crate::types::Level::Pte4K));
    }

    #[test]
    fn huge_pud_pfnmap_maps_1g_unless_the_tdp_mmu_lacks_1g() {
        let body = |tdp_1g: bool| {
            format!(
                "tdp_1g = {tdp_1g}\n{SLOT}[[vma]]\nstart = \"0x7f0000000000\"\nsize = \"1G\"\nprot = \"rw\"\n\
                 kind = \"pfnmap\"\nshared = true\npfn = \"0x4000000\"\nhuge = \"pud\"\n{}",
                step("read", 0x1234_5000)
            )
        };
        let r = run(&body(true));
        assert_eq!(r[0].gup.as_ref().unwrap().path, "remapped");
        assert_eq!(r[0].level, Some(crate::types::Level::Pud1G));
        let r = run(&body(false));
        assert_eq!(r[0].level, Some(crate::types::Level::Pmd2M));
    }

    #[test]
    fn access_tracked_spte_is_restored_by_fast_page_fault_without_ad_bits() {
        let body = format!(
            "ad_bits = false\n{}{}[[step]]\nop = \"clear-young\"\nstart = \"0x7f0000001000\"\nsize = \"4K\"\n{}",
            anon(""),
            step("write", 0x1000),
            step("read", 0x1000)
        );
        let run = run_scenario(&body).unwrap();
        assert_eq!(run.steps[1].young, Some(true));
        assert_eq!(run.steps[2].result, "fixed");
        assert!(run.steps[2].gup.is_none(), "fixed in place, no GUP");
        assert_eq!(run.stats.faults.fast, 1);
    }

    fn mixedmap(async_pf: bool) -> String {
        format!(
            "async_pf = {async_pf}\n{SLOT}[[vma]]\nstart = \"0x7f0000000000\"\nsize = \"2M\"\nprot = \"rw\"\n\
             kind = \"mixedmap\"\nshared = true\npfn = \"0x4000000\"\n{}",
            step("read", 0x1000)
        )
    }

    #[test]
    fn special_mixedmap_pte_livelocks_with_async_pf_and_efaults_without() {
        // GUP-fast bails on the special PTE, slow GUP returns -EEXIST, and the vma is not
        // VM_IO|VM_PFNMAP: the NOWAIT pass reports "needs I/O" (spec 1.4).
        let r = run(&mixedmap(true));
        assert_eq!(r[0].result, "retry");
        assert_eq!(r[0].retries, super::MAX_ROUNDS);
        assert_eq!(r[0].async_pf, Some(super::MAX_ROUNDS));
        let r = run(&mixedmap(false));
        assert_eq!(r[0].result, "efault");
        assert!(!r[0].gup.as_ref().unwrap().flags.contains(&"NOWAIT"));
    }

    /// 6.13+ `kvm_release_faultin_page()` marks the folio dirty at fault time whenever the
    /// pfn is mapped writable; 6.12's `kvm_release_pfn_clean()` only marks it accessed.
    #[test]
    fn writable_mapping_dirties_the_folio_at_fault_time_only_from_6_13() {
        for (kernel, dirty) in [("6.12", false), ("6.13", true)] {
            let body = format!(
                "kernel = \"{kernel}\"\n{SLOT}[[vma]]\nstart = \"0x7f0000000000\"\nsize = \"2M\"\n\
                 prot = \"rw\"\nkind = \"shmem\"\nshared = true\n{}",
                step("read", 0x1000)
            );
            let run = run_scenario(&body).unwrap();
            assert_eq!(run.steps[0].writable, Some(true), "{kernel}");
            let pfn = run
                .mm
                .lookup(crate::types::Hva(0x7f00_0000_1000))
                .unwrap()
                .pfn;
            let info = run.mm.folio_info(pfn).unwrap();
            assert_eq!(info.dirty, dirty, "{kernel}");
            assert!(info.referenced, "{kernel}: mark_page_accessed");
        }
    }

    /// An invalidation in progress over the gfn makes the lockless pre-check retry before
    /// any GUP; one elsewhere does not, but the seq bump at its end makes a fault that
    /// snapshotted before it stale.
    #[test]
    fn precheck_and_stale_check_follow_in_progress_range_and_seq() {
        use crate::host::{MmConfig, MmapRequest};
        use crate::secondary::memslot::MemslotFlags;
        use crate::secondary::{Kvm, KvmConfig};
        use crate::types::{Gpa, Hva};
        let mut mm = crate::host::Mm::new(MmConfig::default());
        mm.mmap(MmapRequest::anon(Hva(0x7f00_0000_0000), 1 << 21))
            .unwrap();
        let mut kvm = Kvm::new(KvmConfig::default());
        kvm.create_memslot(
            0,
            Gpa(0),
            1 << 21,
            Hva(0x7f00_0000_0000),
            MemslotFlags::default(),
        )
        .unwrap();
        let (s, e) = (Hva(0x7f00_0000_1000), Hva(0x7f00_0000_2000));
        kvm.notifier_invalidate_range_start(s, e);
        let (r, f) = kvm.page_fault(&mut mm, Gpa(0x1000), super::Access::Read, false);
        assert_eq!(r, super::PfResult::Retry);
        assert_eq!(f.unwrap().gup.calls, 0, "the pre-check runs before GUP");
        let (r, _) = kvm.page_fault(&mut mm, Gpa(0x5000), super::Access::Read, false);
        assert_eq!(r, super::PfResult::Fixed, "outside the range");
        // A fault that snapshots now and installs after the end is stale (seq changed).
        let mut f = kvm
            .fault_snapshot(Gpa(0x9000), super::Access::Read, false)
            .unwrap();
        kvm.fault_precheck(&mut f, &mut mm).unwrap();
        kvm.fault_gup(&mut f, &mut mm).unwrap();
        kvm.notifier_invalidate_range_end(s, e);
        assert_eq!(kvm.fault_stale_check(&f), Err(super::PfResult::Retry));
        kvm.fault_finish(&mut f, &mut mm, super::PfResult::Retry);
        assert_eq!(kvm.inval.in_progress, 0);
    }

    /// `kvm_follow_pfn`'s `map_writable`: NULL (a read-only memslot) skips GUP-fast for a
    /// read and never maps writable; non-NULL lets a read take a writable PTE through
    /// GUP-fast (FOLL_WRITE) and reports it writable.
    #[test]
    fn follow_pfn_map_writable_null_skips_fast_gup_and_never_maps_writable() {
        use super::{FollFlags, GupPath, PageFault};
        use crate::host::{MmConfig, MmapRequest};
        use crate::secondary::{Kvm, KvmConfig};
        use crate::types::{Gpa, Hva};
        let base = Hva(0x7f00_0000_0000);
        let mut mm = crate::host::Mm::new(MmConfig::default());
        mm.mmap(MmapRequest::anon(base, 1 << 21)).unwrap();
        mm.user_access(base.add(0x1000), true, &mut crate::notifier::NoNotifier)
            .unwrap();
        let mut kvm = Kvm::new(KvmConfig::default());
        let lookup = |kvm: &mut Kvm, mm: &mut crate::host::Mm, want_writable: bool| {
            let mut f = PageFault::new(Gpa(0x1000), super::Access::Read, false);
            let pfn = {
                let mut kfp = f.follow_pfn(0, base.add(0x1000), FollFlags::empty(), want_writable);
                kvm.hva_to_pfn(&mut kfp, mm)
            };
            (pfn, f)
        };
        let (pfn, f) = lookup(&mut kvm, &mut mm, false);
        assert!(pfn.is_ok());
        assert_eq!(
            (f.gup.path, f.gup.calls),
            (GupPath::Slow, 1),
            "no GUP-fast try"
        );
        assert!(!f.gup.flags.contains(FollFlags::WRITE));
        assert!(!f.map_writable, "NULL map_writable: never writable");
        assert!(f.page.is_some(), "the reference is handed back");
        let (pfn2, f) = lookup(&mut kvm, &mut mm, true);
        assert_eq!(pfn2, pfn);
        assert_eq!((f.gup.path, f.gup.calls), (GupPath::Fast, 1));
        assert!(
            f.map_writable,
            "a writable PTE maps writable even for a read"
        );
        assert!(f.page.is_some());
    }

    #[test]
    fn write_to_a_huge_zero_spte_on_6_12_splits_and_ends_in_4k() {
        let body = anon("thp = true\n") + &step("read", 0x40_0000) + &step("write", 0x40_0000);
        let r = run(&body);
        assert_eq!(r[0].level, Some(crate::types::Level::Pmd2M));
        assert_eq!(r[1].level, Some(crate::types::Level::Pte4K));
        assert_eq!(r[1].retries, 1);
        let ev: Vec<_> = r[1]
            .notifiers
            .iter()
            .map(|n| (n.start.as_str(), n.end.as_str()))
            .collect();
        assert_eq!(
            ev,
            vec![
                ("0x7f0000400000", "0x7f0000600000"),
                ("0x7f0000400000", "0x7f0000401000")
            ]
        );
    }
}
