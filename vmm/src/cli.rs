//! The command line (clap). Thin by design: it builds a [`VmConfig`] and hands it to
//! [`crate::launch`]; everything worth testing takes a `VmConfig`.

use crate::config::{
    default_kvm_device, parse_size, Backing, KernelConfig, MemoryConfig, Payload, VmConfig,
    DEFAULT_CMDLINE,
};
use crate::guests;
use crate::live;
pub use crate::measure::boot::args::BenchBootArgs;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// faultline: a minimal KVM VMM that launches guests and measures their memory faults.
#[derive(Debug, Parser)]
#[command(name = "faultline", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest on KVM; exits with the guest's status.
    #[command(after_help = "Examples:\n  \
        faultline run                       # the default built-in guest (hello)\n  \
        faultline run --guest smp --vcpus 4\n  \
        faultline run --list-guests\n  \
        faultline run --kernel bzImage --memory 512M -- uname -a")]
    Run(RunArgs),
    /// Replay a secondary-MMU scenario through the emulation (no KVM needed).
    #[command(after_help = "Examples:\n  \
        faultline sim resources/scenarios/trace1-anon-4k-read-then-write.toml\n  \
        faultline sim --json resources/scenarios/seed004-huge-zero-wp-thp.toml\n  \
        faultline sim --explore resources/scenarios/trace4-concurrent-invalidate.toml\n  \
        faultline sim --explore --no-stale-check resources/scenarios/trace4-concurrent-invalidate.toml\n  \
        faultline sim --replay faults.jsonl --kernel-rules 6.12,6.13,6.18 --json replay.json --plot plots/\n  \
        faultline sim --record-from resources/scenarios/trace2-thp-read-then-write-6.12.toml --record thp.jsonl\n\n\
        Exit status: 0 ok; 1 a stale SPTE (--explore), a scenario that does not run, or a\n\
        replay whose recorded rules do not reproduce the recording; 2 bad input (a recording\n\
        that does not parse, an unknown rule set, an empty recording).")]
    Sim(crate::sim::SimArgs),
    /// Run scenarios on the model and on real KVM and report every divergence.
    #[command(after_help = "Examples:\n  \
        faultline check resources/scenarios                  # the shipped suite\n  \
        faultline check resources/scenarios/kvm-thp-dontneed-4k.toml\n  \
        faultline check --json check.json --kernel-rules 6.12 resources/scenarios\n\n\
        Exit status: 0 nothing diverged, 1 a divergence (or a scenario compared nothing),\n\
        2 the check could not run (bad scenario file, no /dev/kvm).")]
    Check(crate::check::cli::CheckArgs),
    /// Benchmarks (`faultline bench faults`).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Guest-side test suites (`faultline test mm`).
    #[command(subcommand)]
    Test(TestCommand),
}

/// `faultline test` subcommands.
#[derive(Debug, Subcommand)]
pub enum TestCommand {
    /// The kernel's MM selftests (tools/testing/selftests/mm) in a faultline guest.
    #[command(after_help = "Examples:\n  \
        faultline test mm                         # the smoke set\n  \
        faultline test mm --list\n  \
        faultline test mm -t userfaultfd --json mm.json --junit mm.xml --output logs/\n  \
        faultline test mm cow 'gup_test -u' --timeout 300\n  \
        faultline test mm --all --memory 2G --vcpus 2\n\n\
        Exit status: 0 every requested test passed or was skipped with a reason; 1 a test\n\
        failed or timed out, or the guest kernel panicked, oopsed or stalled; 2 a requested\n\
        test never reported (or the run could not start).")]
    Mm(crate::selftests::MmArgs),
}

/// `faultline bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Guest fault latency per backing and uffd mode, with demand_paging_test's knobs.
    #[command(after_help = "Examples:\n  \
        faultline bench faults --backing anonymous,anonymous_thp,shmem --uffd none,MISSING\n  \
        faultline bench faults -b 1G -v 2 -u MISSING -r 2 --json out.json --plot plots/\n  \
        faultline bench faults -s shmem -u MINOR --uffd-wait poll")]
    Faults(crate::measure::cli::FaultsArgs),
    /// Time process start -> first guest exit -> guest done for a built-in guest, and the
    /// VMM's RSS beyond guest memory; with --kernel, a Linux boot's timeline side by side
    /// with QEMU microvm (JSON + table).
    #[command(after_help = "Examples:\n  \
        faultline bench boot --runs 20 --json boot.json\n  \
        faultline bench boot --runs 20 --baseline /tmp/old-faultline\n  \
        faultline bench boot --kernel vmlinux --runs 3 --json linux-boot.json")]
    Boot(BenchBootArgs),
    /// Time `faultline check` per scenario and in all, and race rounds per second.
    #[command(after_help = "Examples:\n  \
        faultline bench check --runs 3 --json check-bench.json")]
    Check(crate::check::bench::BenchCheckArgs),
    /// Replay rate of `faultline sim --replay`: faults/s per rule set, single thread (JSON).
    #[command(after_help = "Examples:\n  \
        faultline bench replay                         # a synthetic 300k-fault recording over 1 GiB\n  \
        faultline bench replay faults.jsonl --kernel-rules 6.12 --runs 5 --json replay.json")]
    Replay(crate::replay::BenchReplayArgs),
}

/// Options of `faultline run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Linux kernel to boot (bzImage or ELF vmlinux). Without it a built-in guest runs.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initramfs for --kernel.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line for --kernel.
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// How an ELF vmlinux is entered: `linux` (the 64-bit boot protocol with a zero page,
    /// which carries an RNG seed) or `pvh` (its PVH note, as QEMU microvm does). A bzImage
    /// always takes the 64-bit boot protocol.
    #[arg(long, value_name = "PROTOCOL", value_enum, default_value_t)]
    pub boot_protocol: crate::config::BootProtocol,
    /// Guest RAM, e.g. 256M, 2G.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256M")]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub vcpus: u32,
    /// Host backing of guest RAM: anon, thp, shmem or hugetlb (or the KVM selftests'
    /// anonymous, anonymous_thp, shared_hugetlb).
    #[arg(long, value_name = "KIND", default_value = "anon")]
    pub backing: Backing,
    /// Built-in guest program to run (see --list-guests).
    #[arg(long, value_name = "NAME", conflicts_with = "kernel")]
    pub guest: Option<String>,
    /// List the built-in guest programs and exit.
    #[arg(long)]
    pub list_guests: bool,
    /// KVM device node [env: FAULTLINE_KVM_DEVICE] [default: /dev/kvm].
    #[arg(long, value_name = "PATH")]
    pub kvm_device: Option<PathBuf>,
    /// With --kernel: the command to run in the guest (after `--`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
    /// Seconds without any vCPU exit to userspace (no port/MMIO access, so no console output
    /// either) after which the guest counts as stuck: faultline prints each vCPU's RIP, RSP,
    /// CR3, RFLAGS and instruction bytes, symbolized, and exits with status 103. Default: 180
    /// with `-- CMD`, off otherwise; 0 turns it off.
    #[arg(long, value_name = "SECS")]
    pub watchdog: Option<u64>,
    /// ELF file with the guest's symbols for the watchdog's report (default: the kernel when
    /// it is an unstripped ELF, or the built-in guest).
    #[arg(long, value_name = "PATH")]
    pub symbols: Option<PathBuf>,
    /// Wait for gdb on 127.0.0.1:PORT or a unix socket (`unix:PATH`) with the vCPUs held
    /// before their first instruction (like QEMU's `-s -S`); gdb's `continue` starts the
    /// guest. Breakpoints: `hbreak` (int3 cannot run here). Turns the watchdog off.
    #[arg(long, value_name = "PORT|unix:PATH")]
    pub gdb: Option<crate::gdb::connection::GdbAddr>,
    /// Live mode: guest RAM is served through userfaultfd and every fault is resolved by
    /// faultline's model of the kernel's MMU, then applied to the real mapping (see
    /// `vmm::live`); a summary is printed at the end.
    #[arg(long, conflicts_with = "gdb")]
    pub live: bool,
    /// With --live: the model's rule set, 6.12, 6.13 or 6.18 [default: the host kernel's].
    #[arg(long, value_name = "VERSION", requires = "live", value_parser = crate::config::parse_rules)]
    pub kernel_rules: Option<mmu::types::KernelVersion>,
    /// With --live: inject a host event, KIND[:GPA+LEN]@every=DUR or @at=DUR[,count=N]
    /// (KIND: dontneed, thp-collapse, aging, fork, dirty-log-on, dirty-log-off, numa-scan);
    /// repeatable.
    #[arg(long, value_name = "SPEC", requires = "live")]
    pub inject: Vec<String>,
    /// With --live: a TOML file of `[[event]]` tables (kind, gpa, size, every | at, count).
    #[arg(long, value_name = "FILE", requires = "live")]
    pub schedule: Option<PathBuf>,
    /// With --live: record every fault and injected event as JSON Lines (mmu::record's
    /// format; `faultline sim --replay` reads it).
    #[arg(long, value_name = "FILE", requires = "live")]
    pub record: Option<PathBuf>,
    /// Run without seccomp filters on the VMM's threads (they are on by default; a system
    /// call outside a thread's filter ends the VM with status 104).
    #[arg(long)]
    pub no_seccomp: bool,
}

impl RunArgs {
    /// The [`VmConfig`] these options describe (not yet validated).
    pub fn to_config(&self) -> Result<VmConfig, crate::config::ValidationError> {
        use crate::config::ValidationError::NeedsKernel;
        let payload = match &self.kernel {
            Some(kernel) => Payload::Kernel(KernelConfig {
                kernel: kernel.clone(),
                initrd: self.initrd.clone(),
                cmdline: self.cmdline.clone(),
                init_command: self.command.clone(),
                boot_protocol: self.boot_protocol,
            }),
            None => {
                if self.initrd.is_some() {
                    return Err(NeedsKernel("--initrd"));
                }
                if !self.command.is_empty() {
                    return Err(NeedsKernel("a command after --"));
                }
                Payload::Guest(
                    self.guest
                        .clone()
                        .unwrap_or_else(|| guests::DEFAULT_GUEST.to_string()),
                )
            }
        };
        Ok(VmConfig {
            memory: MemoryConfig {
                size: self.memory,
                backing: self.backing,
            },
            vcpus: self.vcpus,
            payload,
            kvm_device: self.kvm_device.clone().unwrap_or_else(default_kvm_device),
        })
    }
}

/// The watchdog `faultline run` asks for: its limit and the symbols to report with.
pub fn watchdog_of(
    args: &RunArgs,
) -> Result<Option<(std::time::Duration, crate::vstate::watchdog::Symbols)>, String> {
    let secs = match args.watchdog {
        Some(0) => return Ok(None),
        Some(s) => s,
        None if !args.command.is_empty() => 180,
        None => return Ok(None),
    };
    let file = args.symbols.clone().or_else(|| args.kernel.clone());
    let syms = match (&file, &args.guest) {
        (Some(f), _) => {
            let bytes = std::fs::read(f).map_err(|e| {
                format!(
                    "Cannot read symbols from {}: {e}; pass --symbols with the unstripped vmlinux",
                    f.display()
                )
            })?;
            crate::vstate::watchdog::Symbols::from_elf(&bytes)
        }
        (None, g) => crate::guests::find(g.as_deref().unwrap_or(crate::guests::DEFAULT_GUEST))
            .map(|g| crate::vstate::watchdog::Symbols::from_elf(g.elf))
            .unwrap_or_default(),
    };
    Ok(Some((std::time::Duration::from_secs(secs), syms)))
}

/// The `--list-guests` text.
pub fn list_guests() -> String {
    let width = guests::GUESTS
        .iter()
        .map(|g| g.name.len())
        .max()
        .unwrap_or(0);
    let mut s = String::new();
    for g in guests::GUESTS {
        let default = if g.name == guests::DEFAULT_GUEST {
            " (default)"
        } else {
            ""
        };
        s.push_str(&format!("{:width$}  {}{default}\n", g.name, g.description));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(c: Command) -> Option<RunArgs> {
        match c {
            Command::Run(r) => Some(r),
            _ => None,
        }
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("faultline").chain(args.iter().copied()))
    }

    #[test]
    fn run_defaults_to_the_hello_guest() {
        let Some(r) = run_args(parse(&["run"]).unwrap().command) else {
            panic!()
        };
        let c = r.to_config().unwrap();
        assert_eq!(c.payload, Payload::Guest("hello".into()));
        assert_eq!(c.memory.size, 256 << 20);
        assert_eq!(c.vcpus, 1);
    }

    #[test]
    fn trailing_command_is_captured_for_the_kernel() {
        let Some(r) = run_args(
            parse(&["run", "--kernel", "/k", "--", "echo", "-n", "hi"])
                .unwrap()
                .command,
        ) else {
            panic!()
        };
        let Payload::Kernel(k) = r.to_config().unwrap().payload else {
            panic!()
        };
        assert_eq!(k.init_command, vec!["echo", "-n", "hi"]);
    }

    #[test]
    fn bad_sizes_and_backings_fail_to_parse_with_the_value() {
        let e = parse(&["run", "--memory", "lots"]).unwrap_err().to_string();
        assert!(e.contains("lots") && e.contains("256M"), "{e}");
        let e = parse(&["run", "--backing", "huge"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("anon, thp, shmem, hugetlb"), "{e}");
    }

    #[test]
    fn a_command_without_kernel_is_rejected() {
        let Some(r) = run_args(parse(&["run", "--", "ls"]).unwrap().command) else {
            panic!()
        };
        assert!(r
            .to_config()
            .unwrap_err()
            .to_string()
            .contains("needs --kernel"));
    }

    #[test]
    fn list_guests_names_every_guest() {
        let l = list_guests();
        for g in guests::GUESTS {
            assert!(l.contains(g.name));
        }
        assert!(l.contains("(default)"));
    }
}

/// `faultline run --live ...`: builds the VM, runs it live, prints the summary; returns the
/// exit status (the guest's, or 1 when live mode cannot run).
pub fn run_live(args: &RunArgs) -> i32 {
    match run_live_inner(args) {
        Ok(o) => {
            eprint!("{}", o.summary.render());
            let status = o.outcome.exit.status();
            eprintln!("faultline: {} (exit status {status})", o.outcome.exit);
            status
        }
        Err(e) => {
            eprintln!("faultline: error: {e}");
            1
        }
    }
}

fn run_live_inner(args: &RunArgs) -> Result<live::LiveOutcome, String> {
    if let Some(why) = live::unsupported_backing(args.backing) {
        return Err(live::LiveError::Backing {
            backing: args.backing,
            why,
        }
        .to_string());
    }
    let inject = live::injections(&args.inject, args.schedule.as_deref())?;
    let config = args.to_config().map_err(|e| e.to_string())?;
    let watchdog = watchdog_of(args)?;
    let guest = match &config.payload {
        crate::config::Payload::Guest(g) => g.clone(),
        crate::config::Payload::Kernel(k) => {
            format!("{} -- {}", k.kernel.display(), k.init_command.join(" "))
        }
    };
    let (ram, vcpus, backing) = (config.memory.size, config.vcpus, config.memory.backing);
    let b = crate::launch::VmBuilder::new(config, crate::launch::VmIo::stdio());
    let b = match watchdog {
        Some((limit, syms)) => b.watchdog(limit, syms),
        None => b,
    };
    let vmm = b.build().map_err(|e| e.to_string())?;
    if guest == "touch" {
        crate::measure::workload::live_touch_params(ram, vcpus)
            .write(vmm.guest_memory())
            .map_err(|e| format!("writing the touch guest's parameters: {e}"))?;
    }
    let opts = live::LiveOptions {
        kernel_rules: args.kernel_rules,
        inject,
        record: args.record.clone(),
        guest,
        no_verify: false,
        busy_poll: false,
        profile: std::env::var_os(live::profile::PROFILE_ENV).is_some_and(|v| v != "0"),
        resolvers: 0,
        split: Vec::new(),
    };
    live::run(vmm, backing, &opts).map_err(|e| e.to_string())
}
