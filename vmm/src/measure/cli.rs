//! `faultline bench faults`: options (demand_paging_test's letters) and the command.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::workload::{uffd_name, AccessPattern, FaultBench};
use crate::config::parse_size;
use crate::memory::uffd::{MissingResolve, UffdConfig, UffdMode, WaitMode};
use mmu::backing::{BackingError, BackingSpec};

/// Options of `faultline bench faults`.
#[derive(Debug, Clone, Args)]
pub struct FaultsArgs {
    /// Bytes touched per vCPU (demand_paging_test -b), e.g. 16M, 1G.
    #[arg(short = 'b', long = "size", value_name = "SIZE", value_parser = parse_size, default_value = "256M")]
    pub size: u64,
    /// Number of vCPUs, each touching its own region (-v).
    #[arg(short = 'v', long, value_name = "N", default_value_t = 1)]
    pub vcpus: u32,
    /// Backing(s) of the measured region, a comma list run in turn, a fresh VM each (-s):
    /// anonymous, anonymous_thp, anonymous_hugetlb, anonymous_hugetlb_1gb, shmem,
    /// shared_hugetlb, anonymous_prefault.
    #[arg(short = 's', long, value_name = "LIST", default_value = "anonymous")]
    pub backing: String,
    /// userfaultfd mode(s), a comma list run in turn for every backing (-u): none, MISSING, MINOR.
    #[arg(short = 'u', long, value_name = "LIST", default_value = "none")]
    pub uffd: String,
    /// Delay the uffd handler adds before resolving each fault, in microseconds (-d).
    #[arg(
        short = 'd',
        long = "uffd-delay",
        value_name = "USEC",
        default_value_t = 0
    )]
    pub uffd_delay: u64,
    /// uffd reader threads per uffd (-r).
    #[arg(short = 'r', long, value_name = "N", default_value_t = 1)]
    pub readers: usize,
    /// One uffd for all vCPUs instead of one per vCPU (-a).
    #[arg(short = 'a', long)]
    pub single_uffd: bool,
    /// How uffd readers wait: busy (spin on a non-blocking read), poll (poll(), as
    /// demand_paging_test), blocking (read()), or auto: busy when the vCPUs and the spinning
    /// readers fit the host's CPUs, else poll (spinners on oversubscribed cores steal the
    /// vCPUs' time: measured 1.3x vs 7x demand_paging_test's rate with 2 vCPUs on 2 cores).
    /// vcpu: no readers; UFFD_FEATURE_SIGBUS makes the fault fail at once and the faulting
    /// vCPU's own thread resolves it (KVM hands it over as an MMIO exit when it was emulating
    /// the access, as it does for every CPL0 access on this project's hosts).
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub uffd_wait: String,
    /// How MISSING faults are resolved: copy (UFFDIO_COPY of a pattern the guest checks) or
    /// zeropage (UFFDIO_ZEROPAGE, 4K backings only).
    #[arg(long, value_name = "HOW", default_value = "copy")]
    pub uffd_resolve: String,
    /// Bytes the handler installs per fault (default: the backing's page size).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub uffd_chunk: Option<u64>,
    /// What each access does: read, write or read-write.
    #[arg(long, value_name = "KIND", default_value = "write")]
    pub access: String,
    /// Access order: sequential or random.
    #[arg(long, value_name = "ORDER", default_value = "sequential")]
    pub order: String,
    /// Bytes between two accesses (4K: one access per page).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "4K")]
    pub stride: u64,
    /// Write everything measured as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write plots (PNG and SVG) into DIR.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Also run the touch workload under `faultline run --live` (every fault resolved by the
    /// model) next to plain `-u MISSING`, same backing, size and vCPUs (first --backing only).
    #[arg(long)]
    pub live: bool,
    /// With --live: the model's rule set, 6.12, 6.13 or 6.18 [default: the host kernel's].
    #[arg(long, value_name = "VERSION", requires = "live", value_parser = crate::config::parse_rules)]
    pub kernel_rules: Option<mmu::types::KernelVersion>,
    /// With --live: time each phase of the live service (wait, read, model, decide, ioctl,
    /// verify, record, ...) and print the breakdown per fault (in --json too).
    #[arg(long, requires = "live")]
    pub profile: bool,
    /// With --live: plain/live pairs to run alternately; the medians are reported.
    #[arg(long, value_name = "N", requires = "live", default_value_t = 1)]
    pub live_pairs: u32,
    /// With --live: check every page the live runs install against pagemap/kpageflags (as
    /// `run --live` does); off by default, so the bench measures serving.
    #[arg(long, requires = "live")]
    pub live_verify: bool,
    /// KVM device node [env: FAULTLINE_KVM_DEVICE] [default: /dev/kvm].
    #[arg(long, value_name = "PATH")]
    pub kvm_device: Option<PathBuf>,
    /// Run without seccomp filters on the VMM's threads (they are on by default; a system
    /// call outside a thread's filter ends the VM with status 104).
    #[arg(long)]
    pub no_seccomp: bool,
}

/// A bad `bench faults` option.
#[derive(Debug, thiserror::Error)]
pub enum FaultsArgsError {
    /// Unknown backing.
    #[error(transparent)]
    Backing(#[from] BackingError),
    /// Unknown uffd mode.
    #[error("Unknown --uffd mode {0:?}; use none, MISSING or MINOR (or a comma list)")]
    Uffd(String),
    /// Unknown value of another option.
    #[error("Unknown {option} {value:?}; use one of {choices}")]
    Choice {
        /// The option.
        option: &'static str,
        /// What was given.
        value: String,
        /// What is accepted.
        choices: &'static str,
    },
    /// An empty list.
    #[error("{0} needs at least one value")]
    Empty(&'static str),
    /// --live compares live mode with the reader-thread service.
    #[error("--live runs the touch workload next to the plain uffd service with reader threads; --uffd-wait vcpu has none (live mode resolves every fault through the model on resolver threads): use --uffd-wait auto, busy or poll with --live")]
    LiveVcpu,
}

fn list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|s| !s.is_empty())
}

impl FaultsArgs {
    /// The benchmark these options describe (validated later by [`FaultBench::validate`]).
    pub fn to_bench(&self) -> Result<FaultBench, FaultsArgsError> {
        let backings = list(&self.backing)
            .map(BackingSpec::parse_selftest)
            .collect::<Result<Vec<_>, _>>()?;
        if backings.is_empty() {
            return Err(FaultsArgsError::Empty("--backing"));
        }
        let uffd_modes = list(&self.uffd)
            .map(|u| match u.to_ascii_uppercase().as_str() {
                "NONE" | "OFF" => Ok(None),
                m => match UffdMode::from_name(m) {
                    Some(m @ (UffdMode::Missing | UffdMode::Minor)) => Ok(Some(m)),
                    _ => Err(FaultsArgsError::Uffd(u.to_string())),
                },
            })
            .collect::<Result<Vec<_>, _>>()?;
        if uffd_modes.is_empty() {
            return Err(FaultsArgsError::Empty("--uffd"));
        }
        let choice = |option, value: &str, choices| FaultsArgsError::Choice {
            option,
            value: value.to_string(),
            choices,
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let wait = match self.uffd_wait.as_str() {
            "auto" if self.vcpus as usize + self.readers <= cpus => WaitMode::BusyPoll,
            "auto" => WaitMode::Poll,
            "busy" | "busy-poll" => WaitMode::BusyPoll,
            "poll" => WaitMode::Poll,
            "blocking" | "block" => WaitMode::Blocking,
            "vcpu" => WaitMode::Vcpu,
            v => return Err(choice("--uffd-wait", v, "auto, busy, poll, blocking, vcpu")),
        };
        if self.live && wait == WaitMode::Vcpu {
            return Err(FaultsArgsError::LiveVcpu);
        }
        let resolve = match self.uffd_resolve.as_str() {
            "copy" => MissingResolve::Copy,
            "zeropage" | "zero" => MissingResolve::ZeroPage,
            v => return Err(choice("--uffd-resolve", v, "copy, zeropage")),
        };
        let access = match AccessPattern::from_name(&self.access) {
            Some(a) => a,
            None => return Err(choice("--access", &self.access, "read, write, read-write")),
        };
        let random = match self.order.as_str() {
            "sequential" | "seq" => false,
            "random" | "rand" => true,
            v => return Err(choice("--order", v, "sequential, random")),
        };
        Ok(FaultBench {
            backings,
            uffd_modes,
            bytes_per_vcpu: self.size,
            vcpus: self.vcpus,
            stride: self.stride,
            access,
            random,
            seed: 0x5eed,
            uffd: UffdConfig {
                wait,
                resolve,
                delay: Duration::from_micros(self.uffd_delay),
                readers: self.readers,
                single_uffd: self.single_uffd,
                chunk: usize::try_from(self.uffd_chunk.unwrap_or(0)).unwrap_or(usize::MAX),
                ..UffdConfig::default()
            },
            kvm_device: self
                .kvm_device
                .clone()
                .unwrap_or_else(crate::config::default_kvm_device),
        })
    }
}

/// Runs `faultline bench faults`; returns the process exit status.
pub fn run_faults(args: &FaultsArgs) -> i32 {
    let bench = match args.to_bench() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("faultline: error: {e}");
            return 2;
        }
    };
    if args.live {
        return match super::live::run(
            &bench,
            &super::live::LiveBenchOptions {
                kernel_rules: args.kernel_rules,
                profile: args.profile,
                pairs: args.live_pairs,
                verify: args.live_verify,
            },
        ) {
            Ok(r) => {
                print!("{}", r.table());
                if let Some(path) = &args.json {
                    let text = serde_json::to_string_pretty(&r).unwrap_or_default();
                    if let Err(e) = std::fs::write(path, text) {
                        eprintln!("faultline: error: cannot write {}: {e}", path.display());
                        return 1;
                    }
                }
                0
            }
            Err(e) => {
                eprintln!("faultline: error: {e}");
                1
            }
        };
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let report = match bench.run_all(command, args.quiet) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("faultline: error: {e}");
            return match e {
                crate::measure::workload::BenchError::Seccomp(x) => x.status(),
                _ => 1,
            };
        }
    };
    print!("{}", report.table());
    let modes: Vec<&str> = bench.uffd_modes.iter().map(|&m| uffd_name(m)).collect();
    if modes.iter().any(|&m| m != "none") && !args.quiet {
        let readers = if bench.uffd.wait == WaitMode::Vcpu {
            "no readers (each vCPU resolves its own faults)".to_string()
        } else {
            format!("{} reader(s)", bench.uffd.readers)
        };
        println!(
            "uffd: {readers}, {} per fault, wait {:?}, delay {} us, {}",
            if bench.uffd.chunk == 0 {
                "one page".to_string()
            } else {
                format!("{} bytes", bench.uffd.chunk)
            },
            bench.uffd.wait,
            args.uffd_delay,
            if bench.uffd.single_uffd {
                "one uffd for all vCPUs"
            } else {
                "one uffd per vCPU"
            }
        );
    }
    if let Some(path) = &args.json {
        if let Err(e) = report.write_json(path) {
            eprintln!("faultline: error: {e}");
            return 1;
        }
        println!("JSON: {}", path.display());
    }
    if let Some(dir) = &args.plot {
        if !report.levels_observable() {
            println!(
                "KVM mapping levels: not observable here (pages_4k/pages_2m/pages_1g stayed 0: this host's KVM runs its shadow MMU, which keeps no level stats); no levels plot"
            );
        }
        match report.write_plots(dir) {
            Ok(files) => println!(
                "plots: {}",
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Err(e) => {
                eprintln!("faultline: error: {e}");
                return 1;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        a: FaultsArgs,
    }

    fn parse(args: &[&str]) -> Result<FaultBench, String> {
        let t = T::try_parse_from(std::iter::once("faults").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        t.a.to_bench().map_err(|e| e.to_string())
    }

    #[test]
    fn demand_paging_test_letters_work() {
        let b = parse(&[
            "-b",
            "16M",
            "-v",
            "2",
            "-s",
            "anonymous,shmem",
            "-u",
            "none,MISSING",
            "-d",
            "5",
            "-r",
            "2",
            "-a",
        ])
        .unwrap();
        assert_eq!(b.bytes_per_vcpu, 16 << 20);
        assert_eq!(b.vcpus, 2);
        assert_eq!(b.backings, vec![BackingSpec::ANONYMOUS, BackingSpec::SHMEM]);
        assert_eq!(b.uffd_modes, vec![None, Some(UffdMode::Missing)]);
        assert_eq!(b.uffd.delay, Duration::from_micros(5));
        assert_eq!(b.uffd.readers, 2);
        assert!(b.uffd.single_uffd);
        // auto: 2 vCPUs + 2 spinners only fit a host with 4 CPUs.
        let cpus = std::thread::available_parallelism().unwrap().get();
        let want = if cpus >= 4 {
            WaitMode::BusyPoll
        } else {
            WaitMode::Poll
        };
        assert_eq!(b.uffd.wait, want);
        let b = parse(&["--uffd-wait", "busy"]).unwrap();
        assert_eq!(b.uffd.wait, WaitMode::BusyPoll);
        let b = parse(&["--uffd-wait", "vcpu"]).unwrap();
        assert_eq!(b.uffd.wait, WaitMode::Vcpu);
    }

    #[test]
    fn bad_values_name_the_option_and_the_choices() {
        let e = parse(&["-s", "anonymous,bogus"]).unwrap_err();
        assert!(
            e.contains("\"bogus\"") && e.contains("shared_hugetlb"),
            "{e}"
        );
        let e = parse(&["-u", "MAYBE"]).unwrap_err();
        assert!(e.contains("none, MISSING or MINOR"), "{e}");
        let e = parse(&["--uffd-wait", "sleepy"]).unwrap_err();
        assert!(
            e.contains("--uffd-wait") && e.contains("busy, poll, blocking"),
            "{e}"
        );
        let e = parse(&["--live", "--uffd-wait", "vcpu"]).unwrap_err();
        assert!(
            e.contains("--uffd-wait vcpu") && e.contains("auto, busy or poll"),
            "{e}"
        );
        let e = parse(&["-b", "12Q"]).unwrap_err();
        assert!(e.contains("12Q"), "{e}");
        let e = parse(&["-s", ","]).unwrap_err();
        assert!(e.contains("--backing needs at least one"), "{e}");
    }
}
