//! The VM: creation, in-kernel irqchip and PIT, memslots, irqfds.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

/// Guest-physical address of the TSS pages KVM needs on Intel (3 pages, below 4 GiB, in
/// the MMIO hole so they never overlap RAM).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Guest-physical address of the identity-map page KVM needs on Intel (one page below the TSS).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Errors creating or setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// KVM_CREATE_VM failed.
    #[error("KVM_CREATE_VM failed: {0}")]
    Create(#[source] kvm_ioctls::Error),
    /// KVM_SET_TSS_ADDR failed.
    #[error("KVM_SET_TSS_ADDR failed: {0}")]
    TssAddress(#[source] kvm_ioctls::Error),
    /// KVM_SET_IDENTITY_MAP_ADDR failed.
    #[error("KVM_SET_IDENTITY_MAP_ADDR failed: {0}")]
    IdentityMap(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_IRQCHIP failed.
    #[error("KVM_CREATE_IRQCHIP failed: {0}")]
    Irqchip(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_PIT2 failed.
    #[error("KVM_CREATE_PIT2 failed: {0}")]
    Pit(#[source] kvm_ioctls::Error),
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("Failed to register memslot {slot} (guest {gpa:#x}, {size:#x} bytes): {source}")]
    Memslot {
        /// Slot number.
        slot: u32,
        /// Guest-physical start.
        gpa: u64,
        /// Size.
        size: u64,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_IRQFD failed.
    #[error("Failed to register irqfd for GSI {gsi}: {source}")]
    Irqfd {
        /// GSI.
        gsi: u32,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Too many vCPUs for this KVM.
    #[error("--vcpus {requested}: above KVM's limit of {max} vCPUs (KVM_CAP_MAX_VCPUS); use --vcpus {max} or fewer")]
    TooManyVcpus {
        /// Requested.
        requested: u32,
        /// KVM_CAP_MAX_VCPUS.
        max: usize,
    },
}

/// A KVM VM with an in-kernel irqchip and PIT, and its guest RAM registered.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    /// Creates the VM for `vcpus` vCPUs and registers every region of `mem` as a memslot.
    pub fn new(kvm: &Kvm, vcpus: u32, mem: &GuestMemoryMmap) -> Result<Vm, VmError> {
        let max = kvm.get_max_vcpus();
        if vcpus as usize > max {
            return Err(VmError::TooManyVcpus {
                requested: vcpus,
                max,
            });
        }
        let fd = kvm.create_vm().map_err(VmError::Create)?;
        fd.set_tss_address(usize::try_from(KVM_TSS_ADDRESS).unwrap_or(usize::MAX))
            .map_err(VmError::TssAddress)?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(VmError::IdentityMap)?;
        fd.create_irq_chip().map_err(VmError::Irqchip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::Pit)?;
        let vm = Vm { fd };
        vm.register_memory(mem)?;
        Ok(vm)
    }

    fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in (0u32..).zip(mem.iter()) {
            let r = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region is a live mapping of `memory_size` bytes owned by `mem`,
            // which outlives the VM (the Vmm keeps both and drops the VM first).
            unsafe { self.fd.set_user_memory_region(r) }.map_err(|source| VmError::Memslot {
                slot,
                gpa: r.guest_phys_addr,
                size: r.memory_size,
                source,
            })?;
        }
        Ok(())
    }

    /// Routes writes to `evt` to interrupt line `gsi` (KVM_IRQFD).
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| VmError::Irqfd { gsi, source })
    }

    /// The VM fd (for vCPU creation and stats).
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn kvm() -> Option<Kvm> {
        match Kvm::new() {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("SKIPPED: /dev/kvm is not usable ({e})");
                None
            }
        }
    }

    #[test]
    fn more_vcpus_than_kvm_allows_names_the_limit() {
        let Some(kvm) = kvm() else { return };
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let max = kvm.get_max_vcpus();
        let e = Vm::new(&kvm, u32::try_from(max).unwrap() + 1, &mem)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("KVM_CAP_MAX_VCPUS") && e.contains(&max.to_string()),
            "{e}"
        );
    }

    #[test]
    fn vm_with_ram_above_the_hole_registers_two_memslots() {
        let Some(kvm) = kvm() else { return };
        let mem = crate::memory::create_guest_memory(&crate::config::MemoryConfig {
            size: (3 << 30) + (16 << 20),
            backing: crate::config::Backing::Anon,
        })
        .unwrap();
        assert_eq!(mem.num_regions(), 2);
        Vm::new(&kvm, 1, &mem).unwrap();
    }
}
