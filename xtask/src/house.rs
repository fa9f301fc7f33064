//! `cargo run -p xtask -- house`: how the source tree is laid out, in numbers.
//!
//! # What it measures, and how
//!
//! - **Largest files**: lines of every `.rs` file under the workspace (not `target/`).
//! - **Import cycles**: per crate (`src/lib.rs` or `src/main.rs` and the module files under
//!   `src/`; `src/main.rs` beside a `lib.rs`, `src/bin/`, `benches/`, `tests/` and `examples/`
//!   are crates of their own and skipped), every path in code that starts with `crate::`,
//!   `super::` or `self::` (in `use` trees, braces expanded, and in expressions and types) is
//!   resolved to the longest module prefix that is a module file: an edge from the file's
//!   module to that module. Comments, string literals and `#[cfg(test)]` modules (inline
//!   `mod NAME { ... }` blocks and module files declared under `#[cfg(test)]`) are left out:
//!   a test may use anything. An edge between a module and its own ancestor or descendant
//!   is structure, not an import, and is ignored; any other edge is lifted to the two
//!   children of the modules' lowest common ancestor (`mmu::host::ops::x` -> `mmu::gup` is
//!   `host -> gup`), so a cycle is reported at the level where it is one. The strongly
//!   connected components of more than one module of that graph are the cycles, each with
//!   its edges and the first place that makes each one.
//! - **Files one new concept touches**: the files that name an existing instance of it,
//!   found by tokens in `.rs` files (identifiers, `A::B` paths, string literals, comment
//!   text) and by text in the other text files (`.md`, `.sh`, `.txt`, `.toml` except the
//!   scenario files under `resources/scenarios/` and `Cargo.toml`, which are instances and
//!   manifests, not places to edit):
//!   - a host operation, by `mprotect`: identifiers starting with `Mprotect`
//!     (`Step::Mprotect`, `MprotectError`), the identifier `mprotect` unless it is
//!     `libc::mprotect` (a real system call, not the operation), the string literal
//!     `"mprotect"`; text: the word `mprotect` outside a `libc::mprotect`.
//!   - a backing, by THP: `Backing::Thp`, `VmaKind::Thp`, `BackingSpec::ANONYMOUS_THP`,
//!     identifiers starting with `AnonymousThp`, the string literal `"anonymous_thp"`,
//!     `thp = true` in a string or comment (the scenario field). Not the bare `"thp"`
//!     literal, which also names a host fault handler and the THP sysfs mode, nor the field
//!     `thp` (the scenario's THP mode too); text: `--backing thp`, `anonymous_thp`,
//!     `thp = true`.
//!   - a bench, by `bench replay`: identifiers starting with `BenchReplay` or `ReplayBench`,
//!     `BenchCommand::Replay`; text (comments too): `bench replay`.
//!   - a built-in guest, by `touch`: identifiers starting with `TouchParams`, `TOUCH_` or
//!     `TOUCHED_`, the string literal `"touch"`, the guest's own `touch.rs`; text: `guest
//!     touch`, `` `touch` ``.
//!
//!   Two numbers each: code (`.rs`) and the rest (docs, scripts).
//! - **Definitions per concept** (one type per concept): enums by their variants (a backing
//!   kind: variants `Shmem` and `Anon` or `Anonymous`; a uffd mode: `Missing` and `Minor` or
//!   `Wp`; an access kind: only `Read`, `Write`, `Exec`, `ReadWrite`, with `Read` and
//!   `Write`; a backing kind has only backing names: so page kinds and error enums do not
//!   count), and files by what they do (a sysfs/procfs settings reader: calls
//!   `read_to_string` or `read_dir` itself and has a `/sys/kernel/mm`, `/proc/sys/`,
//!   `/sys/module/`, `/sys/devices/system/` or `/proc/meminfo` literal; a
//!   spawn-with-timeout: `.spawn()` with `try_wait`, `recv_timeout` or a `kill`).
//!   Test code counts too (it is where copies hide).

use crate::lex::{lex, Kind, Token};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A module path inside one crate, e.g. `["host", "ops"]`; the crate root is `[]`.
type ModPath = Vec<String>;

/// What `house` found.
#[derive(Debug, Default)]
pub struct Report {
    /// `(path, lines)` of the largest `.rs` files, largest first.
    pub largest: Vec<(String, usize)>,
    /// Number of `.rs` files and their total lines.
    pub rust_files: (usize, usize),
    /// The import cycles.
    pub cycles: Vec<Cycle>,
    /// `(concept, instance, code files, other files)`.
    pub touches: Vec<Touch>,
    /// Places that define one concept (should be one each).
    pub definitions: Vec<Definitions>,
}

/// Where one concept is defined.
#[derive(Debug)]
pub struct Definitions {
    /// The concept.
    pub concept: &'static str,
    /// How it is recognised.
    pub rule: &'static str,
    /// `file: name` of each definition (or each file, for file rules), sorted.
    pub places: Vec<String>,
}

/// One strongly connected component of more than one module.
#[derive(Debug)]
pub struct Cycle {
    /// The crate (its directory).
    pub krate: String,
    /// The modules, `a::b` form, sorted.
    pub modules: Vec<String>,
    /// `(from, to, first place: file:line, number of places)`.
    pub edges: Vec<(String, String, String, usize)>,
}

/// The files naming one concept's instance.
#[derive(Debug)]
pub struct Touch {
    /// The concept: "host operation", ...
    pub concept: &'static str,
    /// The instance counted: "mprotect", ...
    pub instance: &'static str,
    /// `.rs` files, sorted.
    pub code: Vec<String>,
    /// Other text files, sorted.
    pub other: Vec<String>,
}

/// Errors of `house`.
#[derive(Debug)]
pub enum HouseError {
    /// Reading the tree failed.
    Io(PathBuf, std::io::Error),
    /// The root is not the workspace.
    NotWorkspace(PathBuf),
}

impl std::fmt::Display for HouseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(p, e) => write!(f, "Cannot read {}: {e}", p.display()),
            Self::NotWorkspace(p) => write!(
                f,
                "{} has no Cargo.toml with [workspace]: run from the repository or pass --root DIR",
                p.display()
            ),
        }
    }
}

impl std::error::Error for HouseError {}

fn read(p: &Path) -> Result<String, HouseError> {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|e| HouseError::Io(p.to_path_buf(), e))
}

/// Every file under `root`, relative, skipping `target/` and hidden directories.
fn walk(root: &Path) -> Result<Vec<PathBuf>, HouseError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let rd = std::fs::read_dir(&dir).map_err(|e| HouseError::Io(dir.clone(), e))?;
        for e in rd {
            let e = e.map_err(|e| HouseError::Io(dir.clone(), e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let ft = e.file_type().map_err(|err| HouseError::Io(e.path(), err))?;
            if name.starts_with('.') || name == "target" {
                continue;
            }
            if ft.is_dir() {
                stack.push(rel.join(&name));
            } else if ft.is_file() {
                out.push(rel.join(&name));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn slash(p: &Path) -> String {
    p.to_string_lossy().replace('\\', "/")
}

/// Measures the workspace at `root`.
pub fn measure(root: &Path) -> Result<Report, HouseError> {
    let manifest =
        read(&root.join("Cargo.toml")).map_err(|_| HouseError::NotWorkspace(root.into()))?;
    if !manifest.contains("[workspace]") {
        return Err(HouseError::NotWorkspace(root.into()));
    }
    let files = walk(root)?;
    let mut rep = Report::default();
    let mut lexed: BTreeMap<PathBuf, (String, Vec<Token>)> = BTreeMap::new();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "rs"))
    {
        let text = read(&root.join(f))?;
        let toks = lex(&text);
        lexed.insert(f.clone(), (text, toks));
    }
    let mut sizes: Vec<(String, usize)> = lexed
        .iter()
        .map(|(p, (t, _))| (slash(p), t.lines().count()))
        .collect();
    rep.rust_files = (sizes.len(), sizes.iter().map(|s| s.1).sum());
    sizes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    sizes.truncate(15);
    rep.largest = sizes;

    // Crates: every directory with a Cargo.toml and src/lib.rs or src/main.rs.
    for m in files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "Cargo.toml"))
    {
        let dir = m.parent().unwrap_or(Path::new("")).to_path_buf();
        let src = dir.join("src");
        if !lexed.contains_key(&src.join("lib.rs")) && !lexed.contains_key(&src.join("main.rs")) {
            continue;
        }
        rep.cycles.extend(crate_cycles(&dir, &lexed));
    }
    rep.touches = touches(root, &files, &lexed)?;
    rep.definitions = definitions(&lexed);
    Ok(rep)
}

/// The module path of `file` (relative to the crate's `src/`), or `None` for a file that is
/// not part of the library/binary crate's module tree.
fn mod_path(rel: &Path, has_lib: bool) -> Option<ModPath> {
    let parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let (last, dirs) = parts.split_last()?;
    if dirs.first().is_some_and(|d| d == "bin") {
        return None;
    }
    let stem = last.strip_suffix(".rs")?;
    let mut p: ModPath = dirs.to_vec();
    match (dirs.is_empty(), stem) {
        (true, "lib") => {}
        (true, "main") if !has_lib => {}
        (true, "main") => return None,
        (_, "mod") => {}
        _ => p.push(stem.to_string()),
    }
    Some(p)
}

/// A `#[cfg(test)] mod NAME;` declaration: the name and its `#[path = "..."]` if any.
type TestDecl = (String, Option<String>);

/// Token index ranges of `#[cfg(test)] mod NAME { ... }` blocks, and the
/// `#[cfg(test)] mod NAME;` declarations.
fn test_modules(t: &[Token]) -> (Vec<(usize, usize)>, Vec<TestDecl>) {
    let (mut blocks, mut decls) = (Vec::new(), Vec::new());
    let id =
        |i: usize, s: &str| matches!(t.get(i).map(|t| &t.kind), Some(Kind::Ident(x)) if x == s);
    let p =
        |i: usize, c: char| matches!(t.get(i).map(|t| &t.kind), Some(Kind::Punct(x)) if *x == c);
    let code: Vec<usize> = (0..t.len())
        .filter(|&i| !matches!(t[i].kind, Kind::Comment(_)))
        .collect();
    let at = |k: usize| code.get(k).copied().unwrap_or(usize::MAX);
    let mut k = 0;
    while k < code.len() {
        // # [ cfg ( test ) ]
        if p(at(k), '#')
            && p(at(k + 1), '[')
            && id(at(k + 2), "cfg")
            && p(at(k + 3), '(')
            && id(at(k + 4), "test")
            && p(at(k + 5), ')')
            && p(at(k + 6), ']')
        {
            let mut j = k + 7;
            let mut path_attr = None;
            // Skip further attributes (keeping a `#[path = "..."]`) and `pub`.
            while p(at(j), '#') {
                if id(at(j + 2), "path") && p(at(j + 3), '=') {
                    if let Some(Kind::Str(f)) = t.get(at(j + 4)).map(|t| &t.kind) {
                        path_attr = Some(f.clone());
                    }
                }
                let mut depth = 0;
                j += 1;
                while j < code.len() {
                    if p(at(j), '[') {
                        depth += 1;
                    } else if p(at(j), ']') {
                        depth -= 1;
                        if depth == 0 {
                            j += 1;
                            break;
                        }
                    }
                    j += 1;
                }
            }
            if id(at(j), "pub") {
                j += 1;
            }
            if id(at(j), "mod") {
                if let Some(Kind::Ident(name)) = t.get(at(j + 1)).map(|t| &t.kind) {
                    if p(at(j + 2), ';') {
                        decls.push((name.clone(), path_attr.clone()));
                    } else if p(at(j + 2), '{') {
                        let mut depth = 0i64;
                        let mut e = j + 2;
                        while e < code.len() {
                            if p(at(e), '{') {
                                depth += 1;
                            } else if p(at(e), '}') {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            e += 1;
                        }
                        blocks.push((at(k), at(e.min(code.len() - 1))));
                        k = e;
                    }
                }
            }
        }
        k += 1;
    }
    (blocks, decls)
}

/// Paths (segments, line) that start with `crate`, `super` or `self` in the code tokens,
/// `use` trees expanded.
fn local_paths(t: &[Token]) -> Vec<(Vec<String>, usize)> {
    let code: Vec<&Token> = t
        .iter()
        .filter(|t| !matches!(t.kind, Kind::Comment(_)))
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < code.len() {
        match &code[i].kind {
            Kind::Ident(u) if u == "use" => {
                let mut j = i + 1;
                use_tree(&code, &mut j, &[], &mut out);
                while j < code.len() && code[j].kind != Kind::Punct(';') {
                    j += 1;
                }
                i = j + 1;
                continue;
            }
            Kind::Ident(s)
                if (s == "crate" || s == "super" || s == "self")
                    && matches!(code.get(i + 1).map(|t| &t.kind), Some(Kind::PathSep)) =>
            {
                // Not the tail of a longer path (`x::self::y` does not occur; `<T as self::X>` is fine).
                let prev_sep = i > 0 && matches!(code[i - 1].kind, Kind::PathSep);
                let line = code[i].line;
                let mut segs = vec![s.clone()];
                let mut j = i + 1;
                while matches!(code.get(j).map(|t| &t.kind), Some(Kind::PathSep)) {
                    match code.get(j + 1).map(|t| &t.kind) {
                        Some(Kind::Ident(n)) => {
                            segs.push(n.clone());
                            j += 2;
                        }
                        _ => break,
                    }
                }
                if !prev_sep {
                    out.push((segs, line));
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Parses one use tree at `code[*j]` under `prefix`, pushing every full path (a glob
/// pushes its module, `x::{self}` pushes `x`).
fn use_tree(
    code: &[&Token],
    j: &mut usize,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, usize)>,
) {
    let line = code.get(*j).map_or(0, |t| t.line);
    let mut path = prefix.to_vec();
    let kind = |j: usize| code.get(j).map(|t| &t.kind);
    loop {
        match kind(*j) {
            Some(Kind::Ident(n)) if n == "as" => {
                *j += 2;
                break;
            }
            Some(Kind::Ident(n)) => {
                path.push(n.clone());
                *j += 1;
            }
            Some(Kind::PathSep) => *j += 1,
            Some(Kind::Punct('*')) => {
                *j += 1;
                break;
            }
            Some(Kind::Punct('{')) => {
                *j += 1;
                loop {
                    match kind(*j) {
                        Some(Kind::Punct('}')) => {
                            *j += 1;
                            break;
                        }
                        None | Some(Kind::Punct(';')) => break,
                        _ => {}
                    }
                    let before = *j;
                    use_tree(code, j, &path, out);
                    match kind(*j) {
                        Some(Kind::Punct(',')) => *j += 1,
                        Some(Kind::Punct('}')) => {}
                        _ if *j == before => *j += 1,
                        _ => {}
                    }
                }
                return;
            }
            _ => break,
        }
    }
    if path.last().is_some_and(|s| s == "self") {
        path.pop();
    }
    if path.len() > prefix.len() || (prefix.last().is_some() && path.len() == prefix.len()) {
        out.push((path, line));
    }
}

/// Resolves `crate`/`super`/`self` against `here`; `None` for other roots.
fn absolute(segs: &[String], here: &ModPath) -> Option<ModPath> {
    let mut cur: ModPath = match segs.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("self") => here.clone(),
        Some("super") => {
            let mut h = here.clone();
            h.pop()?;
            h
        }
        _ => return None,
    };
    for s in &segs[1..] {
        if s == "super" {
            cur.pop()?;
        } else if s != "self" {
            cur.push(s.clone());
        }
    }
    Some(cur)
}

fn show(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

fn crate_cycles(dir: &Path, lexed: &BTreeMap<PathBuf, (String, Vec<Token>)>) -> Vec<Cycle> {
    let src = dir.join("src");
    let has_lib = lexed.contains_key(&src.join("lib.rs"));
    // Module file -> module path; then drop the test modules.
    let mut mods: BTreeMap<ModPath, &PathBuf> = BTreeMap::new();
    for f in lexed.keys() {
        if let Ok(rel) = f.strip_prefix(&src) {
            if let Some(m) = mod_path(rel, has_lib) {
                mods.insert(m, f);
            }
        }
    }
    let (mut test_mods, mut test_files): (BTreeSet<ModPath>, BTreeSet<PathBuf>) =
        Default::default();
    for (m, f) in &mods {
        for (name, path) in test_modules(&lexed[*f].1).1 {
            match path {
                Some(p) => {
                    test_files.insert(f.parent().unwrap_or(Path::new("")).join(p));
                }
                None => {
                    let mut c = m.clone();
                    c.push(name);
                    test_mods.insert(c);
                }
            }
        }
    }
    mods.retain(|m, f| !test_mods.iter().any(|t| m.starts_with(t)) && !test_files.contains(*f));
    let known: BTreeSet<&ModPath> = mods.keys().collect();
    // Lifted edges: (from, to) -> (first place, count).
    let mut edges: BTreeMap<(ModPath, ModPath), (String, usize)> = BTreeMap::new();
    for (here, f) in &mods {
        let toks = &lexed[*f].1;
        let (blocks, _) = test_modules(toks);
        let code: Vec<Token> = toks
            .iter()
            .enumerate()
            .filter(|(i, _)| !blocks.iter().any(|(a, b)| i >= a && i <= b))
            .map(|(_, t)| t.clone())
            .collect();
        for (segs, line) in local_paths(&code) {
            let Some(abs) = absolute(&segs, here) else {
                continue;
            };
            let mut target = abs.clone();
            while !target.is_empty() && !known.contains(&target) {
                target.pop();
            }
            if target.starts_with(here) || here.starts_with(&target) {
                continue;
            }
            let lca = here.iter().zip(&target).take_while(|(a, b)| a == b).count();
            let (a, b) = (here[..=lca].to_vec(), target[..=lca].to_vec());
            let e = edges
                .entry((a, b))
                .or_insert_with(|| (format!("{}:{line}", slash(f)), 0));
            e.1 += 1;
        }
    }
    // Tarjan's strongly connected components.
    let nodes: Vec<ModPath> = edges
        .keys()
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let idx: BTreeMap<&ModPath, usize> = nodes.iter().enumerate().map(|(i, n)| (n, i)).collect();
    let mut adj = vec![Vec::new(); nodes.len()];
    for (a, b) in edges.keys() {
        adj[idx[a]].push(idx[b]);
    }
    let sccs = tarjan(&adj);
    let mut out = Vec::new();
    for comp in sccs.into_iter().filter(|c| c.len() > 1) {
        let set: BTreeSet<usize> = comp.iter().copied().collect();
        let mut modules: Vec<String> = comp.iter().map(|&i| show(&nodes[i])).collect();
        modules.sort();
        let es = edges
            .iter()
            .filter(|((a, b), _)| set.contains(&idx[a]) && set.contains(&idx[b]))
            .map(|((a, b), (place, n))| (show(a), show(b), place.clone(), *n))
            .collect();
        out.push(Cycle {
            krate: slash(dir),
            modules,
            edges: es,
        });
    }
    out.sort_by(|a, b| a.modules.cmp(&b.modules));
    out
}

/// Strongly connected components (Tarjan, iterative).
pub fn tarjan(adj: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = adj.len();
    let (mut index, mut low, mut on) = (vec![usize::MAX; n], vec![0; n], vec![false; n]);
    let (mut stack, mut out, mut next) = (Vec::new(), Vec::new(), 0usize);
    for s in 0..n {
        if index[s] != usize::MAX {
            continue;
        }
        let mut call: Vec<(usize, usize)> = vec![(s, 0)];
        while let Some(&mut (v, ref mut k)) = call.last_mut() {
            if *k == 0 && index[v] == usize::MAX {
                index[v] = next;
                low[v] = next;
                next += 1;
                stack.push(v);
                on[v] = true;
            }
            if let Some(&w) = adj[v].get(*k) {
                *k += 1;
                if index[w] == usize::MAX {
                    call.push((w, 0));
                } else if on[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            call.pop();
            if let Some(&(u, _)) = call.last() {
                low[u] = low[u].min(low[v]);
            }
            if low[v] == index[v] {
                let mut comp = Vec::new();
                while let Some(w) = stack.pop() {
                    on[w] = false;
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                out.push(comp);
            }
        }
    }
    out
}

/// One way a `.rs` file can name a concept's instance.
enum Needle {
    /// An identifier starting with this.
    IdentPrefix(&'static str),
    /// Exactly this identifier, unless it follows `libc::`.
    IdentNotLibc(&'static str),
    /// `A::B`.
    Path(&'static str, &'static str),
    /// A string literal equal to this.
    Str(&'static str),
    /// A string literal or comment containing this.
    Text(&'static str),
    /// The file name.
    FileName(&'static str),
}

struct Concept {
    concept: &'static str,
    instance: &'static str,
    code: &'static [Needle],
    /// Substrings of other text files; a match preceded by `libc::` does not count.
    text: &'static [&'static str],
}

const CONCEPTS: &[Concept] = &[
    Concept {
        concept: "host operation",
        instance: "mprotect",
        code: &[
            Needle::IdentPrefix("Mprotect"),
            Needle::IdentNotLibc("mprotect"),
            Needle::Str("mprotect"),
        ],
        text: &["mprotect"],
    },
    Concept {
        concept: "backing",
        instance: "thp",
        code: &[
            Needle::Path("Backing", "Thp"),
            Needle::Path("VmaKind", "Thp"),
            Needle::Path("BackingSpec", "ANONYMOUS_THP"),
            Needle::IdentPrefix("AnonymousThp"),
            Needle::Str("anonymous_thp"),
            Needle::Text("thp = true"),
        ],
        text: &["--backing thp", "anonymous_thp", "thp = true"],
    },
    Concept {
        concept: "bench",
        instance: "bench replay",
        code: &[
            Needle::IdentPrefix("BenchReplay"),
            Needle::IdentPrefix("ReplayBench"),
            Needle::Path("BenchCommand", "Replay"),
            Needle::Text("bench replay"),
        ],
        text: &["bench replay"],
    },
    Concept {
        concept: "built-in guest",
        instance: "touch",
        code: &[
            Needle::IdentPrefix("TouchParams"),
            Needle::IdentPrefix("TOUCH_"),
            Needle::IdentPrefix("TOUCHED_"),
            Needle::Str("touch"),
            Needle::FileName("touch.rs"),
            Needle::Text("guest touch"),
        ],
        text: &["guest touch", "`touch`"],
    },
];

fn code_names(path: &Path, t: &[Token], needles: &[Needle]) -> bool {
    let ident = |i: usize| match t.get(i).map(|t| &t.kind) {
        Some(Kind::Ident(s)) => Some(s.as_str()),
        _ => None,
    };
    let sep = |i: usize| matches!(t.get(i).map(|t| &t.kind), Some(Kind::PathSep));
    needles.iter().any(|n| match n {
        Needle::FileName(f) => path.file_name().is_some_and(|x| x == *f),
        _ => (0..t.len()).any(|i| match (n, &t[i].kind) {
            (Needle::IdentPrefix(p), Kind::Ident(s)) => s.starts_with(p),
            (Needle::IdentNotLibc(p), Kind::Ident(s)) => {
                s == p && !(i >= 2 && sep(i - 1) && ident(i - 2) == Some("libc"))
            }
            (Needle::Path(a, b), Kind::Ident(s)) => s == a && sep(i + 1) && ident(i + 2) == Some(b),
            (Needle::Str(x), Kind::Str(s)) => s == x,
            (Needle::Text(x), Kind::Str(s) | Kind::Comment(s)) => s.contains(x),
            _ => false,
        }),
    })
}

fn text_names(text: &str, needles: &[&str]) -> bool {
    needles.iter().any(|n| {
        text.match_indices(n)
            .any(|(at, _)| !text[..at].ends_with("libc::"))
    })
}

fn is_other_text(p: &Path) -> bool {
    let s = slash(p);
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = p
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default();
    match ext.as_str() {
        "md" | "sh" | "txt" => true,
        "toml" => name != "Cargo.toml" && !s.starts_with("resources/scenarios/"),
        _ => false,
    }
}

fn touches(
    root: &Path,
    files: &[PathBuf],
    lexed: &BTreeMap<PathBuf, (String, Vec<Token>)>,
) -> Result<Vec<Touch>, HouseError> {
    let mut others = Vec::new();
    // This tool and its recorded output name every instance on purpose.
    for f in files
        .iter()
        .filter(|f| is_other_text(f) && !f.starts_with("xtask"))
    {
        others.push((slash(f), read(&root.join(f))?));
    }
    Ok(CONCEPTS
        .iter()
        .map(|c| Touch {
            concept: c.concept,
            instance: c.instance,
            code: lexed
                .iter()
                // This tool names every instance on purpose.
                .filter(|(p, _)| !p.starts_with("xtask"))
                .filter(|(p, (_, t))| code_names(p, t, c.code))
                .map(|(p, _)| slash(p))
                .collect(),
            other: others
                .iter()
                .filter(|(_, t)| text_names(t, c.text))
                .map(|(p, _)| p.clone())
                .collect(),
        })
        .collect())
}

/// `(enum name, variant names)` of every enum in the tokens.
fn enums(t: &[Token]) -> Vec<(String, Vec<String>)> {
    let code: Vec<&Token> = t
        .iter()
        .filter(|t| !matches!(t.kind, Kind::Comment(_)))
        .collect();
    let mut out = Vec::new();
    for i in 0..code.len() {
        if code[i].kind != Kind::Ident("enum".into()) {
            continue;
        }
        let Some(Kind::Ident(name)) = code.get(i + 1).map(|t| &t.kind) else {
            continue;
        };
        let Some(open) =
            (i + 2..code.len()).find(|&j| matches!(code[j].kind, Kind::Punct('{' | ';')))
        else {
            continue;
        };
        if code[open].kind != Kind::Punct('{') {
            continue;
        }
        let (mut depth, mut brackets, mut vars, mut expect) = (0i32, 0i32, Vec::new(), true);
        for tok in &code[open..] {
            match &tok.kind {
                Kind::Punct('{' | '(') => depth += 1,
                Kind::Punct('}' | ')') => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                Kind::Punct('[') => brackets += 1,
                Kind::Punct(']') => brackets -= 1,
                Kind::Punct(',') if depth == 1 && brackets == 0 => expect = true,
                Kind::Ident(v) if depth == 1 && brackets == 0 && expect => {
                    vars.push(v.clone());
                    expect = false;
                }
                _ => {}
            }
        }
        out.push((name.clone(), vars));
    }
    out
}

/// (concept, rule, does an enum's variant list match, the matches).
type VariantRule = (
    &'static str,
    &'static str,
    fn(&[String]) -> bool,
    Vec<String>,
);

fn definitions(lexed: &BTreeMap<PathBuf, (String, Vec<Token>)>) -> Vec<Definitions> {
    let files = lexed.iter().filter(|(p, _)| !p.starts_with("xtask"));
    let mut by_variants: [VariantRule; 3] = [
        (
            "backing kind",
            "enum of backing names only, with Shmem and Anon|Anonymous",
            |v| {
                const NAMES: &[&str] = &[
                    "Anon",
                    "Anonymous",
                    "Thp",
                    "AnonymousThp",
                    "Shmem",
                    "Memfd",
                    "File",
                    "Hugetlb",
                    "AnonymousHugetlb",
                    "AnonymousHugetlb1G",
                    "SharedHugetlb",
                    "AnonymousPrefault",
                    "Pfnmap",
                    "Mixedmap",
                    "Devdax",
                    "Device",
                ];
                let has = |x: &str| v.iter().any(|s| s == x);
                v.iter().all(|x| NAMES.contains(&x.as_str()))
                    && has("Shmem")
                    && (has("Anon") || has("Anonymous"))
            },
            Vec::new(),
        ),
        (
            "uffd mode",
            "enum with Missing and Minor|Wp",
            |v| {
                let has = |x: &str| v.iter().any(|s| s == x);
                has("Missing") && (has("Minor") || has("Wp"))
            },
            Vec::new(),
        ),
        (
            "access kind",
            "enum of Read, Write, Exec, ReadWrite only, with Read and Write",
            |v| {
                let has = |x: &str| v.iter().any(|s| s == x);
                v.iter()
                    .all(|x| ["Read", "Write", "Exec", "ReadWrite"].contains(&x.as_str()))
                    && has("Read")
                    && has("Write")
            },
            Vec::new(),
        ),
    ];
    let (mut readers, mut spawners) = (Vec::new(), Vec::new());
    for (p, (_, t)) in files {
        for (name, vars) in enums(t) {
            for d in by_variants.iter_mut() {
                if d.2(&vars) {
                    d.3.push(format!("{}: {name}", slash(p)));
                }
            }
        }
        let ident = |x: &str| t.iter().any(|k| k.kind == Kind::Ident(x.into()));
        let reads = ident("read_to_string") || ident("read_dir");
        const SETTINGS: [&str; 5] = [
            "/sys/kernel/mm",
            "/proc/sys/",
            "/sys/module/",
            "/sys/devices/system/",
            "/proc/meminfo",
        ];
        let sys_literal = t
            .iter()
            .any(|k| matches!(&k.kind, Kind::Str(s) if SETTINGS.iter().any(|p| s.starts_with(p))));
        if reads && sys_literal {
            readers.push(slash(p));
        }
        let spawn = t
            .windows(2)
            .any(|w| w[0].kind == Kind::Punct('.') && w[1].kind == Kind::Ident("spawn".into()));
        if spawn && (ident("try_wait") || ident("recv_timeout") || ident("kill")) {
            spawners.push(slash(p));
        }
    }
    let mut out: Vec<Definitions> = by_variants
        .into_iter()
        .map(|(concept, rule, _, places)| Definitions {
            concept,
            rule,
            places,
        })
        .collect();
    out.push(Definitions {
        concept: "sysfs/procfs reader",
        rule: "file calling read_to_string|read_dir itself, with a host-settings literal",
        places: readers,
    });
    out.push(Definitions {
        concept: "spawn with timeout",
        rule: "file with .spawn() and try_wait|recv_timeout|kill",
        places: spawners,
    });
    out
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_list(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(",")
    )
}

impl Report {
    /// The largest file's lines, the number of cycles and each concept's code files: the
    /// headline figures.
    pub fn headline(&self) -> String {
        let mut s = format!(
            "largest file {} lines ({}), import cycles {}",
            self.largest.first().map_or(0, |l| l.1),
            self.largest.first().map_or("-", |l| l.0.as_str()),
            self.cycles.len()
        );
        for t in &self.touches {
            let _ = write!(s, ", new {} {} files", t.concept, t.code.len());
        }
        for d in &self.definitions {
            let _ = write!(s, ", {} definitions {}", d.concept, d.places.len());
        }
        s
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        let largest: Vec<String> = self
            .largest
            .iter()
            .map(|(p, n)| format!("{{\"file\":{},\"lines\":{n}}}", json_str(p)))
            .collect();
        let cycles: Vec<String> = self
            .cycles
            .iter()
            .map(|c| {
                let edges: Vec<String> = c
                    .edges
                    .iter()
                    .map(|(a, b, at, n)| {
                        format!(
                            "{{\"from\":{},\"to\":{},\"first\":{},\"places\":{n}}}",
                            json_str(a),
                            json_str(b),
                            json_str(at)
                        )
                    })
                    .collect();
                format!(
                    "{{\"crate\":{},\"modules\":{},\"edges\":[{}]}}",
                    json_str(&c.krate),
                    json_list(&c.modules),
                    edges.join(",")
                )
            })
            .collect();
        let touches: Vec<String> = self
            .touches
            .iter()
            .map(|t| {
                format!(
                    "{{\"concept\":{},\"instance\":{},\"code_files\":{},\"other_files\":{},\"code\":{},\"other\":{}}}",
                    json_str(t.concept),
                    json_str(t.instance),
                    t.code.len(),
                    t.other.len(),
                    json_list(&t.code),
                    json_list(&t.other)
                )
            })
            .collect();
        let definitions: Vec<String> = self
            .definitions
            .iter()
            .map(|d| {
                format!(
                    "{{\"concept\":{},\"rule\":{},\"count\":{},\"places\":{}}}",
                    json_str(d.concept),
                    json_str(d.rule),
                    d.places.len(),
                    json_list(&d.places)
                )
            })
            .collect();
        format!(
            "{{\"rust_files\":{},\"rust_lines\":{},\"largest\":[{}],\"import_cycles\":{},\"cycles\":[{}],\"touches\":[{}],\"definitions\":[{}]}}",
            self.rust_files.0,
            self.rust_files.1,
            largest.join(","),
            self.cycles.len(),
            cycles.join(","),
            touches.join(","),
            definitions.join(",")
        )
    }

    /// The report as text tables.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "house: {} .rs files, {} lines",
            self.rust_files.0, self.rust_files.1
        );
        let _ = writeln!(s, "\nlargest files\n  {:>6}  file", "lines");
        for (p, n) in &self.largest {
            let _ = writeln!(s, "  {n:>6}  {p}");
        }
        let _ = writeln!(s, "\nimport cycles: {}", self.cycles.len());
        for c in &self.cycles {
            let _ = writeln!(s, "  {}: {}", c.krate, c.modules.join(" <-> "));
            for (a, b, at, n) in &c.edges {
                let _ = writeln!(s, "      {a} -> {b}  ({n} places, first {at})");
            }
        }
        let _ = writeln!(s, "\nfiles naming one instance (what a new one touches)");
        let _ = writeln!(
            s,
            "  {:<16} {:<14} {:>5} {:>6}",
            "concept", "instance", "code", "other"
        );
        for t in &self.touches {
            let _ = writeln!(
                s,
                "  {:<16} {:<14} {:>5} {:>6}",
                t.concept,
                t.instance,
                t.code.len(),
                t.other.len()
            );
        }
        for t in &self.touches {
            let _ = writeln!(
                s,
                "\n  {} ({}): {}",
                t.concept,
                t.instance,
                t.code.join(" ")
            );
            if !t.other.is_empty() {
                let _ = writeln!(s, "    other: {}", t.other.join(" "));
            }
        }
        let _ = writeln!(
            s,
            "\ndefinitions per concept (one type per concept: 1 each)"
        );
        for d in &self.definitions {
            let _ = writeln!(s, "  {:<20} {:>3}  ({})", d.concept, d.places.len(), d.rule);
            for p in &d.places {
                let _ = writeln!(s, "      {p}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(src: &str) -> Vec<String> {
        local_paths(&lex(src))
            .into_iter()
            .map(|(p, _)| p.join("::"))
            .collect()
    }

    #[test]
    fn use_trees_are_expanded_and_comments_ignored() {
        let p = paths(
            "// use crate::no;\nuse crate::{a::{b, c as d}, e::*, f::self};\nuse super::g::h;\nfn x() { crate::i::j(); let s = \"crate::no\"; }",
        );
        assert_eq!(
            p,
            [
                "crate::a::b",
                "crate::a::c",
                "crate::e",
                "crate::f",
                "super::g::h",
                "crate::i::j"
            ]
        );
    }

    #[test]
    fn cfg_test_modules_are_found() {
        let t = lex("fn a() {}\n#[cfg(test)]\nmod tests { use crate::x; fn b() {} }\n#[cfg(test)]\nmod proptests;\nfn c() {}");
        let (blocks, decls) = test_modules(&t);
        assert_eq!(decls, [("proptests".to_string(), None)]);
        assert_eq!(blocks.len(), 1);
        let inside: Vec<&Token> = t[blocks[0].0..=blocks[0].1].iter().collect();
        assert!(inside.iter().any(|t| t.kind == Kind::Ident("b".into())));
        assert!(!inside.iter().any(|t| t.kind == Kind::Ident("c".into())));
    }

    #[test]
    fn tarjan_finds_the_cycle_and_leaves_the_chain() {
        // 0 -> 1 -> 2 -> 0, 2 -> 3.
        let mut s = tarjan(&[vec![1], vec![2], vec![0, 3], vec![]]);
        s.iter_mut().for_each(|c| c.sort());
        s.sort();
        assert_eq!(s, vec![vec![0, 1, 2], vec![3]]);
    }

    #[test]
    fn a_sibling_cycle_is_reported_and_a_parent_child_one_is_not() {
        let dir = std::env::temp_dir().join(format!("xtask-house-{}", std::process::id()));
        let w = |p: &str, s: &str| {
            let f = dir.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, s).unwrap();
        };
        w("Cargo.toml", "[workspace]\n");
        w("k/Cargo.toml", "[package]\n");
        w("k/src/lib.rs", "mod a; mod b;");
        w(
            "k/src/a/mod.rs",
            "mod x; use crate::b::B; pub struct A; fn f() { x::g(); }",
        );
        w("k/src/a/x.rs", "use super::A;");
        w("k/src/b.rs", "pub struct B; fn g() -> crate::a::A { todo!() }\n#[cfg(test)]\nmod t { use crate::c::C; }");
        let r = measure(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(r.cycles.len(), 1, "{r:?}");
        assert_eq!(r.cycles[0].modules, ["a", "b"]);
        assert_eq!(r.cycles[0].edges.len(), 2);
    }

    #[test]
    fn enums_are_read_with_their_variants() {
        let e = enums(&lex("#[derive(X)]\npub enum A { #[serde(alias = \"b\")] Read, Write(u8), Exec { x: u32 }, }\nenum B;"));
        assert_eq!(
            e,
            vec![(
                "A".to_string(),
                vec!["Read".to_string(), "Write".into(), "Exec".into()]
            )]
        );
    }

    #[test]
    fn concept_needles_skip_libc_and_match_paths() {
        let n = &CONCEPTS[0].code;
        assert!(!code_names(
            Path::new("a.rs"),
            &lex("unsafe { libc::mprotect(p, 1, 0) }"),
            n
        ));
        assert!(code_names(
            Path::new("a.rs"),
            &lex("Step::Mprotect(m) => 1"),
            n
        ));
        let thp = &CONCEPTS[1].code;
        assert!(code_names(
            Path::new("a.rs"),
            &lex("if b == Backing::Thp {}"),
            thp
        ));
        assert!(!code_names(Path::new("a.rs"), &lex("HostFault::Thp"), thp));
    }
}
