//! `faultline bench faults --live`: the touch workload served through the model (live mode)
//! next to plain `-u MISSING`, same backing, size per vCPU and vCPUs, in one run.
//!
//! The plain run is `bench faults`' own ([`FaultBench::run_one`], the measured region an
//! extra memslot at 1 GiB). The live run puts the touched region in guest RAM at 64 MiB
//! (live mode serves guest RAM) and times it the same way: host timestamps of the touch
//! guest's STAGE_START / STAGE_END port writes, first start to last end. The live run skips
//! the per-fault pagemap comparison (`no_verify`): it measures serving, not checking; and
//! it busy-polls the uffd like the plain service's default wait.

use super::{LiveOptions, LiveSummary};
use crate::config::{Backing, MemoryConfig, Payload, VmConfig};
use crate::launch::{VmBuilder, VmIo};
use crate::measure::workload::{FaultBench, TouchParams, MARK_PORT, STAGE_END, STAGE_START};
use crate::memory::uffd::region::RegionBacking;
use crate::memory::uffd::UffdMode;
use devices::bus::BusDevice;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Where the live run's touched region starts.
const LIVE_REGION_GPA: u64 = 64 << 20;

/// The two runs side by side.
#[derive(Debug, Clone, Serialize)]
pub struct LiveBenchReport {
    /// Backing.
    pub backing: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Bytes touched per vCPU.
    pub bytes_per_vcpu: u64,
    /// Plain `-u MISSING`: pages per second.
    pub plain_pages_per_sec: f64,
    /// Live mode: pages per second.
    pub live_pages_per_sec: f64,
    /// live / plain.
    pub ratio: f64,
    /// The model's cost per fault (ns).
    pub model_ns_per_fault: u64,
    /// The live service's cost per fault (ns): model, ioctls.
    pub serve_ns_per_fault: u64,
    /// The live run's summary.
    pub live: LiveSummary,
}

impl LiveBenchReport {
    /// The text table.
    pub fn table(&self) -> String {
        format!(
            "backing   vCPUs  size/vCPU  mode          pages/s       cost/fault\n\
             {:<9} {:<6} {:<10} uffd MISSING  {:>12.0}  -\n\
             {:<9} {:<6} {:<10} --live        {:>12.0}  model {} ns, service {} ns\n\
             live / plain: {:.2}\n",
            self.backing,
            self.vcpus,
            crate::config::format_size(self.bytes_per_vcpu),
            self.plain_pages_per_sec,
            self.backing,
            self.vcpus,
            crate::config::format_size(self.bytes_per_vcpu),
            self.live_pages_per_sec,
            self.model_ns_per_fault,
            self.serve_ns_per_fault,
            self.ratio
        ) + &self
            .live
            .phases
            .as_ref()
            .map(super::profile::Phases::render)
            .unwrap_or_default()
    }
}

/// Timestamps of the touch guest's stage marks.
#[derive(Default)]
struct Marks {
    first_start: Option<Instant>,
    last_end: Option<Instant>,
}

impl BusDevice for Marks {
    fn read(&mut self, _: usize, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _: usize, _: u64, data: &[u8]) {
        let now = Instant::now();
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        match u32::from_le_bytes(b) {
            STAGE_START => {
                self.first_start.get_or_insert(now);
            }
            STAGE_END => self.last_end = Some(now),
            _ => {}
        }
    }
}

/// Runs both and reports them.
pub fn run(
    bench: &FaultBench,
    kernel_rules: Option<mmu::types::KernelVersion>,
    profile: bool,
) -> Result<LiveBenchReport, String> {
    let region = bench
        .backings
        .first()
        .copied()
        .unwrap_or(RegionBacking::Anonymous);
    let backing = match region {
        RegionBacking::Anonymous => Backing::Anon,
        RegionBacking::AnonymousThp => Backing::Thp,
        RegionBacking::Shmem => Backing::Shmem,
        other => {
            return Err(format!(
                "bench faults --live runs anonymous, anonymous_thp or shmem; {} is not served live (live mode has no hugetlb support yet, and prefaulting defeats the comparison)",
                other.name()
            ))
        }
    };
    let plain = bench
        .run_one(region, Some(UffdMode::Missing))
        .map_err(|e| format!("plain -u MISSING run: {e}"))?;
    let per = bench.bytes_per_vcpu;
    let size = LIVE_REGION_GPA + per * u64::from(bench.vcpus);
    let config = VmConfig {
        memory: MemoryConfig { size, backing },
        vcpus: bench.vcpus,
        payload: Payload::Guest("touch".into()),
        kvm_device: bench.kvm_device.clone(),
    };
    let marks = Arc::new(Mutex::new(Marks::default()));
    let (io, _out) = VmIo::captured();
    let vmm = VmBuilder::new(config, io)
        .pio_device(MARK_PORT, 4, marks.clone())
        .build()
        .map_err(|e| format!("live run: {e}"))?;
    TouchParams {
        region_gpa: LIVE_REGION_GPA,
        bytes_per_vcpu: per,
        stride: bench.stride,
        access: bench.access,
        random: bench.random,
        expect: 0,
        seed: bench.seed,
    }
    .write(vmm.guest_memory())
    .map_err(|e| format!("live run: writing the touch parameters: {e}"))?;
    let opts = LiveOptions {
        kernel_rules,
        guest: "touch".into(),
        no_verify: true,
        busy_poll: true,
        profile,
        ..LiveOptions::default()
    };
    let out = super::run(vmm, backing, &opts).map_err(|e| format!("live run: {e}"))?;
    if out.outcome.exit.status() != 0 {
        return Err(format!(
            "live run: the touch guest ended with {}",
            out.outcome.exit
        ));
    }
    let m = marks.lock().unwrap_or_else(|e| e.into_inner());
    let secs = match (m.first_start, m.last_end) {
        (Some(s), Some(e)) => e.duration_since(s).as_secs_f64(),
        _ => return Err("live run: the touch guest never marked its start and end".into()),
    };
    let pages = (per / bench.stride.max(1)) * u64::from(bench.vcpus);
    let live_rate = pages as f64 / secs.max(1e-9);
    let plain_rate = plain.pages_per_sec();
    let n = out.summary.model_resolutions.max(1);
    Ok(LiveBenchReport {
        backing: region.name().to_string(),
        vcpus: bench.vcpus,
        bytes_per_vcpu: per,
        plain_pages_per_sec: plain_rate,
        live_pages_per_sec: live_rate,
        ratio: live_rate / plain_rate.max(1e-9),
        model_ns_per_fault: out.summary.model_ns / n,
        serve_ns_per_fault: out.summary.serve_ns / n,
        live: out.summary,
    })
}
