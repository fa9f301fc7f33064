//! Summaries of each phase over the runs, the ratios to QEMU and the table.

use super::LinuxSample;
use crate::cli::BenchBootArgs;
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
            init_us: all(|s| s.init_us),
            exit_us: all(|s| s.exit_us),
        }
    }

    fn phases(&self) -> [(&'static str, Option<Summary>); 5] {
        [
            ("kernel entry", self.kernel_entry_us),
            ("first KVM exit", self.first_exit_us),
            ("first serial line", Some(self.first_serial_line_us)),
            ("init started (marker)", Some(self.init_us)),
            ("VM exit (process reaped)", Some(self.exit_us)),
        ]
    }
}

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
    /// faultline's phases.
    pub faultline: LinuxSummary,
    /// QEMU's phases.
    pub qemu: Option<LinuxSummary>,
    /// faultline / QEMU median per phase (lower is better for faultline).
    pub ratio_faultline_over_qemu: Vec<(String, Option<f64>)>,
    /// Every faultline boot.
    pub faultline_samples: Vec<LinuxSample>,
    /// Every QEMU boot.
    pub qemu_samples: Vec<LinuxSample>,
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
    ) -> LinuxReport {
        let faultline = LinuxSummary::of(&faultline_samples);
        let qemu = (!qemu_samples.is_empty()).then(|| LinuxSummary::of(&qemu_samples));
        let ratio = faultline
            .phases()
            .iter()
            .enumerate()
            .map(|(i, (name, f))| {
                let q = qemu.and_then(|q| q.phases()[i].1);
                let r = f.zip(q).map(|(f, q)| f.median / q.median);
                (name.to_string(), r)
            })
            .collect();
        LinuxReport {
            kernel: kernel.to_path_buf(),
            initrd: args.initrd.clone(),
            cmdline: cmdline.to_string(),
            memory: args.memory,
            vcpus: args.vcpus,
            runs: faultline_samples.len(),
            qemu_command,
            faultline,
            qemu,
            ratio_faultline_over_qemu: ratio,
            faultline_samples,
            qemu_samples,
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
        for (i, (name, f)) in self.faultline.phases().iter().enumerate() {
            let qv = q.and_then(|q| q[i].1);
            let ratio = match self.ratio_faultline_over_qemu.get(i).and_then(|r| r.1) {
                Some(r) => format!("{r:.2}"),
                None => "-".to_string(),
            };
            s.push_str(&format!(
                "{name:<26} {:>30} {:>30} {ratio:>15}\n",
                cell(*f),
                cell(qv)
            ));
        }
        s.push_str(
            "target: init started no later than QEMU microvm's (ratio <= 1.00)\n\
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
            init_us: 4000.0 * k,
            exit_us: 5000.0 * k,
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
        );
        let t = r.table();
        assert!(t.contains("init started (marker)"), "{t}");
        assert!(t.contains("0.50"), "ratio 1/2 per phase: {t}");
        assert!(t.contains("first KVM exit"), "{t}");
        assert_eq!(r.runs, 3);
    }
}
