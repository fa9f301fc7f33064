//! `bench boot --initcalls N`: where a boot's initcall time goes, per VMM.
//!
//! One more boot per VMM, untimed, with `initcall_debug` (each initcall's duration, printed
//! by `do_one_initcall()` in init/main.c as `initcall NAME+0x../0x.. returned R after U
//! usecs`) and `initramfs_async=0` (the initramfs is unpacked inside `populate_rootfs()`
//! rather than by a worker whose time lands in whichever initcall happens to sleep), and an
//! initramfs that runs `dmesg`: the lines are read back from the kernel's log after the boot,
//! so printing them on the console does not slow the initcalls they time.
//!
//! The lines come from the guest and are untrusted: what does not parse is skipped, and at
//! most [`MAX_INITCALLS`] are kept.

use serde::Serialize;

/// Most initcalls kept from one boot (a 6.12 guest kernel has about 1000).
pub const MAX_INITCALLS: usize = 20_000;

/// What the diagnostic boots add to the command line.
pub const CMDLINE_EXTRA: &str = "initcall_debug initramfs_async=0 log_buf_len=4M";

/// One initcall's duration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Initcall {
    /// The function, without its `+offset/size`.
    pub name: String,
    /// `after U usecs`.
    pub usecs: u64,
}

/// The `initcall ... returned ... after U usecs` lines of a console, in order.
pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<Initcall> {
    lines
        .into_iter()
        .filter_map(parse_line)
        .take(MAX_INITCALLS)
        .collect()
}

/// One line, as `do_one_initcall()` prints it under `initcall_debug`
/// (`[ t] initcall foo+0x0/0x40 returned 0 after 1234 usecs`).
fn parse_line(line: &str) -> Option<Initcall> {
    let rest = &line[line.find("initcall ")? + "initcall ".len()..];
    let (func, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("returned ")?;
    let (_ret, rest) = rest.split_once(" after ")?;
    let usecs = rest.strip_suffix(" usecs")?.trim().parse().ok()?;
    let name = func.split('+').next().filter(|n| !n.is_empty())?;
    Some(Initcall {
        name: name.to_string(),
        usecs,
    })
}

/// Both VMMs' initcalls, joined by name.
#[derive(Debug, Clone, Serialize)]
pub struct InitcallReport {
    /// What the diagnostic boots added to the command line.
    pub cmdline_extra: String,
    /// faultline's initcalls (empty: the boot printed none, see `faultline_error`).
    pub faultline: Vec<Initcall>,
    /// QEMU's, if it ran.
    pub qemu: Option<Vec<Initcall>>,
    /// Why faultline's diagnostic boot gave nothing, if it did not.
    pub faultline_error: Option<String>,
    /// Why QEMU's diagnostic boot gave nothing, if it did not.
    pub qemu_error: Option<String>,
}

impl InitcallReport {
    /// The `top` slowest initcalls (by the larger of the two VMMs' times), with both times,
    /// then the totals.
    pub fn table(&self, top: usize) -> String {
        let qemu = self.qemu.as_deref();
        let total = |v: &[Initcall]| v.iter().map(|c| c.usecs).sum::<u64>();
        let time_of = |v: &[Initcall], name: &str| {
            v.iter()
                .filter(|c| c.name == name)
                .map(|c| c.usecs)
                .sum::<u64>()
        };
        let mut names: Vec<&str> = self.faultline.iter().map(|c| c.name.as_str()).collect();
        if let Some(q) = qemu {
            names.extend(q.iter().map(|c| c.name.as_str()));
        }
        names.sort_unstable();
        names.dedup();
        let mut rows: Vec<(&str, u64, Option<u64>)> = names
            .into_iter()
            .map(|n| (n, time_of(&self.faultline, n), qemu.map(|q| time_of(q, n))))
            .collect();
        rows.sort_by_key(|&(n, f, q)| (std::cmp::Reverse(f.max(q.unwrap_or(0))), n));
        let ms = |us: u64| format!("{:.1}", us as f64 / 1000.0);
        let mut s = format!(
            "initcalls ({CMDLINE_EXTRA}; one boot per VMM, untimed), ms, slowest {top}:\n{:<40} {:>10} {:>13}\n",
            "initcall", "faultline", "QEMU microvm"
        );
        for (name, f, q) in rows.iter().take(top) {
            s += &format!(
                "{name:<40} {:>10} {:>13}\n",
                ms(*f),
                q.map_or("-".to_string(), ms)
            );
        }
        s += &format!(
            "{:<40} {:>10} {:>13}\n",
            format!("all {} initcalls", rows.len()),
            ms(total(&self.faultline)),
            qemu.map_or("-".to_string(), |q| ms(total(q)))
        );
        for (vmm, e) in [
            ("faultline", &self.faultline_error),
            ("QEMU microvm", &self.qemu_error),
        ] {
            if let Some(e) = e {
                s += &format!("initcalls: {vmm}'s diagnostic boot gave none: {e}\n");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_do_one_initcalls_lines_and_skips_the_rest() {
        let console = [
            "[    0.123456] calling  populate_rootfs+0x0/0x40 @ 1",
            "[    5.123456] initcall populate_rootfs+0x0/0x40 returned 0 after 5000000 usecs",
            "[    5.2] initcall slab_late_init+0x0/0x110 returned -19 after 2047374 usecs",
            "initcall bogus returned 0 after many usecs",
            "initcall +0x0/0x1 returned 0 after 5 usecs",
            "faultline-init: running 'dmesg'",
        ];
        assert_eq!(
            parse(console),
            vec![
                Initcall {
                    name: "populate_rootfs".into(),
                    usecs: 5_000_000
                },
                Initcall {
                    name: "slab_late_init".into(),
                    usecs: 2_047_374
                },
            ]
        );
    }

    #[test]
    fn table_joins_the_vmms_by_name_slowest_first_with_totals() {
        let ic = |name: &str, usecs| Initcall {
            name: name.into(),
            usecs,
        };
        let r = InitcallReport {
            cmdline_extra: CMDLINE_EXTRA.into(),
            faultline: vec![ic("a", 1000), ic("b", 3000), ic("c", 500)],
            qemu: Some(vec![ic("a", 4000), ic("b", 2000)]),
            faultline_error: None,
            qemu_error: Some("it timed out".into()),
        };
        let t = r.table(2);
        let rows: Vec<&str> = t.lines().collect();
        assert!(
            rows[2].starts_with('a') && rows[2].contains("1.0") && rows[2].contains("4.0"),
            "{t}"
        );
        assert!(rows[3].starts_with('b'), "{t}");
        assert!(!t.lines().any(|l| l.starts_with("c ")), "top 2 only: {t}");
        assert!(
            t.contains("all 3 initcalls") && t.contains("4.5") && t.contains("6.0"),
            "{t}"
        );
        assert!(
            t.contains("QEMU microvm's diagnostic boot gave none: it timed out"),
            "{t}"
        );
    }

    proptest! {
        /// Guest console bytes never panic the parser, and what it keeps is well-formed.
        #[test]
        fn fuzz_initcall_lines(lines in proptest::collection::vec(".{0,120}", 0..50)) {
            let got = parse(lines.iter().map(String::as_str));
            prop_assert!(got.len() <= lines.len());
            for c in got {
                prop_assert!(!c.name.is_empty() && !c.name.contains('+') && !c.name.contains(' '));
            }
        }
    }
}
