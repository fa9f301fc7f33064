//! Known divergences: differences between the model and this kind of host that were
//! investigated and written down, each with the kernel source that decides it.
//!
//! They live in `known-divergences.toml` next to the scenarios:
//!
//! ```toml
//! [[divergence]]
//! scenario = "kvm-munmap-part-of-slot.toml"   # file name
//! step = 3                                    # step index
//! observable = "outcome"                      # as in the report
//! model = "efault"                            # both values must match exactly, so a
//! real = "mmio"                               #   changed behaviour shows up again as DIVERGE
//! host = "kvm_pvm"                            # optional: only on hosts with this KVM module
//! reason = "..."                              # the finding, with the kernel function
//! ```
//!
//! A matching observation becomes `known divergence: REASON` and does not fail the check; one
//! that does not match stays `DIVERGE`.

use super::report::{Observation, Verdict};
use serde::Deserialize;
use std::path::Path;

/// One written-down divergence.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KnownDivergence {
    /// Scenario file name.
    pub scenario: String,
    /// Step index.
    pub step: usize,
    /// Observable name.
    pub observable: String,
    /// The model's value.
    pub model: String,
    /// The real value.
    pub real: String,
    /// Only where this KVM module is loaded (`kvm_pvm`, `kvm_intel`, `kvm_amd`).
    #[serde(default)]
    pub host: Option<String>,
    /// Why.
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    divergence: Vec<KnownDivergence>,
}

/// Errors reading the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct KnownError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// The known divergences for scenarios in `dir` (none when the file is absent).
pub fn load(dir: &Path) -> Result<Vec<KnownDivergence>, KnownError> {
    let path = dir.join("known-divergences.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(KnownError {
                path: path.display().to_string(),
                message: e.to_string(),
            })
        }
    };
    toml::from_str::<File>(&text)
        .map(|f| f.divergence)
        .map_err(|e| KnownError {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

/// Whether the KVM module `name` is loaded on this host.
pub fn module_loaded(name: &str) -> bool {
    Path::new("/sys/module").join(name).exists()
}

/// Turns the matching `DIVERGE` observations of `scenario`'s step `step` into known ones.
pub fn apply(known: &[KnownDivergence], scenario: &str, step: usize, obs: &mut [Observation]) {
    for o in obs
        .iter_mut()
        .filter(|o| matches!(o.verdict, Verdict::Diverge | Verdict::Divergence(_)))
    {
        if let Some(k) = known.iter().find(|k| {
            k.scenario == scenario
                && k.step == step
                && k.observable == o.observable
                && o.model.as_deref() == Some(k.model.as_str())
                && o.real.as_deref() == Some(k.real.as_str())
                && k.host.as_deref().is_none_or(module_loaded)
        }) {
            o.verdict = Verdict::KnownDivergence(k.reason.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k() -> KnownDivergence {
        KnownDivergence {
            scenario: "a.toml".into(),
            step: 2,
            observable: "outcome".into(),
            model: "efault".into(),
            real: "mmio".into(),
            host: None,
            reason: "why".into(),
        }
    }

    #[test]
    fn only_an_exact_match_is_known() {
        let mut obs = vec![
            Observation::compare("outcome", "agent", "efault", "mmio"),
            Observation::compare("outcome", "agent", "efault", "completed"),
        ];
        apply(&[k()], "a.toml", 2, &mut obs);
        assert_eq!(obs[0].verdict, Verdict::KnownDivergence("why".into()));
        assert_eq!(obs[1].verdict, Verdict::Diverge);
        let mut other_step = vec![Observation::compare("outcome", "agent", "efault", "mmio")];
        apply(&[k()], "a.toml", 3, &mut other_step);
        assert_eq!(other_step[0].verdict, Verdict::Diverge);
        let mut other_host = vec![Observation::compare("outcome", "agent", "efault", "mmio")];
        let kh = KnownDivergence {
            host: Some("no_such_kvm_module".into()),
            ..k()
        };
        apply(&[kh], "a.toml", 2, &mut other_host);
        assert_eq!(other_host[0].verdict, Verdict::Diverge);
    }

    #[test]
    fn the_shipped_file_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/scenarios");
        let known = load(&dir).unwrap();
        assert!(known.iter().all(|k| !k.reason.is_empty()));
    }
}
