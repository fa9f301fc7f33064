//! KVM binary stats (`KVM_GET_STATS_FD`) per step of `faultline check`: the deltas that moved,
//! against the model's counters where the model keeps the same quantity.
//!
//! After every step the VM's and every vCPU's stats are read (vCPU stats summed); the
//! cumulative ones give a delta, the instant ones (`pages_4k`/`pages_2m`/`pages_1g`) their
//! value. The quantities the model also keeps ([`PAIRS`]) are compared; which of them this
//! host really counts is found out over the scenario, not assumed: a stat that never moved
//! while the model's counter did is `not observable here` for the whole scenario (on the
//! nested shadow-MMU host `pages_*` and `pf_fixed` stay 0, [`finish`]). Every other stat
//! that moved is shown as `not modelled`.

use super::report::{Observation, Verdict};
use crate::vstate::stats::{StatsReader, StatsSnapshot};
use mmu::secondary::stats::KvmStats;
use std::collections::BTreeMap;

/// Where the real values come from.
pub const SRC: &str = "KVM_GET_STATS_FD";

/// How a model counter relates to a KVM stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A cumulative count: compare the step's deltas.
    Delta,
    /// A current value: compare the values after the step.
    Instant,
}

/// A KVM stat the model also counts: (KVM name, kind, the model's value).
type Pair = (&'static str, Kind, fn(&KvmStats) -> u64);

/// The KVM stats the model also counts.
const PAIRS: &[Pair] = &[
    ("pages_4k", Kind::Instant, |s| s.sptes.pages_4k),
    ("pages_2m", Kind::Instant, |s| s.sptes.pages_2m),
    ("pages_1g", Kind::Instant, |s| s.sptes.pages_1g),
    ("pf_fixed", Kind::Delta, |s| s.faults.fixed),
    ("pf_spurious", Kind::Delta, |s| s.faults.spurious),
    ("pf_mmio_spte_created", Kind::Delta, |s| s.faults.mmio),
];

/// The stats of one VM, read after every step.
#[derive(Debug)]
pub struct StepStats {
    readers: Vec<StatsReader>,
    last: StatsSnapshot,
}

impl StepStats {
    /// Opens the VM's stats file and takes the vCPUs' (duplicated), reads the first values.
    pub fn open(h: &crate::launch::VmHandle<'_>) -> Result<Self, String> {
        let mut files = vec![h.vm_stats_file().map_err(|e| e.to_string())?];
        for f in h.vcpu_stats_files() {
            files.push(
                f.try_clone()
                    .map_err(|e| format!("duplicating a vCPU stats fd: {e}"))?,
            );
        }
        let readers = files
            .into_iter()
            .map(|f| StatsReader::new(f).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut s = StepStats {
            readers,
            last: StatsSnapshot::default(),
        };
        s.last = s.read()?;
        Ok(s)
    }

    fn read(&self) -> Result<StatsSnapshot, String> {
        let mut all = StatsSnapshot::default();
        for r in &self.readers {
            all.accumulate(&r.read().map_err(|e| e.to_string())?);
        }
        Ok(all)
    }

    /// What changed since the last call: deltas of cumulative stats, values of instant ones
    /// (every stat, moved or not).
    pub fn step(&mut self) -> Result<BTreeMap<String, u64>, String> {
        let now = self.read()?;
        let d = now.delta(&self.last);
        self.last = now;
        Ok(d)
    }
}

/// One step's stats, kept until the scenario ends ([`finish`]).
#[derive(Debug, Clone, Default)]
pub struct StepStatsRecord {
    /// The real deltas / values (`None`: the stats could not be read, with the reason).
    pub real: Option<BTreeMap<String, u64>>,
    /// Why not.
    pub error: Option<String>,
    /// The model's counters before and after the step.
    pub model_before: Option<KvmStats>,
    /// After.
    pub model_after: Option<KvmStats>,
}

fn model_value(kind: Kind, f: fn(&KvmStats) -> u64, r: &StepStatsRecord) -> Option<u64> {
    let after = f(r.model_after.as_ref()?);
    Some(match kind {
        Kind::Instant => after,
        Kind::Delta => after.saturating_sub(f(r.model_before.as_ref()?)),
    })
}

/// The stats observations of every step, decided once the scenario has run: a paired stat
/// that never moved while the model's counter did is not observable here (for every step);
/// otherwise each step where either side moved (a value: changed) is compared. Unpaired stats that moved are
/// `not modelled`. Returns one list per record, in order.
pub fn finish(records: &[StepStatsRecord]) -> Vec<Vec<Observation>> {
    let mut out: Vec<Vec<Observation>> = vec![Vec::new(); records.len()];
    for &(name, kind, f) in PAIRS {
        let exposed = records
            .iter()
            .any(|r| r.real.as_ref().is_some_and(|m| m.contains_key(name)));
        let real_moved = records.iter().any(|r| {
            r.real
                .as_ref()
                .and_then(|m| m.get(name))
                .is_some_and(|v| *v != 0)
        });
        let model_total: u64 = records
            .iter()
            .filter_map(|r| model_value(kind, f, r))
            .max_by_key(|v| *v)
            .unwrap_or(0);
        let mut prev: (Option<u64>, Option<u64>) = (Some(0), Some(0));
        for (i, r) in records.iter().enumerate() {
            let model = model_value(kind, f, r);
            let real = r.real.as_ref().and_then(|m| m.get(name)).copied();
            let unchanged = kind == Kind::Instant && (model, real) == prev;
            prev = (model, real);
            // Deltas: only steps where something moved; values: only where one changed.
            if (model.unwrap_or(0) == 0 && real.unwrap_or(0) == 0) || unchanged {
                continue;
            }
            let label = format!("kvm {name}");
            let o = if let Some(e) = &r.error {
                Observation::uncompared(
                    &label,
                    SRC,
                    model.map(|v| v.to_string()),
                    None,
                    Verdict::NotObservable(e.clone()),
                )
            } else if !exposed {
                Observation::uncompared(
                    &label,
                    SRC,
                    model.map(|v| v.to_string()),
                    None,
                    Verdict::NotObservable(format!("this host's KVM has no {name} stat")),
                )
            } else if !real_moved && model_total > 0 {
                Observation::uncompared(
                    &label,
                    SRC,
                    model.map(|v| v.to_string()),
                    real.map(|v| v.to_string()),
                    Verdict::NotObservable(format!(
                        "{name} stayed 0 over the whole scenario while the model's count reached {model_total}: this host's KVM does not keep it (a shadow MMU counts neither pages_* nor pf_fixed)"
                    )),
                )
            } else {
                Observation::compare(
                    &label,
                    SRC,
                    model.map_or("-".into(), |v| v.to_string()),
                    real.map_or("-".into(), |v| v.to_string()),
                )
            };
            out[i].push(o);
        }
    }
    for (i, r) in records.iter().enumerate() {
        let Some(real) = &r.real else { continue };
        let moved: Vec<String> = real
            .iter()
            .filter(|(n, v)| **v != 0 && !PAIRS.iter().any(|p| p.0 == n.as_str()))
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        if !moved.is_empty() {
            out[i].push(Observation::uncompared(
                "kvm stats",
                SRC,
                None,
                Some(moved.join(", ")),
                Verdict::NotModelled(
                    "the model keeps no counterpart of these KVM stats (exits, emulation, shadow-MMU work)".into(),
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(real: &[(&str, u64)], before: u64, after: u64) -> StepStatsRecord {
        let mut b = KvmStats::default();
        let mut a = KvmStats::default();
        b.sptes.pages_4k = before;
        a.sptes.pages_4k = after;
        b.faults.fixed = before;
        a.faults.fixed = after;
        StepStatsRecord {
            real: Some(real.iter().map(|(n, v)| (n.to_string(), *v)).collect()),
            error: None,
            model_before: Some(b),
            model_after: Some(a),
        }
    }

    #[test]
    fn a_stat_that_never_moves_is_not_observable_and_one_that_moves_is_compared() {
        // pages_4k never moves for real while the model installs SPTEs; pf_fixed moves.
        let rs = vec![
            rec(&[("pages_4k", 0), ("pf_fixed", 1), ("exits", 5)], 0, 1),
            rec(&[("pages_4k", 0), ("pf_fixed", 2)], 1, 2),
        ];
        let out = finish(&rs);
        let find = |i: usize, n: &str| out[i].iter().find(|o| o.observable == n).cloned().unwrap();
        assert!(matches!(
            find(0, "kvm pages_4k").verdict,
            Verdict::NotObservable(_)
        ));
        assert!(matches!(find(0, "kvm pf_fixed").verdict, Verdict::Agree));
        assert!(matches!(find(1, "kvm pf_fixed").verdict, Verdict::Diverge));
        assert!(matches!(
            find(0, "kvm stats").verdict,
            Verdict::NotModelled(_)
        ));
        assert!(out[1].iter().all(|o| o.observable != "kvm stats"));
    }
}
