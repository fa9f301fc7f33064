//! A KTAP/TAP parser for serial console text.
//!
//! Reads what kselftest programs print (TAP version 13 from `kselftest.h`, KTAP version 1
//! from the kernel's Documentation/dev-tools/ktap.rst): a version line, a plan `1..N`,
//! result lines `ok N name` / `not ok N name` with an optional `# SKIP reason`,
//! `# TIMEOUT`, `# TODO`, `# XFAIL` or `# ERROR` directive, and nested subtests indented by
//! two spaces per level, which come before the parent's own result line. Any other line
//! (printk noise on a shared console, a test's free-form output, stack traces) is ignored,
//! as KTAP allows, even when it lands between the lines of one test.
//!
//! The parser never fails and never panics: text that is not KTAP is simply not a result.

/// What one result line says about its test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// `ok`.
    Pass,
    /// `not ok`.
    Fail,
    /// `# SKIP` (on `ok` or `not ok`).
    Skip,
    /// `# TIMEOUT`.
    Timeout,
    /// `not ok ... # TODO` or `# XFAIL`: an expected failure.
    Xfail,
    /// `# ERROR`: the test could not run properly.
    Error,
}

impl Outcome {
    /// True for outcomes a CI counts as "not a failure": pass, skip, expected failure.
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Pass | Outcome::Skip | Outcome::Xfail)
    }

    /// The upper-case word tables and JUnit use (`PASS`, `FAIL`, `SKIP`, `TIMEOUT`, ...).
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "SKIP",
            Outcome::Timeout => "TIMEOUT",
            Outcome::Xfail => "XFAIL",
            Outcome::Error => "ERROR",
        }
    }
}

/// One parsed result line, with the subtests reported above it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    /// The test number (`ok 3 ...` is 3); 0 when the line had none.
    pub number: u32,
    /// The description after the number (without a leading `- `), trimmed.
    pub name: String,
    /// What the line says.
    pub outcome: Outcome,
    /// The text after the directive word (`# SKIP no hugetlb` gives `no hugetlb`).
    pub reason: Option<String>,
    /// The nested subtests printed before this line, in order.
    pub subtests: Vec<TestResult>,
}

/// A parsed console: the top-level results and what was left open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The top-level version line seen first (`KTAP version 1` gives `("KTAP", 1)`).
    pub version: Option<(String, u32)>,
    /// The top-level plan `1..N` seen last.
    pub plan: Option<u32>,
    /// Top-level results, in console order.
    pub results: Vec<TestResult>,
    /// Subtests that were never followed by their parent's result line (the parent test
    /// crashed, hung or the console ended): the last test's partial progress.
    pub unfinished: Vec<TestResult>,
    /// The reason of a `Bail out!` line, if any.
    pub bail_out: Option<String>,
}

/// One KTAP line, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    Version(String, u32),
    Plan(u32),
    Result {
        number: u32,
        name: String,
        outcome: Outcome,
        reason: Option<String>,
    },
    BailOut(String),
    Diagnostic,
}

/// Parses `version` lines: `KTAP version 1`, `TAP version 13`.
fn parse_version(s: &str) -> Option<Line> {
    let (kind, rest) = s
        .strip_prefix("KTAP version ")
        .map(|r| ("KTAP", r))
        .or_else(|| s.strip_prefix("TAP version ").map(|r| ("TAP", r)))?;
    let v = rest.trim().parse::<u32>().ok()?;
    Some(Line::Version(kind.to_string(), v))
}

/// Parses a plan `1..N` (optionally followed by `# comment`).
fn parse_plan(s: &str) -> Option<u32> {
    let rest = s.strip_prefix("1..")?;
    let digits: &str = rest.split(|c: char| c.is_whitespace() || c == '#').next()?;
    let after = &rest[digits.len()..];
    if !after.trim().is_empty() && !after.trim_start().starts_with('#') {
        return None;
    }
    digits.parse().ok()
}

/// Splits `description # DIRECTIVE reason` at the first unescaped ` #` / `#`.
fn split_directive(s: &str) -> (&str, Option<&str>) {
    let bytes = s.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1] != b'\\') {
            return (&s[..i], Some(&s[i + 1..]));
        }
    }
    (s, None)
}

/// Parses `ok N - name # DIRECTIVE reason` / `not ok ...`.
fn parse_result(s: &str) -> Option<Line> {
    let (ok, rest) = if let Some(r) = s.strip_prefix("not ok") {
        (false, r)
    } else if let Some(r) = s.strip_prefix("ok") {
        (true, r)
    } else {
        return None;
    };
    if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t')) {
        return None;
    }
    let rest = rest.trim_start();
    let digits_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    let number = rest[..digits_len].parse::<u32>().unwrap_or(0);
    let rest = &rest[digits_len..];
    let (desc, directive) = split_directive(rest);
    let desc = desc.trim();
    let name = desc.strip_prefix("- ").unwrap_or(desc).trim().to_string();
    let mut outcome = if ok { Outcome::Pass } else { Outcome::Fail };
    let mut reason = None;
    if let Some(d) = directive {
        let d = d.trim();
        let word_len = d.find(char::is_whitespace).unwrap_or(d.len());
        let word = d[..word_len].to_ascii_uppercase();
        let text = d[word_len..].trim();
        let directive_outcome = match word.as_str() {
            "SKIP" => Some(Outcome::Skip),
            "TIMEOUT" => Some(Outcome::Timeout),
            "ERROR" => Some(Outcome::Error),
            "XFAIL" if !ok => Some(Outcome::Xfail),
            "TODO" if !ok => Some(Outcome::Xfail),
            "TODO" | "XFAIL" => Some(Outcome::Pass),
            _ => None,
        };
        if let Some(o) = directive_outcome {
            outcome = o;
            if !text.is_empty() {
                reason = Some(text.to_string());
            }
        }
    }
    Some(Line::Result {
        number,
        name,
        outcome,
        reason,
    })
}

/// Classifies one line with its indentation removed; `None` for non-KTAP text.
fn classify(s: &str) -> Option<Line> {
    if let Some(v) = parse_version(s) {
        return Some(v);
    }
    if let Some(n) = parse_plan(s) {
        return Some(Line::Plan(n));
    }
    if let Some(r) = parse_result(s) {
        return Some(r);
    }
    if let Some(r) = s.strip_prefix("Bail out!") {
        return Some(Line::BailOut(r.trim().to_string()));
    }
    if s == "#" || s.starts_with("# ") {
        return Some(Line::Diagnostic);
    }
    None
}

/// One nesting level being parsed.
#[derive(Debug, Default)]
struct Frame {
    indent: usize,
    version: Option<(String, u32)>,
    plan: Option<u32>,
    results: Vec<TestResult>,
    /// Results of a deeper level that closed, waiting for this level's next result line.
    pending: Vec<TestResult>,
}

/// Parses console text into its top-level results (see the module docs).
pub fn parse(text: &str) -> Report {
    let mut frames = vec![Frame::default()];
    let mut bail_out = None;
    for raw in text.lines() {
        let line = raw.trim_end_matches(['\r', '\n']);
        let body = line.trim_start_matches(' ');
        let indent = line.len() - body.len();
        let body = body.trim_end();
        let Some(kind) = classify(body) else {
            continue;
        };
        // A diagnostic line never opens or closes a level: `# ` text at any indent is
        // commentary, and tests print it freely.
        if kind == Line::Diagnostic {
            continue;
        }
        close_deeper(&mut frames, indent);
        if frames.last().is_some_and(|f| f.indent < indent) {
            frames.push(Frame {
                indent,
                ..Frame::default()
            });
        }
        let Some(top) = frames.last_mut() else {
            continue;
        };
        match kind {
            Line::Version(k, v) => {
                if top.version.is_none() {
                    top.version = Some((k, v));
                }
            }
            Line::Plan(n) => top.plan = Some(n),
            Line::Result {
                number,
                name,
                outcome,
                reason,
            } => {
                let subtests = std::mem::take(&mut top.pending);
                top.results.push(TestResult {
                    number,
                    name,
                    outcome,
                    reason,
                    subtests,
                });
            }
            Line::BailOut(r) => {
                if bail_out.is_none() {
                    bail_out = Some(r);
                }
            }
            Line::Diagnostic => {}
        }
    }
    close_deeper(&mut frames, 0);
    let root = frames.pop().unwrap_or_default();
    Report {
        version: root.version,
        plan: root.plan,
        results: root.results,
        unfinished: root.pending,
        bail_out,
    }
}

/// Pops every frame deeper than `indent`, handing its results to the frame above as that
/// frame's pending subtests.
fn close_deeper(frames: &mut Vec<Frame>, indent: usize) {
    while frames.len() > 1 && frames.last().is_some_and(|f| f.indent > indent) {
        let Some(mut done) = frames.pop() else {
            break;
        };
        // Subtests of a subtest that never got its line are still results of this level.
        let mut results = std::mem::take(&mut done.pending);
        results.append(&mut done.results);
        if let Some(parent) = frames.last_mut() {
            parent.pending.extend(results);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A console as `faultline test mm` sees it: kernel messages, the runner's KTAP, each
    /// test's own TAP indented by two spaces, printk lines in the middle of a test.
    const CONSOLE: &str = "\
[    0.000000] Linux version 6.12.43-gk (root@build) #1 SMP
[   98.123456] Run /init as init process
KTAP version 1
1..4
# faultline-mm: start cow
  TAP version 13
  1..3
  # [RUN] Basic COW after fork() ... with base page
  ok 1 Basic COW after fork() ... with base page
[  101.000001] cow (pid 77) used greatest stack depth: 13000 bytes left
  not ok 2 R/O-mapping a page registered as iouring fixed buffer # SKIP io_uring not supported
  ok 3 # SKIP MAP_HUGETLB not supported
  # Totals: pass:1 fail:0 xfail:0 xpass:0 skip:2 error:0
ok 1 cow
# faultline-mm: start gup_test
  TAP version 13
  1..1
  not ok 1 gup_test -u
# faultline-mm: end gup_test status 1
not ok 2 gup_test
not ok 3 hugetlb-madvise # TIMEOUT after 180 s
ok 4 ksm_tests # SKIP exit status 4 (kselftest skip)
";

    #[test]
    fn top_level_results_with_nested_subtests_and_interleaved_printk() {
        let r = parse(CONSOLE);
        assert_eq!(r.version, Some(("KTAP".into(), 1)));
        assert_eq!(r.plan, Some(4));
        let names: Vec<(&str, Outcome)> = r
            .results
            .iter()
            .map(|t| (t.name.as_str(), t.outcome))
            .collect();
        assert_eq!(
            names,
            vec![
                ("cow", Outcome::Pass),
                ("gup_test", Outcome::Fail),
                ("hugetlb-madvise", Outcome::Timeout),
                ("ksm_tests", Outcome::Skip),
            ]
        );
        let cow = &r.results[0];
        assert_eq!(cow.subtests.len(), 3);
        assert_eq!(cow.subtests[0].outcome, Outcome::Pass);
        assert_eq!(
            cow.subtests[0].name,
            "Basic COW after fork() ... with base page"
        );
        assert_eq!(cow.subtests[1].outcome, Outcome::Skip);
        assert_eq!(
            cow.subtests[1].reason.as_deref(),
            Some("io_uring not supported")
        );
        assert_eq!(
            (cow.subtests[2].number, cow.subtests[2].name.as_str()),
            (3, "")
        );
        assert_eq!(r.results[1].subtests[0].outcome, Outcome::Fail);
        assert_eq!(r.results[2].reason.as_deref(), Some("after 180 s"));
        assert!(r.unfinished.is_empty());
    }

    #[test]
    fn subtests_without_their_parent_line_are_unfinished() {
        let text = "KTAP version 1\n1..2\nok 1 a\n  TAP version 13\n  1..5\n  ok 1 first\n\
                    [  12.5] BUG: kernel NULL pointer dereference, address: 0000000000000008\n  \
                    ok 2 second\n";
        let r = parse(text);
        assert_eq!(r.results.len(), 1);
        assert_eq!(r.unfinished.len(), 2);
        assert_eq!(r.unfinished[1].name, "second");
    }

    #[test]
    fn three_levels_nest_and_tap13_without_header_is_accepted() {
        let text = "\
TAP version 13
1..1
  KTAP version 1
  1..1
    KTAP version 1
    1..2
    ok 1 leaf a
    not ok 2 leaf b # TODO known bug
  ok 1 - middle
ok 1 - outer # some comment that is no directive
";
        let r = parse(text);
        assert_eq!(r.version, Some(("TAP".into(), 13)));
        let outer = &r.results[0];
        assert_eq!(
            (outer.name.as_str(), outer.outcome),
            ("outer", Outcome::Pass)
        );
        let middle = &outer.subtests[0];
        assert_eq!(middle.name, "middle");
        assert_eq!(middle.subtests.len(), 2);
        assert_eq!(middle.subtests[1].outcome, Outcome::Xfail);
    }

    #[test]
    fn line_forms() {
        let one = |s: &str| parse(s).results.into_iter().next();
        assert_eq!(one("okay 1 x"), None);
        assert_eq!(one("[ 1.0] ok 1 x"), None);
        assert_eq!(one("ok").map(|t| t.outcome), Some(Outcome::Pass));
        assert_eq!(
            one("not ok 7 a \\# b").map(|t| (t.number, t.outcome)),
            Some((7, Outcome::Fail))
        );
        assert_eq!(
            one("not ok 1 x # skip lowercase").map(|t| t.outcome),
            Some(Outcome::Skip)
        );
        assert_eq!(
            one("not ok 1 x # ERROR setup").map(|t| t.outcome),
            Some(Outcome::Error)
        );
        assert_eq!(one("ok 1 x\r").map(|t| t.name), Some("x".to_string()));
        assert_eq!(parse("1..0 # SKIP all").plan, Some(0));
        assert_eq!(parse("1..3x").plan, None);
        assert_eq!(
            parse("Bail out! no memory").bail_out.as_deref(),
            Some("no memory")
        );
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC*") {
            let _ = parse(&s);
        }

        #[test]
        fn arbitrary_ktap_like_lines_never_panic(lines in proptest::collection::vec(
            (0usize..8, prop_oneof![
                Just("ok 1 a".to_string()), Just("not ok 2 b # SKIP".to_string()),
                Just("1..3".to_string()), Just("KTAP version 1".to_string()),
                Just("# diag".to_string()), Just("Bail out!".to_string()),
                "[ -~]{0,20}".prop_map(|s| s),
                "(not )?ok [0-9]{0,12} [ -~#]{0,12}",
            ]), 0..40)) {
            let text: String = lines.iter().map(|(i, l)| format!("{}{l}\n", " ".repeat(*i))).collect();
            let r = parse(&text);
            // Every result line ends up somewhere: counting is a sanity bound, not an exact one.
            prop_assert!(r.results.len() + r.unfinished.len() <= lines.len());
        }
    }
}
