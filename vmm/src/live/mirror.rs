//! The model's mirror of guest RAM: one `[[vma]]` and one `[[memslot]]` per guest-RAM
//! region at the REAL host virtual addresses, with the host's conditions, as scenario TOML
//! (what a recording's header carries and `sim --replay` rebuilds).

use crate::config::Backing;
use mmu::scenario::{ModelOptions, Scenario, ScenarioError};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// One guest-RAM region: KVM slot `slot` maps `[gpa, gpa + size)` to `[hva, hva + size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    /// KVM (and model) memslot id.
    pub slot: u32,
    /// Guest-physical start.
    pub gpa: u64,
    /// Host virtual start.
    pub hva: u64,
    /// Bytes.
    pub size: u64,
}

impl RamRegion {
    /// Guest RAM's regions, in slot order (`Vm::register_memory` gives slot `i` to the
    /// `i`th region).
    pub fn of(mem: &GuestMemoryMmap) -> Vec<RamRegion> {
        mem.iter()
            .enumerate()
            .map(|(i, r)| RamRegion {
                slot: u32::try_from(i).unwrap_or(u32::MAX),
                gpa: r.start_addr().0,
                hva: r.as_ptr() as u64,
                size: r.len(),
            })
            .collect()
    }

    /// The gpa of `hva`, if this region holds it.
    pub fn gpa_of(&self, hva: u64) -> Option<u64> {
        (hva >= self.hva && hva - self.hva < self.size).then(|| self.gpa + (hva - self.hva))
    }

    /// The hva of `gpa`, if this region holds it.
    pub fn hva_of(&self, gpa: u64) -> Option<u64> {
        (gpa >= self.gpa && gpa - self.gpa < self.size).then(|| self.hva + (gpa - self.gpa))
    }
}

/// The hva range of `[gpa, gpa + len)`, when one region holds all of it.
pub fn hva_range(regions: &[RamRegion], gpa: u64, len: u64) -> Option<(u64, u64)> {
    regions.iter().find_map(|r| {
        let start = r.hva_of(gpa)?;
        let last = r.hva_of(gpa.checked_add(len)?.checked_sub(1)?)?;
        Some((start, last + 1 - start))
    })
}

fn json_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v)
        .unwrap_or_default()
        .trim_matches('"')
        .to_string()
}

/// The mirror as scenario TOML (no steps): the host conditions of `opts`, then the VMAs and
/// memslots of `regions` backed as `backing` says.
pub fn mirror_toml(regions: &[RamRegion], backing: Backing, opts: &ModelOptions) -> String {
    let mut s = String::from("# faultline run --live: the model's mirror of guest RAM\n");
    if let Some(k) = opts.kernel {
        s.push_str(&format!("kernel = \"{}\"\n", json_name(&k)));
    }
    let c = &opts.conditions;
    if let Some(t) = c.thp {
        s.push_str(&format!("thp = \"{}\"\n", json_name(&t)));
    }
    if let Some(z) = c.huge_zero_page {
        s.push_str(&format!("huge_zero_page = {z}\n"));
    }
    if let Some(n) = c.nodes {
        s.push_str(&format!("nodes = {n}\n"));
    }
    if let Some(b) = c.numa_balancing {
        s.push_str(&format!("numa_balancing = {b}\n"));
    }
    if let Some(a) = c.async_pf {
        s.push_str(&format!("async_pf = {a}\n"));
    }
    // The VMM has vCPU threads besides the one faulting: mm_users > 1.
    s.push_str("multi_threaded = true\n");
    for r in regions {
        s.push_str(&format!(
            "\n[[vma]]\nstart = \"{:#x}\"\nsize = \"{:#x}\"\n",
            r.hva, r.size
        ));
        match backing {
            Backing::Anon => {}
            Backing::Thp => s.push_str("thp = true\n"),
            Backing::Shmem => s.push_str("kind = \"memfd\"\nshared = true\n"),
            Backing::Hugetlb => s.push_str("kind = \"hugetlb\"\nshared = true\n"),
            // Guest RAM has the four kinds above (`VmConfig::validate`).
            other => s.push_str(&format!("kind = \"{other}\"\n")),
        }
        s.push_str(&format!(
            "\n[[memslot]]\nid = {}\ngpa = \"{:#x}\"\nsize = \"{:#x}\"\nhva = \"{:#x}\"\n",
            r.slot, r.gpa, r.size, r.hva
        ));
    }
    s
}

/// The mirror, parsed.
pub fn mirror(
    regions: &[RamRegion],
    backing: Backing,
    opts: &ModelOptions,
) -> Result<(String, Scenario), ScenarioError> {
    let text = mirror_toml(regions, backing, opts);
    let sc = Scenario::from_toml(&text)?;
    Ok((text, sc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmu::host::ThpMode;
    use mmu::scenario::{HostConditions, ScenarioRunner};
    use mmu::types::KernelVersion;

    fn regions() -> Vec<RamRegion> {
        vec![RamRegion {
            slot: 0,
            gpa: 0,
            hva: 0x7f12_3400_0000,
            size: 256 << 20,
        }]
    }

    #[test]
    fn the_mirror_loads_with_the_host_conditions_and_real_addresses() {
        let opts = ModelOptions {
            kernel: Some(KernelVersion::V6_13),
            conditions: HostConditions {
                thp: Some(ThpMode::Madvise),
                huge_zero_page: Some(true),
                nodes: Some(1),
                async_pf: Some(false),
                ..HostConditions::default()
            },
            bug: None,
        };
        for b in [Backing::Anon, Backing::Thp, Backing::Shmem] {
            let (text, sc) = mirror(&regions(), b, &opts).unwrap();
            assert_eq!(sc.kernel, Some(KernelVersion::V6_13), "{text}");
            assert_eq!(sc.thp, Some(ThpMode::Madvise));
            assert_eq!(sc.vma.len(), 1);
            assert_eq!(sc.vma[0].start.0, 0x7f12_3400_0000);
            assert_eq!(sc.vma[0].thp, b == Backing::Thp);
            assert_eq!(sc.memslot[0].hva.0, 0x7f12_3400_0000);
            // The file alone reproduces the conditions: what a replay runs with.
            ScenarioRunner::new(&sc, &ModelOptions::default()).unwrap();
        }
    }

    #[test]
    fn ranges_translate_within_one_region() {
        let r = regions();
        assert_eq!(
            hva_range(&r, 0x1000, 0x2000),
            Some((0x7f12_3400_1000, 0x2000))
        );
        assert_eq!(hva_range(&r, (256 << 20) - 4096, 8192), None);
        assert_eq!(r[0].gpa_of(0x7f12_3400_5000), Some(0x5000));
        assert_eq!(r[0].gpa_of(0x7f12_3400_0000 + (256 << 20)), None);
    }
}
