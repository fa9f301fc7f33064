//! The live-mode fault recording: what `faultline run --live --record FILE` writes and
//! `faultline sim --replay FILE` reads.
//!
//! A recording is JSON Lines. The first line is a [`RecordHeader`]: the rule set the live run
//! used and the model's mirror of guest RAM as scenario TOML (conditions, `[[vma]]` and
//! `[[memslot]]` tables, no steps). Every further line is a [`FaultRecord`]: one typed
//! [`Step`] (a guest access the kernel raised as a userfaultfd event, or an injected host
//! event), how the model resolved it under the recorded rule set ([`Resolution`]) and what
//! the real kernel showed afterwards ([`RealPage`]). Replaying a recording is running its
//! steps, in order, on the header's scenario under another rule set.

use crate::scenario::{Scenario, ScenarioError, Step, StepRecord};
use crate::types::{KernelVersion, Level};
use serde::{Deserialize, Serialize};

/// Version of the recording format this build writes and reads.
pub const RECORD_FORMAT: u32 = 1;

/// The first line of a recording.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordHeader {
    /// [`RECORD_FORMAT`] of the writer.
    pub format: u32,
    /// faultline version that wrote it.
    pub faultline: String,
    /// Rule set the live run resolved faults with.
    pub kernel_rules: KernelVersion,
    /// `uname -r` of the host the recording was made on.
    pub host_kernel: String,
    /// Guest RAM backing as `faultline run --backing` spells it.
    pub backing: String,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// What the guest was: a built-in guest's name or the kernel path and command.
    pub guest: String,
    /// The model's mirror of guest RAM as scenario TOML, with no `[[step]]` tables.
    pub scenario: String,
}

/// The userfaultfd event behind a recorded access.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UffdEventRecord {
    /// "missing", "minor" or "wp".
    pub kind: String,
    /// `UFFD_PAGEFAULT_FLAG_*` bits as the kernel reported them.
    pub flags: u64,
    /// Faulting host virtual address as reported (page-aligned).
    pub address: u64,
    /// Thread id of the faulting thread when the kernel reported it (`UFFD_FEATURE_THREAD_ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<u32>,
}

/// How the model resolved one step: the serializable core of a [`StepRecord`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolution {
    /// "hit", "fixed", "retry", ... for guest steps; "ok" for host steps; "not-modelled".
    pub result: String,
    /// Level of the SPTE mapping the gpa afterwards (guest steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
    /// Whether that SPTE is writable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writable: Option<bool>,
    /// GUP path of the last fault ("fast", "slow", "remapped").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gup_path: Option<String>,
    /// FOLL flags of that GUP call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gup_flags: Vec<String>,
    /// Host fault handlers that ran, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_faults: Vec<String>,
    /// Notifier ranges as `EVENT start end` (hex hvas).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifiers: Vec<String>,
    /// SPTEs zapped as `gfn_start gfn_end level`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zapped: Vec<String>,
    /// `RET_PF_RETRY` rounds.
    #[serde(default)]
    pub retries: u32,
}

impl From<&StepRecord> for Resolution {
    fn from(r: &StepRecord) -> Self {
        Resolution {
            result: r.result.clone(),
            level: r.level,
            writable: r.writable,
            gup_path: r.gup.as_ref().map(|g| g.path.clone()),
            gup_flags: r
                .gup
                .as_ref()
                .map(|g| g.flags.iter().map(|f| f.to_string()).collect())
                .unwrap_or_default(),
            host_faults: r.host_faults.iter().map(|h| h.to_string()).collect(),
            notifiers: r
                .notifiers
                .iter()
                .map(|n| format!("{:?} {} {}", n.event, n.start, n.end))
                .collect(),
            zapped: r
                .zapped
                .iter()
                .map(|z| format!("{} {} {:?}", z.gfn_start, z.gfn_end, z.level))
                .collect(),
            retries: r.retries,
        }
    }
}

/// The real page behind the faulting address after the step (pagemap and kpageflags).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealPage {
    /// A page is mapped.
    pub present: bool,
    /// Size of the host mapping in bytes (4K, 2M, 1G), when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// It is the shared zero page or the huge zero folio.
    #[serde(default)]
    pub zero_page: bool,
}

/// One line after the header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRecord {
    /// Position in the recording, from 0.
    pub seq: u64,
    /// Nanoseconds since the guest started.
    pub t_ns: u64,
    /// The step: a guest access (`read`, `write`) or an injected host event.
    pub step: Step,
    /// The userfaultfd event that raised a guest access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uffd: Option<UffdEventRecord>,
    /// Host virtual address of the access or the event's range start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hva: Option<u64>,
    /// The model's resolution under [`RecordHeader::kernel_rules`].
    pub model: Resolution,
    /// What the VMM did to the real mapping ("UFFDIO_COPY 4K", "UFFDIO_ZEROPAGE 4K",
    /// "madvise(DONTNEED)", ...), or why nothing ("model only: one NUMA node").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<String>,
    /// The event was applied to the model alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub model_only: bool,
    /// The real page state afterwards, when it was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real: Option<RealPage>,
    /// Model and kernel disagreed on this step: what differed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disagreements: Vec<String>,
}

/// A parsed recording.
#[derive(Clone, Debug)]
pub struct Recording {
    /// The header line.
    pub header: RecordHeader,
    /// The model's mirror, parsed from [`RecordHeader::scenario`].
    pub mirror: Scenario,
    /// Every record, in order.
    pub records: Vec<FaultRecord>,
}

/// A recording that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file is empty.
    #[error(
        "the recording is empty: expected a header line written by `faultline run --live --record`"
    )]
    Empty,
    /// A line is not valid JSON of the expected shape.
    #[error("line {line}: {message} (is this a file written by `faultline run --live --record`?)")]
    Line {
        /// 1-based line number.
        line: usize,
        /// serde's message.
        message: String,
    },
    /// Written by an incompatible format version.
    #[error("the recording has format {found}, this faultline reads format {RECORD_FORMAT}: record it again with this version")]
    Format {
        /// The header's format.
        found: u32,
    },
    /// The header's scenario does not load.
    #[error("the header's guest-RAM mirror does not load: {0}")]
    Mirror(#[from] ScenarioError),
    /// Sequence numbers are not 0, 1, 2, ...
    #[error("line {line}: record seq {found}, expected {expected}: the recording is truncated or reordered")]
    Sequence {
        /// 1-based line number.
        line: usize,
        /// The seq found.
        found: u64,
        /// The seq expected.
        expected: u64,
    },
}

impl Recording {
    /// Parses a recording's text (blank lines are ignored).
    pub fn parse(text: &str) -> Result<Recording, RecordError> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let (_, first) = lines.next().ok_or(RecordError::Empty)?;
        let header: RecordHeader = serde_json::from_str(first).map_err(|e| RecordError::Line {
            line: 1,
            message: format!("bad header: {e}"),
        })?;
        if header.format != RECORD_FORMAT {
            return Err(RecordError::Format {
                found: header.format,
            });
        }
        let mirror = Scenario::from_toml(&header.scenario)?;
        let mut records = Vec::new();
        for (i, l) in lines {
            let r: FaultRecord = serde_json::from_str(l).map_err(|e| RecordError::Line {
                line: i + 1,
                message: e.to_string(),
            })?;
            let expected = records.len() as u64;
            if r.seq != expected {
                return Err(RecordError::Sequence {
                    line: i + 1,
                    found: r.seq,
                    expected,
                });
            }
            records.push(r);
        }
        Ok(Recording {
            header,
            mirror,
            records,
        })
    }

    /// The mirror with the recorded steps appended: the scenario a replay runs.
    pub fn scenario(&self) -> Scenario {
        let mut s = self.mirror.clone();
        s.step = self.records.iter().map(|r| r.step.clone()).collect();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> String {
        let h = RecordHeader {
            format: RECORD_FORMAT,
            faultline: "test".into(),
            kernel_rules: KernelVersion::V6_18,
            host_kernel: "6.18.0".into(),
            backing: "anon".into(),
            vcpus: 1,
            guest: "touch".into(),
            scenario: "[[vma]]\nstart = \"0x7f0000000000\"\nsize = \"2M\"\nkind = \"anon\"\n\n\
                       [[memslot]]\nid = 0\ngpa = 0\nsize = \"2M\"\nhva = \"0x7f0000000000\"\n"
                .into(),
        };
        serde_json::to_string(&h).unwrap()
    }

    #[test]
    fn header_and_records_round_trip() {
        let rec = FaultRecord {
            seq: 0,
            t_ns: 10,
            step: Step::from_table(
                0,
                toml::from_str("op = \"read\"\ngpa = \"0x1000\"").unwrap(),
            )
            .unwrap(),
            uffd: Some(UffdEventRecord {
                kind: "missing".into(),
                flags: 0,
                address: 0x7f00_0000_1000,
                tid: None,
            }),
            hva: Some(0x7f00_0000_1000),
            model: Resolution {
                result: "fixed".into(),
                level: Some(Level::Pte4K),
                ..Default::default()
            },
            applied: Some("UFFDIO_ZEROPAGE 4K".into()),
            model_only: false,
            real: None,
            disagreements: vec![],
        };
        let text = format!("{}\n{}\n", header(), serde_json::to_string(&rec).unwrap());
        let r = Recording::parse(&text).unwrap();
        assert_eq!(r.records, vec![rec]);
        assert_eq!(r.scenario().step.len(), 1);
        assert_eq!(r.mirror.vma.len(), 1);
    }

    #[test]
    fn bad_recordings_name_the_line() {
        assert!(matches!(Recording::parse(""), Err(RecordError::Empty)));
        let e = Recording::parse("{\"nope\":1}").unwrap_err();
        assert!(e.to_string().starts_with("line 1: bad header"), "{e}");
        let e = Recording::parse(&format!("{}\n{{\"seq\":0}}\n", header())).unwrap_err();
        assert!(e.to_string().starts_with("line 2:"), "{e}");
        let wrong = header().replace("\"format\":1", "\"format\":99");
        assert!(matches!(
            Recording::parse(&wrong),
            Err(RecordError::Format { found: 99 })
        ));
    }
}
