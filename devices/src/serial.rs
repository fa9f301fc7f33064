//! The 16550 UART on COM1 (0x3f8, IRQ 4), from vm-superio.
//!
//! Guest output goes to a [`Console`]; host input is queued with [`SerialPort::enqueue`].
//! The interrupt is an `EventFd` the VMM registers with KVM as an irqfd for GSI 4.

use crate::bus::BusDevice;
use crate::console::Console;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// I/O base of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// Length of a 16550's register range.
pub const COM1_LEN: u16 = 8;
/// COM1's interrupt line.
pub const COM1_IRQ: u32 = 4;

/// Raises the serial interrupt by writing an `EventFd` (an irqfd in KVM).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// COM1.
#[derive(Debug)]
pub struct SerialPort(Serial<EventFdTrigger, vm_superio::serial::NoEvents, Console>);

/// Host input that did not fit in the UART's FIFO.
#[derive(Debug, thiserror::Error)]
#[error("Serial input queue full: {dropped} bytes dropped")]
pub struct SerialInputError {
    /// Bytes not queued.
    pub dropped: usize,
}

impl SerialPort {
    /// A UART writing to `out` and raising `irq`.
    pub fn new(irq: EventFd, out: Console) -> Self {
        SerialPort(Serial::new(EventFdTrigger(irq), out))
    }

    /// Queues host input for the guest; returns how many bytes fit.
    pub fn enqueue(&mut self, input: &[u8]) -> Result<usize, SerialInputError> {
        self.0
            .enqueue_raw_bytes(input)
            .map_err(|_| SerialInputError {
                dropped: input.len(),
            })
    }

    /// Free space in the input FIFO.
    pub fn input_capacity(&self) -> usize {
        self.0.fifo_capacity()
    }
}

impl BusDevice for SerialPort {
    fn read(&mut self, _vcpu: usize, offset: u64, data: &mut [u8]) {
        // The bus only hands out offsets inside the device's small range.
        let v = u8::try_from(offset).map_or(0xff, |o| self.0.read(o));
        data.fill(v);
    }

    fn write(&mut self, _vcpu: usize, offset: u64, data: &[u8]) {
        if let (Some(&b), Ok(o)) = (data.first(), u8::try_from(offset)) {
            // An interrupt that cannot be raised is not the guest's fault; output continues.
            let _ = self.0.write(o, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn guest_output_reaches_the_console_and_input_raises_the_irq() {
        let (console, buf) = Console::buffer();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut s = SerialPort::new(irq.try_clone().unwrap(), console);
        for b in b"hi" {
            s.write(0, 0, &[*b]);
        }
        assert_eq!(&*buf.lock().unwrap(), b"hi");
        // Enable the "received data available" interrupt (IER bit 0), then feed input.
        s.write(0, 1, &[0x01]);
        s.enqueue(b"x").unwrap();
        assert!(irq.read().unwrap() >= 1);
        let mut d = [0u8];
        s.read(0, 0, &mut d);
        assert_eq!(d, [b'x']);
    }
}
