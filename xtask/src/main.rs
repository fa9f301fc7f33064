//! faultline's development tasks.
//!
//! `cargo run -p xtask -- house [--json [FILE]] [--root DIR]`: the layout measurements of
//! [`house`] (largest files, import cycles, files one new concept touches) as a text table;
//! `--json` prints JSON instead, `--json FILE` writes it to FILE beside the table.
#![deny(missing_docs)]

mod house;
mod lex;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: cargo run -p xtask -- house [--json [FILE]] [--root DIR]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("house") {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let (mut json, mut json_file, mut root) = (false, None, None);
    let mut it = args[1..].iter().peekable();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => {
                json = true;
                if it.peek().is_some_and(|n| !n.starts_with("--")) {
                    json_file = it.next().cloned();
                }
            }
            "--root" => match it.next() {
                Some(d) => root = Some(PathBuf::from(d)),
                None => {
                    eprintln!("--root needs a directory\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!("unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    // The workspace: --root, or the parent of this crate's directory.
    let root = root.unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default()
    });
    let rep = match house::measure(&root) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("house: {e}");
            return ExitCode::from(2);
        }
    };
    match (json, json_file) {
        (true, None) => println!("{}", rep.to_json()),
        (true, Some(f)) => {
            if let Err(e) = std::fs::write(&f, rep.to_json() + "\n") {
                eprintln!("house: cannot write {f}: {e}");
                return ExitCode::from(2);
            }
            print!("{}", rep.to_text());
        }
        (false, _) => print!("{}", rep.to_text()),
    }
    eprintln!("{}", rep.headline());
    ExitCode::SUCCESS
}
