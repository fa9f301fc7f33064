//! Physical frames: folios with order, refcount, mapcount, pincount, node and zone
//! (normal or ZONE_DEVICE with a pgmap), the shared zero page and the huge zero folio,
//! and the frame allocator.
//!
//! Storage: a slab of `Folio` records and a dense `pfn -> folio` index (4 bytes per
//! frame). RAM pfns start at [`RAM_BASE_PFN`]; every pfn outside the memmap has no struct
//! page (`pfn_valid()` is false): that is where device I/O pfns live.
//!
//! # Divergence
//! PageAnonExclusive is kept per folio, not per subpage; large-folio mapcounts are one
//! total (`folio_mapcount()`), not entire + per-page. Allocation is a bump allocator with
//! per-order free lists (no buddy merging); the node is a folio attribute (pfn ranges are
//! not tied to nodes).

use crate::types::{Level, NodeId, Pfn};
use serde::{Deserialize, Serialize};

/// First pfn of modelled RAM (1 TiB physical): pfns below are free for device I/O ranges.
pub const RAM_BASE_PFN: u64 = 1 << 28;
/// pfns reserved for the memmap (RAM + ZONE_DEVICE): 1 TiB.
pub const RAM_MAX_PAGES: u64 = 1 << 28;

/// The zone of a frame.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Zone {
    /// ZONE_NORMAL.
    Normal,
    /// ZONE_DEVICE (pmem / device-dax), with a `dev_pagemap`.
    Device,
}

/// Folio flag bits.
pub(crate) mod ff {
    pub const ANON: u16 = 1 << 0;
    pub const ANON_EXCLUSIVE: u16 = 1 << 1;
    pub const DIRTY: u16 = 1 << 2;
    pub const REFERENCED: u16 = 1 << 3;
    pub const ZERO: u16 = 1 << 4;
    pub const HUGE_ZERO: u16 = 1 << 5;
    pub const RESERVED: u16 = 1 << 6;
    pub const PAGECACHE: u16 = 1 << 7;
    pub const SECRETMEM: u16 = 1 << 8;
    pub const KSM: u16 = 1 << 9;
    pub const HWPOISON: u16 = 1 << 10;
    pub const LAZYFREE: u16 = 1 << 11;
    /// A driver holds one reference (pages it remaps into a VM_PFNMAP).
    pub const DRIVER: u16 = 1 << 12;
    /// A hugetlb folio (`folio_test_hugetlb()`).
    pub const HUGETLB: u16 = 1 << 13;
}

/// One folio (`struct folio`), 40 bytes.
#[derive(Clone, Debug)]
pub(crate) struct Folio {
    /// Head pfn.
    pub pfn: u64,
    /// `folio_ref_count()`.
    pub refcount: i32,
    /// `folio_mapcount()`: number of page-table entries mapping any part of it.
    pub mapcount: i32,
    /// `folio_maybe_dma_pinned()` counter (`_pincount`).
    pub pincount: i32,
    /// Page-cache file id (0: none).
    pub file: u32,
    /// Page-cache index (first page).
    pub index: u32,
    pub flags: u16,
    pub node: u16,
    /// dev_pagemap id + 1 (0: none).
    pub pgmap: u16,
    pub order: u8,
    pub zone: Zone,
}

impl Folio {
    pub fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }
    pub fn nr_pages(&self) -> u64 {
        1 << self.order
    }
}

/// A `struct dev_pagemap`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pgmap {
    /// First pfn.
    pub start: Pfn,
    /// Pages.
    pub pages: u64,
    /// False once killed (`kill_dev_pagemap()`): `get_dev_pagemap()` fails.
    pub alive: bool,
    /// References held through `get_dev_pagemap()`.
    pub refs: i64,
}

/// What a folio looks like from outside (for KVM and tests).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct FolioInfo {
    /// Head pfn.
    pub head: Pfn,
    /// Folio order.
    pub order: u8,
    /// `folio_ref_count()`.
    pub refcount: i32,
    /// `folio_mapcount()`.
    pub mapcount: i32,
    /// Pins (`FOLL_PIN`).
    pub pincount: i32,
    /// NUMA node.
    pub node: NodeId,
    /// Zone.
    pub zone: Zone,
    /// `folio_test_anon()`.
    pub anon: bool,
    /// PageAnonExclusive.
    pub anon_exclusive: bool,
    /// `PageReserved()` (the zero page; ZONE_DEVICE pages in 6.12).
    pub reserved: bool,
    /// `is_zero_pfn()`.
    pub zero: bool,
    /// `is_huge_zero_folio()`.
    pub huge_zero: bool,
    /// Folio dirty flag.
    pub dirty: bool,
    /// PG_referenced.
    pub referenced: bool,
    /// `get_dev_pagemap()` would succeed (ZONE_DEVICE only).
    pub pgmap_alive: Option<bool>,
    /// `folio_test_hugetlb()`.
    #[serde(default)]
    pub hugetlb: bool,
    /// `folio_test_ksm()`.
    #[serde(default)]
    pub ksm: bool,
}

/// Allocation failure injection (`TestEnv::fail_alloc_after()` in spirit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocFailure {
    /// Every THP (order-9+) allocation fails (`vma_alloc_anon_folio_pmd()` returns NULL).
    pub thp: bool,
    /// After this many more successful order-0 allocations, order-0 allocations fail.
    pub base_after: Option<u64>,
}

/// The frame allocator and the folio slab.
#[derive(Clone, Debug)]
pub(crate) struct Frames {
    pub folios: Vec<Folio>,
    free_ids: Vec<u32>,
    /// Index pfn - RAM_BASE_PFN -> folio id + 1 (0: no folio).
    map: Vec<u32>,
    next: u64,
    free: [Vec<u64>; 3],
    pub pgmaps: Vec<Pgmap>,
    pub zero_pfn: Pfn,
    pub huge_zero_pfn: Pfn,
    pub fail: AllocFailure,
    /// Pages currently allocated (not counting the zero pages).
    pub allocated_pages: u64,
    pub freed_folios: u64,
    /// When set, [`Frames::free`] logs `(head pfn, pages)` of each freed folio into
    /// `freed_log` (the scenario runner's page contents forget exactly those pages), up to
    /// [`FREED_LOG_MAX`] entries, past which `freed_log_overflow` is set instead.
    pub log_frees: bool,
    pub freed_log: Vec<(u64, u64)>,
    pub freed_log_overflow: bool,
}

/// Entries [`Frames::freed_log`] keeps before it only records an overflow.
pub(crate) const FREED_LOG_MAX: usize = 1 << 16;

fn order_slot(order: u8) -> usize {
    match order {
        0 => 0,
        9 => 1,
        _ => 2,
    }
}

impl Frames {
    pub fn new() -> Self {
        let mut f = Frames {
            folios: Vec::new(),
            free_ids: Vec::new(),
            map: Vec::new(),
            next: 0,
            free: [Vec::new(), Vec::new(), Vec::new()],
            pgmaps: Vec::new(),
            zero_pfn: Pfn(0),
            huge_zero_pfn: Pfn(0),
            fail: AllocFailure::default(),
            allocated_pages: 0,
            freed_folios: 0,
            log_frees: false,
            freed_log: Vec::new(),
            freed_log_overflow: false,
        };
        let hz = f.raw_alloc(9, NodeId(0), Zone::Normal).expect("huge zero");
        f.folios[hz].flags = ff::HUGE_ZERO | ff::RESERVED;
        f.huge_zero_pfn = Pfn(f.folios[hz].pfn);
        let z = f.raw_alloc(0, NodeId(0), Zone::Normal).expect("zero page");
        f.folios[z].flags = ff::ZERO | ff::RESERVED;
        f.zero_pfn = Pfn(f.folios[z].pfn);
        f.allocated_pages = 0;
        f
    }

    /// Bytes used by the slab and the pfn index.
    pub fn bytes(&self) -> u64 {
        (self.folios.capacity() * std::mem::size_of::<Folio>()
            + self.map.capacity() * 4
            + self.free_ids.capacity() * 4
            + self.free.iter().map(|v| v.capacity() * 8).sum::<usize>()) as u64
    }

    fn raw_alloc(&mut self, order: u8, node: NodeId, zone: Zone) -> Option<usize> {
        let n = 1u64 << order;
        // ZONE_DEVICE ranges are contiguous: never from the free lists.
        let reuse = if zone == Zone::Normal {
            self.free[order_slot(order)].pop()
        } else {
            None
        };
        let rel = if let Some(r) = reuse {
            r
        } else {
            let r = (self.next + n - 1) & !(n - 1);
            if r + n > RAM_MAX_PAGES {
                return None;
            }
            // Pages skipped for alignment go to the order-0 free list.
            for p in self.next..r {
                self.free[0].push(p);
            }
            self.next = r + n;
            r
        };
        let folio = Folio {
            pfn: RAM_BASE_PFN + rel,
            refcount: 1,
            mapcount: 0,
            pincount: 0,
            file: 0,
            index: 0,
            flags: 0,
            node: node.0,
            pgmap: 0,
            order,
            zone,
        };
        let id = self.store(folio);
        let end = usize::try_from(rel + n).expect("pfn index fits usize");
        if self.map.len() < end {
            self.map.resize(end, 0);
        }
        let start = usize::try_from(rel).expect("pfn index fits usize");
        let tag = u32::try_from(id + 1).expect("folio ids fit u32");
        self.map[start..end].fill(tag);
        self.allocated_pages += n;
        Some(id)
    }

    /// Puts a new folio record in a freed slot, or a new one; returns its id.
    fn store(&mut self, folio: Folio) -> usize {
        match self.free_ids.pop() {
            Some(id) => {
                let id = id as usize;
                self.folios[id] = folio;
                id
            }
            None => {
                self.folios.push(folio);
                self.folios.len() - 1
            }
        }
    }

    /// Allocates a folio (refcount 1, unmapped). Honours failure injection.
    pub fn alloc(&mut self, order: u8, node: NodeId) -> Option<usize> {
        if order > 0 && self.fail.thp {
            return None;
        }
        if order == 0 {
            if let Some(n) = self.fail.base_after.as_mut() {
                if *n == 0 {
                    return None;
                }
                *n -= 1;
            }
        }
        self.raw_alloc(order, node, Zone::Normal)
    }

    /// Creates `pages` ZONE_DEVICE pages (folios of `order`) behind a new pgmap.
    /// `idle_refcount` is 1 on 6.12 (the extra ZONE_DEVICE reference), 0 from 6.17.
    pub fn add_device_memory(
        &mut self,
        pages: u64,
        order: u8,
        idle_refcount: i32,
    ) -> Option<(Pfn, u16)> {
        let align = (1u64 << order) - 1;
        if ((self.next + align) & !align) + pages + align > RAM_MAX_PAGES {
            return None;
        }
        let pg = u16::try_from(self.pgmaps.len() + 1).ok()?;
        let mut first = None;
        let step = 1u64 << order;
        let mut done = 0;
        while done < pages {
            let id = self.raw_alloc(order, NodeId(0), Zone::Device)?;
            let f = &mut self.folios[id];
            f.pgmap = pg;
            f.refcount = idle_refcount;
            f.flags |= ff::RESERVED;
            if first.is_none() {
                first = Some(Pfn(f.pfn));
            }
            done += step;
        }
        self.allocated_pages -= done;
        let start = first.unwrap_or(Pfn(RAM_BASE_PFN));
        self.pgmaps.push(Pgmap {
            start,
            pages,
            alive: true,
            refs: 0,
        });
        Some((start, pg))
    }

    /// Allocates `pages` contiguous order-0 RAM pages owned by a driver (refcount 1 each,
    /// flag DRIVER): what a driver remaps into a VM_PFNMAP with `remap_pfn_range()`.
    pub fn alloc_driver_pages(&mut self, pages: u64, node: NodeId) -> Option<Pfn> {
        let start = self.next;
        if start + pages > RAM_MAX_PAGES {
            return None;
        }
        // Force fresh, contiguous pfns: temporarily hide the free lists.
        let saved = std::mem::take(&mut self.free[0]);
        let mut first = None;
        for _ in 0..pages {
            let id = self.raw_alloc(0, node, Zone::Normal)?;
            self.folios[id].flags |= ff::DRIVER;
            first.get_or_insert(Pfn(self.folios[id].pfn));
        }
        let mut spill = std::mem::replace(&mut self.free[0], saved);
        self.free[0].append(&mut spill);
        first
    }

    /// Splits the large folio `id` into order-0 folios (`__split_huge_page()` (mm/huge_memory.c)):
    /// every subpage gets its own record with the head's flags, node and zone; the caller sets
    /// their counts. Returns the ids, subpage 0 first (it keeps `id`).
    pub fn split_folio(&mut self, id: usize) -> Vec<usize> {
        let head = self.folios[id].clone();
        let n = head.nr_pages();
        let mut ids = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        self.folios[id].order = 0;
        ids.push(id);
        for i in 1..n {
            let mut f = head.clone();
            f.pfn = head.pfn + i;
            f.order = 0;
            f.index = head
                .index
                .saturating_add(u32::try_from(i).unwrap_or(u32::MAX));
            let nid = self.store(f);
            let rel = usize::try_from(head.pfn + i - RAM_BASE_PFN).unwrap_or(usize::MAX);
            if let Some(slot) = self.map.get_mut(rel) {
                *slot = u32::try_from(nid + 1).unwrap_or(0);
            }
            ids.push(nid);
        }
        ids
    }

    /// The folio id of the folio containing `pfn` (`page_folio(pfn_to_page(pfn))`
    /// (include/linux/page-flags.h)).
    #[inline]
    pub fn folio_of(&self, pfn: Pfn) -> Option<usize> {
        let rel = pfn.0.checked_sub(RAM_BASE_PFN)?;
        let tag = *self.map.get(usize::try_from(rel).ok()?)?;
        if tag == 0 {
            None
        } else {
            Some(tag as usize - 1)
        }
    }

    /// `pfn_valid()` (include/linux/mmzone.h): the pfn has a struct page (RAM or ZONE_DEVICE within
    /// the memmap).
    pub fn pfn_valid(&self, pfn: Pfn) -> bool {
        pfn.0 >= RAM_BASE_PFN && pfn.0 < RAM_BASE_PFN + RAM_MAX_PAGES
    }

    /// `is_zero_pfn()` (include/linux/pgtable.h): the shared zero page.
    pub fn is_zero_pfn(&self, pfn: Pfn) -> bool {
        pfn == self.zero_pfn
    }

    /// Inside the huge zero folio (`is_huge_zero_pmd()` / `is_huge_zero_folio()`,
    /// include/linux/huge_mm.h, by pfn).
    pub fn is_huge_zero_pfn(&self, pfn: Pfn) -> bool {
        pfn.align_down(Level::Pmd2M) == self.huge_zero_pfn
    }

    /// Frees a folio whose refcount dropped to 0 (`free_unref_folios()`); ZONE_DEVICE pages
    /// stay with their pgmap (`free_zone_device_folio()`).
    fn free(&mut self, id: usize) {
        let f = &self.folios[id];
        if f.zone == Zone::Device || f.has(ff::ZERO) || f.has(ff::HUGE_ZERO) {
            return;
        }
        let n = f.nr_pages();
        let rel = f.pfn - RAM_BASE_PFN;
        let (s, e) = (
            usize::try_from(rel).expect("fits"),
            usize::try_from(rel + n).expect("fits"),
        );
        self.map[s..e].fill(0);
        self.free[order_slot(f.order)].push(rel);
        self.free_ids.push(u32::try_from(id).expect("fits"));
        self.allocated_pages -= n;
        self.freed_folios += 1;
        if self.log_frees {
            if self.freed_log.len() < FREED_LOG_MAX {
                self.freed_log.push((RAM_BASE_PFN + rel, n));
            } else {
                self.freed_log_overflow = true;
            }
        }
    }

    /// `folio_get()` (include/linux/mm.h).
    pub fn get(&mut self, id: usize, refs: i32) {
        self.folios[id].refcount += refs;
    }

    /// `folio_put_refs()` (include/linux/mm.h): frees at 0.
    pub fn put(&mut self, id: usize, refs: i32) {
        let f = &mut self.folios[id];
        f.refcount -= refs;
        debug_assert!(f.refcount >= 0, "folio refcount underflow: {f:?}");
        if f.refcount == 0 {
            self.free(id);
        }
    }

    /// `folio_try_get()` (include/linux/page_ref.h) / `folio_ref_try_add()`: fails when the
    /// refcount is 0 (being freed or frozen).
    #[inline]
    pub fn try_get(&mut self, id: usize, refs: i32) -> bool {
        let f = &mut self.folios[id];
        if f.refcount <= 0 {
            return false;
        }
        f.refcount += refs;
        true
    }

    pub fn info(&self, id: usize) -> FolioInfo {
        let f = &self.folios[id];
        FolioInfo {
            head: Pfn(f.pfn),
            order: f.order,
            refcount: f.refcount,
            mapcount: f.mapcount,
            pincount: f.pincount,
            node: NodeId(f.node),
            zone: f.zone,
            anon: f.has(ff::ANON),
            anon_exclusive: f.has(ff::ANON_EXCLUSIVE),
            reserved: f.has(ff::RESERVED),
            zero: f.has(ff::ZERO),
            huge_zero: f.has(ff::HUGE_ZERO),
            dirty: f.has(ff::DIRTY),
            referenced: f.has(ff::REFERENCED),
            pgmap_alive: (f.pgmap != 0).then(|| self.pgmaps[usize::from(f.pgmap) - 1].alive),
            hugetlb: f.has(ff::HUGETLB),
            ksm: f.has(ff::KSM),
        }
    }

    /// `get_dev_pagemap(pfn)` (mm/memremap.c): Some(pgmap id) while the pgmap is alive.
    pub fn get_dev_pagemap(&mut self, pfn: Pfn) -> Option<u16> {
        let id = self.folio_of(pfn)?;
        let pg = self.folios[id].pgmap;
        if pg == 0 {
            return None;
        }
        let p = &mut self.pgmaps[usize::from(pg) - 1];
        if !p.alive {
            return None;
        }
        p.refs += 1;
        Some(pg)
    }

    /// `put_dev_pagemap()` (include/linux/memremap.h).
    pub fn put_dev_pagemap(&mut self, pg: u16) {
        self.pgmaps[usize::from(pg) - 1].refs -= 1;
    }

    /// Ids of live folios (allocated, not free), excluding the zero pages.
    pub fn live_ids(&self) -> impl Iterator<Item = usize> + '_ {
        let free: std::collections::HashSet<u32> = self.free_ids.iter().copied().collect();
        (0..self.folios.len()).filter(move |i| {
            !free.contains(&u32::try_from(*i).expect("fits"))
                && !self.folios[*i].has(ff::ZERO)
                && !self.folios[*i].has(ff::HUGE_ZERO)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Models `folio_try_get()` (include/linux/page_ref.h): a frozen/freeing folio (refcount
    /// 0) cannot be grabbed.
    #[test]
    fn try_get_fails_at_refcount_zero_and_free_reuses_pfns() {
        let mut fr = Frames::new();
        let id = fr.alloc(0, NodeId(0)).unwrap();
        let pfn = Pfn(fr.folios[id].pfn);
        assert!(fr.try_get(id, 1));
        fr.put(id, 2);
        assert_eq!(fr.folio_of(pfn), None, "freed folio leaves the pfn index");
        assert!(!fr.try_get(id, 1));
        let id2 = fr.alloc(0, NodeId(1)).unwrap();
        assert_eq!(fr.folios[id2].pfn, pfn.0, "free list reused");
    }

    #[test]
    fn thp_allocation_failure_is_injectable() {
        let mut fr = Frames::new();
        fr.fail.thp = true;
        assert!(fr.alloc(9, NodeId(0)).is_none());
        assert!(fr.alloc(0, NodeId(0)).is_some());
    }
}
