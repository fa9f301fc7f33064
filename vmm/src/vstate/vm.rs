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
    /// Declared first: dropped (the VM closed) before the guest RAM it maps.
    fd: VmFd,
    /// The guest RAM registered as memslots, kept alive as long as the VM.
    registered: std::sync::Mutex<Vec<GuestMemoryMmap>>,
}

impl Vm {
    /// Creates the VM for `vcpus` vCPUs and registers every region of `mem` as a memslot.
    pub fn new(kvm: &Kvm, vcpus: u32, mem: &GuestMemoryMmap) -> Result<Vm, VmError> {
        let vm = Vm::create(kvm, vcpus)?;
        vm.create_pit()?;
        vm.register_memory(mem)?;
        Ok(vm)
    }

    /// Creates the VM for `vcpus` vCPUs with its irqchip, without a PIT or guest RAM yet:
    /// [`Vm::register_memory`] and [`Vm::create_pit`] add them, possibly from another thread
    /// while vCPUs are being created (see `launch::Vmm::new`); both must be done before a
    /// vCPU runs.
    pub fn create(kvm: &Kvm, vcpus: u32) -> Result<Vm, VmError> {
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
        Ok(Vm {
            fd,
            registered: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Creates the in-kernel PIT (i8254, speaker port dummy), which Linux uses to calibrate
    /// its clocks. KVM allows it after the vCPUs exist (QEMU creates it then too). Like a
    /// memslot, it waits for an SRCU grace period (kvm_io_bus_register_dev()).
    pub fn create_pit(&self) -> Result<(), VmError> {
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(VmError::Pit)
    }

    /// Registers every region of `mem` as a memslot (slot = region index; call it once).
    ///
    /// Each KVM_SET_USER_MEMORY_REGION waits for an SRCU grace period
    /// (kvm_swap_active_memslots() in virt/kvm/kvm_main.c): a fixed cost of several ms on a
    /// busy nested host whatever the slot's size, which is why the launch flow runs this
    /// concurrently with vCPU setup.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        self.registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(mem.clone());
        for (slot, region) in (0u32..).zip(mem.iter()) {
            let r = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region is a live mapping of `memory_size` bytes owned by `mem`;
            // a clone of `mem` is kept in `self.registered` above, so the mapping outlives
            // the VM (the fd field is dropped first).
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

    /// KVM, or `None` after a skip (see [`crate::testing::skip`]).
    fn kvm() -> Option<Kvm> {
        let test = crate::testing::current_test_name(module_path!());
        crate::testing::kvm_or_skip(&test).then(|| Kvm::new().expect("open /dev/kvm"))
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
