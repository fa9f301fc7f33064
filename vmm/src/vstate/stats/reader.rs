//! Reader of KVM's binary statistics files (Documentation/virt/kvm/api.rst, "KVM_GET_STATS_FD").
//!
//! The file opened by [`crate::vstate::stats::stats_fd`] starts with a `kvm_stats_header`
//! (flags, name_size, num_desc, id_offset, desc_offset, data_offset; 6 × u32). At
//! `desc_offset` come `num_desc` descriptors of `16 + name_size` bytes each (flags u32,
//! exponent i16, size u16, offset u32, bucket_size u32, NUL-padded name); the values are u64s
//! at `data_offset + desc.offset`, `desc.size` of them. Descriptors are read once; each
//! [`StatsReader::read`] re-reads only the data block with one `pread`.
//!
//! Stats are looked up by name: which ones exist depends on the host kernel and
//! architecture (x86 has `pf_taken`, `pf_fixed`, `pf_emulate`, `pf_spurious`, `pf_fast`,
//! `pages_4k`/`pages_2m`/`pages_1g`, `exits`, `mmu_shadow_zapped`, ...).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

const HEADER_SIZE: usize = 24;
const DESC_FIXED_SIZE: usize = 16;

/// `KVM_STATS_TYPE_*`: how a value evolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatKind {
    /// Only ever grows; report `after - before`.
    Cumulative,
    /// A current level (e.g. `pages_4k`); report the value after.
    Instant,
    /// A high-water mark; report the value after.
    Peak,
    /// A histogram with linear buckets; the value here is the sum of its buckets.
    LinearHist,
    /// A histogram with log2 buckets; the value here is the sum of its buckets.
    LogHist,
    /// A type this reader does not know.
    Unknown(u32),
}

impl StatKind {
    fn from_flags(flags: u32) -> Self {
        match flags & 0xf {
            0 => Self::Cumulative,
            1 => Self::Instant,
            2 => Self::Peak,
            3 => Self::LinearHist,
            4 => Self::LogHist,
            t => Self::Unknown(t),
        }
    }
}

/// One `kvm_stats_desc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatDesc {
    /// Name, e.g. `pf_fixed`.
    pub name: String,
    /// Type from the descriptor's flags.
    pub kind: StatKind,
    /// Number of u64 values (1, or the bucket count of a histogram).
    pub size: u16,
    /// Offset of the first value from the data block.
    pub offset: u32,
}

/// Errors of [`StatsReader::new`] and [`StatsReader::read`].
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// Cannot read the KVM stats file: {0}
    #[error("Cannot read the KVM stats file: {0}")]
    Io(#[source] std::io::Error),
    /// The KVM stats file is malformed: {0}
    #[error("The KVM stats file is malformed: {0}")]
    Malformed(String),
}

/// Values of one stats file at one instant, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Value of every stat (histograms: the sum of their buckets).
    pub values: BTreeMap<String, u64>,
    /// The type of every stat.
    pub kinds: BTreeMap<String, StatKind>,
}

impl StatsSnapshot {
    /// The value of `name`, if the host exposes it.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<u64> {
        self.values.get(name).copied()
    }

    /// What changed from `before` to `self`: `after - before` for cumulative stats and
    /// histograms, the value after for instant and peak stats.
    #[must_use]
    pub fn delta(&self, before: &StatsSnapshot) -> BTreeMap<String, u64> {
        self.values
            .iter()
            .map(|(name, &after)| {
                let v = match self.kinds.get(name) {
                    Some(StatKind::Instant | StatKind::Peak) => after,
                    _ => after.saturating_sub(before.get(name).unwrap_or(0)),
                };
                (name.clone(), v)
            })
            .collect()
    }

    /// Adds `other`'s values to this snapshot's (summing per-vCPU stats into one).
    pub fn accumulate(&mut self, other: &StatsSnapshot) {
        for (name, v) in &other.values {
            *self.values.entry(name.clone()).or_insert(0) += v;
        }
        for (name, k) in &other.kinds {
            self.kinds.insert(name.clone(), *k);
        }
    }
}

/// A parsed stats file: its descriptors, ready to read values.
#[derive(Debug)]
pub struct StatsReader {
    file: File,
    id: String,
    descs: Vec<StatDesc>,
    data_offset: u64,
    data_len: usize,
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes(buf[at..at + 2].try_into().expect("2 bytes"))
}

fn c_string(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

impl StatsReader {
    /// Reads the header and descriptors of a stats file.
    pub fn new(file: File) -> Result<Self, StatsError> {
        let mut header = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut header, 0).map_err(StatsError::Io)?;
        let name_size = u32_at(&header, 4) as usize;
        let num_desc = u32_at(&header, 8) as usize;
        let id_offset = u64::from(u32_at(&header, 12));
        let desc_offset = u64::from(u32_at(&header, 16));
        let data_offset = u64::from(u32_at(&header, 20));
        if name_size == 0 || name_size > 4096 || num_desc > 65536 {
            return Err(StatsError::Malformed(format!(
                "name_size {name_size}, num_desc {num_desc}"
            )));
        }
        let mut id = vec![0u8; name_size];
        file.read_exact_at(&mut id, id_offset)
            .map_err(StatsError::Io)?;
        let desc_size = DESC_FIXED_SIZE + name_size;
        let mut raw = vec![0u8; desc_size * num_desc];
        file.read_exact_at(&mut raw, desc_offset)
            .map_err(StatsError::Io)?;
        let descs: Vec<StatDesc> = raw
            .chunks_exact(desc_size)
            .map(|d| StatDesc {
                kind: StatKind::from_flags(u32_at(d, 0)),
                size: u16_at(d, 6),
                offset: u32_at(d, 8),
                name: c_string(&d[DESC_FIXED_SIZE..]),
            })
            .collect();
        let data_len = descs
            .iter()
            .map(|d| d.offset as usize + 8 * usize::from(d.size))
            .max()
            .unwrap_or(0);
        Ok(Self {
            file,
            id: c_string(&id),
            descs,
            data_offset,
            data_len,
        })
    }

    /// The stats file's id string (`kvm-<pid>` for a VM, `kvm-<pid>/vcpu-<n>` for a vCPU).
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Names of all stats, in descriptor order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.descs.iter().map(|d| d.name.as_str())
    }

    /// The descriptors.
    #[must_use]
    pub fn descriptors(&self) -> &[StatDesc] {
        &self.descs
    }

    /// Reads every value now.
    pub fn read(&self) -> Result<StatsSnapshot, StatsError> {
        let mut data = vec![0u8; self.data_len];
        self.file
            .read_exact_at(&mut data, self.data_offset)
            .map_err(StatsError::Io)?;
        let mut snap = StatsSnapshot::default();
        for d in &self.descs {
            let v: u64 = (0..usize::from(d.size))
                .map(|i| {
                    let at = d.offset as usize + 8 * i;
                    u64::from_ne_bytes(data[at..at + 8].try_into().expect("8 bytes"))
                })
                .fold(0u64, u64::wrapping_add);
            snap.values.insert(d.name.clone(), v);
            snap.kinds.insert(d.name.clone(), d.kind);
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Builds a stats file the way `kvm_stats_read()` lays it out: header, id, descriptors,
    /// data.
    fn fake_stats_file(stats: &[(&str, u32, &[u64])]) -> File {
        let name_size = 48usize;
        let desc_size = DESC_FIXED_SIZE + name_size;
        let id_offset = HEADER_SIZE;
        let desc_offset = id_offset + name_size;
        let data_offset = desc_offset + desc_size * stats.len();
        let mut buf = Vec::new();
        for v in [
            0u32,
            name_size as u32,
            stats.len() as u32,
            id_offset as u32,
            desc_offset as u32,
            data_offset as u32,
        ] {
            buf.extend_from_slice(&v.to_ne_bytes());
        }
        let mut id = b"kvm-42".to_vec();
        id.resize(name_size, 0);
        buf.extend_from_slice(&id);
        let mut off = 0u32;
        for (name, flags, vals) in stats {
            buf.extend_from_slice(&flags.to_ne_bytes());
            buf.extend_from_slice(&0i16.to_ne_bytes());
            buf.extend_from_slice(&(vals.len() as u16).to_ne_bytes());
            buf.extend_from_slice(&off.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            let mut n = name.as_bytes().to_vec();
            n.resize(name_size, 0);
            buf.extend_from_slice(&n);
            off += 8 * vals.len() as u32;
        }
        for (_, _, vals) in stats {
            for v in *vals {
                buf.extend_from_slice(&v.to_ne_bytes());
            }
        }
        let path = std::env::temp_dir().join(format!(
            "faultline-stats-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut f = File::create(&path).unwrap();
        f.write_all(&buf).unwrap();
        let f = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn parses_values_by_name_and_sums_histograms() {
        let r = StatsReader::new(fake_stats_file(&[
            ("pf_fixed", 0, &[7]),
            ("pages_4k", 1, &[100]),
            ("halt_poll_fail_hist", 4, &[1, 2, 3]),
        ]))
        .unwrap();
        assert_eq!(r.id(), "kvm-42");
        let s = r.read().unwrap();
        assert_eq!(s.get("pf_fixed"), Some(7));
        assert_eq!(s.get("pages_4k"), Some(100));
        assert_eq!(s.get("halt_poll_fail_hist"), Some(6));
        assert_eq!(s.kinds["pages_4k"], StatKind::Instant);
        assert_eq!(s.get("nope"), None);
    }

    #[test]
    fn delta_subtracts_cumulative_and_keeps_instant() {
        let before = StatsReader::new(fake_stats_file(&[
            ("pf_fixed", 0, &[7]),
            ("pages_4k", 1, &[100]),
        ]))
        .unwrap()
        .read()
        .unwrap();
        let after = StatsReader::new(fake_stats_file(&[
            ("pf_fixed", 0, &[19]),
            ("pages_4k", 1, &[90]),
        ]))
        .unwrap()
        .read()
        .unwrap();
        let d = after.delta(&before);
        assert_eq!(d["pf_fixed"], 12);
        assert_eq!(d["pages_4k"], 90);
    }

    #[test]
    fn truncated_file_is_an_error() {
        let path =
            std::env::temp_dir().join(format!("faultline-stats-short-{}", std::process::id()));
        std::fs::write(&path, [0u8; 10]).unwrap();
        let e = StatsReader::new(File::open(&path).unwrap()).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(
            e.to_string().contains("Cannot read the KVM stats file"),
            "{e}"
        );
    }
}
