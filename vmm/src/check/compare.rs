//! The comparison: one step's model record against what the real kernel showed, observable by
//! observable.
//!
//! Observables and where their real values come from:
//! - `outcome` (guest steps): the agent guest's report: the access completed, ended in a
//!   `KVM_EXIT_MMIO`, or `KVM_RUN` failed with `-EFAULT`. The model's `PfResult` maps onto
//!   these three: `hit`/`fixed`/`spurious` complete; `mmio` exits; `efault` fails; `emulate`
//!   is an MMIO exit too, because KVM's emulator turns a write it cannot perform on guest
//!   memory into MMIO (`emulator_read_write_onepage()`, arch/x86/kvm/x86.c).
//! - `value` (guest reads): the 8 bytes the agent read, against the model's page contents.
//! - `notifiers`: every `[start, end)` of `kvm:kvm_unmap_hva_range` (which
//!   `kvm_mmu_notifier_invalidate_range_start()` traces for every invalidation of the VMM's
//!   mm) inside the scenario's VMAs, in order, against the model's invalidation ranges.
//! - `young`: `kvm:kvm_age_hva` / `kvm:kvm_test_age_hva` for aging steps.
//! - `page HVA`: the host page behind an address (`/proc/self/pagemap` + `/proc/kpageflags`):
//!   absent, zero page, huge zero page, anon, anon THP, shmem, file, hugetlb, KSM, and the
//!   size of the mapping, against the model's host page table.
//! - `level`: the SPTE level KVM installed, from `kvmmmu:kvm_mmu_set_spte`; on hosts that do
//!   not emit it (KVM's shadow MMU) it is `not observable here`.
//!
//! Each comparison turns both sides into the same short text, so the table shows exactly
//! what was compared.

use super::report::{Observation, Verdict};
use mmu::scenario::{HostPage, HostPageKind, StepRecord};
use mmu::types::Level;

/// What the agent saw of one guest access.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RealAccess {
    /// The access completed; a read's value.
    Completed {
        /// The 8 bytes read (reads and exec) or written (writes).
        value: u64,
    },
    /// `KVM_EXIT_MMIO` at the access's gpa.
    Mmio {
        /// A write.
        write: bool,
    },
    /// `KVM_RUN` failed with `-EFAULT` (with `KVM_EXIT_MEMORY_FAULT`'s gpa when filled in).
    Efault {
        /// `kvm_run.memory_fault.gpa`, when KVM filled it in.
        gpa: Option<u64>,
    },
    /// The guest took an exception during the access (vector).
    Exception {
        /// The vector.
        vector: u8,
    },
    /// The VM ended or the agent did not answer.
    Crash(String),
    /// The access sleeps in `handle_userfault()`: a userfaultfd event arrived and it has
    /// not ended (its outcome comes with the step that ends it).
    UffdWait,
}

impl RealAccess {
    /// The class compared with the model's outcome.
    pub fn class(&self) -> String {
        match self {
            RealAccess::Completed { .. } => "completed".into(),
            RealAccess::Mmio { .. } => "mmio".into(),
            RealAccess::Efault { .. } => "efault".into(),
            RealAccess::Exception { vector } => format!("guest exception {vector}"),
            RealAccess::Crash(r) => format!("crash: {r}"),
            RealAccess::UffdWait => "uffd-wait".into(),
        }
    }
}

/// The real host page at an address, as the observers decoded it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RealPage {
    /// Present in the page table.
    pub present: bool,
    /// `zero`, `huge-zero`, `anon`, `anon-thp`, `shmem`, `file`, `hugetlb`, `ksm`, `pfnmap`,
    /// or `unknown`.
    pub kind: String,
    /// Mapping size in bytes (4K, 2M, 1G).
    pub size: u64,
}

/// What the real kernel showed during one step (what `faultline check --record` writes).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RealStep {
    /// Why the step was not run for real, if it was not.
    pub not_executable: Option<String>,
    /// A host operation that failed for real (its error), which is itself an observation.
    pub host_error: Option<String>,
    /// The guest access's outcome (guest steps).
    pub access: Option<RealAccess>,
    /// Invalidation ranges inside the scenario, in model addresses; `None` when the host
    /// cannot show them (reason in `Capabilities`).
    pub invalidations: Option<Vec<(u64, u64)>>,
    /// Aging notifications (`kvm_age_hva` ranges and `kvm_test_age_hva` addresses) inside the
    /// scenario, in model addresses.
    pub ages: Option<Vec<(u64, u64)>>,
    /// SPTE levels installed (`kvm_mmu_set_spte`), when the host traces them.
    pub spte_levels: Option<Vec<Level>>,
    /// Host pages of interest after the step: (model hva, state).
    pub pages: Vec<(u64, Option<RealPage>)>,
    /// Invalidations inside the scenario that a kernel thread (khugepaged, ksmd, kswapd,
    /// kcompactd) made during the step: (thread, start, end) in model addresses.
    pub by_daemon: Vec<(String, u64, u64)>,
    /// Every such range since the scenario started: the model's state there is stale for
    /// the rest of the scenario.
    #[serde(skip)]
    pub perturbed: Vec<(String, u64, u64)>,
    /// Pages whose state the host cannot show, with the reason (e.g. pagemap skips
    /// VM_PFNMAP VMAs).
    pub unobservable_pages: Vec<(u64, String)>,
    /// The dirty gfns KVM_GET_DIRTY_LOG reported (dirty-log-get / -clear), in model gfns
    /// (slot base gfn + bit index), ascending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty: Option<Vec<u64>>,
    /// userfaultfd page-fault events read during the step (`None`: no uffd registered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uffd_events: Option<Vec<super::uffd::RealUffdEvent>>,
    /// An access asleep in `handle_userfault()` since step `.0` that ended during this step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub woken: Option<(usize, RealAccess)>,
}

/// Where the real dirty gfns come from.
const DIRTY_SRC: &str = "KVM_GET_DIRTY_LOG bitmap";

/// The gfns whose bits are set in a KVM dirty bitmap of a slot starting at `base_gfn`
/// (bit `i` of word `w` is page `64 * w + i` of the slot, `kvm_get_dirty_log()`).
pub fn dirty_bitmap_gfns(base_gfn: u64, bitmap: &[u64]) -> Vec<u64> {
    let mut out = Vec::new();
    for (w, word) in bitmap.iter().enumerate() {
        for bit in 0..64u64 {
            if word & (1 << bit) != 0 {
                out.push(base_gfn + 64 * w as u64 + bit);
            }
        }
    }
    out
}

fn gfns_text(gfns: &[u64]) -> String {
    if gfns.is_empty() {
        return "none".into();
    }
    let v: Vec<String> = gfns.iter().map(|g| format!("{g:#x}")).collect();
    v.join(" ")
}

/// Which real observables this host offers, found out by the executor.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    /// Why `kvm_unmap_hva_range` is unavailable, if it is.
    pub notifiers: Option<String>,
    /// Why SPTE levels are unavailable, if they are.
    pub levels: Option<String>,
    /// Why page states are unavailable, if they are.
    pub pages: Option<String>,
}

const NOTIFIERS_SRC: &str = "tracefs kvm:kvm_unmap_hva_range";

/// The kind of a real page whose flags could not be read (no /proc/kpageflags): only its
/// presence is known, and only presence is compared.
pub const PRESENT_ONLY: &str = "present";
const PAGE_SRC: &str = "pagemap+kpageflags";

fn size_name(size: u64) -> String {
    match size {
        s if s >= 1 << 30 && s % (1 << 30) == 0 => format!("{}G", s >> 30),
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{}M", s >> 20),
        s => format!("{}K", s >> 10),
    }
}

/// The model's outcome class for a guest step's result name.
///
/// `emulate` becomes `mmio`: `x86_emulate_instruction()` retries the write through
/// `emulator_write_emulated()`, which exits to userspace as MMIO when guest memory cannot be
/// written (a read-only memslot or host PTE) — arch/x86/kvm/x86.c.
pub fn model_outcome(result: &str) -> String {
    match result {
        "hit" | "fixed" | "spurious" => "completed".into(),
        "emulate" => "mmio".into(),
        other => other.into(),
    }
}

/// The model's page as the text the comparison uses.
pub fn model_page_text(p: Option<&HostPage>) -> String {
    match p {
        None => "absent".into(),
        Some(p) => {
            let kind = match p.kind {
                HostPageKind::Zero => "zero",
                HostPageKind::HugeZero => "huge-zero",
                HostPageKind::Anon => "anon",
                HostPageKind::AnonThp => "anon-thp",
                HostPageKind::Shmem => "shmem",
                HostPageKind::File => "file",
                HostPageKind::Hugetlb => "hugetlb",
                HostPageKind::Ksm => "ksm",
                HostPageKind::Device => "device",
                HostPageKind::Pfnmap => "pfnmap",
            };
            format!("{kind} {}", size_name(p.leaf.size()))
        }
    }
}

/// The real page as the text the comparison uses.
pub fn real_page_text(p: Option<&RealPage>) -> String {
    match p {
        Some(p) if p.present => format!("{} {}", p.kind, size_name(p.size)),
        _ => "absent".into(),
    }
}

fn ranges_text(r: &[(u64, u64)]) -> String {
    if r.is_empty() {
        return "none".into();
    }
    r.iter()
        .map(|(s, e)| format!("[{s:#x},{e:#x})"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or(0)
}

/// The model's invalidation ranges of a step (the events `kvm_unmap_hva_range` traces: every
/// `invalidate_range_start`, not `release`).
pub fn model_invalidations(rec: &StepRecord) -> Vec<(u64, u64)> {
    rec.notifiers
        .iter()
        .filter(|n| n.event != mmu::notifier::NotifierEvent::Release)
        .map(|n| (parse_hex(&n.start), parse_hex(&n.end)))
        .collect()
}

const UFFD_SRC: &str = "userfaultfd read()";

/// The userfaultfd observables of a step: the `uffd event` a guest access raised (the
/// model's `handle_userfault()` wait against the `uffd_msg` read from the real uffd), and,
/// on the step that ended an access asleep there, its `woken outcome`, `woken value` and
/// `woken level`.
fn compare_uffd(
    rec: &StepRecord,
    real: &RealStep,
    caps: &Capabilities,
    out: &mut Vec<Observation>,
) {
    if rec.uffd_event.is_some() || real.uffd_events.as_ref().is_some_and(|e| !e.is_empty()) {
        let model = rec.uffd_event.as_ref().map_or_else(
            || "none".to_string(),
            |e| super::uffd::event_text(parse_hex(&e.address), e.write, e.wp, e.minor),
        );
        match &real.uffd_events {
            Some(ev) => {
                let realv = if ev.is_empty() {
                    "none".to_string()
                } else {
                    ev.iter().map(|e| e.text()).collect::<Vec<_>>().join(" ")
                };
                out.push(Observation::compare("uffd event", UFFD_SRC, model, realv));
            }
            None => out.push(Observation::uncompared(
                "uffd event",
                UFFD_SRC,
                Some(model),
                None,
                Verdict::NotExecutable("no userfaultfd was registered for real".into()),
            )),
        }
    }
    if rec.woken.is_none() && real.woken.is_none() {
        return;
    }
    let model = rec.woken.as_ref().map_or_else(
        || "still waiting".to_string(),
        |w| format!("step {}: {}", w.step, model_outcome(&w.result)),
    );
    let realv = real.woken.as_ref().map_or_else(
        || "still waiting".to_string(),
        |(s, a)| format!("step {s}: {}", a.class()),
    );
    out.push(Observation::compare(
        "woken outcome",
        "agent guest",
        model,
        realv,
    ));
    if let (Some(w), Some((_, RealAccess::Completed { value }))) = (&rec.woken, &real.woken) {
        if w.access == Some(mmu::secondary::fault::Access::Read) {
            out.push(match w.value {
                Some(mv) => Observation::compare(
                    "woken value",
                    "agent guest",
                    format!("{mv:#x}"),
                    format!("{value:#x}"),
                ),
                None => Observation::uncompared(
                    "woken value",
                    "agent guest",
                    None,
                    Some(format!("{value:#x}")),
                    Verdict::NotModelled("the model has no contents for this page".into()),
                ),
            });
        }
    }
    if let Some(w) = &rec.woken {
        let model = w.level.map(|l| {
            format!(
                "{}{}",
                size_name(l.size()),
                if w.writable == Some(true) {
                    " writable"
                } else {
                    " read-only"
                }
            )
        });
        match (&real.spte_levels, &caps.levels) {
            (Some(levels), None) if !levels.is_empty() => out.push(Observation::compare(
                "woken level",
                "tracefs kvmmmu:kvm_mmu_set_spte",
                w.level.map_or("-".into(), |l| size_name(l.size())),
                levels.last().map_or("-".into(), |l| size_name(l.size())),
            )),
            (_, reason) => {
                out.push(Observation::uncompared(
                    "woken level",
                    "tracefs kvmmmu:kvm_mmu_set_spte",
                    model,
                    None,
                    Verdict::NotObservable(reason.clone().unwrap_or_else(|| {
                        "no kvm_mmu_set_spte event fired for this access".into()
                    })),
                ))
            }
        }
    }
}

/// Compares one step. `model_pages` are the model's host pages at the addresses in
/// `real.pages`, in the same order.
pub fn compare_step(
    rec: &StepRecord,
    model_pages: &[Option<HostPage>],
    real: &RealStep,
    caps: &Capabilities,
) -> Vec<Observation> {
    let mut out = Vec::new();
    let guest = rec.access.is_some();
    if let Some(reason) = &rec.not_modelled {
        out.push(Observation::uncompared(
            "step",
            "model",
            None,
            real.host_error.clone().or(Some("ran".into())),
            Verdict::NotModelled(reason.clone()),
        ));
        return out;
    }
    if let Some(reason) = &real.not_executable {
        out.push(Observation::uncompared(
            if guest { "outcome" } else { "step" },
            "-",
            Some(if guest {
                model_outcome(&rec.result)
            } else {
                rec.result.clone()
            }),
            None,
            Verdict::NotExecutable(reason.clone()),
        ));
        return out;
    }
    // A host operation: the model says "ok" (or an error result); the real call succeeded or
    // failed with an errno.
    if !guest {
        let model = if rec.result == "ok" {
            "ok".to_string()
        } else {
            rec.result.clone()
        };
        let realv = match &real.host_error {
            None => "ok".to_string(),
            Some(e) => e.clone(),
        };
        if model != "ok" || real.host_error.is_some() {
            out.push(Observation::compare("result", "syscall", model, realv));
        }
    }
    if let Some(a) = &real.access {
        out.push(Observation::compare(
            "outcome",
            "agent guest",
            model_outcome(&rec.result),
            a.class(),
        ));
        if let (RealAccess::Completed { value }, "read") = (a, rec.op.as_str()) {
            out.push(match rec.value {
                Some(mv) => Observation::compare(
                    "value",
                    "agent guest",
                    format!("{mv:#x}"),
                    format!("{value:#x}"),
                ),
                None => Observation::uncompared(
                    "value",
                    "agent guest",
                    None,
                    Some(format!("{value:#x}")),
                    Verdict::NotModelled("the model has no contents for this page".into()),
                ),
            });
        }
    }
    compare_uffd(rec, real, caps, &mut out);
    if let (Some(model), Some(realg)) = (&rec.dirty, &real.dirty) {
        let mut m: Vec<u64> = model.iter().map(|g| parse_hex(g)).collect();
        m.sort_unstable();
        m.dedup();
        out.push(Observation::compare(
            "dirty gfns",
            DIRTY_SRC,
            gfns_text(&m),
            gfns_text(realg),
        ));
    }
    let model_inv = model_invalidations(rec);
    match (&real.invalidations, &caps.notifiers) {
        (Some(r), _) => out.push(Observation::compare(
            "notifiers",
            NOTIFIERS_SRC,
            ranges_text(&model_inv),
            ranges_text(r),
        )),
        (None, reason) => out.push(Observation::uncompared(
            "notifiers",
            NOTIFIERS_SRC,
            Some(ranges_text(&model_inv)),
            None,
            Verdict::NotObservable(
                reason
                    .clone()
                    .unwrap_or_else(|| "no trace for this step".into()),
            ),
        )),
    }
    if guest && rec.level.is_some() {
        match (&real.spte_levels, &caps.levels) {
            (Some(levels), _) if !levels.is_empty() => out.push(Observation::compare(
                "level",
                "tracefs kvmmmu:kvm_mmu_set_spte",
                format!("{:?}", rec.level),
                format!("{:?}", levels.last().copied()),
            )),
            (_, reason) => {
                out.push(Observation::uncompared(
                    "level",
                    "tracefs kvmmmu:kvm_mmu_set_spte",
                    rec.level.map(|l| size_name(l.size())),
                    None,
                    Verdict::NotObservable(reason.clone().unwrap_or_else(|| {
                        "no kvm_mmu_set_spte event fired for this access".into()
                    })),
                ))
            }
        }
    }
    if !real.by_daemon.is_empty() {
        let what: Vec<String> = real
            .by_daemon
            .iter()
            .map(|(t, s, e)| format!("{t} [{s:#x},{e:#x})"))
            .collect();
        out.push(Observation::uncompared(
            "kernel threads",
            NOTIFIERS_SRC,
            None,
            Some(what.join(" ")),
            Verdict::NotModelled(
                "an mm daemon invalidated part of the scenario during this step; the model has no kernel threads".into(),
            ),
        ));
    }
    for ((hva, rp), mp) in real.pages.iter().zip(model_pages) {
        let name = format!("page {hva:#x}");
        let touched_by_daemon = real.perturbed.iter().find(|(_, s, e)| hva >= s && hva < e);
        if let Some((t, s, e)) = touched_by_daemon {
            out.push(Observation::uncompared(
                &name,
                PAGE_SRC,
                Some(model_page_text(mp.as_ref())),
                Some(real_page_text(rp.as_ref())),
                Verdict::NotObservable(format!(
                    "{t} changed [{s:#x},{e:#x}) behind the model's back (see the step's kernel threads)"
                )),
            ));
            continue;
        }
        if let Some((_, why)) = real.unobservable_pages.iter().find(|(p, _)| p == hva) {
            out.push(Observation::uncompared(
                &name,
                PAGE_SRC,
                Some(model_page_text(mp.as_ref())),
                None,
                Verdict::NotObservable(why.clone()),
            ));
            continue;
        }
        if rp.as_ref().is_some_and(|p| p.kind == PRESENT_ONLY) {
            out.push(Observation::compare(
                &name,
                "pagemap (no /proc/kpageflags here: kinds not observable)",
                if mp.is_some() { "present" } else { "absent" },
                "present",
            ));
            continue;
        }
        match &caps.pages {
            None => out.push(Observation::compare(
                &name,
                PAGE_SRC,
                model_page_text(mp.as_ref()),
                real_page_text(rp.as_ref()),
            )),
            Some(reason) => out.push(Observation::uncompared(
                &name,
                PAGE_SRC,
                Some(model_page_text(mp.as_ref())),
                None,
                Verdict::NotObservable(reason.clone()),
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_classes_follow_kvm() {
        assert_eq!(model_outcome("fixed"), "completed");
        assert_eq!(model_outcome("spurious"), "completed");
        assert_eq!(model_outcome("emulate"), "mmio");
        assert_eq!(model_outcome("efault"), "efault");
        assert_eq!(RealAccess::Efault { gpa: None }.class(), "efault");
    }

    #[test]
    fn page_texts_name_kind_and_size() {
        let real = RealPage {
            present: true,
            kind: "huge-zero".into(),
            size: 2 << 20,
        };
        assert_eq!(real_page_text(Some(&real)), "huge-zero 2M");
        assert_eq!(real_page_text(None), "absent");
        assert_eq!(
            real_page_text(Some(&RealPage {
                present: false,
                ..real
            })),
            "absent"
        );
        assert_eq!(model_page_text(None), "absent");
        assert_eq!(size_name(4096), "4K");
        assert_eq!(size_name(1 << 30), "1G");
    }

    /// The dirty bitmap of KVM_GET_DIRTY_LOG maps bit i of word w to page 64w+i of the slot
    /// (`kvm_get_dirty_log()`), and `dirty gfns` compares that set with the model's.
    #[test]
    fn dirty_gfns_are_compared_with_the_kvm_bitmap() {
        assert_eq!(
            dirty_bitmap_gfns(0x100, &[0b101, 1 << 63]),
            vec![0x100, 0x102, 0x17f]
        );
        assert!(dirty_bitmap_gfns(0, &[0, 0]).is_empty());
        let sc = mmu::scenario::Scenario::from_toml(
            "[[memslot]]\nid = 0\ngpa = 0\nsize = \"2M\"\nhva = \"0x7f0000000000\"\n\
             [[vma]]\nstart = \"0x7f0000000000\"\nsize = \"2M\"\n\
             [[step]]\nop = \"dirty-log-enable\"\nmemslot = 0\n\
             [[step]]\nop = \"write\"\ngpa = \"0x3000\"\n\
             [[step]]\nop = \"dirty-log-get\"\nmemslot = 0\n",
        )
        .unwrap();
        let mut r = mmu::scenario::ScenarioRunner::new(&sc, &Default::default()).unwrap();
        let rec = r.run_all().unwrap().pop().unwrap();
        let dirty = |gfns: Vec<u64>| {
            let real = RealStep {
                dirty: Some(gfns),
                ..Default::default()
            };
            compare_step(&rec, &[], &real, &Capabilities::default())
                .into_iter()
                .find(|o| o.observable == "dirty gfns")
                .expect("a dirty gfns observation")
        };
        let same = dirty(vec![3]);
        assert_eq!(
            (same.model.as_deref(), same.verdict.clone()),
            (Some("0x3"), Verdict::Agree)
        );
        assert!(
            matches!(dirty(vec![3, 4]).verdict, Verdict::Diverge),
            "an extra real gfn diverges"
        );
        assert!(
            matches!(dirty(vec![]).verdict, Verdict::Diverge),
            "a missing one too"
        );
    }
}
