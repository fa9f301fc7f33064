//! Output of `faultline test mm`: the table, `--list`, tuxrun-shaped JSON, JUnit XML and
//! the per-test logs.

use super::{CaseReport, MmTestError, Planned, Verdict};
use std::path::Path;
use std::time::Duration;

/// Width of the first column: the longest test name, at least as wide as its "test" header.
fn name_width<'a>(names: impl Iterator<Item = &'a str>) -> usize {
    names.map(str::len).max().unwrap_or(0).max(4)
}

/// The results table (test, result, seconds, reason), a summary line and, on a kernel
/// failure, the running test and the console tail.
pub fn table(v: &Verdict, wall: Duration) -> String {
    let w = name_width(v.cases.iter().map(|c| c.name.as_str()));
    let mut s = format!("{:w$}  {:7}  {:>7}  reason\n", "test", "result", "seconds");
    for c in &v.cases {
        s.push_str(&format!(
            "{:w$}  {:7}  {:>7.2}  {}\n",
            c.name,
            c.result,
            c.seconds,
            c.reason.as_deref().unwrap_or("")
        ));
    }
    let count = |r: &str| v.cases.iter().filter(|c| c.result == r).count();
    s.push_str(&format!(
        "{} tests: {} passed, {} failed, {} timed out, {} skipped, {} missing; wall time {:.0} s; exit {}\n",
        v.cases.len(),
        count("PASS") + count("XFAIL"),
        count("FAIL") + count("ERROR"),
        count("TIMEOUT"),
        count("SKIP"),
        count("MISSING"),
        wall.as_secs_f64(),
        v.exit_code
    ));
    if let Some(k) = &v.kernel_failure {
        s.push_str(&format!(
            "guest kernel failure while running {}: {}\n--- console tail ---\n{}\n",
            k.running.as_deref().unwrap_or("no test"),
            k.line,
            k.tail
        ));
    }
    if let Some(end) = &v.vm_end {
        s.push_str(&format!(
            "the VM did not end through the test init: {end}\n"
        ));
    }
    s
}

/// Where `--compare-qemu` writes QEMU's JSON next to `--json FILE`: `mm.json` -> `mm.qemu.json`.
pub fn qemu_path(json: &Path) -> std::path::PathBuf {
    let stem = json
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match json.extension() {
        Some(ext) => format!("{stem}.qemu.{}", ext.to_string_lossy()),
        None => format!("{stem}.qemu"),
    };
    json.with_file_name(name)
}

/// `--compare-qemu`: both runs of the same plan side by side, the tests whose results differ
/// marked, and the wall times with their ratio.
pub fn compare_table(fl: &Verdict, fl_wall: Duration, q: &Verdict, q_wall: Duration) -> String {
    let w = name_width(fl.cases.iter().map(|c| c.name.as_str()));
    let mut s = format!(
        "\n{:w$}  {:9} {:>8}  {:9} {:>8}\n",
        "test", "faultline", "seconds", "QEMU", "seconds"
    );
    let mut differ = 0;
    for c in &fl.cases {
        let other = q.cases.iter().find(|o| o.name == c.name);
        let (qr, qs) = other.map_or(("-", 0.0), |o| (o.result.as_str(), o.seconds));
        let mark = if qr != c.result {
            differ += 1;
            "  <- differs"
        } else {
            ""
        };
        s.push_str(&format!(
            "{:w$}  {:9} {:>8.2}  {:9} {:>8.2}{mark}\n",
            c.name, c.result, c.seconds, qr, qs
        ));
    }
    let guest_total = |v: &Verdict| v.cases.iter().map(|c| c.seconds).sum::<f64>();
    s.push_str(&format!(
        "wall time: faultline {:.0} s, QEMU microvm {:.0} s (faultline/QEMU {:.2}); time in tests: {:.0} s vs {:.0} s; {differ} of {} results differ\n",
        fl_wall.as_secs_f64(),
        q_wall.as_secs_f64(),
        fl_wall.as_secs_f64() / q_wall.as_secs_f64().max(1e-9),
        guest_total(fl),
        guest_total(q),
        fl.cases.len()
    ));
    if let Some(end) = &q.vm_end {
        s.push_str(&format!("QEMU did not end through the test init: {end}\n"));
    }
    s
}

/// `--list`: every test with its category and, if it is skipped, why.
pub fn list(plan: &[Planned]) -> String {
    let w = name_width(plan.iter().map(|p| p.test.name.as_str()));
    let mut s = format!(
        "{:w$}  {:16}  {:5}  skip reason\n",
        "test", "category", "smoke"
    );
    for p in plan {
        let smoke = if super::catalogue::SMOKE.contains(&p.test.name.as_str()) {
            "yes"
        } else {
            ""
        };
        s.push_str(&format!(
            "{:w$}  {:16}  {:5}  {}\n",
            p.test.name,
            p.test.category,
            smoke,
            p.skip.as_deref().unwrap_or("")
        ));
    }
    s.push_str(&format!(
        "categories (-t): {}\n",
        super::catalogue::categories().join(" ")
    ));
    s
}

/// tuxrun's result word: pass, fail, skip or unknown (never reported).
fn tux_result(c: &str) -> &'static str {
    match c {
        "PASS" | "XFAIL" => "pass",
        "SKIP" => "skip",
        "MISSING" => "unknown",
        _ => "fail",
    }
}

/// JSON in tuxrun's shape: `{"mm": {CASE: {"result", "duration"}}, "mm.CASE": {SUBTEST:
/// {"result"}}}`, plus `detail` (our result word) and `reason` where there is one.
pub fn json(v: &Verdict) -> String {
    use serde_json::{json, Map, Value};
    let mut top = Map::new();
    let mut suite = Map::new();
    for c in &v.cases {
        let mut case = Map::new();
        case.insert("result".into(), json!(tux_result(&c.result)));
        case.insert(
            "duration".into(),
            json!((c.seconds * 100.0).round() / 100.0),
        );
        case.insert("detail".into(), json!(c.result.to_ascii_lowercase()));
        if let Some(r) = &c.reason {
            case.insert("reason".into(), json!(r));
        }
        suite.insert(c.name.clone(), Value::Object(case));
        if !c.subtests.is_empty() {
            let mut sub = Map::new();
            for (i, t) in c.subtests.iter().enumerate() {
                let key = if t.name.is_empty() {
                    format!(
                        "{}",
                        if t.number == 0 {
                            u32::try_from(i + 1).unwrap_or(u32::MAX)
                        } else {
                            t.number
                        }
                    )
                } else {
                    t.name.clone()
                };
                sub.insert(
                    key,
                    json!({"result": tux_result(t.outcome.label()), "detail": t.outcome.label().to_ascii_lowercase()}),
                );
            }
            top.insert(format!("mm.{}", c.name), Value::Object(sub));
        }
    }
    top.insert("mm".into(), Value::Object(suite));
    if let Some(k) = &v.kernel_failure {
        top.insert(
            "kernel".into(),
            json!({"failure": {"result": "fail", "line": k.line, "running": k.running}}),
        );
    }
    serde_json::to_string_pretty(&Value::Object(top)).unwrap_or_default() + "\n"
}

/// Escapes text for XML, dropping characters XML 1.0 forbids (console control bytes).
fn xml(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            '\t' | '\n' | '\r' => o.push(ch),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => o.push(c),
        }
    }
    o
}

/// JUnit XML: one `<testcase>` per test (classname `mm.CATEGORY`), `<failure>` for FAIL,
/// ERROR, TIMEOUT and MISSING, `<skipped>` with the reason, the test's log as system-out.
pub fn junit(v: &Verdict) -> String {
    let failed = |c: &CaseReport| !matches!(c.result.as_str(), "PASS" | "XFAIL" | "SKIP");
    let failures = v.cases.iter().filter(|c| failed(c)).count();
    let skipped = v.cases.iter().filter(|c| c.result == "SKIP").count();
    let time: f64 = v.cases.iter().map(|c| c.seconds).sum();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    s.push_str(&format!(
        "  <testsuite name=\"mm\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{time:.2}\">\n",
        v.cases.len()
    ));
    for c in &v.cases {
        s.push_str(&format!(
            "    <testcase name=\"{}\" classname=\"mm.{}\" time=\"{:.2}\">\n",
            xml(&c.name),
            xml(&c.category),
            c.seconds
        ));
        let reason = xml(c.reason.as_deref().unwrap_or(""));
        if c.result == "SKIP" {
            s.push_str(&format!("      <skipped message=\"{reason}\"/>\n"));
        } else if failed(c) {
            s.push_str(&format!(
                "      <failure type=\"{}\" message=\"{reason}\"/>\n",
                c.result
            ));
        }
        if !c.log.is_empty() {
            s.push_str(&format!("      <system-out>{}</system-out>\n", xml(&c.log)));
        }
        s.push_str("    </testcase>\n");
    }
    if let Some(k) = &v.kernel_failure {
        s.push_str(&format!(
            "    <testcase name=\"guest-kernel\" classname=\"mm.kernel\" time=\"0\">\n      <failure type=\"KERNEL\" message=\"{}\"/>\n      <system-out>{}</system-out>\n    </testcase>\n",
            xml(&k.line),
            xml(&k.tail)
        ));
    }
    s.push_str("  </testsuite>\n</testsuites>\n");
    s
}

/// A test name as a file name.
pub fn log_file_name(name: &str) -> String {
    let base: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{base}.log")
}

/// Writes `text` to `path`.
pub fn write_file(path: &Path, text: &str) -> Result<(), MmTestError> {
    std::fs::write(path, text).map_err(|source| MmTestError::Io {
        what: "cannot write",
        path: path.to_path_buf(),
        source,
    })
}

/// `--output DIR`: DIR/console.log and one DIR/NAME.log per test that printed anything.
pub fn write_logs(dir: &Path, v: &Verdict, console: &str) -> Result<(), MmTestError> {
    std::fs::create_dir_all(dir).map_err(|source| MmTestError::Io {
        what: "cannot create the output directory",
        path: dir.to_path_buf(),
        source,
    })?;
    write_file(&dir.join("console.log"), console)?;
    for c in &v.cases {
        let text = if c.log.is_empty() {
            format!("{} {}\n", c.result, c.reason.as_deref().unwrap_or(""))
        } else {
            c.log.clone()
        };
        write_file(&dir.join(log_file_name(&c.name)), &text)?;
    }
    Ok(())
}
