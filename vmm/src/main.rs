//! `faultline`: parse arguments, build a config, run it, exit with the guest's status.

use clap::Parser;
use vmm::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let no_seccomp = match &cli.command {
        Command::Run(a) => a.no_seccomp,
        // No VM: nothing to filter.
        Command::Sim(_) | Command::Bench(vmm::cli::BenchCommand::Replay(_)) => false,
        Command::Check(a) => a.no_seccomp,
        Command::Bench(vmm::cli::BenchCommand::Faults(a)) => a.no_seccomp,
        Command::Bench(vmm::cli::BenchCommand::Boot(a)) => a.no_seccomp,
        Command::Bench(vmm::cli::BenchCommand::Check(a)) => a.no_seccomp,
        Command::Test(vmm::cli::TestCommand::Mm(a)) => a.no_seccomp,
    };
    vmm::seccomp::set_default_enabled(!no_seccomp);
    let status = match cli.command {
        Command::Run(args) => run(args),
        Command::Sim(args) => sim(&args),
        Command::Check(args) => vmm::check::cli::run(&args),
        Command::Bench(vmm::cli::BenchCommand::Faults(args)) => {
            vmm::measure::cli::run_faults(&args)
        }
        Command::Bench(vmm::cli::BenchCommand::Boot(args)) => vmm::measure::boot::main(&args),
        Command::Bench(vmm::cli::BenchCommand::Check(args)) => vmm::check::bench::run(&args),
        Command::Bench(vmm::cli::BenchCommand::Replay(args)) => vmm::replay::bench_main(&args),
        Command::Test(vmm::cli::TestCommand::Mm(args)) => vmm::selftests::main(&args),
    };
    std::process::exit(status);
}

fn run(args: vmm::cli::RunArgs) -> i32 {
    if args.list_guests {
        print!("{}", vmm::cli::list_guests());
        return 0;
    }
    if args.live {
        return vmm::cli::run_live(&args);
    }
    let watchdog = match vmm::cli::watchdog_of(&args) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("faultline: error: {e}");
            return 1;
        }
    };
    // Under gdb a stopped guest makes no exits: no watchdog.
    if args.gdb.is_some() && args.watchdog.is_some_and(|s| s > 0) {
        eprintln!(
            "faultline: note: --watchdog is off under --gdb (a stopped guest makes no exits)"
        );
    }
    let watchdog = watchdog.filter(|_| args.gdb.is_none());
    let gdb = match args
        .gdb
        .as_ref()
        .map(vmm::gdb::connection::GdbListener::bind)
    {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => {
            eprintln!("faultline: error: {e}");
            return 1;
        }
    };
    let outcome = args
        .to_config()
        .map_err(vmm::VmmError::from)
        .and_then(|config| {
            let vcpus = config.vcpus as usize;
            let b = vmm::VmBuilder::new(config, vmm::VmIo::stdio());
            let b = match watchdog {
                Some((limit, syms)) => b.watchdog(limit, syms),
                None => b,
            };
            match gdb {
                Some(listener) => vmm::gdb::run(b, vcpus, listener),
                None => b.build().and_then(|vmm| {
                    // One VM for the whole process: this thread is filtered too, once the VM
                    // is built (its list covers the vCPU and event-loop threads it spawns).
                    // Under gdb this thread serves the debugger and stays unfiltered.
                    vmm.seccomp().apply(vmm::seccomp::ThreadKind::Main)?;
                    vmm.run()
                }),
            }
        });
    match outcome {
        Ok(o) => {
            let status = o.exit.status();
            if std::env::var_os(vmm::measure::boot::TIMELINE_ENV).is_some() {
                eprintln!("{}", vmm::measure::boot::timeline_line(&o));
            }
            eprintln!("faultline: {} (exit status {status})", o.exit);
            status
        }
        Err(e) => {
            eprintln!("faultline: error: {e}");
            1
        }
    }
}

fn sim(args: &vmm::sim::SimArgs) -> i32 {
    match vmm::sim::run(args) {
        Ok((out, clean)) => {
            print!("{out}");
            if clean {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("faultline: error: {e}");
            e.exit_status()
        }
    }
}
