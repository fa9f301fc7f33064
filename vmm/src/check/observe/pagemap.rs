//! Host page state behind an address of this process.
//!
//! What it observes: whether a page is mapped, its pfn, whether it is exclusively mapped,
//! soft-dirty, uffd-wp, file-backed or shared-anon, and the kind and size of the folio behind
//! it (zero page, huge zero page, anon, anon THP head or tail, shmem, file, hugetlb, KSM,
//! pfnmap).
//!
//! Where it comes from: /proc/self/pagemap (one u64 per page: `pte_to_pagemap_entry()` and
//! `pagemap_pmd_range()`, fs/proc/task_mmu.c; bits in Documentation/admin-guide/mm/pagemap.rst),
//! /proc/kpageflags (one u64 per pfn: `stable_page_flags()`, fs/proc/page.c; KPF_* from
//! include/uapi/linux/kernel-page-flags.h) and /proc/self/smaps for the VMA (VmFlags,
//! KernelPageSize, AnonHugePages, Rss).
//!
//! Limits: pfns read as 0 and /proc/kpageflags is unreadable without CAP_SYS_ADMIN; then
//! the kind is [`PageKind::Unknown`] (present and the pagemap bits still work). The folio
//! size of a THP is found by scanning kpageflags for the compound head and its tails (up to
//! [`MAX_THP_PAGES`] pages; folios are not pinned meanwhile, so a split racing the read can
//! give a smaller size). A PMD mapping and a PTE-mapped THP look the same here. Each reading
//! is a snapshot; the page may change right after.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// The base page size.
pub const PAGE_SIZE: u64 = 4096;
/// A PMD-sized THP in base pages (HPAGE_PMD_NR on x86-64).
pub const MAX_THP_PAGES: u64 = 512;

/// Reading host page state failed.
#[derive(Debug, thiserror::Error)]
pub enum PagemapError {
    /// A proc file could not be opened or read.
    #[error("{path}: {source}; pagemap needs a Linux /proc (pfns and kpageflags need root)")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// No VMA contains the address.
    #[error("No VMA of this process contains {addr:#x}; map it before asking for its page state")]
    NoVma {
        /// The address.
        addr: u64,
    },
    /// `states()` was given a zero step.
    #[error("Page-state step must be at least 1 byte (got 0)")]
    ZeroStep,
}

fn io(path: &str) -> impl FnOnce(std::io::Error) -> PagemapError + '_ {
    move |source| PagemapError::Io {
        path: path.into(),
        source,
    }
}

/// One /proc/self/pagemap entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PagemapEntry(pub u64);

impl PagemapEntry {
    /// Bit 63: page present in RAM (PM_PRESENT).
    pub const PRESENT: u64 = 1 << 63;
    /// Bit 62: page swapped (PM_SWAP).
    pub const SWAPPED: u64 = 1 << 62;
    /// Bit 61: file page or shared anon (PM_FILE).
    pub const FILE_OR_SHARED: u64 = 1 << 61;
    /// Bit 58: guard region (PM_GUARD_REGION, 6.15+).
    pub const GUARD: u64 = 1 << 58;
    /// Bit 57: uffd-wp write-protected (PM_UFFD_WP).
    pub const UFFD_WP: u64 = 1 << 57;
    /// Bit 56: exclusively mapped (PM_MMAP_EXCLUSIVE).
    pub const EXCLUSIVE: u64 = 1 << 56;
    /// Bit 55: soft-dirty (PM_SOFT_DIRTY).
    pub const SOFT_DIRTY: u64 = 1 << 55;
    /// Bits 0-54: pfn when present; swap type (0-4) and offset (5-54) when swapped.
    pub const PFN_MASK: u64 = (1 << 55) - 1;

    fn bit(self, b: u64) -> bool {
        self.0 & b != 0
    }
    /// Present in RAM.
    pub fn present(self) -> bool {
        self.bit(Self::PRESENT)
    }
    /// Swapped out.
    pub fn swapped(self) -> bool {
        self.bit(Self::SWAPPED)
    }
    /// File page or shared anon.
    pub fn file_or_shared(self) -> bool {
        self.bit(Self::FILE_OR_SHARED)
    }
    /// Mapped by this process only.
    pub fn exclusive(self) -> bool {
        self.bit(Self::EXCLUSIVE)
    }
    /// Write-protected by userfaultfd.
    pub fn uffd_wp(self) -> bool {
        self.bit(Self::UFFD_WP)
    }
    /// Soft-dirty.
    pub fn soft_dirty(self) -> bool {
        self.bit(Self::SOFT_DIRTY)
    }
    /// Guard region (MADV_GUARD_INSTALL).
    pub fn guard(self) -> bool {
        self.bit(Self::GUARD)
    }
    /// The pfn when present (0 without CAP_SYS_ADMIN: then `None`).
    pub fn pfn(self) -> Option<u64> {
        let pfn = self.0 & Self::PFN_MASK;
        (self.present() && pfn != 0).then_some(pfn)
    }
    /// `(type, offset)` of a swapped page.
    pub fn swap(self) -> Option<(u8, u64)> {
        self.swapped().then(|| {
            let v = self.0 & Self::PFN_MASK;
            ((v & 0x1f) as u8, v >> 5)
        })
    }
}

/// One /proc/kpageflags entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KpageFlags(pub u64);

#[allow(missing_docs)]
impl KpageFlags {
    pub const LOCKED: u32 = 0;
    pub const REFERENCED: u32 = 2;
    pub const UPTODATE: u32 = 3;
    pub const DIRTY: u32 = 4;
    pub const LRU: u32 = 5;
    pub const ACTIVE: u32 = 6;
    pub const SLAB: u32 = 7;
    pub const WRITEBACK: u32 = 8;
    pub const RECLAIM: u32 = 9;
    pub const BUDDY: u32 = 10;
    pub const MMAP: u32 = 11;
    pub const ANON: u32 = 12;
    pub const SWAPCACHE: u32 = 13;
    pub const SWAPBACKED: u32 = 14;
    pub const COMPOUND_HEAD: u32 = 15;
    pub const COMPOUND_TAIL: u32 = 16;
    pub const HUGE: u32 = 17;
    pub const UNEVICTABLE: u32 = 18;
    pub const HWPOISON: u32 = 19;
    pub const NOPAGE: u32 = 20;
    pub const KSM: u32 = 21;
    pub const THP: u32 = 22;
    pub const OFFLINE: u32 = 23;
    pub const ZERO_PAGE: u32 = 24;
    pub const IDLE: u32 = 25;
    pub const PGTABLE: u32 = 26;
    pub const RESERVED: u32 = 32;
    pub const MLOCKED: u32 = 33;
    pub const SOFTDIRTY: u32 = 40;

    const NAMES: [(u32, &'static str); 29] = [
        (Self::LOCKED, "LOCKED"),
        (Self::REFERENCED, "REFERENCED"),
        (Self::UPTODATE, "UPTODATE"),
        (Self::DIRTY, "DIRTY"),
        (Self::LRU, "LRU"),
        (Self::ACTIVE, "ACTIVE"),
        (Self::SLAB, "SLAB"),
        (Self::WRITEBACK, "WRITEBACK"),
        (Self::RECLAIM, "RECLAIM"),
        (Self::BUDDY, "BUDDY"),
        (Self::MMAP, "MMAP"),
        (Self::ANON, "ANON"),
        (Self::SWAPCACHE, "SWAPCACHE"),
        (Self::SWAPBACKED, "SWAPBACKED"),
        (Self::COMPOUND_HEAD, "COMPOUND_HEAD"),
        (Self::COMPOUND_TAIL, "COMPOUND_TAIL"),
        (Self::HUGE, "HUGE"),
        (Self::UNEVICTABLE, "UNEVICTABLE"),
        (Self::HWPOISON, "HWPOISON"),
        (Self::NOPAGE, "NOPAGE"),
        (Self::KSM, "KSM"),
        (Self::THP, "THP"),
        (Self::OFFLINE, "OFFLINE"),
        (Self::ZERO_PAGE, "ZERO_PAGE"),
        (Self::IDLE, "IDLE"),
        (Self::PGTABLE, "PGTABLE"),
        (Self::RESERVED, "RESERVED"),
        (Self::MLOCKED, "MLOCKED"),
        (Self::SOFTDIRTY, "SOFTDIRTY"),
    ];

    /// Whether KPF bit `bit` is set.
    pub fn has(self, bit: u32) -> bool {
        bit < 64 && self.0 & (1u64 << bit) != 0
    }

    /// The names of the set bits, `ANON|THP|COMPOUND_HEAD`.
    pub fn names(self) -> String {
        let v: Vec<&str> = Self::NAMES
            .iter()
            .filter(|(b, _)| self.has(*b))
            .map(|(_, n)| *n)
            .collect();
        v.join("|")
    }

    /// Part of a compound page (head or tail).
    pub fn compound(self) -> bool {
        self.has(Self::COMPOUND_HEAD) || self.has(Self::COMPOUND_TAIL)
    }
}

/// What kind of memory backs a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PageKind {
    /// Nothing mapped (no pagemap present/swap bit).
    NotPresent,
    /// Swapped out.
    Swapped,
    /// The shared zero page (KPF_ZERO_PAGE).
    Zero,
    /// The huge zero page (KPF_ZERO_PAGE|KPF_THP).
    HugeZero,
    /// An anon small folio.
    Anon,
    /// An anon large folio (KPF_THP; PMD-sized or mTHP: see the size).
    AnonThp {
        /// This page is the folio's head.
        head: bool,
    },
    /// shmem/memfd (swap-backed, not anon).
    Shmem,
    /// A page-cache page of a regular file.
    File,
    /// hugetlbfs (KPF_HUGE).
    Hugetlb {
        /// This page is the folio's head.
        head: bool,
    },
    /// A KSM-merged page (KPF_KSM).
    Ksm,
    /// A VM_PFNMAP mapping (no struct page behind it for the kernel's purposes).
    Pfnmap,
    /// Present, but the flags are not readable (no CAP_SYS_ADMIN) or match nothing above.
    Unknown,
}

/// Decides the kind from the pagemap entry, the kpageflags of its pfn and the VMA's flags.
pub fn classify(entry: PagemapEntry, flags: Option<KpageFlags>, pfnmap_vma: bool) -> PageKind {
    if !entry.present() {
        return if entry.swapped() {
            PageKind::Swapped
        } else {
            PageKind::NotPresent
        };
    }
    if pfnmap_vma {
        return PageKind::Pfnmap;
    }
    let Some(f) = flags else {
        return PageKind::Unknown;
    };
    let head = f.has(KpageFlags::COMPOUND_HEAD);
    if f.has(KpageFlags::ZERO_PAGE) {
        return if f.has(KpageFlags::THP) {
            PageKind::HugeZero
        } else {
            PageKind::Zero
        };
    }
    if f.has(KpageFlags::KSM) {
        return PageKind::Ksm;
    }
    if f.has(KpageFlags::HUGE) {
        return PageKind::Hugetlb { head };
    }
    if f.has(KpageFlags::ANON) {
        return if f.has(KpageFlags::THP) || f.compound() {
            PageKind::AnonThp { head }
        } else {
            PageKind::Anon
        };
    }
    if f.has(KpageFlags::NOPAGE) {
        return PageKind::Unknown;
    }
    if f.has(KpageFlags::SWAPBACKED) {
        return PageKind::Shmem;
    }
    if f.has(KpageFlags::MMAP) || f.has(KpageFlags::LRU) || entry.file_or_shared() {
        return PageKind::File;
    }
    PageKind::Unknown
}

/// The state of one page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageState {
    /// The address asked about.
    pub addr: u64,
    /// Present in RAM.
    pub present: bool,
    /// Swapped.
    pub swapped: bool,
    /// The pfn (`None` when not present or hidden without CAP_SYS_ADMIN).
    pub pfn: Option<u64>,
    /// Mapped by this process only (PM_MMAP_EXCLUSIVE).
    pub exclusive: bool,
    /// Soft-dirty.
    pub soft_dirty: bool,
    /// uffd-wp.
    pub uffd_wp: bool,
    /// File page or shared anon (PM_FILE).
    pub file_or_shared: bool,
    /// The raw kpageflags of the pfn, when readable.
    pub flags: Option<KpageFlags>,
    /// The kind of memory.
    pub kind: PageKind,
    /// The size of the folio (or hugetlb page) behind the page, in bytes; 4K for a small
    /// page, 0 when not present.
    pub size: u64,
    /// The folio's head pfn, for a compound page.
    pub head_pfn: Option<u64>,
}

/// A VMA from /proc/self/smaps.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Vma {
    /// Start address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// `rwxp`.
    pub perms: String,
    /// File offset.
    pub offset: u64,
    /// Inode (0 for anon).
    pub inode: u64,
    /// Path or `[heap]`, `[vvar]`, ...; empty for anon.
    pub name: String,
    /// KernelPageSize in bytes.
    pub kernel_page_size: Option<u64>,
    /// Rss in bytes.
    pub rss: Option<u64>,
    /// AnonHugePages in bytes.
    pub anon_huge_pages: Option<u64>,
    /// ShmemPmdMapped in bytes.
    pub shmem_pmd_mapped: Option<u64>,
    /// The two-letter VmFlags (`rd wr mr mw me ac hg pf io ...`).
    pub vm_flags: Vec<String>,
}

impl Vma {
    /// VmFlags contains `flag`.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.vm_flags.iter().any(|f| f == flag)
    }
    /// VM_PFNMAP (`pf`).
    pub fn is_pfnmap(&self) -> bool {
        self.has_flag("pf")
    }
    /// MADV_HUGEPAGE was applied (`hg`).
    pub fn is_hugepage_advised(&self) -> bool {
        self.has_flag("hg")
    }
    /// A hugetlbfs VMA (`ht`).
    pub fn is_hugetlb(&self) -> bool {
        self.has_flag("ht")
    }
    /// Whether the VMA contains `addr`.
    pub fn contains(&self, addr: u64) -> bool {
        (self.start..self.end).contains(&addr)
    }
}

/// A parsed /proc/self/smaps.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Smaps {
    /// VMAs in address order.
    pub vmas: Vec<Vma>,
}

fn kb_field(v: &str) -> Option<u64> {
    v.trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?
        .checked_mul(1024)
}

fn is_vma_header(line: &str) -> Option<Vma> {
    let mut it = line.split_whitespace();
    let (range, perms, offset, _dev, inode) =
        (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
    let (s, e) = range.split_once('-')?;
    let name: Vec<&str> = it.collect();
    Some(Vma {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        perms: perms.to_string(),
        offset: u64::from_str_radix(offset, 16).ok()?,
        inode: inode.parse().ok()?,
        name: name.join(" "),
        ..Vma::default()
    })
}

impl Smaps {
    /// Parses smaps text; lines it does not know are skipped.
    pub fn parse(text: &str) -> Self {
        let mut vmas: Vec<Vma> = Vec::new();
        for line in text.lines() {
            if let Some((key, val)) = line.split_once(':') {
                if let Some(v) = vmas.last_mut() {
                    if !key.contains(' ') && !key.contains('-') {
                        match key {
                            "KernelPageSize" => v.kernel_page_size = kb_field(val),
                            "Rss" => v.rss = kb_field(val),
                            "AnonHugePages" => v.anon_huge_pages = kb_field(val),
                            "ShmemPmdMapped" => v.shmem_pmd_mapped = kb_field(val),
                            "VmFlags" => {
                                v.vm_flags = val.split_whitespace().map(String::from).collect();
                            }
                            _ => {}
                        }
                        continue;
                    }
                }
            }
            if let Some(v) = is_vma_header(line) {
                vmas.push(v);
            }
        }
        Self { vmas }
    }

    /// Reads /proc/self/smaps.
    pub fn read() -> Result<Self, PagemapError> {
        const P: &str = "/proc/self/smaps";
        Ok(Self::parse(&std::fs::read_to_string(P).map_err(io(P))?))
    }

    /// The VMA containing `addr`, read now.
    pub fn vma_at(addr: u64) -> Result<Vma, PagemapError> {
        Self::read()?
            .find(addr)
            .cloned()
            .ok_or(PagemapError::NoVma { addr })
    }

    /// The VMA containing `addr` in this snapshot.
    pub fn find(&self, addr: u64) -> Option<&Vma> {
        self.vmas.iter().find(|v| v.contains(addr))
    }

    /// The first VMA with this name (`[vvar]`, `[heap]`, a path).
    pub fn named(&self, name: &str) -> Option<&Vma> {
        self.vmas.iter().find(|v| v.name == name)
    }
}

/// Clears the soft-dirty bits of every page of this process (`echo 4 > clear_refs`).
pub fn clear_soft_dirty() -> Result<(), PagemapError> {
    const P: &str = "/proc/self/clear_refs";
    std::fs::write(P, "4").map_err(io(P))
}

/// Open handles on /proc/self/pagemap and /proc/kpageflags.
#[derive(Debug)]
pub struct PageMap {
    pagemap: File,
    kpageflags: Option<File>,
    /// Why kpageflags is not available, when it is not.
    pub kpageflags_error: Option<String>,
}

const PAGEMAP: &str = "/proc/self/pagemap";
const KPAGEFLAGS: &str = "/proc/kpageflags";

fn read_u64s(f: &File, index: u64, n: usize, path: &str) -> Result<Vec<u64>, PagemapError> {
    let mut buf = vec![0u8; n * 8];
    let off = index.checked_mul(8).ok_or_else(|| {
        io(path)(std::io::Error::other(format!(
            "index {index:#x} out of range"
        )))
    })?;
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(k) => done += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(path)(e)),
        }
    }
    Ok(buf[..done - done % 8]
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
        .collect())
}

impl PageMap {
    /// Opens /proc/self/pagemap (required) and /proc/kpageflags (optional: without it kinds
    /// read as [`PageKind::Unknown`] and `kpageflags_error` says why).
    pub fn open() -> Result<Self, PagemapError> {
        let pagemap = File::open(PAGEMAP).map_err(io(PAGEMAP))?;
        let (kpageflags, kpageflags_error) = match File::open(KPAGEFLAGS) {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(format!("{KPAGEFLAGS}: {e} (needs root)"))),
        };
        Ok(Self {
            pagemap,
            kpageflags,
            kpageflags_error,
        })
    }

    /// The raw pagemap entries of `n` pages from the page containing `addr`.
    pub fn entries(&self, addr: u64, n: usize) -> Result<Vec<PagemapEntry>, PagemapError> {
        let mut v: Vec<PagemapEntry> = read_u64s(&self.pagemap, addr / PAGE_SIZE, n, PAGEMAP)?
            .into_iter()
            .map(PagemapEntry)
            .collect();
        v.resize(n, PagemapEntry(0));
        Ok(v)
    }

    /// The kpageflags of `n` pfns from `pfn` (`None` without kpageflags).
    pub fn flags(&self, pfn: u64, n: usize) -> Result<Option<Vec<KpageFlags>>, PagemapError> {
        let Some(f) = &self.kpageflags else {
            return Ok(None);
        };
        Ok(Some(
            read_u64s(f, pfn, n, KPAGEFLAGS)?
                .into_iter()
                .map(KpageFlags)
                .collect(),
        ))
    }

    /// Finds the head pfn and size (in pages) of the compound folio containing `pfn`.
    fn folio_of(&self, pfn: u64, f: KpageFlags) -> Result<Option<(u64, u64)>, PagemapError> {
        let head = if f.has(KpageFlags::COMPOUND_HEAD) {
            pfn
        } else {
            let back = pfn.min(MAX_THP_PAGES - 1);
            let Some(before) = self.flags(pfn - back, to_usize(back + 1))? else {
                return Ok(None);
            };
            match before
                .iter()
                .rposition(|f| f.has(KpageFlags::COMPOUND_HEAD))
            {
                Some(i) => pfn - back + i as u64,
                None => return Ok(None),
            }
        };
        let Some(after) = self.flags(head + 1, to_usize(MAX_THP_PAGES - 1))? else {
            return Ok(None);
        };
        let tails = after
            .iter()
            .take_while(|f| f.has(KpageFlags::COMPOUND_TAIL))
            .count() as u64;
        Ok(Some((head, tails + 1)))
    }

    fn state_with(
        &self,
        addr: u64,
        entry: PagemapEntry,
        vma: Option<&Vma>,
        folio_cache: &mut Option<(u64, u64)>,
    ) -> Result<PageState, PagemapError> {
        let pfn = entry.pfn();
        let flags = match pfn {
            Some(p) => self.flags(p, 1)?.and_then(|v| v.first().copied()),
            None => None,
        };
        let pfnmap = vma.is_some_and(Vma::is_pfnmap);
        let kind = classify(entry, flags, pfnmap);
        let mut head_pfn = None;
        let size = match kind {
            PageKind::NotPresent | PageKind::Swapped => 0,
            PageKind::HugeZero => MAX_THP_PAGES * PAGE_SIZE,
            PageKind::Hugetlb { .. } => vma
                .and_then(|v| v.kernel_page_size)
                .unwrap_or(MAX_THP_PAGES * PAGE_SIZE),
            _ => match (pfn, flags) {
                (Some(p), Some(f)) if f.compound() => match folio_cache
                    .filter(|&(h, n)| f.has(KpageFlags::COMPOUND_TAIL) && (h..h + n).contains(&p))
                    .map_or_else(|| self.folio_of(p, f), |c| Ok(Some(c)))?
                {
                    Some((h, n)) => {
                        *folio_cache = Some((h, n));
                        head_pfn = Some(h);
                        n * PAGE_SIZE
                    }
                    None => PAGE_SIZE,
                },
                _ => vma.and_then(|v| v.kernel_page_size).unwrap_or(PAGE_SIZE),
            },
        };
        Ok(PageState {
            addr,
            present: entry.present(),
            swapped: entry.swapped(),
            pfn,
            exclusive: entry.exclusive(),
            soft_dirty: entry.soft_dirty(),
            uffd_wp: entry.uffd_wp(),
            file_or_shared: entry.file_or_shared(),
            flags,
            kind,
            size,
            head_pfn,
        })
    }

    /// The state of the page containing `addr`.
    pub fn state(&self, addr: u64) -> Result<PageState, PagemapError> {
        let smaps = Smaps::read()?;
        let entry = self.entries(addr, 1)?[0];
        self.state_with(addr, entry, smaps.find(addr), &mut None)
    }

    /// The states of `addr`, `addr + step`, ... below `addr + len` (one smaps read).
    pub fn states(&self, addr: u64, len: u64, step: u64) -> Result<Vec<PageState>, PagemapError> {
        if step == 0 {
            return Err(PagemapError::ZeroStep);
        }
        let smaps = Smaps::read()?;
        let end = addr.saturating_add(len);
        let first = addr / PAGE_SIZE;
        let last = end.saturating_sub(1) / PAGE_SIZE;
        if len == 0 {
            return Ok(Vec::new());
        }
        let entries = self.entries(addr, to_usize(last - first + 1))?;
        let mut out = Vec::new();
        let mut a = addr;
        let mut folio = None;
        while a < end {
            let e = entries[to_usize(a / PAGE_SIZE - first)];
            out.push(self.state_with(a, e, smaps.find(a), &mut folio)?);
            a = match a.checked_add(step) {
                Some(n) => n,
                None => break,
            };
        }
        Ok(out)
    }
}

impl PageKind {
    /// A short name without the head/tail detail: `anon-thp`, `huge-zero`, `hugetlb`, ...
    pub fn label(self) -> &'static str {
        match self {
            Self::NotPresent => "not-present",
            Self::Swapped => "swapped",
            Self::Zero => "zero",
            Self::HugeZero => "huge-zero",
            Self::Anon => "anon",
            Self::AnonThp { .. } => "anon-thp",
            Self::Shmem => "shmem",
            Self::File => "file",
            Self::Hugetlb { .. } => "hugetlb",
            Self::Ksm => "ksm",
            Self::Pfnmap => "pfnmap",
            Self::Unknown => "unknown",
        }
    }
}

/// Base pages of one (kind, folio size) in a [`PageSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageCount {
    /// [`PageKind::label`].
    pub kind: String,
    /// Folio (or hugetlb page) size in bytes; 0 for not present.
    pub size: u64,
    /// Base (4K) pages.
    pub pages: u64,
}

/// How many base pages of a range are backed by each (kind, folio size): the host page sizes
/// behind guest RAM, for reports where KVM's own level stats do not move.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PageSummary {
    /// Sorted by kind, then size.
    pub counts: Vec<PageCount>,
}

impl PageSummary {
    /// Base pages of `kind` (a label) in folios of `size` bytes.
    pub fn get(&self, kind: &str, size: u64) -> u64 {
        self.counts
            .iter()
            .find(|c| c.kind == kind && c.size == size)
            .map_or(0, |c| c.pages)
    }
}

impl PageMap {
    /// Counts every base page of `[addr, addr + len)` by kind and folio size.
    pub fn summary(&self, addr: u64, len: u64) -> Result<PageSummary, PagemapError> {
        let mut m = std::collections::BTreeMap::<(&'static str, u64), u64>::new();
        for st in self.states(addr & !(PAGE_SIZE - 1), len, PAGE_SIZE)? {
            *m.entry((st.kind.label(), st.size)).or_insert(0) += 1;
        }
        Ok(PageSummary {
            counts: m
                .into_iter()
                .map(|((kind, size), pages)| PageCount {
                    kind: kind.to_string(),
                    size,
                    pages,
                })
                .collect(),
        })
    }
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const fn kpf(bits: &[u32]) -> KpageFlags {
        let mut v = 0u64;
        let mut i = 0;
        while i < bits.len() {
            v |= 1 << bits[i];
            i += 1;
        }
        KpageFlags(v)
    }

    #[test]
    fn decodes_hand_built_pagemap_entries() {
        let e = PagemapEntry(
            PagemapEntry::PRESENT | PagemapEntry::EXCLUSIVE | PagemapEntry::SOFT_DIRTY | 0x1234,
        );
        assert!(e.present() && e.exclusive() && e.soft_dirty());
        assert!(!e.swapped() && !e.uffd_wp() && !e.file_or_shared());
        assert_eq!(e.pfn(), Some(0x1234));
        let hidden = PagemapEntry(PagemapEntry::PRESENT);
        assert_eq!(hidden.pfn(), None, "pfn 0 means hidden (no CAP_SYS_ADMIN)");
        let sw = PagemapEntry(PagemapEntry::SWAPPED | (77 << 5) | 3);
        assert_eq!(sw.swap(), Some((3, 77)));
        assert_eq!(sw.pfn(), None);
        let wp = PagemapEntry(
            PagemapEntry::PRESENT | PagemapEntry::UFFD_WP | PagemapEntry::FILE_OR_SHARED | 9,
        );
        assert!(wp.uffd_wp() && wp.file_or_shared());
    }

    #[test]
    fn classifies_hand_built_flags() {
        let p = PagemapEntry(PagemapEntry::PRESENT | 5);
        use KpageFlags as K;
        let cases = [
            (kpf(&[K::ZERO_PAGE]), PageKind::Zero),
            (
                kpf(&[K::ZERO_PAGE, K::THP, K::COMPOUND_HEAD]),
                PageKind::HugeZero,
            ),
            (
                kpf(&[K::ANON, K::MMAP, K::LRU, K::SWAPBACKED]),
                PageKind::Anon,
            ),
            (
                kpf(&[K::ANON, K::THP, K::COMPOUND_HEAD, K::MMAP]),
                PageKind::AnonThp { head: true },
            ),
            (
                kpf(&[K::ANON, K::THP, K::COMPOUND_TAIL, K::MMAP]),
                PageKind::AnonThp { head: false },
            ),
            (kpf(&[K::ANON, K::KSM, K::MMAP]), PageKind::Ksm),
            (
                kpf(&[K::HUGE, K::COMPOUND_HEAD]),
                PageKind::Hugetlb { head: true },
            ),
            (
                kpf(&[K::SWAPBACKED, K::MMAP, K::LRU, K::UPTODATE]),
                PageKind::Shmem,
            ),
            (kpf(&[K::MMAP, K::LRU, K::UPTODATE]), PageKind::File),
            (kpf(&[K::NOPAGE]), PageKind::Unknown),
        ];
        for (f, want) in cases {
            assert_eq!(classify(p, Some(f), false), want, "{}", f.names());
        }
        assert_eq!(classify(p, None, false), PageKind::Unknown);
        assert_eq!(
            classify(p, Some(kpf(&[K::RESERVED])), true),
            PageKind::Pfnmap
        );
        assert_eq!(classify(PagemapEntry(0), None, false), PageKind::NotPresent);
        assert_eq!(
            classify(PagemapEntry(PagemapEntry::SWAPPED), None, false),
            PageKind::Swapped
        );
        assert_eq!(kpf(&[K::ANON, K::THP]).names(), "ANON|THP");
    }

    #[test]
    fn parses_recorded_smaps() {
        let text = "\
7f0000000000-7f0000400000 rw-p 00000000 00:00 0 
Size:               4096 kB
KernelPageSize:        4 kB
Rss:                2048 kB
AnonHugePages:      2048 kB
VmFlags: rd wr mr mw me ac hg 
7ffd1000a000-7ffd1000e000 r--p 00000000 00:00 0                          [vvar]
Size:                 16 kB
KernelPageSize:        4 kB
Rss:                   0 kB
VmFlags: rd mr pf io de dd 
55d0c0000000-55d0c0001000 r--p 00001000 fe:01 1234   /usr/bin/my prog
KernelPageSize:        4 kB
VmFlags: rd mr mw me 
";
        let s = Smaps::parse(text);
        assert_eq!(s.vmas.len(), 3);
        let thp = s.find(0x7f00_0010_0000).unwrap();
        assert_eq!(thp.anon_huge_pages, Some(2 << 20));
        assert!(thp.is_hugepage_advised() && !thp.is_pfnmap());
        let vvar = s.named("[vvar]").unwrap();
        assert!(vvar.is_pfnmap());
        assert_eq!(vvar.kernel_page_size, Some(4096));
        assert_eq!(s.vmas[2].name, "/usr/bin/my prog");
        assert_eq!(s.vmas[2].offset, 0x1000);
        assert!(s.find(0x1000).is_none());
    }

    // ---- real tests on this host ----

    /// A leaked anon mapping of `len` bytes for other modules' tests; its address.
    pub(crate) fn anon_for_tests(len: usize) -> u64 {
        let m = Mapping::anon(len, 0).expect("mmap");
        let a = m.addr();
        std::mem::forget(m);
        a
    }

    struct Mapping {
        base: *mut u8,
        len: usize,
    }

    impl Mapping {
        fn anon(len: usize, extra_flags: i32) -> Option<Self> {
            // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra_flags,
                    -1,
                    0,
                )
            };
            (p != libc::MAP_FAILED).then(|| Self {
                base: p.cast(),
                len,
            })
        }
        fn addr(&self) -> u64 {
            self.base as u64
        }
        fn madvise(&self, off: usize, len: usize, advice: i32) {
            // SAFETY: the range lies inside this mapping.
            let rc = unsafe { libc::madvise(self.base.add(off).cast(), len, advice) };
            assert_eq!(
                rc,
                0,
                "madvise {advice}: {}",
                std::io::Error::last_os_error()
            );
        }
        fn read(&self, off: usize) -> u8 {
            assert!(off < self.len);
            // SAFETY: in bounds of a live readable mapping; volatile so the load happens.
            unsafe { std::ptr::read_volatile(self.base.add(off)) }
        }
        fn write(&self, off: usize, v: u8) {
            assert!(off < self.len);
            // SAFETY: in bounds of a live writable mapping.
            unsafe { std::ptr::write_volatile(self.base.add(off), v) }
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the mapping this value owns.
            unsafe { libc::munmap(self.base.cast(), self.len) };
        }
    }

    fn root_pagemap(test: &str) -> Option<PageMap> {
        let pm = PageMap::open().unwrap();
        if let Some(e) = &pm.kpageflags_error {
            eprintln!("SKIPPED {test}: {e}");
            return None;
        }
        Some(pm)
    }

    #[test]
    fn real_anon_4k_read_maps_zero_page_then_write_maps_exclusive_anon() {
        let Some(pm) = root_pagemap("real_anon_4k") else {
            return;
        };
        let m = Mapping::anon(64 << 10, 0).unwrap();
        m.madvise(0, m.len, libc::MADV_NOHUGEPAGE);
        assert_eq!(pm.state(m.addr()).unwrap().kind, PageKind::NotPresent);
        assert_eq!(m.read(0), 0);
        let s = pm.state(m.addr()).unwrap();
        assert_eq!(
            s.kind,
            PageKind::Zero,
            "{s:?} {}",
            s.flags.unwrap_or_default().names()
        );
        assert!(s.present && s.pfn.is_some());
        assert_eq!(s.size, PAGE_SIZE);
        m.write(0, 1);
        let s = pm.state(m.addr()).unwrap();
        assert_eq!(
            s.kind,
            PageKind::Anon,
            "{}",
            s.flags.unwrap_or_default().names()
        );
        assert!(s.exclusive && !s.file_or_shared);
        assert_eq!(s.size, PAGE_SIZE);
    }

    #[test]
    fn real_thp_read_maps_huge_zero_then_write_maps_a_thp() {
        let thp = crate::check::observe::host::HostConditions::read();
        let mode = thp.thp_enabled.value.unwrap_or_default();
        if mode == "never" || thp.use_zero_page.value != Some(true) {
            eprintln!(
                "SKIPPED real_thp: THP enabled={mode}, use_zero_page={:?}",
                thp.use_zero_page.value
            );
            return;
        }
        let Some(pm) = root_pagemap("real_thp") else {
            return;
        };
        const MB2: usize = 2 << 20;
        let m = Mapping::anon(3 * MB2, 0).unwrap();
        let off = (MB2 - (m.base as usize % MB2)) % MB2;
        let a = m.addr() + off as u64;
        m.madvise(off, MB2, libc::MADV_HUGEPAGE);
        assert_eq!(m.read(off + 5000), 0);
        let st = pm.states(a, MB2 as u64, MB2 as u64 / 4).unwrap();
        for s in &st {
            assert_eq!(
                s.kind,
                PageKind::HugeZero,
                "{:#x}: {}",
                s.addr,
                s.flags.unwrap_or_default().names()
            );
            assert_eq!(s.size, MB2 as u64);
        }
        m.write(off + 5000, 7);
        let st = pm.states(a, MB2 as u64, PAGE_SIZE).unwrap();
        if st[0].kind == PageKind::Anon {
            eprintln!("SKIPPED real_thp write half: no THP could be allocated (fragmented host?)");
            return;
        }
        assert_eq!(
            st[0].kind,
            PageKind::AnonThp { head: true },
            "{}",
            st[0].flags.unwrap_or_default().names()
        );
        let head = st[0].pfn.unwrap();
        for (i, s) in st.iter().enumerate().skip(1) {
            assert_eq!(s.kind, PageKind::AnonThp { head: false });
            assert_eq!(
                s.pfn,
                Some(head + i as u64),
                "a PMD THP is physically contiguous"
            );
            assert_eq!(s.head_pfn, Some(head));
        }
        assert!(st.iter().all(|s| s.size == MB2 as u64 && s.exclusive));
        let t = std::time::Instant::now();
        let sum = pm.summary(a, MB2 as u64).unwrap();
        eprintln!("summary of one THP in {:?}: {sum:?}", t.elapsed());
        assert_eq!(sum.get("anon-thp", MB2 as u64), 512);
        assert_eq!(sum.counts.len(), 1);
        assert!(serde_json::to_string(&sum).unwrap().contains("anon-thp"));
        let vma = Smaps::vma_at(a).unwrap();
        assert!(vma.is_hugepage_advised());
        assert!(vma.anon_huge_pages.unwrap() >= MB2 as u64);
        assert_eq!(m.read(off + 5000), 7);
    }

    #[test]
    fn real_memfd_write_maps_shmem() {
        let Some(pm) = root_pagemap("real_memfd") else {
            return;
        };
        let name = std::ffi::CString::new("faultline-observe").unwrap();
        // SAFETY: a valid NUL-terminated name; the returned fd is owned below.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: fd is a fresh memfd, owned by this File from now on.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(64 << 10).unwrap();
        // SAFETY: a new shared mapping of our own memfd.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                64 << 10,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let m = Mapping {
            base: p.cast(),
            len: 64 << 10,
        };
        m.write(4096, 3);
        let s = pm.state(m.addr() + 4096).unwrap();
        assert_eq!(
            s.kind,
            PageKind::Shmem,
            "{}",
            s.flags.unwrap_or_default().names()
        );
        assert!(s.file_or_shared);
        assert_eq!(pm.state(m.addr()).unwrap().kind, PageKind::NotPresent);
    }

    #[test]
    fn real_hugetlb_2m_write_maps_a_hugetlb_page() {
        let free = crate::check::observe::host::read_u64(
            "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages",
        )
        .unwrap_or(0);
        if free == 0 {
            eprintln!("SKIPPED real_hugetlb_2m: no free 2M huge pages (raise /proc/sys/vm/nr_hugepages as root)");
            return;
        }
        let Some(pm) = root_pagemap("real_hugetlb_2m") else {
            return;
        };
        let Some(m) = Mapping::anon(2 << 20, libc::MAP_HUGETLB) else {
            eprintln!(
                "SKIPPED real_hugetlb_2m: mmap(MAP_HUGETLB) failed: {}",
                std::io::Error::last_os_error()
            );
            return;
        };
        m.write(8192, 1);
        let s = pm.state(m.addr() + 8192).unwrap();
        assert_eq!(
            s.kind,
            PageKind::Hugetlb { head: false },
            "{}",
            s.flags.unwrap_or_default().names()
        );
        assert_eq!(s.size, 2 << 20);
        assert_eq!(
            pm.state(m.addr()).unwrap().kind,
            PageKind::Hugetlb { head: true }
        );
    }

    #[test]
    fn real_soft_dirty_clears_and_sets_again() {
        let pm = PageMap::open().unwrap();
        let m = Mapping::anon(8192, 0).unwrap();
        m.write(0, 1);
        if !pm.state(m.addr()).unwrap().soft_dirty {
            eprintln!("SKIPPED real_soft_dirty: a fresh write is not soft-dirty (CONFIG_MEM_SOFT_DIRTY off?)");
            return;
        }
        clear_soft_dirty().unwrap();
        let s = pm.state(m.addr()).unwrap();
        assert!(s.present && !s.soft_dirty, "{s:?}");
        m.write(0, 2);
        assert!(pm.state(m.addr()).unwrap().soft_dirty);
    }

    #[test]
    fn real_vvar_is_a_pfnmap_vma() {
        let smaps = Smaps::read().unwrap();
        let Some(vvar) = smaps.named("[vvar]") else {
            eprintln!("SKIPPED real_vvar: no [vvar] VMA in /proc/self/smaps");
            return;
        };
        assert!(
            vvar.is_pfnmap() && vvar.has_flag("io"),
            "{:?}",
            vvar.vm_flags
        );
        let pm = PageMap::open().unwrap();
        let st = pm
            .states(vvar.start, vvar.end - vvar.start, PAGE_SIZE)
            .unwrap();
        assert!(!st.is_empty());
        for s in &st {
            assert!(
                matches!(s.kind, PageKind::Pfnmap | PageKind::NotPresent),
                "{s:?}"
            );
        }
    }

    #[test]
    fn states_rejects_a_zero_step_and_handles_empty_ranges() {
        let pm = PageMap::open().unwrap();
        assert!(matches!(
            pm.states(0x1000, 4096, 0),
            Err(PagemapError::ZeroStep)
        ));
        assert!(pm.states(0x1000, 0, 4096).unwrap().is_empty());
        assert!(matches!(
            Smaps::vma_at(8),
            Err(PagemapError::NoVma { addr: 8 })
        ));
    }
}
