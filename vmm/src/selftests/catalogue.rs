//! The tests `faultline test mm` knows: every `run_test` call of Linux 6.12's
//! tools/testing/selftests/mm/run_vmtests.sh with its category, the smoke set, and the
//! default skip file.

/// One test, as run_vmtests.sh runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmTest {
    /// Unique name: run_vmtests.sh's `pretty_name` (the command without `./`).
    pub name: String,
    /// run_vmtests.sh's CATEGORY (`-t` selects by it).
    pub category: String,
    /// The file in the selftest directory the command needs.
    pub program: String,
    /// The shell command run in that directory.
    pub command: String,
}

/// (category, command) of every `run_test` in run_vmtests.sh (6.12), in its order, with its
/// shell variables filled in: `${uffd_stress_bin}` is ./uffd-stress, `$half_ufd_size_MB` 32
/// (the guest reserves 128 huge pages of 2 MiB, half of them for uffd-stress's two areas).
const RUN_VMTESTS: &[(&str, &str)] = &[
    ("hugetlb", "./hugepage-mmap"),
    ("hugetlb", "./hugepage-shm"),
    ("hugetlb", "./map_hugetlb"),
    ("hugetlb", "./hugepage-mremap"),
    ("hugetlb", "./hugepage-vmemmap"),
    ("hugetlb", "./hugetlb-madvise"),
    ("hugetlb", "./hugetlb_dio"),
    ("hugetlb", "./hugetlb_fault_after_madv"),
    ("hugetlb", "./hugetlb_madv_vs_map"),
    ("mmap", "./map_fixed_noreplace"),
    ("gup_test", "./gup_test -u"),
    ("gup_test", "./gup_test -a"),
    ("gup_test", "./gup_test -ct -F 0x1 0 19 0x1000"),
    ("gup_test", "./gup_longterm"),
    ("userfaultfd", "./uffd-unit-tests"),
    ("userfaultfd", "./uffd-stress anon 20 16"),
    ("userfaultfd", "./uffd-stress hugetlb 32 32"),
    ("userfaultfd", "./uffd-stress hugetlb-private 32 32"),
    ("userfaultfd", "./uffd-stress shmem 20 16"),
    ("userfaultfd", "./uffd-stress shmem-private 20 16"),
    ("compaction", "./compaction_test"),
    ("mlock", "./on-fault-limit"),
    ("mmap", "./map_populate"),
    ("mlock", "./mlock-random-test"),
    ("mlock", "./mlock2-tests"),
    ("process_mrelease", "./mrelease_test"),
    ("mremap", "./mremap_test"),
    ("hugetlb", "./thuge-gen"),
    ("hugetlb", "./charge_reserved_hugetlb.sh -cgroup-v2"),
    ("hugetlb", "./hugetlb_reparenting_test.sh -cgroup-v2"),
    ("hugetlb", "./hugetlb-soft-offline"),
    ("hugetlb", "./hugetlb-read-hwpoison"),
    ("hugevm", "./virtual_address_range"),
    ("hugevm", "bash ./va_high_addr_switch.sh"),
    ("vmalloc", "bash ./test_vmalloc.sh smoke"),
    ("mremap", "./mremap_dontunmap"),
    ("hmm", "bash ./test_hmm.sh smoke"),
    ("madv_populate", "./madv_populate"),
    ("memfd_secret", "./memfd_secret"),
    ("ksm", "./ksm_tests -H -s 100"),
    ("ksm", "./ksm_tests -P -s 100"),
    ("ksm", "./ksm_tests -M -p 10"),
    ("ksm", "./ksm_tests -U"),
    ("ksm", "./ksm_tests -Z -p 10 -z 0"),
    ("ksm", "./ksm_tests -Z -p 10 -z 1"),
    ("ksm_numa", "./ksm_tests -N -m 1"),
    ("ksm_numa", "./ksm_tests -N -m 0"),
    ("ksm", "./ksm_functional_tests"),
    ("pkey", "./protection_keys_32"),
    ("pkey", "./protection_keys_64"),
    ("soft_dirty", "./soft-dirty"),
    ("pagemap", "./pagemap_ioctl"),
    ("cow", "./cow"),
    ("thp", "./khugepaged"),
    ("thp", "./khugepaged -s 2"),
    ("thp", "./transhuge-stress -d 20"),
    ("thp", "./split_huge_page_test"),
    ("migration", "./migration"),
    ("mkdirty", "./mkdirty"),
    ("mdwe", "./mdwe_test"),
];

/// The default set: quick tests across mmap, mremap, madvise, hugetlb and GUP (6-64 s each
/// on the nested KVM here, ~4-5 minutes with the boot; see README).
pub const SMOKE: &[&str] = &[
    "map_fixed_noreplace",
    "mremap_dontunmap",
    "mkdirty",
    "madv_populate",
    "hugepage-mmap",
    "gup_test -ct -F 0x1 0 19 0x1000",
];

/// The default skip file (`--skip-file` replaces it): `NAME<TAB or spaces>REASON` per line.
pub const DEFAULT_SKIP_FILE: &str = include_str!("../../../resources/selftests/mm-skip.txt");

/// The catalogue, in run_vmtests.sh's order.
pub fn all() -> Vec<MmTest> {
    RUN_VMTESTS
        .iter()
        .map(|&(category, command)| {
            let words: Vec<&str> = command.split_whitespace().collect();
            // `bash ./x.sh args` needs x.sh; `./prog args` needs prog.
            let program_word = if words.first() == Some(&"bash") {
                words.get(1)
            } else {
                words.first()
            };
            let program = program_word
                .map(|w| w.trim_start_matches("./").to_string())
                .unwrap_or_default();
            let name = command
                .strip_prefix("bash ")
                .unwrap_or(command)
                .trim_start_matches("./")
                .to_string();
            MmTest {
                name,
                category: category.to_string(),
                program,
                command: command.to_string(),
            }
        })
        .collect()
}

/// The category names, in first-use order.
pub fn categories() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (c, _) in RUN_VMTESTS {
        if !out.iter().any(|o| o == c) {
            out.push((*c).to_string());
        }
    }
    out
}

/// A skip-file line could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("skip file line {line}: {text:?} has no reason; write `NAME  REASON` (a test skipped without a reason would hide a problem)")]
pub struct SkipFileError {
    /// 1-based line number.
    pub line: usize,
    /// The line.
    pub text: String,
}

/// Parses a skip file: `NAME REASON` per line (NAME is a test name; quote a name with
/// spaces as `"gup_test -u"`), `#` comments and blank lines ignored.
pub fn parse_skip_file(text: &str) -> Result<Vec<(String, String)>, SkipFileError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = if let Some(r) = line.strip_prefix('"') {
            match r.find('"') {
                Some(end) => (&r[..end], &r[end + 1..]),
                None => (r, ""),
            }
        } else {
            line.split_once(char::is_whitespace).unwrap_or((line, ""))
        };
        let reason = rest.trim();
        if reason.is_empty() || name.is_empty() {
            return Err(SkipFileError {
                line: i + 1,
                text: raw.to_string(),
            });
        }
        out.push((name.to_string(), reason.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_smoke_tests_exist() {
        let all = all();
        let mut names: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len(), "duplicate test names");
        for s in SMOKE {
            assert!(
                all.iter().any(|t| t.name == *s),
                "smoke test {s} not in the catalogue"
            );
        }
        let va = all
            .iter()
            .find(|t| t.name == "va_high_addr_switch.sh")
            .unwrap();
        assert_eq!(va.program, "va_high_addr_switch.sh");
        assert!(categories().contains(&"userfaultfd".to_string()));
    }

    #[test]
    fn skip_file_needs_a_reason_per_entry() {
        let ok = parse_skip_file("# c\n\n\"gup_test -u\" hangs here\ncow   slow\n").unwrap();
        assert_eq!(ok[0], ("gup_test -u".into(), "hangs here".into()));
        assert_eq!(ok[1], ("cow".into(), "slow".into()));
        let e = parse_skip_file("cow\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.to_string().contains("no reason"));
        parse_skip_file(DEFAULT_SKIP_FILE).unwrap();
    }
}
