//! `faultline bench faults --live`: the touch workload served through the model (live mode)
//! next to plain `-u MISSING`, same backing, size per vCPU and vCPUs, in one run.
//!
//! The plain run is `bench faults`' own ([`FaultBench::run_one`], the measured region an
//! extra memslot at 1 GiB). The live run puts the touched region in guest RAM at 64 MiB
//! (live mode serves guest RAM) and times it the same way: host timestamps of the touch
//! guest's STAGE_START / STAGE_END port writes, first start to last end. The live run skips
//! the per-fault pagemap comparison (`no_verify`): it measures serving, not checking; and
//! it waits on the uffd as the plain service does (`--uffd-wait`: busy-polls when it fits). `--live-pairs N` runs
//! plain and live alternately N times and reports the medians (this host's load makes single
//! runs vary 3x); `--live-verify` turns the page check back on.

use super::workload::{FaultBench, TouchParams, MARK_PORT, STAGE_END, STAGE_START};
use crate::config::{Backing, MemoryConfig, Payload, VmConfig};
use crate::launch::{VmBuilder, VmIo};
use crate::live::{LiveOptions, LiveSummary};
use crate::memory::uffd::UffdMode;
use devices::bus::BusDevice;
use mmu::backing::BackingSpec;
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
    /// Plain `-u MISSING`: pages per second (median of the runs).
    pub plain_pages_per_sec: f64,
    /// Live mode: pages per second (median of the runs).
    pub live_pages_per_sec: f64,
    /// live / plain: the median of the pairs' ratios.
    pub ratio: f64,
    /// Each pair's live / plain, in run order.
    pub pair_ratios: Vec<f64>,
    /// Each plain run's pages per second.
    pub plain_runs: Vec<f64>,
    /// Each live run's pages per second.
    pub live_runs: Vec<f64>,
    /// The live runs checked every installed page against pagemap/kpageflags.
    pub verified: bool,
    /// The model's cost per fault (ns).
    pub model_ns_per_fault: u64,
    /// The live service's cost per fault (ns): model, ioctls, page check.
    pub serve_ns_per_fault: u64,
    /// What the faulting thread waits for in the live service (ns per fault, median of
    /// the runs): the model's step, the decision and the ioctls.
    pub live_critical_ns_per_fault: u64,
    /// The same span in the plain service (ns per fault, median of the runs' means): the
    /// source page filled and `UFFDIO_COPY`.
    pub plain_service_ns_per_fault: u64,
    /// plain service / live critical path: the rate ratio the two services allow when the
    /// guest's side costs nothing; unlike the rates, hardly moved by the host's load.
    pub service_ratio: f64,
    /// The last live run's summary.
    pub live: LiveSummary,
}

impl LiveBenchReport {
    /// The text table.
    pub fn table(&self) -> String {
        format!(
            "backing   vCPUs  size/vCPU  mode          pages/s       cost/fault\n\
             {:<9} {:<6} {:<10} uffd MISSING  {:>12.0}  service {} ns (fill + UFFDIO_COPY)\n\
             {:<9} {:<6} {:<10} --live        {:>12.0}  model {} ns, model..ioctl end {} ns, service {} ns\n\
             service-time ratio (plain service / live model..ioctl end): {:.2}\n\
             live / plain: {:.2} (median of {} alternating pairs: {}){}\n",
            self.backing,
            self.vcpus,
            crate::config::format_size(self.bytes_per_vcpu),
            self.plain_pages_per_sec,
            self.plain_service_ns_per_fault,
            self.backing,
            self.vcpus,
            crate::config::format_size(self.bytes_per_vcpu),
            self.live_pages_per_sec,
            self.model_ns_per_fault,
            self.live_critical_ns_per_fault,
            self.serve_ns_per_fault,
            self.service_ratio,
            self.ratio,
            self.pair_ratios.len(),
            self.pair_ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(" "),
            if self.verified {
                "; every live page checked with pagemap"
            } else {
                ""
            }
        ) + &self
            .live
            .phases
            .as_ref()
            .map(crate::live::profile::Phases::render)
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

/// How `bench faults --live` runs.
#[derive(Debug, Clone, Default)]
pub struct LiveBenchOptions {
    /// The model's rule set (`None`: the host kernel's).
    pub kernel_rules: Option<mmu::types::KernelVersion>,
    /// Time each phase of the live service ([`crate::live::profile`]).
    pub profile: bool,
    /// Plain/live pairs, run alternately (0 counts as 1); the report gives the medians.
    pub pairs: u32,
    /// Check every installed page against pagemap/kpageflags in the live runs, as
    /// `run --live` does (off by default: the bench measures serving).
    pub verify: bool,
}

/// The median of `v` (0 for none).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs plain and live alternately `opts.pairs` times and reports the medians.
pub fn run(bench: &FaultBench, opts: &LiveBenchOptions) -> Result<LiveBenchReport, String> {
    let region = bench
        .backings
        .first()
        .copied()
        .unwrap_or(BackingSpec::ANONYMOUS);
    // Live mode serves guest RAM's own kinds at 4K (the one backing type: the region's
    // kind is guest RAM's).
    let backing = match region.backing {
        b @ (Backing::Anon | Backing::Thp | Backing::Shmem) if !region.prefault => b,
        _ => {
            return Err(format!(
                "bench faults --live runs anonymous, anonymous_thp or shmem; {} is not served live (live mode has no hugetlb support yet, and prefaulting defeats the comparison)",
                region.name()
            ))
        }
    };
    let (mut plain, mut live, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    let (mut model_ns, mut serve_ns) = (Vec::new(), Vec::new());
    let (mut critical_ns, mut plain_ns) = (Vec::new(), Vec::new());
    for _ in 0..opts.pairs.max(1) {
        let pr = bench
            .run_one(region, Some(UffdMode::Missing))
            .map_err(|e| format!("plain -u MISSING run: {e}"))?;
        let p = pr.pages_per_sec();
        if let Some(u) = &pr.uffd_summary {
            plain_ns.push(u.mean_ns);
        }
        let (l, summary) = run_live(bench, backing, opts)?;
        let n = summary.model_resolutions.max(1);
        model_ns.push((summary.model_ns / n) as f64);
        serve_ns.push((summary.serve_ns / n) as f64);
        critical_ns.push((summary.critical_ns / n) as f64);
        plain.push(p);
        live.push(l);
        ratios.push(l / p.max(1e-9));
        last = Some(summary);
    }
    let plain_rate = median(&plain);
    let live_rate = median(&live);
    Ok(LiveBenchReport {
        backing: region.name().to_string(),
        vcpus: bench.vcpus,
        bytes_per_vcpu: bench.bytes_per_vcpu,
        plain_pages_per_sec: plain_rate,
        live_pages_per_sec: live_rate,
        ratio: median(&ratios),
        pair_ratios: ratios,
        plain_runs: plain,
        live_runs: live,
        verified: opts.verify,
        model_ns_per_fault: median(&model_ns) as u64,
        serve_ns_per_fault: median(&serve_ns) as u64,
        live_critical_ns_per_fault: median(&critical_ns) as u64,
        plain_service_ns_per_fault: median(&plain_ns) as u64,
        service_ratio: median(&plain_ns) / median(&critical_ns).max(1.0),
        live: last.unwrap_or_default(),
    })
}

/// The live run's resolver threads: as many as the plain service's uffd readers (`-r`
/// spinners sweeping every uffd when busy-polling, `-r` per uffd otherwise, the uffd of the
/// rest of guest RAM included).
fn live_resolvers(bench: &FaultBench) -> usize {
    let readers = bench.uffd.readers.max(1);
    match bench.uffd.wait {
        crate::memory::uffd::WaitMode::BusyPoll => readers,
        _ if bench.vcpus > 1 => readers * (bench.vcpus as usize + 1),
        _ => readers,
    }
}

/// One live run of the touch workload: its rate (pages/s) and summary.
fn run_live(
    bench: &FaultBench,
    backing: Backing,
    opts: &LiveBenchOptions,
) -> Result<(f64, LiveSummary), String> {
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
    let live_opts = LiveOptions {
        kernel_rules: opts.kernel_rules,
        guest: "touch".into(),
        no_verify: !opts.verify,
        // Wait as the plain service does (--uffd-wait; auto spins only while the vCPUs and
        // the spinning readers fit the host's CPUs, and polls otherwise).
        busy_poll: bench.uffd.wait == crate::memory::uffd::WaitMode::BusyPoll,
        profile: opts.profile,
        // Each vCPU's region on a uffd of its own, as the plain run registers them (the
        // rest of guest RAM on another), and as many resolver threads as the plain
        // service's readers (plus one for the rest of RAM when they wait in poll()).
        resolvers: live_resolvers(bench),
        // (one vCPU: one uffd in both runs).
        split: if bench.vcpus > 1 {
            (0..u64::from(bench.vcpus))
                .map(|i| (LIVE_REGION_GPA + i * per, per))
                .collect()
        } else {
            Vec::new()
        },
        ..LiveOptions::default()
    };
    let out = crate::live::run(vmm, backing, &live_opts).map_err(|e| format!("live run: {e}"))?;
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
    Ok((pages as f64 / secs.max(1e-9), out.summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_even_and_empty_lists() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
