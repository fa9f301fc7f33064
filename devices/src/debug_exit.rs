//! The debug-exit port: a guest ends the VM with a status of its choice.
//!
//! Wire protocol: write 1, 2 or 4 bytes (little-endian) to the port (0xf4 by default, the
//! same I/O base QEMU's `isa-debug-exit` uses). The VM ends and `faultline` exits with the
//! value's low 8 bits (see [`VmExit::status`]). Unlike QEMU, the value is not shifted:
//! writing 3 exits with 3. Reads return 0.

use crate::bus::BusDevice;
use crate::exit::{ExitSignal, VmExit};
use std::sync::Arc;

pub use faultline_abi::DEBUG_EXIT_PORT;

/// The debug-exit device.
#[derive(Debug)]
pub struct DebugExit {
    exit: Arc<ExitSignal>,
}

impl DebugExit {
    /// A device that ends the VM through `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        DebugExit { exit }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _vcpu: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _vcpu: usize, offset: u64, data: &[u8]) {
        if offset != 0 {
            return;
        }
        let mut v = [0u8; 4];
        let n = data.len().min(4);
        v[..n].copy_from_slice(&data[..n]);
        self.exit.request(VmExit::DebugExit(u32::from_le_bytes(v)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_ends_the_vm_with_its_value() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut d = DebugExit::new(exit.clone());
        d.write(0, 0, &[0x2a, 0x01]);
        assert_eq!(exit.reason(), Some(VmExit::DebugExit(0x12a)));
    }
}
