//! An address bus: ranges of port-I/O or MMIO addresses, each owned by one device.
//!
//! Models what KVM leaves to userspace on `KVM_EXIT_IO` / `KVM_EXIT_MMIO`: find the device
//! whose range holds the address, hand it the offset into its range. An access nobody
//! claims is logged once per address (to stderr and to [`Bus::unknown_accesses`]) and is
//! otherwise ignored; reads of it return all ones. The guest picks the addresses, so only
//! the first [`MAX_UNKNOWN_LOGGED`] distinct ones are kept and logged; the rest are counted
//! ([`Bus::unknown_unlogged`]), so a guest probing every address cannot grow the VMM's
//! memory or flood its stderr.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Most distinct unclaimed addresses a [`Bus`] records and logs.
pub const MAX_UNKNOWN_LOGGED: usize = 64;

/// A device on a [`Bus`].
pub trait BusDevice: Send {
    /// A read of `data.len()` bytes at `offset` into the device's range, by vCPU `vcpu`.
    fn read(&mut self, vcpu: usize, offset: u64, data: &mut [u8]);
    /// A write of `data` at `offset` into the device's range, by vCPU `vcpu`.
    fn write(&mut self, vcpu: usize, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else holds it (e.g. the event loop).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A range that overlaps one already on the bus.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("Bus range {base:#x}+{len:#x} overlaps an existing device or is empty")]
pub struct BusInsertError {
    /// Base of the rejected range.
    pub base: u64,
    /// Length of the rejected range.
    pub len: u64,
}

/// Ranges of addresses mapped to devices.
pub struct Bus {
    kind: &'static str,
    devices: BTreeMap<u64, (u64, SharedDevice)>,
    unknown: Mutex<BTreeSet<u64>>,
    unlogged: AtomicU64,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("kind", &self.kind)
            .field(
                "ranges",
                &self
                    .devices
                    .iter()
                    .map(|(b, (l, _))| (*b, *l))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Bus {
    /// An empty bus; `kind` ("port", "MMIO") names it in log lines.
    pub fn new(kind: &'static str) -> Self {
        Bus {
            kind,
            devices: BTreeMap::new(),
            unknown: Mutex::new(BTreeSet::new()),
            unlogged: AtomicU64::new(0),
        }
    }

    /// Maps `base..base+len` to `dev`.
    pub fn insert(&mut self, base: u64, len: u64, dev: SharedDevice) -> Result<(), BusInsertError> {
        let err = BusInsertError { base, len };
        let end = base.checked_add(len).ok_or(err.clone())?;
        if len == 0 {
            return Err(err);
        }
        if let Some((&b, &(l, _))) = self.devices.range(..end).next_back() {
            if b + l > base {
                return Err(err);
            }
        }
        self.devices.insert(base, (len, dev));
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let (&b, (l, dev)) = self.devices.range(..=addr).next_back()?;
        let off = addr - b;
        // Checked: a guest access near the top of the address space must not overflow.
        let end = off.checked_add(u64::try_from(size).ok()?)?;
        (end <= *l).then_some((off, dev))
    }

    fn note_unknown(&self, vcpu: usize, addr: u64, what: &str) {
        let mut seen = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&addr) {
            return;
        }
        if seen.len() >= MAX_UNKNOWN_LOGGED {
            if self.unlogged.fetch_add(1, Ordering::Relaxed) == 0 {
                eprintln!(
                    "faultline: vCPU {vcpu}: more than {MAX_UNKNOWN_LOGGED} unknown {} addresses accessed; further ones are not logged",
                    self.kind
                );
            }
            return;
        }
        seen.insert(addr);
        eprintln!(
            "faultline: vCPU {vcpu}: {what} of unknown {} address {addr:#x} ignored (logged once per address)",
            self.kind
        );
    }

    /// Dispatches a read; returns whether a device handled it.
    pub fn read(&self, vcpu: usize, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((off, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(vcpu, off, data);
                true
            }
            None => {
                data.fill(0xff);
                self.note_unknown(vcpu, addr, "read");
                false
            }
        }
    }

    /// Dispatches a write; returns whether a device handled it.
    pub fn write(&self, vcpu: usize, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((off, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(vcpu, off, data);
                true
            }
            None => {
                self.note_unknown(vcpu, addr, "write");
                false
            }
        }
    }

    /// Accesses to unclaimed addresses beyond the first [`MAX_UNKNOWN_LOGGED`] distinct
    /// ones (not recorded, not logged).
    pub fn unknown_unlogged(&self) -> u64 {
        self.unlogged.load(Ordering::Relaxed)
    }

    /// The first [`MAX_UNKNOWN_LOGGED`] distinct unclaimed addresses accessed so far.
    pub fn unknown_accesses(&self) -> Vec<u64> {
        self.unknown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Vec<(usize, u64, Vec<u8>)>);
    impl BusDevice for Recorder {
        fn read(&mut self, _vcpu: usize, offset: u64, data: &mut [u8]) {
            data.fill(u8::try_from(offset).unwrap_or(0));
        }
        fn write(&mut self, vcpu: usize, offset: u64, data: &[u8]) {
            self.0.push((vcpu, offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_with_offsets() {
        let rec = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new("port");
        bus.insert(0x3f8, 8, rec.clone()).unwrap();
        assert!(bus.write(1, 0x3fa, &[9]));
        let mut b = [0u8; 1];
        assert!(bus.read(0, 0x3ff, &mut b));
        assert_eq!(b, [7]);
        assert_eq!(rec.lock().unwrap().0, vec![(1, 2, vec![9])]);
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::new("port");
        let d = || -> SharedDevice { Arc::new(Mutex::new(Recorder::default())) };
        bus.insert(0x60, 5, d()).unwrap();
        assert!(bus.insert(0x64, 1, d()).is_err());
        assert!(bus.insert(0x5f, 2, d()).is_err());
        assert!(bus.insert(0x70, 0, d()).is_err());
        bus.insert(0x65, 1, d()).unwrap();
    }

    #[test]
    fn unknown_accesses_are_recorded_once_and_read_all_ones() {
        let bus = Bus::new("port");
        let mut b = [0u8; 2];
        assert!(!bus.read(0, 0x80, &mut b));
        assert_eq!(b, [0xff, 0xff]);
        assert!(!bus.write(0, 0x80, &[1]));
        assert!(!bus.write(0, 0x81, &[1]));
        assert_eq!(bus.unknown_accesses(), vec![0x80, 0x81]);
    }

    #[test]
    fn unknown_addresses_are_recorded_up_to_the_cap_then_counted() {
        let bus = Bus::new("MMIO");
        let mut b = [0u8; 4];
        for i in 0..10_000u64 {
            bus.read(0, 0xd000_0000 + i * 4, &mut b);
            bus.write(0, 0xd000_0000 + i * 4, &b);
        }
        let seen = bus.unknown_accesses();
        assert_eq!(seen.len(), MAX_UNKNOWN_LOGGED);
        assert_eq!(seen[0], 0xd000_0000);
        assert_eq!(
            bus.unknown_unlogged(),
            2 * (10_000 - MAX_UNKNOWN_LOGGED as u64)
        );
    }

    #[test]
    fn access_at_the_top_of_the_address_space_does_not_overflow() {
        let rec = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new("MMIO");
        bus.insert(0, u64::MAX, rec.clone()).unwrap();
        let mut b = [0u8; 8];
        assert!(!bus.read(0, u64::MAX, &mut b));
        assert!(!bus.write(0, u64::MAX - 3, &b));
        assert!(bus.write(0, u64::MAX - 8, &b));
        assert_eq!(rec.lock().unwrap().0.len(), 1);
    }

    #[test]
    fn access_straddling_a_range_end_is_unknown() {
        let rec = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new("port");
        bus.insert(0xe0, 4, rec).unwrap();
        assert!(!bus.write(0, 0xe2, &[0; 4]));
    }
}
