//! The guest console: one shared writer for the serial port and ucall prints.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// A cloneable, thread-safe writer (the VMM's stdout, or a buffer in tests). It also
/// watches the text for a Linux kernel panic, so that a guest that panics and then resets
/// (`panic=-1`) is reported as a crash rather than as a clean reset.
#[derive(Clone)]
pub struct Console(Arc<Mutex<Box<dyn Write + Send>>>, Arc<Mutex<PanicWatch>>);

/// The start of the line `panic()` (kernel/panic.c) prints.
const KERNEL_PANIC: &str = "Kernel panic - not syncing";
/// Longest console line kept while looking for [`KERNEL_PANIC`].
const MAX_LINE: usize = 512;

/// Scans console output line by line for the first kernel panic line.
#[derive(Debug, Default)]
struct PanicWatch {
    line: Vec<u8>,
    panic: Option<String>,
    /// The last [`TAIL_LINES`] complete lines (for reports of a stuck guest).
    tail: std::collections::VecDeque<String>,
}

/// Console lines kept for [`Console::tail`].
const TAIL_LINES: usize = 16;

impl PanicWatch {
    fn feed(&mut self, data: &[u8]) {
        for &b in data {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.line).trim_end().to_string();
                if self.panic.is_none() {
                    if let Some(at) = line.find(KERNEL_PANIC) {
                        self.panic = Some(line[at..].to_string());
                    }
                }
                if self.tail.len() == TAIL_LINES {
                    self.tail.pop_front();
                }
                self.tail.push_back(line);
                self.line.clear();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
    }
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Console")
    }
}

impl Console {
    /// Wraps a writer.
    pub fn new(w: Box<dyn Write + Send>) -> Self {
        Console(Arc::new(Mutex::new(w)), Arc::default())
    }

    /// The guest kernel's panic line ("Kernel panic - not syncing: ..."), if it printed one.
    pub fn kernel_panic(&self) -> Option<String> {
        self.1
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .panic
            .clone()
    }

    /// The last `n` (at most 16) complete lines the guest printed.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let w = self.1.lock().unwrap_or_else(|e| e.into_inner());
        let skip = w.tail.len().saturating_sub(n);
        w.tail.iter().skip(skip).cloned().collect()
    }

    /// The process's stdout.
    pub fn stdout() -> Self {
        Console::new(Box::new(std::io::stdout()))
    }

    /// A console writing into a shared buffer (the first [`MAX_CAPTURED`] bytes; a guest
    /// printing without end cannot grow it further), and the buffer.
    pub fn buffer() -> (Self, Arc<Mutex<Vec<u8>>>) {
        let buf = Arc::new(Mutex::new(Vec::new()));
        (
            Console::new(Box::new(SharedBuf(buf.clone(), MAX_CAPTURED))),
            buf,
        )
    }
}

impl Write for Console {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.1.lock().unwrap_or_else(|e| e.into_inner()).feed(data);
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        w.write_all(data)?;
        w.flush()?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// Most bytes [`Console::buffer`] keeps.
pub const MAX_CAPTURED: usize = 64 << 20;

/// A `Write` into a shared `Vec<u8>` that keeps at most `.1` bytes: later ones are
/// accepted and dropped, so the writer (a vCPU) never blocks or fails on a full buffer.
#[derive(Debug, Clone)]
pub struct SharedBuf(pub Arc<Mutex<Vec<u8>>>, pub usize);

impl Write for SharedBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = self.1.saturating_sub(buf.len());
        buf.extend_from_slice(&data[..data.len().min(room)]);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_panic_line_is_caught_across_byte_sized_writes() {
        let (mut console, _buf) = Console::buffer();
        let text = "[    1.0] Run /init as init process\n\
                    [    1.2] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n\
                    [    1.3] Rebooting in 1 seconds..\n";
        for b in text.bytes() {
            console.write_all(&[b]).unwrap();
        }
        assert_eq!(
            console.kernel_panic().as_deref(),
            Some("Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100")
        );
    }

    /// A guest printing megabytes without a newline through the UART: the console keeps at
    /// most [`MAX_LINE`] bytes of it, and a panic line after the flood is still caught.
    #[test]
    fn serial_flood_without_newline_keeps_memory_bounded() {
        use crate::bus::BusDevice;
        let console = Console::new(Box::new(std::io::sink()));
        let irq = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let mut serial = crate::serial::SerialPort::new(irq, console.clone());
        for i in 0..(4usize << 20) {
            serial.write(0, 0, &[b"abcdefghijklmnopqrstuvwxyz"[i % 26]]);
        }
        assert_eq!(console.1.lock().unwrap().line.len(), MAX_LINE);
        for b in b"\nKernel panic - not syncing: late\n" {
            serial.write(0, 0, &[*b]);
        }
        assert_eq!(
            console.kernel_panic().as_deref(),
            Some("Kernel panic - not syncing: late")
        );
    }

    #[test]
    fn a_captured_console_keeps_its_first_bytes_and_drops_the_rest() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let mut c = Console::new(Box::new(SharedBuf(buf.clone(), 10)));
        for _ in 0..1000 {
            c.write_all(b"0123456").unwrap();
        }
        assert_eq!(&*buf.lock().unwrap(), b"0123456012");
    }

    #[test]
    fn ordinary_output_is_no_panic() {
        let (mut console, buf) = Console::buffer();
        console
            .write_all(b"panic=-1 on the command line\nKernel panic is only a phrase here\n")
            .unwrap();
        assert_eq!(console.kernel_panic(), None);
        assert!(!buf.lock().unwrap().is_empty());
        assert_eq!(
            console.tail(1),
            vec!["Kernel panic is only a phrase here".to_string()]
        );
        assert_eq!(console.tail(5).len(), 2);
    }
}
