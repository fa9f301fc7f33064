//! Summaries of each phase over the runs, the ratios to QEMU and the table.

use super::{LinuxSample, Stall, Vmm};
use crate::measure::boot::args::BenchBootArgs;
use crate::measure::boot::Summary;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Summaries of each phase over the runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LinuxSummary {
    /// Spawn -> kernel entry (µs).
    pub kernel_entry_us: Option<Summary>,
    /// Spawn -> first vCPU exit (µs).
    pub first_exit_us: Option<Summary>,
    /// Spawn -> first serial line (µs).
    pub first_serial_line_us: Summary,
    /// Spawn -> "Unpacking initramfs..." (µs).
    pub initramfs_start_us: Option<Summary>,
    /// Spawn -> "Freeing initrd memory" (µs).
    pub initramfs_done_us: Option<Summary>,
    /// "Unpacking initramfs..." -> "Freeing initrd memory" (µs): the initramfs phase.
    pub initramfs_phase_us: Option<Summary>,
    /// Spawn -> init started (µs).
    pub init_us: Summary,
    /// Spawn -> process exit (µs).
    pub exit_us: Summary,
}

impl LinuxSummary {
    /// Summarises `v` (non-empty).
    pub fn of(v: &[LinuxSample]) -> LinuxSummary {
        let opt = |f: fn(&LinuxSample) -> Option<f64>| {
            let x: Vec<f64> = v.iter().filter_map(f).collect();
            (!x.is_empty()).then(|| Summary::of(x))
        };
        let all = |f: fn(&LinuxSample) -> f64| Summary::of(v.iter().map(f).collect());
        LinuxSummary {
            kernel_entry_us: opt(|s| s.kernel_entry_us),
            first_exit_us: opt(|s| s.first_exit_us),
            first_serial_line_us: all(|s| s.first_serial_line_us),
            initramfs_start_us: opt(|s| s.initramfs_start_us),
            initramfs_done_us: opt(|s| s.initramfs_done_us),
            initramfs_phase_us: opt(|s| {
                s.initramfs_start_us
                    .zip(s.initramfs_done_us)
                    .map(|(a, b)| b - a)
            }),
            init_us: all(|s| s.init_us),
            exit_us: all(|s| s.exit_us),
        }
    }

    fn phases(&self) -> [(&'static str, Option<Summary>); 8] {
        [
            ("kernel entry", self.kernel_entry_us),
            ("first KVM exit", self.first_exit_us),
            ("first serial line", Some(self.first_serial_line_us)),
            ("Unpacking initramfs", self.initramfs_start_us),
            ("Freeing initrd memory", self.initramfs_done_us),
            ("  initramfs phase (dur.)", self.initramfs_phase_us),
            ("init started (marker)", Some(self.init_us)),
            ("VM exit (process reaped)", Some(self.exit_us)),
        ]
    }
}

/// The phase rows, in table order.
const PHASE_NAMES: [&str; 8] = [
    "kernel entry",
    "first KVM exit",
    "first serial line",
    "Unpacking initramfs",
    "Freeing initrd memory",
    "  initramfs phase (dur.)",
    "init started (marker)",
    "VM exit (process reaped)",
];

/// The Linux boot report.
#[derive(Debug, Clone, Serialize)]
pub struct LinuxReport {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs (None: the built-in busybox one, running `true`).
    pub initrd: Option<PathBuf>,
    /// Command line both VMMs passed.
    pub cmdline: String,
    /// Guest RAM, bytes.
    pub memory: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Boots per VMM.
    pub runs: usize,
    /// The QEMU command (with `<initrd>` for the initramfs path), if QEMU ran.
    pub qemu_command: Option<Vec<String>>,
    /// faultline's phases (None: every faultline boot stalled).
    pub faultline: Option<LinuxSummary>,
    /// QEMU's phases.
    pub qemu: Option<LinuxSummary>,
    /// faultline / QEMU median per phase (lower is better for faultline).
    pub ratio_faultline_over_qemu: Vec<(String, Option<f64>)>,
    /// Every faultline boot.
    pub faultline_samples: Vec<LinuxSample>,
    /// Every QEMU boot that completed.
    pub qemu_samples: Vec<LinuxSample>,
    /// faultline boots that stalled.
    pub faultline_stalls: usize,
    /// QEMU boots that stalled (killed after --timeout).
    pub qemu_stalls: usize,
    /// Every stalled boot, with where its vCPUs were.
    pub stalls: Vec<Stall>,
    /// How faultline entered the kernel if it is an ELF vmlinux (QEMU microvm: PVH).
    pub boot_protocol: crate::config::BootProtocol,
    /// Whether the kernel is an ELF vmlinux (else a bzImage: both VMMs take the 64-bit boot
    /// protocol, QEMU through its firmware).
    pub kernel_is_elf: bool,
    /// `--initcalls`: each initcall's time in one more boot per VMM.
    pub initcalls: Option<super::initcalls::InitcallReport>,
}

impl LinuxReport {
    /// Builds the report.
    pub fn new(
        args: &BenchBootArgs,
        kernel: &Path,
        cmdline: &str,
        qemu_command: Option<Vec<String>>,
        faultline_samples: Vec<LinuxSample>,
        qemu_samples: Vec<LinuxSample>,
        stalls: Vec<Stall>,
    ) -> LinuxReport {
        let faultline =
            (!faultline_samples.is_empty()).then(|| LinuxSummary::of(&faultline_samples));
        let qemu = (!qemu_samples.is_empty()).then(|| LinuxSummary::of(&qemu_samples));
        let ratio = PHASE_NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let f = faultline.and_then(|f| f.phases()[i].1);
                let q = qemu.and_then(|q| q.phases()[i].1);
                let r = f.zip(q).map(|(f, q)| f.median / q.median);
                (name.to_string(), r)
            })
            .collect();
        let count = |vmm| stalls.iter().filter(|s| s.vmm == vmm).count();
        let (faultline_stalls, qemu_stalls) = (count(Vmm::Faultline), count(Vmm::Qemu));
        LinuxReport {
            kernel: kernel.to_path_buf(),
            initrd: args.initrd.clone(),
            cmdline: cmdline.to_string(),
            memory: args.memory,
            vcpus: args.vcpus,
            runs: faultline_samples.len() + faultline_stalls,
            qemu_command,
            faultline,
            qemu,
            ratio_faultline_over_qemu: ratio,
            faultline_samples,
            qemu_samples,
            faultline_stalls,
            qemu_stalls,
            stalls,
            boot_protocol: args.boot_protocol,
            kernel_is_elf: std::fs::File::open(kernel)
                .is_ok_and(|mut f| crate::boot::is_elf(&mut f)),
            initcalls: None,
        }
    }

    /// The human-readable table: median [min..max] in ms per phase and VMM, and the ratio.
    pub fn table(&self) -> String {
        let initrd = match &self.initrd {
            Some(p) => p.display().to_string(),
            None => "busybox initramfs running `true`".to_string(),
        };
        let mut s = format!(
            "faultline bench boot: kernel {}, initrd {initrd}, {} RAM, {} vCPU, {} boots per VMM, alternating\n\
             times from the VMM's spawn, ms: median [min..max]\n",
            self.kernel.display(),
            crate::config::format_size(self.memory),
            self.vcpus,
            self.runs,
        );
        let cell = |v: Option<Summary>| match v {
            Some(v) => format!(
                "{:.1} [{:.1}..{:.1}]",
                v.median / 1000.0,
                v.min / 1000.0,
                v.max / 1000.0
            ),
            None => "-".to_string(),
        };
        s.push_str(&format!(
            "{:<26} {:>30} {:>30} {:>15}\n",
            "phase", "faultline", "QEMU microvm", "faultline/QEMU"
        ));
        let q = self.qemu.map(|q| q.phases());
        let f = self.faultline.map(|f| f.phases());
        for (i, name) in PHASE_NAMES.iter().enumerate() {
            let fv = f.and_then(|f| f[i].1);
            let qv = q.and_then(|q| q[i].1);
            let ratio = match self.ratio_faultline_over_qemu.get(i).and_then(|r| r.1) {
                Some(r) => format!("{r:.2}"),
                None => "-".to_string(),
            };
            s.push_str(&format!(
                "{name:<26} {:>30} {:>30} {ratio:>15}\n",
                cell(fv),
                cell(qv)
            ));
        }
        let qemu_boots = self.qemu_samples.len() + self.qemu_stalls;
        s.push_str(&format!(
            "stalls: faultline {} of {} boots, QEMU microvm {}\n",
            self.faultline_stalls,
            self.runs,
            if self.qemu.is_some() || self.qemu_stalls > 0 {
                format!("{} of {qemu_boots} boots", self.qemu_stalls)
            } else {
                "not run".to_string()
            }
        ));
        if self.kernel_is_elf {
            s.push_str(&format!(
                "given differently: faultline enters the ELF by --boot-protocol {}, QEMU microvm by PVH\n",
                self.boot_protocol
            ));
        }
        let seeded = |v: &[LinuxSample]| v.iter().filter(|s| s.crng_seeded_at_boot).count();
        s.push_str(&format!(
            "given differently: CRNG seeded at boot (a boot loader's SETUP_RNG_SEED, bzImage and \
             zero-page ELF only): faultline {} of {}, QEMU microvm {}\n",
            seeded(&self.faultline_samples),
            self.faultline_samples.len(),
            if self.qemu.is_some() {
                format!(
                    "{} of {}",
                    seeded(&self.qemu_samples),
                    self.qemu_samples.len()
                )
            } else {
                "not run".to_string()
            }
        ));
        for st in &self.stalls {
            s.push_str(&format!(
                "  {} run {}: {}; last console line: {}\n",
                st.vmm.name(),
                st.run,
                st.detected_by,
                st.last_console
                    .last()
                    .map(String::as_str)
                    .unwrap_or("(none)")
            ));
            for v in &st.vcpus {
                s.push_str(&format!("    {v}\n"));
            }
        }
        s.push_str(
            "target: init started by 0.8x QEMU microvm's time (issue 10: ratio <= 0.80)\n\
             kernel entry: faultline = first KVM_RUN at the kernel entry; QEMU = its qboot firmware's last fw_cfg access\n",
        );
        s
    }
}
#[cfg(test)]
mod tests {
    use crate::measure::boot::linux;

    #[test]
    fn linux_table_shows_medians_ratios_and_missing_phases() {
        let s = |k: f64| linux::LinuxSample {
            kernel_entry_us: Some(k),
            first_exit_us: None,
            first_serial_line_us: 2000.0 * k,
            initramfs_start_us: Some(2500.0 * k),
            initramfs_done_us: Some(3000.0 * k),
            init_us: 4000.0 * k,
            exit_us: 5000.0 * k,
            crng_seeded_at_boot: k > 1.0,
        };
        let args = <crate::cli::Cli as clap::Parser>::try_parse_from([
            "faultline",
            "bench",
            "boot",
            "--kernel",
            "/k",
        ])
        .unwrap();
        let crate::cli::Command::Bench(crate::cli::BenchCommand::Boot(args)) = args.command else {
            panic!("not bench boot")
        };
        let r = linux::LinuxReport::new(
            &args,
            std::path::Path::new("/k"),
            "c",
            None,
            vec![s(1.0), s(1.0), s(1.0)],
            vec![s(2.0)],
            vec![linux::Stall {
                vmm: linux::Vmm::Faultline,
                run: 4,
                detected_by: "faultline watchdog".to_string(),
                vcpus: vec!["vCPU 0: RIP 0x1 <spin+0x0>".to_string()],
                last_console: vec!["HugeTLB: registered".to_string()],
            }],
        );
        let t = r.table();
        assert!(t.contains("init started (marker)"), "{t}");
        assert!(t.contains("0.50"), "ratio 1/2 per phase: {t}");
        assert!(t.contains("first KVM exit"), "{t}");
        assert!(t.contains("initramfs phase"), "{t}");
        assert!(
            t.contains("stalls: faultline 1 of 4 boots, QEMU microvm 0 of 1 boots"),
            "{t}"
        );
        // What the guests saw, per VMM: QEMU's one boot (k = 2) had a seeded CRNG.
        assert!(
            t.contains("CRNG seeded at boot")
                && t.contains("faultline 0 of 3, QEMU microvm 1 of 1"),
            "{t}"
        );
        assert!(
            t.contains("faultline run 4") && t.contains("<spin+0x0>"),
            "{t}"
        );
        assert_eq!(r.runs, 4);
    }
}
