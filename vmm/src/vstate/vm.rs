//! The VM: creation, in-kernel irqchip and PIT, memslots, irqfds.

use kvm_bindings::{
    kvm_clear_dirty_log, kvm_enable_cap, kvm_pit_config, kvm_userspace_memory_region,
    KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_CAP_MEMORY_FAULT_INFO,
    KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY,
    KVM_PIT_SPEAKER_DUMMY,
};
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
    /// KVM_GET_DIRTY_LOG failed.
    #[error("KVM_GET_DIRTY_LOG on memslot {slot} failed: {source}; the slot needs dirty logging (KVM_MEM_LOG_DIRTY_PAGES) and must exist")]
    GetDirtyLog {
        /// Slot number.
        slot: u32,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_CLEAR_DIRTY_LOG failed.
    #[error("KVM_CLEAR_DIRTY_LOG on memslot {slot} (pages {first_page}+{num_pages}) failed: {source}; first_page must be a multiple of 64 and the range inside the slot")]
    ClearDirtyLog {
        /// Slot number.
        slot: u32,
        /// First page of the range.
        first_page: u64,
        /// Pages in the range.
        num_pages: u32,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The bitmap given to clear_dirty_log is too short for the range.
    #[error("clear_dirty_log on memslot {slot}: a bitmap of {words} u64 words is too short for {num_pages} pages; pass at least (num_pages + 63) / 64 words")]
    DirtyBitmapTooShort {
        /// Slot number.
        slot: u32,
        /// Words given.
        words: usize,
        /// Pages in the range.
        num_pages: u32,
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
    /// KVM_CAP_MEMORY_FAULT_INFO is offered: an EFAULT from KVM_RUN may carry
    /// `KVM_EXIT_MEMORY_FAULT` info.
    memory_fault_info: bool,
    /// KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 was enabled: KVM_GET_DIRTY_LOG does not clear,
    /// KVM_CLEAR_DIRTY_LOG does.
    manual_dirty_log: bool,
}

/// `KVM_CLEAR_DIRTY_LOG`, `_IOWR(KVMIO, 0xc0, struct kvm_clear_dirty_log)`
/// (include/uapi/linux/kvm.h).
const KVM_CLEAR_DIRTY_LOG: libc::c_ulong = 0xc018_aec0;

/// Memslot flags for [`Vm::set_memslot`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemslotFlags {
    /// KVM_MEM_READONLY: guest writes exit as KVM_EXIT_MMIO.
    pub readonly: bool,
    /// KVM_MEM_LOG_DIRTY_PAGES: KVM tracks written pages for [`Vm::get_dirty_log`].
    pub dirty_log: bool,
}

impl From<u32> for MemslotFlags {
    /// From `KVM_MEM_*` bits (other bits, e.g. KVM_MEM_GUEST_MEMFD, are not supported and
    /// dropped).
    fn from(bits: u32) -> Self {
        MemslotFlags {
            readonly: bits & KVM_MEM_READONLY != 0,
            dirty_log: bits & KVM_MEM_LOG_DIRTY_PAGES != 0,
        }
    }
}

impl MemslotFlags {
    /// The `kvm_userspace_memory_region.flags` bits.
    pub fn bits(self) -> u32 {
        let mut f = 0;
        if self.readonly {
            f |= KVM_MEM_READONLY;
        }
        if self.dirty_log {
            f |= KVM_MEM_LOG_DIRTY_PAGES;
        }
        f
    }
}

impl Vm {
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
        let offered = |cap: u32| fd.check_extension_raw(libc::c_ulong::from(cap)) > 0;
        // KVM_CAP_MEMORY_FAULT_INFO is informational (kvm_vm_ioctl_check_extension() in
        // arch/x86/kvm/x86.c reports it; there is nothing to KVM_ENABLE_CAP), so "enabling"
        // it is checking for it.
        let memory_fault_info = offered(KVM_CAP_MEMORY_FAULT_INFO);
        // Models kvm_vm_ioctl_enable_cap_generic()'s KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 case:
        // with the enable bit (and not KVM_DIRTY_LOG_INITIALLY_SET) GET no longer clears.
        let manual_dirty_log = offered(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) && {
            let mut cap = kvm_enable_cap {
                cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                ..Default::default()
            };
            cap.args[0] = u64::from(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE);
            fd.enable_cap(&cap).is_ok()
        };
        Ok(Vm {
            fd,
            registered: std::sync::Mutex::new(Vec::new()),
            memory_fault_info,
            manual_dirty_log,
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

    /// Creates, moves or changes the flags of memslot `slot` (KVM_SET_USER_MEMORY_REGION,
    /// `kvm_set_memory_region()` in virt/kvm/kvm_main.c): `size` bytes of guest-physical
    /// memory at `gpa` backed by the host mapping at `host_addr`. A slot that exists may only
    /// change its gpa (a move, same size and host_addr) or its dirty-log flag; KVM refuses
    /// anything else with EINVAL. `size` 0 deletes the slot (see [`Vm::delete_memslot`]).
    ///
    /// Contract: `host_addr..host_addr + size` is a mapping the caller made and keeps mapped
    /// until the slot is deleted or the VM is dropped; KVM only checks that the range is a
    /// valid user range, and the guest can read and write whatever is mapped there.
    pub fn set_memslot(
        &self,
        slot: u32,
        gpa: u64,
        size: u64,
        host_addr: u64,
        flags: impl Into<MemslotFlags>,
    ) -> Result<(), VmError> {
        let r = kvm_userspace_memory_region {
            slot,
            flags: flags.into().bits(),
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host_addr,
        };
        // SAFETY: the caller keeps the mapping alive for the slot's lifetime (the contract
        // above); KVM validates the range itself and faults it in through GUP, so a bad
        // range fails the ioctl or the guest access, never this process.
        unsafe { self.fd.set_user_memory_region(r) }.map_err(|source| VmError::Memslot {
            slot,
            gpa,
            size,
            source,
        })
    }

    /// Deletes memslot `slot` (KVM_SET_USER_MEMORY_REGION with size 0; KVM zaps its SPTEs and
    /// waits for an SRCU grace period, `kvm_delete_memslot()`).
    pub fn delete_memslot(&self, slot: u32) -> Result<(), VmError> {
        self.set_memslot(slot, 0, 0, 0, MemslotFlags::default())
    }

    /// The dirty bitmap of memslot `slot` of `size` bytes (KVM_GET_DIRTY_LOG,
    /// `kvm_get_dirty_log_protect()`): bit `i` of word `i / 64` is page `i` of the slot.
    /// When [`Vm::dirty_log_get_clears`] is true, this also clears the log and
    /// write-protects the pages again; otherwise [`Vm::clear_dirty_log`] does that.
    pub fn get_dirty_log(&self, slot: u32, size: u64) -> Result<Vec<u64>, VmError> {
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        self.fd
            .get_dirty_log(slot, size)
            .map_err(|source| VmError::GetDirtyLog { slot, source })
    }

    /// Clears the dirty bits set in `bitmap` for pages `first_page..first_page + num_pages`
    /// of memslot `slot` and write-protects those pages again (KVM_CLEAR_DIRTY_LOG,
    /// `kvm_clear_dirty_log_protect()`). Only with manual dirty-log protection
    /// ([`Vm::dirty_log_get_clears`] false); without it KVM_GET_DIRTY_LOG already cleared the
    /// log and this returns `Ok(false)` without an ioctl. `Ok(true)`: KVM cleared.
    pub fn clear_dirty_log(
        &self,
        slot: u32,
        first_page: u64,
        num_pages: u32,
        bitmap: &[u64],
    ) -> Result<bool, VmError> {
        if !self.manual_dirty_log {
            return Ok(false);
        }
        if (bitmap.len() as u64) * 64 < u64::from(num_pages) {
            return Err(VmError::DirtyBitmapTooShort {
                slot,
                words: bitmap.len(),
                num_pages,
            });
        }
        let mut arg = kvm_clear_dirty_log {
            slot,
            num_pages,
            first_page,
            ..Default::default()
        };
        arg.__bindgen_anon_1.dirty_bitmap = bitmap.as_ptr() as *mut libc::c_void;
        // SAFETY: KVM_CLEAR_DIRTY_LOG reads `arg` and (num_pages + 63) / 64 words from
        // `dirty_bitmap`, which `bitmap` holds (checked above) and which stays borrowed for
        // the call; KVM does not write to it.
        let ret = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                KVM_CLEAR_DIRTY_LOG as _,
                &arg,
            )
        };
        if ret < 0 {
            return Err(VmError::ClearDirtyLog {
                slot,
                first_page,
                num_pages,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(true)
    }

    /// Whether KVM_GET_DIRTY_LOG clears the log itself: true on a KVM without
    /// KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2; false when faultline enabled it at VM creation
    /// (then [`Vm::clear_dirty_log`] clears).
    pub fn dirty_log_get_clears(&self) -> bool {
        !self.manual_dirty_log
    }

    /// Whether this KVM offers KVM_CAP_MEMORY_FAULT_INFO (an EFAULT from KVM_RUN may then
    /// carry `KVM_EXIT_MEMORY_FAULT` gpa/size/flags, see [`super::hook::MemoryFault`]).
    pub fn memory_fault_info(&self) -> bool {
        self.memory_fault_info
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
        let max = kvm.get_max_vcpus();
        let e = Vm::create(&kvm, u32::try_from(max).unwrap() + 1)
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
        let vm = Vm::create(&kvm, 1).unwrap();
        vm.create_pit().unwrap();
        vm.register_memory(&mem).unwrap();
    }

    #[test]
    fn memslots_move_change_flags_log_dirty_pages_and_delete() {
        let Some(kvm) = kvm() else { return };
        let vm = Vm::create(&kvm, 1).unwrap();
        let map = vm_memory::MmapRegion::<()>::build(
            None,
            16 * 4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        )
        .unwrap();
        let (hva, size) = (map.as_ptr() as u64, map.size() as u64);
        let log = MemslotFlags {
            readonly: false,
            dirty_log: true,
        };
        vm.set_memslot(3, 1 << 30, size, hva, log).unwrap();
        // Nothing ran: nothing is dirty.
        let bitmap = vm.get_dirty_log(3, size).unwrap();
        assert_eq!(bitmap, vec![0u64]);
        assert_eq!(
            vm.clear_dirty_log(3, 0, 16, &bitmap).unwrap(),
            !vm.dirty_log_get_clears()
        );
        if !vm.dirty_log_get_clears() {
            let e = vm
                .clear_dirty_log(3, 0, 128, &bitmap)
                .unwrap_err()
                .to_string();
            assert!(e.contains("too short"), "{e}");
        }
        // A move (same size and hva, new gpa), then dirty logging off.
        vm.set_memslot(3, 2 << 30, size, hva, KVM_MEM_LOG_DIRTY_PAGES)
            .unwrap();
        vm.set_memslot(3, 2 << 30, size, hva, MemslotFlags::default())
            .unwrap();
        let e = vm.get_dirty_log(3, size).unwrap_err().to_string();
        assert!(e.contains("KVM_MEM_LOG_DIRTY_PAGES"), "{e}");
        // Changing the size of a live slot is refused by KVM.
        let e = vm
            .set_memslot(3, 2 << 30, size / 2, hva, MemslotFlags::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("memslot 3"), "{e}");
        vm.delete_memslot(3).unwrap();
        assert!(vm.get_dirty_log(3, size).is_err());
        eprintln!(
            "KVM_CAP_MEMORY_FAULT_INFO {}, manual dirty-log protect {}",
            vm.memory_fault_info(),
            !vm.dirty_log_get_clears()
        );
    }
}
