//! Helpers shared by the host and GUP unit tests.

use super::{Backing, DeviceSpec, Mm, MmConfig, MmapRequest, Prot};
use crate::notifier::{NotifierEvent, NotifierRange};
use crate::types::{Hva, KernelVersion, Level};

/// A 1G-aligned base address for test mappings.
pub const BASE: Hva = Hva(0x7f00_0000_0000);

pub fn mm(kernel: KernelVersion) -> Mm {
    Mm::new(MmConfig {
        kernel,
        ..Default::default()
    })
}

pub fn anon(mm: &mut Mm, len: u64, thp: bool) -> Hva {
    let mut req = MmapRequest::anon(BASE, len);
    req.hugepage = thp;
    mm.mmap(req).expect("mmap anon")
}

pub fn device(mm: &mut Mm, at: Hva, len: u64, shared: bool, spec: DeviceSpec) -> Hva {
    mm.mmap(MmapRequest {
        addr: Some(at),
        len,
        prot: Prot::RW,
        shared,
        backing: Backing::Device(spec),
        node: None,
        hugepage: false,
    })
    .expect("mmap device")
}

/// `(event, start, end)` triples of a range list.
pub fn triples(r: &[NotifierRange]) -> Vec<(NotifierEvent, u64, u64)> {
    r.iter().map(|r| (r.event, r.start.0, r.end.0)).collect()
}

pub const M2: u64 = Level::Pmd2M.size();
pub const G1: u64 = Level::Pud1G.size();

/// A user write at `hva` that must succeed.
pub fn w(mm: &mut Mm, hva: Hva) {
    mm.user_access(hva, true, &mut crate::notifier::NoNotifier)
        .unwrap();
}

/// The model's invariants hold (no GUP references outstanding).
pub fn ok(mm: &Mm) {
    mm.check_invariants(&std::collections::BTreeMap::new())
        .unwrap();
}
