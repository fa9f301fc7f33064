//! `faultline`: parse arguments, build a config, run it, exit with the guest's status.

use clap::Parser;
use vmm::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let status = match cli.command {
        Command::Run(args) => run(args),
        Command::Sim(args) => sim(&args),
        Command::Check(args) => vmm::check::cli::run(&args),
        Command::Bench(vmm::cli::BenchCommand::Faults(args)) => {
            vmm::measure::cli::run_faults(&args)
        }
        Command::Bench(vmm::cli::BenchCommand::Boot(args)) => vmm::measure::boot::main(&args),
        Command::Bench(vmm::cli::BenchCommand::Check(args)) => vmm::check::bench::run(&args),
        Command::Test(vmm::cli::TestCommand::Mm(args)) => vmm::selftests::main(&args),
    };
    std::process::exit(status);
}

fn run(args: vmm::cli::RunArgs) -> i32 {
    if args.list_guests {
        print!("{}", vmm::cli::list_guests());
        return 0;
    }
    let watchdog = match vmm::cli::watchdog_of(&args) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("faultline: error: {e}");
            return 1;
        }
    };
    let outcome = args
        .to_config()
        .map_err(vmm::VmmError::from)
        .and_then(|config| {
            let b = vmm::VmBuilder::new(config, vmm::VmIo::stdio());
            match watchdog {
                Some((limit, syms)) => b.watchdog(limit, syms),
                None => b,
            }
            .build()
        })
        .and_then(vmm::Vmm::run);
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
            1
        }
    }
}
