//! The source store: the guest data the VMM keeps so that a page an injected event dropped
//! is served back with its contents (as snapshot restore and post-copy migration do).

use std::collections::HashMap;

/// Bytes per stored page.
pub const PAGE: usize = 4096;

/// Guest pages by host virtual address (page aligned). Absent pages are zero.
#[derive(Debug, Default)]
pub struct SourceStore {
    pages: HashMap<u64, Box<[u8; PAGE]>>,
}

impl SourceStore {
    /// Keeps `data` as the contents of the page at `hva`; an all-zero page is simply
    /// forgotten (absent means zero).
    pub fn save(&mut self, hva: u64, data: &[u8; PAGE]) {
        if data.iter().all(|b| *b == 0) {
            self.pages.remove(&hva);
        } else {
            self.pages.insert(hva, Box::new(*data));
        }
    }

    /// The contents kept for the page at `hva`, if it holds data.
    pub fn get(&self, hva: u64) -> Option<&[u8; PAGE]> {
        self.pages.get(&hva).map(|b| &**b)
    }

    /// Forgets the page at `hva` (the guest has it mapped again and owns its contents).
    pub fn forget(&mut self, hva: u64) {
        self.pages.remove(&hva);
    }

    /// Takes the contents kept for the page at `hva` out of the store (a resolver installs
    /// them without holding the store's lock).
    pub fn take(&mut self, hva: u64) -> Option<Box<[u8; PAGE]>> {
        self.pages.remove(&hva)
    }

    /// Puts contents taken with [`SourceStore::take`] back after they could not be
    /// installed, unless newer contents were saved for the page meanwhile.
    pub fn put_back(&mut self, hva: u64, data: Box<[u8; PAGE]>) {
        self.pages.entry(hva).or_insert(data);
    }

    /// Pages holding data.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// No page holds data.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_pages_are_not_kept_and_data_is() {
        let mut s = SourceStore::default();
        s.save(0x1000, &[0; PAGE]);
        assert!(s.is_empty());
        let mut d = [0u8; PAGE];
        d[7] = 9;
        s.save(0x2000, &d);
        assert_eq!(s.get(0x2000).map(|p| p[7]), Some(9));
        assert_eq!(s.len(), 1);
        s.forget(0x2000);
        assert!(s.get(0x2000).is_none());
        s.save(0x3000, &d);
        let taken = s.take(0x3000).unwrap();
        assert!(s.get(0x3000).is_none());
        let mut newer = [0u8; PAGE];
        newer[7] = 1;
        s.save(0x3000, &newer);
        s.put_back(0x3000, taken);
        assert_eq!(s.get(0x3000).map(|p| p[7]), Some(1), "newer contents win");
        s.forget(0x3000);
        s.put_back(0x3000, Box::new(d));
        assert_eq!(s.get(0x3000).map(|p| p[7]), Some(9));
    }
}
