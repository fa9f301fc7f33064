//! Fuzz target for scenario files, run as a property test: the shipped scenarios mutated
//! line by line (values replaced by edge values, ops swapped, lines dropped, duplicated or
//! added), plus raw text, through [`Scenario::from_toml`] and, when that accepts the file,
//! the runner. Run many with
//! `PROPTEST_CASES=100000 cargo test --profile fuzz -p mmu --lib fuzz_`.

// Test code: sizes here are small constants.
#![allow(clippy::cast_possible_truncation)]

use super::step::KNOWN_OPS;
use super::*;
use proptest::prelude::*;

/// The shipped scenarios (the valid starting points).
fn seeds() -> &'static [String] {
    static SEEDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/scenarios");
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        v.sort();
        assert!(v.len() > 10, "shipped scenarios missing from {dir:?}");
        v
    })
}

/// Edge values for any key.
const VALUES: &[&str] = &[
    "\"0x0\"",
    "\"0\"",
    "\"0x1000\"",
    "\"0x1fff\"",
    "\"0x200000\"",
    "\"4K\"",
    "\"2M\"",
    "\"1G\"",
    "\"4G\"",
    "\"0xfffffffffffff000\"",
    "\"0xffffffffffffffff\"",
    "\"18446744073709551615\"",
    "\"99999999999999999999999\"",
    "\"1T\"",
    "\"-1\"",
    "\"\"",
    "\"x\"",
    "0",
    "-1",
    "1",
    "4096",
    "9223372036854775807",
    "true",
    "false",
    "[]",
    "[\"missing\", \"wp\", \"minor\"]",
    "\"rwx\"",
    "\"none\"",
    "\"r\"",
    "\"thp\"",
    "\"hugetlb\"",
    "\"shmem\"",
    "\"dontneed\"",
    "\"6.18\"",
    "\"6.13\"",
    "\"9.99\"",
];

/// Keys the schema uses (for added lines).
const KEYS: &[&str] = &[
    "gpa",
    "op",
    "size",
    "start",
    "id",
    "hva",
    "prot",
    "kind",
    "kernel",
    "shared",
    "thp",
    "pfn",
    "advice",
    "node",
    "memslot",
    "huge",
    "race",
    "new_start",
    "mode",
    "flags",
    "async_pf",
    "ad_bits",
    "count",
    "len",
];

#[derive(Debug, Clone)]
enum Edit {
    /// Replaces a quoted number on line `n` with a nearby or edge number (`NUDGES[k]`
    /// applied to it), keeping the file's types.
    Nudge(usize, usize),
    /// Replaces the value of line `n` (mod lines) with `VALUES[v]`.
    Value(usize, usize),
    /// Makes line `n` an `op = ` line of `KNOWN_OPS[o]`.
    Op(usize, usize),
    /// Deletes line `n`.
    Delete(usize),
    /// Duplicates line `n`.
    Duplicate(usize),
    /// Inserts `KEYS[k] = VALUES[v]` (or a table header) before line `n`.
    Insert(usize, usize, usize),
}

/// Changes a number as a hostile file would: off by a page or a byte, scaled, zeroed,
/// near the top of the address space.
const NUDGES: &[fn(u64) -> u64] = &[
    |v| v.wrapping_add(0x1000),
    |v| v.wrapping_sub(0x1000),
    |v| v.wrapping_add(1),
    |v| v.wrapping_mul(512),
    |v| v / 2,
    |_| 0,
    |v| v | 0xffff_ffff_0000_0000,
    |v| u64::MAX - v,
    |v| v.wrapping_add(0x20_0000),
];

fn edit() -> impl Strategy<Value = Edit> {
    let n = any::<usize>();
    prop_oneof![
        8 => (n, 0..NUDGES.len()).prop_map(|(n, k)| Edit::Nudge(n, k)),
        5 => (n, 0..VALUES.len()).prop_map(|(n, v)| Edit::Value(n, v)),
        2 => (n, 0..KNOWN_OPS.len()).prop_map(|(n, o)| Edit::Op(n, o)),
        1 => n.prop_map(Edit::Delete),
        1 => n.prop_map(Edit::Duplicate),
        2 => (n, 0..KEYS.len() + 3, 0..VALUES.len()).prop_map(|(n, k, v)| Edit::Insert(n, k, v)),
    ]
}

fn mutate(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for e in edits {
        if lines.is_empty() {
            lines.push("[[step]]".into());
        }
        let at = |n: usize| n % lines.len();
        match *e {
            Edit::Nudge(n, k) => {
                // The n-th line (mod) that holds a quoted number.
                let nums: Vec<usize> = (0..lines.len())
                    .filter(|&i| {
                        lines[i]
                            .split_once('=')
                            .and_then(|(_, v)| parse_num(v.trim().trim_matches('"')).ok())
                            .is_some()
                    })
                    .collect();
                if let Some(&i) = nums.get(n % nums.len().max(1)) {
                    let (key, v) = lines[i].split_once('=').unwrap();
                    let old = parse_num(v.trim().trim_matches('"')).unwrap();
                    let new = NUDGES[k](old);
                    let quoted = v.trim().starts_with('"');
                    lines[i] = if quoted {
                        format!("{key}= \"{new:#x}\"")
                    } else {
                        format!("{key}= {}", new.min(i64::MAX as u64))
                    };
                }
            }
            Edit::Value(n, v) => {
                let i = at(n);
                if let Some((k, _)) = lines[i].split_once('=') {
                    lines[i] = format!("{k}= {}", VALUES[v]);
                }
            }
            Edit::Op(n, o) => {
                let i = at(n);
                lines[i] = format!("op = \"{}\"", KNOWN_OPS[o]);
            }
            Edit::Delete(n) => {
                lines.remove(at(n));
            }
            Edit::Duplicate(n) => {
                let i = at(n);
                lines.insert(i, lines[i].clone());
            }
            Edit::Insert(n, k, v) => {
                let line = match k.checked_sub(KEYS.len()) {
                    Some(0) => "[[step]]".to_string(),
                    Some(1) => "[[vma]]".to_string(),
                    Some(_) => "[[memslot]]".to_string(),
                    None => format!("{} = {}", KEYS[k], VALUES[v]),
                };
                lines.insert(at(n), line);
            }
        }
    }
    lines.join("\n")
}

/// Parses `text`; when it is a valid scenario, runs it. Either answer is fine, a panic is
/// not.
fn parse_and_run(text: &str) {
    if let Ok(sc) = Scenario::from_toml(text) {
        let _ = runner::run(&sc, &ModelOptions::default());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Shipped scenarios with a few edits each.
    #[test]
    fn fuzz_scenario_mutated(seed in any::<prop::sample::Index>(), edits in prop::collection::vec(edit(), 1..4)) {
        let seeds = seeds();
        let text = mutate(&seeds[seed.index(seeds.len())], &edits);
        parse_and_run(&text);
    }

    /// Arbitrary text, and text that is TOML-shaped.
    #[test]
    fn fuzz_scenario_raw(text in prop_oneof![
        any::<String>(),
        "(\\[\\[(step|vma|memslot)\\]\\]\n|[a-z_]{1,8} = (\"[0-9a-zA-Z]{0,6}\"|[0-9]{1,3}|true)\n){0,12}",
    ]) {
        parse_and_run(&text);
    }
}

/// The mutations must leave enough files valid that the runner is fuzzed too, not only
/// the parser.
#[test]
fn mutated_scenarios_often_still_parse_and_run() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strat = (
        any::<prop::sample::Index>(),
        prop::collection::vec(edit(), 1..4),
    );
    let (mut parsed, mut ran) = (0, 0);
    for _ in 0..300 {
        let (seed, edits) = strat.new_tree(&mut runner).unwrap().current();
        let seeds = seeds();
        let text = mutate(&seeds[seed.index(seeds.len())], &edits);
        if let Ok(sc) = Scenario::from_toml(&text) {
            parsed += 1;
            if runner::run(&sc, &ModelOptions::default()).is_ok() {
                ran += 1;
            }
        }
    }
    assert!(parsed >= 30 && ran >= 15, "parsed {parsed}/300, ran {ran}");
    eprintln!("mutated scenarios: {parsed}/300 parsed, {ran} ran to the end");
}

/// Regression (found by `fuzz_scenario_mutated`): a device vma at pfn 0xffff_ffff_ffff_ffff
/// overflowed the model's pfn arithmetic on the first fault; it is now refused up front.
#[test]
fn device_pfn_past_the_physical_address_space_is_refused() {
    let text = r#"
[[memslot]]
id = 0
gpa = "0x0"
size = "2M"
hva = "0x7f0000000000"
[[vma]]
start = "0x7f0000000000"
size = "2M"
prot = "rw"
kind = "mixedmap"
shared = true
pfn = "0xffffffffffffffff"
[[step]]
op = "read"
gpa = "0x1000"
"#;
    let e = Scenario::from_toml(text).unwrap_err().to_string();
    assert!(e.contains("52-bit physical address space"), "{e}");
    let ok = text.replace("0xffffffffffffffff", "0xffffffe00");
    run_scenario(&ok).unwrap();
}
