//! What `faultline check` reports: per scenario, per step, per observable, the model's value,
//! the real kernel's value, where the real value came from, and a verdict.
//!
//! Verdicts, herd/litmus style (herdtools7 runs one litmus test on the model and on hardware
//! and diffs the two logs):
//! - `agree`: model and kernel gave the same value;
//! - `DIVERGE`: they did not (both values shown);
//! - `not observable here`: this host cannot show the real value (the reason says why, e.g.
//!   "no kvmmmu:kvm_mmu_set_spte events: the host runs KVM's shadow MMU");
//! - `not executable here`: the step cannot be performed for real on this host (a NUMA
//!   migration with one node, a ZONE_DEVICE page);
//! - `not modelled`: the model has no rule for the step.
//!
//! For race steps: `conforms` (every observed outcome is allowed), `kernel stronger than the
//! model` (an allowed outcome never seen: reported, not an error) and `DIVERGENCE` (an outcome
//! the model does not allow was seen).
//!
//! A scenario in which nothing at all was compared is a failure, not a pass: it counts as
//! `compared nothing`.

use serde::Serialize;
use std::fmt::Write as _;

/// The verdict on one observable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "kebab-case")]
pub enum Verdict {
    /// Same value.
    Agree,
    /// Different values.
    Diverge,
    /// Different values, and the difference is known and explained (the reason, from
    /// `known-divergences.toml` next to the scenario): reported, not an error.
    KnownDivergence(String),
    /// The host cannot show it.
    NotObservable(String),
    /// The step cannot be run for real here.
    NotExecutable(String),
    /// The model has no rule for it.
    NotModelled(String),
    /// Race: every observed outcome is allowed, every allowed outcome was seen.
    Conforms,
    /// Race: every observed outcome is allowed, some allowed outcomes were never seen.
    KernelStronger(String),
    /// Race: an outcome the model forbids was seen.
    Divergence(String),
}

impl Verdict {
    /// Whether this verdict makes `faultline check` fail.
    pub fn is_divergence(&self) -> bool {
        matches!(self, Verdict::Diverge | Verdict::Divergence(_))
    }

    /// Whether a real value was compared with a model value.
    pub fn compared(&self) -> bool {
        matches!(
            self,
            Verdict::Agree
                | Verdict::Diverge
                | Verdict::KnownDivergence(_)
                | Verdict::Conforms
                | Verdict::KernelStronger(_)
                | Verdict::Divergence(_)
        )
    }

    /// Short text for the table.
    pub fn label(&self) -> String {
        match self {
            Verdict::Agree => "agree".into(),
            Verdict::Diverge => "DIVERGE".into(),
            Verdict::KnownDivergence(r) => format!("known divergence: {r}"),
            Verdict::NotObservable(r) => format!("not observable here: {r}"),
            Verdict::NotExecutable(r) => format!("not executable here: {r}"),
            Verdict::NotModelled(r) => format!("not modelled: {r}"),
            Verdict::Conforms => "conforms".into(),
            Verdict::KernelStronger(r) => format!("kernel stronger than the model: {r}"),
            Verdict::Divergence(r) => format!("DIVERGENCE: {r}"),
        }
    }
}

/// One observable of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Observation {
    /// What is observed: `outcome`, `value`, `notifiers`, `page`, `level`, `dirty`, `young`, ...
    pub observable: String,
    /// Where the real value came from (e.g. `tracefs kvm:kvm_unmap_hva_range`).
    pub source: String,
    /// The model's value.
    pub model: Option<String>,
    /// The real kernel's value.
    pub real: Option<String>,
    /// The verdict.
    #[serde(flatten)]
    pub verdict: Verdict,
}

impl Observation {
    /// An observation whose verdict follows from comparing `model` with `real`.
    pub fn compare(
        observable: &str,
        source: &str,
        model: impl Into<String>,
        real: impl Into<String>,
    ) -> Self {
        let (model, real) = (model.into(), real.into());
        let verdict = if model == real {
            Verdict::Agree
        } else {
            Verdict::Diverge
        };
        Observation {
            observable: observable.into(),
            source: source.into(),
            model: Some(model),
            real: Some(real),
            verdict,
        }
    }

    /// An observation that could not be compared.
    pub fn uncompared(
        observable: &str,
        source: &str,
        model: Option<String>,
        real: Option<String>,
        verdict: Verdict,
    ) -> Self {
        Observation {
            observable: observable.into(),
            source: source.into(),
            model,
            real,
            verdict,
        }
    }
}

/// One step's observations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepCheck {
    /// Step index in the file.
    pub step: usize,
    /// The step as written (`write 0x1000`, `madvise dontneed 0x7f..+0x1000`).
    pub what: String,
    /// Its observations.
    pub observations: Vec<Observation>,
}

/// Counts over observations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Agreeing (including conforming races and a stronger kernel).
    pub agree: usize,
    /// Diverging.
    pub diverge: usize,
    /// Diverging for a known, written-down reason.
    pub known: usize,
    /// Not observable here.
    pub not_observable: usize,
    /// Not executable here.
    pub not_executable: usize,
    /// Not modelled.
    pub not_modelled: usize,
}

impl Tally {
    fn add(&mut self, v: &Verdict) {
        match v {
            Verdict::Agree | Verdict::Conforms | Verdict::KernelStronger(_) => self.agree += 1,
            Verdict::Diverge | Verdict::Divergence(_) => self.diverge += 1,
            Verdict::KnownDivergence(_) => self.known += 1,
            Verdict::NotObservable(_) => self.not_observable += 1,
            Verdict::NotExecutable(_) => self.not_executable += 1,
            Verdict::NotModelled(_) => self.not_modelled += 1,
        }
    }

    fn merge(&mut self, o: &Tally) {
        self.agree += o.agree;
        self.diverge += o.diverge;
        self.known += o.known;
        self.not_observable += o.not_observable;
        self.not_executable += o.not_executable;
        self.not_modelled += o.not_modelled;
    }

    /// All observations.
    pub fn total(&self) -> usize {
        self.agree
            + self.diverge
            + self.known
            + self.not_observable
            + self.not_executable
            + self.not_modelled
    }

    /// Observables really compared.
    pub fn compared(&self) -> usize {
        self.agree + self.diverge + self.known
    }
}

/// One scenario's check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScenarioCheck {
    /// The file.
    pub file: String,
    /// The model's rule set (`6.12`, `6.13`, `6.18`) and why it was chosen.
    pub rules: String,
    /// Host conditions the model was run with, and where the scenario's own assumptions
    /// differ from the host ("scenario assumes thp=always, host has madvise").
    pub notes: Vec<String>,
    /// Which observables this host offers, and which not (with the reason).
    pub observables: Vec<String>,
    /// Per step.
    pub steps: Vec<StepCheck>,
    /// What the real kernel showed, one JSON object per executed step (`--record`).
    #[serde(skip)]
    pub real_trace: Vec<serde_json::Value>,
    /// Set when the scenario could not be run at all.
    pub error: Option<String>,
    /// Seconds: VM set-up, steps, total.
    pub timing: Timing,
}

/// Where a scenario's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timing {
    /// Mappings, memslots, VM and agent up.
    pub setup_s: f64,
    /// All steps with their observers.
    pub steps_s: f64,
    /// The whole scenario.
    pub total_s: f64,
    /// Race rounds (host operations against the guest's loop) per second, for race scenarios.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub race_rounds_per_s: Option<f64>,
}

impl Eq for Timing {}

/// The outcome of one scenario as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioVerdict {
    /// Something was compared and nothing diverged.
    Agrees,
    /// At least one observable diverged.
    Diverges,
    /// Nothing was compared: not a pass.
    ComparedNothing,
    /// No step can run on this host (each says why): reported, like a kselftest SKIP.
    NotExecutable,
    /// The scenario could not be run.
    Error,
}

impl ScenarioCheck {
    /// Counts over every step.
    pub fn tally(&self) -> Tally {
        let mut t = Tally::default();
        for s in &self.steps {
            for o in &s.observations {
                t.add(&o.verdict);
            }
        }
        t
    }

    /// The scenario's verdict.
    pub fn verdict(&self) -> ScenarioVerdict {
        if self.error.is_some() {
            return ScenarioVerdict::Error;
        }
        let t = self.tally();
        if t.diverge > 0 {
            ScenarioVerdict::Diverges
        } else if t.compared() == 0 && t.not_executable > 0 && t.not_executable == t.total() {
            ScenarioVerdict::NotExecutable
        } else if t.compared() == 0 {
            ScenarioVerdict::ComparedNothing
        } else {
            ScenarioVerdict::Agrees
        }
    }

    /// The table `faultline check` prints for this scenario.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "== {}  (model rules {})", self.file, self.rules);
        for n in &self.notes {
            let _ = writeln!(out, "   note: {n}");
        }
        for o in &self.observables {
            let _ = writeln!(out, "   observable: {o}");
        }
        if let Some(e) = &self.error {
            let _ = writeln!(out, "   ERROR: {e}");
            return out;
        }
        let mut rows: Vec<[String; 6]> = vec![[
            "step".into(),
            "observable".into(),
            "source".into(),
            "model".into(),
            "real".into(),
            "verdict".into(),
        ]];
        for s in &self.steps {
            for (i, o) in s.observations.iter().enumerate() {
                rows.push([
                    if i == 0 {
                        format!("{} {}", s.step, s.what)
                    } else {
                        String::new()
                    },
                    o.observable.clone(),
                    o.source.clone(),
                    o.model.clone().unwrap_or_else(|| "-".into()),
                    o.real.clone().unwrap_or_else(|| "-".into()),
                    o.verdict.label(),
                ]);
            }
        }
        let mut width = [0usize; 5];
        for r in &rows {
            for (w, c) in width.iter_mut().zip(r.iter()) {
                *w = (*w).max(c.chars().count().min(48));
            }
        }
        for r in &rows {
            let mut line = String::from("   ");
            for (w, c) in width.iter().zip(r.iter()) {
                let _ = write!(line, "{c:<w$}  ");
            }
            line.push_str(&r[5]);
            let _ = writeln!(out, "{}", line.trim_end());
        }
        let t = self.tally();
        let _ = writeln!(
            out,
            "   {}: {} observables: {} agree, {} DIVERGE, {} known divergences, {} not observable, {} not executable, {} not modelled ({:.2} s: set-up {:.2} s, steps {:.2} s)",
            match self.verdict() {
                ScenarioVerdict::Agrees => "agrees",
                ScenarioVerdict::Diverges => "DIVERGES",
                ScenarioVerdict::ComparedNothing => "COMPARED NOTHING",
                ScenarioVerdict::NotExecutable => "not executable here",
                ScenarioVerdict::Error => "ERROR",
            },
            t.agree + t.diverge + t.known + t.not_observable + t.not_executable + t.not_modelled,
            t.agree,
            t.diverge,
            t.known,
            t.not_observable,
            t.not_executable,
            t.not_modelled,
            self.timing.total_s,
            self.timing.setup_s,
            self.timing.steps_s,
        );
        out
    }
}

/// A whole `faultline check` run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// Per scenario.
    pub scenarios: Vec<ScenarioCheck>,
}

/// The summary line's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Scenarios run.
    pub scenarios: usize,
    /// Scenarios that agree.
    pub scenarios_agree: usize,
    /// Scenarios with a divergence.
    pub scenarios_diverge: usize,
    /// Scenarios that compared nothing.
    pub scenarios_compared_nothing: usize,
    /// Scenarios no step of which can run here.
    pub scenarios_not_executable: usize,
    /// Scenarios that could not run.
    pub scenarios_error: usize,
    /// Steps.
    pub steps: usize,
    /// Observables.
    pub observables: Tally,
}

impl CheckReport {
    /// Counts for the summary line.
    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            scenarios: self.scenarios.len(),
            ..Summary::default()
        };
        for c in &self.scenarios {
            match c.verdict() {
                ScenarioVerdict::Agrees => s.scenarios_agree += 1,
                ScenarioVerdict::Diverges => s.scenarios_diverge += 1,
                ScenarioVerdict::ComparedNothing => s.scenarios_compared_nothing += 1,
                ScenarioVerdict::NotExecutable => s.scenarios_not_executable += 1,
                ScenarioVerdict::Error => s.scenarios_error += 1,
            }
            s.steps += c.steps.len();
            s.observables.merge(&c.tally());
        }
        s
    }

    /// The summary line.
    pub fn summary_line(&self) -> String {
        let s = self.summary();
        let o = s.observables;
        format!(
            "check: {} scenarios ({} agree, {} DIVERGE, {} compared nothing, {} not executable here, {} errors), {} steps, observables: {} agree, {} DIVERGE, {} known divergences, {} not observable, {} not executable, {} not modelled",
            s.scenarios,
            s.scenarios_agree,
            s.scenarios_diverge,
            s.scenarios_compared_nothing,
            s.scenarios_not_executable,
            s.scenarios_error,
            s.steps,
            o.agree,
            o.diverge,
            o.known,
            o.not_observable,
            o.not_executable,
            o.not_modelled
        )
    }

    /// The exit status: 0 when nothing diverged and every scenario either compared something
    /// or could not run at all here (every step saying why); 1 otherwise (a divergence, a
    /// scenario that compared nothing, a scenario that failed to run).
    pub fn status(&self) -> i32 {
        let s = self.summary();
        if s.scenarios_diverge + s.scenarios_compared_nothing + s.scenarios_error > 0 {
            1
        } else {
            0
        }
    }

    /// Everything, for `--json`.
    pub fn json(&self) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            summary: Summary,
            scenarios: &'a [ScenarioCheck],
        }
        serde_json::to_string_pretty(&Out {
            summary: self.summary(),
            scenarios: &self.scenarios,
        })
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(obs: Vec<Observation>) -> ScenarioCheck {
        ScenarioCheck {
            file: "x.toml".into(),
            rules: "6.18".into(),
            notes: vec![],
            observables: vec![],
            real_trace: vec![],
            steps: vec![StepCheck {
                step: 0,
                what: "read 0x1000".into(),
                observations: obs,
            }],
            error: None,
            timing: Timing::default(),
        }
    }

    #[test]
    fn equal_values_agree_and_different_values_diverge() {
        assert_eq!(
            Observation::compare("outcome", "agent", "completed", "completed").verdict,
            Verdict::Agree
        );
        let d = Observation::compare("outcome", "agent", "completed", "efault");
        assert_eq!(d.verdict, Verdict::Diverge);
        let r = CheckReport {
            scenarios: vec![scenario(vec![d])],
        };
        assert_eq!(r.status(), 1);
        assert!(r.scenarios[0].render().contains("DIVERGE"));
    }

    #[test]
    fn a_scenario_that_compares_nothing_fails() {
        let only_unobservable = Observation::uncompared(
            "level",
            "tracefs kvmmmu:kvm_mmu_set_spte",
            Some("2M".into()),
            None,
            Verdict::NotObservable("shadow MMU".into()),
        );
        let r = CheckReport {
            scenarios: vec![scenario(vec![only_unobservable])],
        };
        assert_eq!(r.scenarios[0].verdict(), ScenarioVerdict::ComparedNothing);
        assert_eq!(r.status(), 1);
        assert!(r.summary_line().contains("1 compared nothing"));
    }

    #[test]
    fn a_scenario_no_step_of_which_can_run_is_reported_not_failed() {
        let r = CheckReport {
            scenarios: vec![scenario(vec![Observation::uncompared(
                "step",
                "-",
                None,
                None,
                Verdict::NotExecutable("needs a device".into()),
            )])],
        };
        assert_eq!(r.scenarios[0].verdict(), ScenarioVerdict::NotExecutable);
        assert_eq!(r.status(), 0);
        assert!(r.summary_line().contains("1 not executable here"));
    }

    #[test]
    fn agreeing_scenarios_pass_and_json_has_every_observable() {
        let r = CheckReport {
            scenarios: vec![scenario(vec![
                Observation::compare("outcome", "agent", "completed", "completed"),
                Observation::uncompared(
                    "level",
                    "t",
                    None,
                    None,
                    Verdict::NotObservable("n".into()),
                ),
            ])],
        };
        assert_eq!(r.status(), 0);
        let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(v["summary"]["observables"]["agree"], 1);
        assert_eq!(
            v["scenarios"][0]["steps"][0]["observations"][1]["verdict"],
            "not-observable"
        );
    }
}
