//! Race steps, herd/litmus style: the model's explorer gives the set of outcomes a guest
//! access may have while host operations run ([`mmu::explore`], every interleaving of the
//! fault's steps with the invalidation's), and the real run gives a histogram: the agent guest
//! repeats the access in a loop while the controller performs the host operations over and
//! over. The verdict:
//! - `conforms`: every allowed outcome was seen and nothing else;
//! - `kernel stronger than the model`: only allowed outcomes were seen, some never (reported,
//!   not an error: the kernel may be stronger than the model, or the window too small here);
//! - `DIVERGENCE`: an outcome the model does not allow was seen.
//!
//! The classes compared are the access's outcome classes (`completed`, `mmio`, `efault`,
//! `guest exception`): retries inside KVM are invisible to the guest and complete.

use super::compare::model_outcome;
use super::report::{Observation, Verdict};
use mmu::explore::{explore, ExploreOptions};
use mmu::scenario::{ModelOptions, Scenario};
use std::collections::{BTreeMap, BTreeSet};

/// The set of outcome classes the model allows for the racing guest access, explored with
/// the host's rule set and conditions.
pub fn model_allowed(sc: &Scenario, opts: &ModelOptions) -> Result<BTreeSet<String>, String> {
    let mut sc = sc.clone();
    sc.kernel = opts.kernel.or(sc.kernel);
    let c = &opts.conditions;
    sc.thp = c.thp.or(sc.thp);
    sc.huge_zero_page = c.huge_zero_page.or(sc.huge_zero_page);
    sc.async_pf = c.async_pf.or(sc.async_pf);
    sc.nodes = c.nodes.or(sc.nodes);
    sc.numa_balancing = c.numa_balancing.or(sc.numa_balancing);
    let report = explore(&sc, ExploreOptions::default()).map_err(|e| e.to_string())?;
    Ok(report
        .outcomes
        .iter()
        .filter_map(|o| o.faults.first())
        .map(|r| {
            // A fault that gave up retrying within the explorer's bound is retried again by
            // KVM (RET_PF_RETRY re-enters the guest): the access completes.
            if r == "retry" {
                "completed".to_string()
            } else {
                model_outcome(r)
            }
        })
        .collect())
}

/// What the agent's loop counted, by outcome class.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Class -> count.
    pub counts: BTreeMap<String, u64>,
    /// Rounds of the host operations.
    pub rounds: u64,
    /// Seconds the rounds took.
    pub seconds: f64,
}

impl Observed {
    /// From the agent's loop counters.
    pub fn from_loop(c: &super::agent::LoopCounts, rounds: u64, seconds: f64) -> Self {
        let mut counts = BTreeMap::new();
        let mmio = c.mmio.min(c.completed);
        let mem = c.completed - mmio;
        for (k, v) in [
            ("completed", mem),
            ("mmio", mmio),
            ("efault", c.efaults),
            ("guest exception", c.exceptions),
        ] {
            if v > 0 {
                counts.insert(k.to_string(), v);
            }
        }
        Observed {
            counts,
            rounds,
            seconds,
        }
    }
}

fn set_text(s: &BTreeSet<String>) -> String {
    format!("{{{}}}", s.iter().cloned().collect::<Vec<_>>().join(", "))
}

/// The herd-style verdict on one race.
pub fn verdict(allowed: &BTreeSet<String>, seen: &Observed) -> Observation {
    let observed: BTreeSet<String> = seen.counts.keys().cloned().collect();
    let histogram: Vec<String> = seen
        .counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let rate = if seen.seconds > 0.0 {
        seen.rounds as f64 / seen.seconds
    } else {
        0.0
    };
    let source = format!(
        "agent loop: {} in {} rounds ({rate:.0} rounds/s)",
        histogram.join(", "),
        seen.rounds
    );
    let forbidden: Vec<&String> = observed.difference(allowed).collect();
    let never: Vec<&String> = allowed.difference(&observed).collect();
    let v = if !forbidden.is_empty() {
        Verdict::Divergence(format!(
            "seen but not allowed: {}",
            forbidden
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    } else if !never.is_empty() {
        Verdict::KernelStronger(format!(
            "allowed but never seen: {}",
            never
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    } else {
        Verdict::Conforms
    };
    Observation::uncompared(
        "race outcomes",
        &source,
        Some(set_text(allowed)),
        Some(set_text(&observed)),
        v,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(pairs: &[(&str, u64)]) -> Observed {
        Observed {
            counts: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            rounds: 10,
            seconds: 1.0,
        }
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn herd_verdicts() {
        let allowed = set(&["completed", "efault"]);
        assert_eq!(
            verdict(&allowed, &seen(&[("completed", 5), ("efault", 2)])).verdict,
            Verdict::Conforms
        );
        assert!(matches!(
            verdict(&allowed, &seen(&[("completed", 5)])).verdict,
            Verdict::KernelStronger(_)
        ));
        let d = verdict(&allowed, &seen(&[("completed", 5), ("mmio", 1)]));
        assert!(matches!(d.verdict, Verdict::Divergence(ref r) if r.contains("mmio")));
        assert_eq!(d.real.as_deref(), Some("{completed, mmio}"));
        assert!(d.source.contains("10 rounds"));
    }

    #[test]
    fn loop_counters_split_mmio_from_memory() {
        let c = super::super::agent::LoopCounts {
            iterations: 10,
            completed: 10,
            mmio: 3,
            ..Default::default()
        };
        let o = Observed::from_loop(&c, 1, 1.0);
        assert_eq!(o.counts.get("completed"), Some(&7));
        assert_eq!(o.counts.get("mmio"), Some(&3));
    }
}
