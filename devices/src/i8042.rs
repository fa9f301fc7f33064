//! The i8042 keyboard controller, only so a guest can reset the machine.
//!
//! vm-superio's `I8042Device` decodes the CPU-reset command (0xfe written to the command
//! port 0x64); its trigger here ends the VM with [`VmExit::Reset`] (status 0), which is how
//! Linux `reboot=k` ends a guest without ACPI.

use crate::bus::BusDevice;
use crate::exit::{ExitSignal, VmExit};
use std::sync::Arc;
use vm_superio::{I8042Device, Trigger};

/// I/O base of the i8042 (data port 0x60, command/status port 0x64).
pub const I8042_BASE: u16 = 0x60;
/// Length of the i8042 port range (0x60..=0x64).
pub const I8042_LEN: u16 = 5;

/// Ends the VM with [`VmExit::Reset`] when triggered.
#[derive(Debug)]
pub struct ResetTrigger(Arc<ExitSignal>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(VmExit::Reset);
        Ok(())
    }
}

/// The i8042 device.
#[derive(Debug)]
pub struct I8042(I8042Device<ResetTrigger>);

impl I8042 {
    /// An i8042 whose reset ends the VM through `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042(I8042Device::new(ResetTrigger(exit)))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _vcpu: usize, offset: u64, data: &mut [u8]) {
        // The bus only hands out offsets inside the device's small range.
        let v = u8::try_from(offset).map_or(0xff, |o| self.0.read(o));
        data.fill(v);
    }

    fn write(&mut self, _vcpu: usize, offset: u64, data: &[u8]) {
        if let (Some(&b), Ok(o)) = (data.first(), u8::try_from(offset)) {
            let _ = self.0.write(o, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_0xfe_resets_and_other_writes_do_not() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut d = I8042::new(exit.clone());
        d.write(0, 0, &[0xfe]);
        d.write(0, 4, &[0xad]);
        assert_eq!(exit.reason(), None);
        d.write(0, 4, &[0xfe]);
        assert_eq!(exit.reason(), Some(VmExit::Reset));
    }
}
