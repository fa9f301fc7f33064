//! Built-in guest programs (resources/guests/), compiled by build.rs and embedded.
//!
//! Each is a static no_std ELF linked at 2 MiB. [`load`] copies it into guest memory
//! with linux-loader's ELF loader and returns its 64-bit entry; every vCPU starts there
//! ([`ApStartup::SameEntry`](crate::vstate::ApStartup::SameEntry)) with RDI = vCPU index,
//! RDX = vCPU count and RSI = guest RAM below 4 GiB. They report over the ucall port
//! (devices::ucall). To add one, see resources/guests/README.md: it is one new file.

use crate::vstate::EntryPoint;
use linux_loader::loader::{Elf, KernelLoader};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// The guest `faultline run` runs when neither --kernel nor --guest is given.
pub const DEFAULT_GUEST: &str = "hello";
/// Most vCPUs a built-in guest supports (its runtime has this many stacks).
pub const MAX_GUEST_VCPUS: u32 = faultline_abi::MAX_VCPUS as u32;

/// A built-in guest program: a static no_std ELF.
#[derive(Debug)]
pub struct BuiltinGuest {
    /// Name (`--guest NAME`), the bin's file stem in resources/guests/src/bin/.
    pub name: &'static str,
    /// One-line description (the bin's first `//!` line).
    pub description: &'static str,
    /// The ELF image.
    pub elf: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// Looks a guest up by name.
pub fn find(name: &str) -> Option<&'static BuiltinGuest> {
    GUESTS.iter().find(|g| g.name == name)
}

/// A built-in guest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum GuestLoadError {
    /// The ELF did not load (too little guest RAM, or a broken build).
    #[error("Loading built-in guest {name} failed: {source}; try a larger --memory")]
    Elf {
        /// Guest name.
        name: &'static str,
        /// linux-loader's error.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// Too many vCPUs for the guest runtime.
    #[error("--vcpus {0}: built-in guests support at most {MAX_GUEST_VCPUS} vCPUs")]
    TooManyVcpus(u32),
}

/// Guest RAM below 4 GiB (what the guest may touch through its identity map).
pub fn ram_below_4g(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .filter(|r| r.start_addr().0 < (4 << 30))
        .map(|r| r.len().min((4 << 30) - r.start_addr().0))
        .sum()
}

/// Copies `guest` into `mem` and returns where its vCPUs start.
pub fn load(
    mem: &GuestMemoryMmap,
    guest: &'static BuiltinGuest,
    vcpus: u32,
) -> Result<EntryPoint, GuestLoadError> {
    if vcpus > MAX_GUEST_VCPUS {
        return Err(GuestLoadError::TooManyVcpus(vcpus));
    }
    let mut image = std::io::Cursor::new(guest.elf);
    let res = Elf::load(mem, None, &mut image, None).map_err(|source| GuestLoadError::Elf {
        name: guest.name,
        source,
    })?;
    Ok(EntryPoint::Long64 {
        rip: res.kernel_load.0,
        rsi: ram_below_4g(mem),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn every_guest_is_embedded_with_a_description() {
        for name in [
            "hello",
            "smp",
            "assert-fail",
            "exit-code",
            "triple-fault",
            "unknown-port",
        ] {
            let g = find(name).unwrap_or_else(|| panic!("guest {name} missing"));
            assert!(!g.description.is_empty(), "{name} has no //! description");
            assert_eq!(&g.elf[..4], b"\x7fELF");
        }
    }

    #[test]
    fn hello_loads_at_its_link_address() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let e = load(&mem, find("hello").unwrap(), 1).unwrap();
        assert_eq!(
            e,
            EntryPoint::Long64 {
                rip: 0x20_0000,
                rsi: 16 << 20
            }
        );
        let first: u8 = mem.read_obj(GuestAddress(0x20_0000)).unwrap();
        assert_ne!(first, 0, "code was copied");
    }

    #[test]
    fn too_many_vcpus_for_the_guest_runtime_is_an_error() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let e = load(&mem, find("hello").unwrap(), 65)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 64"), "{e}");
    }
}
