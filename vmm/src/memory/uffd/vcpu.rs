//! The vCPU side of [`WaitMode::Vcpu`](super::WaitMode::Vcpu): a bus device over a
//! uffd-registered memslot that completes the guest accesses KVM could not.
//!
//! With `UFFD_FEATURE_SIGBUS` a guest access to a missing page fails in
//! `handle_userfault()` instead of waiting for a reader. When KVM was emulating the access
//! (on this project's hosts, every guest access made at CPL0), the emulator's copy from the
//! memslot's host mapping fails, and it falls back to treating the access as MMIO
//! (`emulator_read_write_onepage()` and `vcpu_mmio_read()`/`vcpu_mmio_write()` in
//! arch/x86/kvm/x86.c): KVM_RUN returns `KVM_EXIT_MMIO` with the guest-physical address,
//! the size and, for a write, the data. [`FaultDevice`] answers that exit on the faulting
//! vCPU's own thread: it installs the page through its [`VcpuResolver`], then performs the
//! access on the host mapping, so the guest sees the page as if it had always been there and
//! its next access to the page maps it normally.

use std::sync::{Arc, OnceLock};

use devices::bus::BusDevice;
use devices::exit::{ExitSignal, VmExit};

use super::VcpuResolver;
use crate::vstate::hook::{ExitHook, HookAction, MemoryFault, VcpuControl};

/// Completes the MMIO exits of a uffd-registered memslot, `len` bytes from guest-physical
/// base (the bus offset 0) at host address `hva`.
#[derive(Debug)]
pub struct FaultDevice {
    resolver: VcpuResolver,
    hva: usize,
    len: u64,
    /// Where a failure stops the VM (set once the VM is built).
    exit: OnceLock<Arc<ExitSignal>>,
    /// Accesses completed.
    accesses: u64,
}

impl FaultDevice {
    /// A device for the `len` bytes at host address `hva`, all inside `resolver`'s regions.
    ///
    /// # Safety
    /// `hva..hva+len` must stay mapped for as long as the device lives: the device reads and
    /// writes it on behalf of the guest (the contract of [`super::UffdService::start`]).
    pub unsafe fn new(resolver: VcpuResolver, hva: usize, len: u64) -> Self {
        debug_assert!(
            usize::try_from(len)
                .is_ok_and(|n| n > 0 && resolver.covers(hva) && resolver.covers(hva + n - 1)),
            "the device's {len:#x} bytes at {hva:#x} lie outside its resolver's regions"
        );
        FaultDevice {
            resolver,
            hva,
            len,
            exit: OnceLock::new(),
            accesses: 0,
        }
    }

    /// A resolution that fails from now on ends the VM through `exit` with the reason.
    pub fn stop_on_error(&self, exit: Arc<ExitSignal>) {
        let _ = self.exit.set(exit);
    }

    /// Accesses completed so far.
    #[must_use]
    pub fn accesses(&self) -> u64 {
        self.accesses
    }

    /// Installs the page under `offset..offset+len` and returns the host address of
    /// `offset`, or ends the VM and returns `None`. Inside the device's bytes the address is
    /// inside the resolver's regions (checked once, in `new`); the resolver's own region
    /// lookup reports anything else.
    fn fault_in(&mut self, vcpu: usize, offset: u64, len: usize) -> Option<usize> {
        let inside = offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= self.len);
        let addr = usize::try_from(offset)
            .ok()
            .filter(|_| inside)
            .map(|o| self.hva + o);
        let failure = match addr {
            None => format!(
                "guest access of {len} bytes at offset {offset:#x} runs past the {:#x}-byte region",
                self.len
            ),
            Some(addr) => match self.resolver.resolve(addr) {
                Ok(()) => {
                    self.accesses += 1;
                    return Some(addr);
                }
                Err(e) => e,
            },
        };
        if let Some(exit) = self.exit.get() {
            exit.request(VmExit::Crash {
                vcpu,
                reason: format!("userfaultfd, resolved on the vCPU (--uffd-wait vcpu): {failure}"),
            });
        }
        None
    }
}

impl BusDevice for FaultDevice {
    fn read(&mut self, vcpu: usize, offset: u64, data: &mut [u8]) {
        match self.fault_in(vcpu, offset, data.len()) {
            // SAFETY: `addr..addr+data.len()` is inside the mapping `new`'s caller keeps
            // alive, and the page is now installed.
            Some(addr) => unsafe {
                std::ptr::copy_nonoverlapping(addr as *const u8, data.as_mut_ptr(), data.len());
            },
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, vcpu: usize, offset: u64, data: &[u8]) {
        if let Some(addr) = self.fault_in(vcpu, offset, data.len()) {
            // SAFETY: as in `read`; the guest owns these bytes and asked for the write.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len()) };
        }
    }
}

/// The other way KVM can meet a page `UFFD_FEATURE_SIGBUS` refused: through its own page
/// fault (a guest access it did not emulate), which fails KVM_RUN with EFAULT
/// (`kvm_handle_error_pfn()`, arch/x86/kvm/mmu/mmu.c) and, in 6.12, no address. The VM
/// ends with a reason that says so and what to use instead.
#[derive(Debug, Default)]
pub struct BareFaultHook;

impl ExitHook for BareFaultHook {
    fn on_run_error(
        &self,
        vcpu: &mut VcpuControl<'_>,
        errno: i32,
        fault: Option<MemoryFault>,
    ) -> HookAction {
        if errno != libc::EFAULT {
            return HookAction::Default;
        }
        let at = fault.map_or(String::new(), |f| format!(" at gpa {:#x}", f.gpa));
        HookAction::Stop(VmExit::Crash {
            vcpu: vcpu.index(),
            reason: format!(
                "KVM_RUN failed with EFAULT{at}: KVM met a page userfaultfd refused \
                 (UFFD_FEATURE_SIGBUS) in its own page fault rather than in its emulator, so \
                 it did not hand the access to the vCPU's thread as an MMIO exit; \
                 --uffd-wait vcpu cannot serve this host's faults: use --uffd-wait poll or busy"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    //! Real userfaultfd, no KVM: the device's two halves (install, then complete the access)
    //! called as the vCPU loop would for an MMIO exit.

    use super::*;
    use crate::memory::uffd::{pattern_word, UffdConfig, UffdRegion, UffdService, WaitMode};

    const PAGE: usize = 4096;
    const GPA: u64 = 0x4000_0000;

    #[test]
    fn accesses_are_completed_on_the_installed_page_and_strays_stop_the_vm() {
        // Real userfaultfds need root, CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1.
        crate::skip_unless!(crate::memory::uffd::sys::Uffd::new(0, true).map(drop));
        let len = 8 * PAGE;
        let m = crate::memory::uffd::tests::Mapping::anon(len);
        let addr = m.addr;
        let cfg = UffdConfig {
            wait: WaitMode::Vcpu,
            ..UffdConfig::default()
        };
        let regions = [UffdRegion {
            addr,
            len,
            pattern_base: GPA,
        }];
        // SAFETY: the mapping outlives the service and the device.
        let svc = unsafe { UffdService::start(cfg, &regions) }.expect("start");
        let resolver = svc.vcpu_resolvers().remove(0);
        // SAFETY: as above.
        let mut dev = unsafe { FaultDevice::new(resolver, addr, len as u64) };
        let exit = Arc::new(ExitSignal::new().unwrap());
        dev.stop_on_error(exit.clone());

        // A read sees what the service installed.
        let mut word = [0u8; 8];
        dev.read(0, 3 * PAGE as u64 + 16, &mut word);
        assert_eq!(
            u64::from_le_bytes(word),
            pattern_word(GPA + 3 * PAGE as u64 + 16)
        );
        // A write lands in the page and the rest of the page keeps the pattern.
        dev.write(1, 5 * PAGE as u64 + 8, &0x1122_3344u32.to_le_bytes());
        // SAFETY: page 5 is installed now.
        let (w0, w1) = unsafe {
            (
                std::ptr::read_volatile((addr + 5 * PAGE) as *const u64),
                std::ptr::read_volatile((addr + 5 * PAGE + 8) as *const u32),
            )
        };
        assert_eq!(w0, pattern_word(GPA + 5 * PAGE as u64));
        assert_eq!(w1, 0x1122_3344);
        // The same page again: no second install, the access still completes.
        dev.read(0, 5 * PAGE as u64 + 8, &mut word[..4]);
        assert_eq!(
            u32::from_le_bytes(word[..4].try_into().unwrap()),
            0x1122_3344
        );
        assert_eq!(dev.accesses(), 3);
        assert!(!exit.fired());

        // Past the end: reads as all ones and stops the VM with the reason.
        dev.read(0, len as u64 - 4, &mut word);
        assert_eq!(word, [0xff; 8]);
        match exit.reason() {
            Some(VmExit::Crash { vcpu: 0, reason }) => {
                assert!(
                    reason.contains("runs past") && reason.contains("--uffd-wait vcpu"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        drop(dev);
        let stats = svc.stop().expect("stop");
        assert_eq!(
            (stats.faults, stats.already_resolved, stats.pages_installed),
            (3, 1, 2)
        );
    }
}
