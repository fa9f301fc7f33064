//! The guest console: one shared writer for the serial port and ucall prints.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// A cloneable, thread-safe writer (the VMM's stdout, or a buffer in tests).
#[derive(Clone)]
pub struct Console(Arc<Mutex<Box<dyn Write + Send>>>);

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Console")
    }
}

impl Console {
    /// Wraps a writer.
    pub fn new(w: Box<dyn Write + Send>) -> Self {
        Console(Arc::new(Mutex::new(w)))
    }

    /// The process's stdout.
    pub fn stdout() -> Self {
        Console::new(Box::new(std::io::stdout()))
    }

    /// A console writing into a shared buffer, and the buffer.
    pub fn buffer() -> (Self, Arc<Mutex<Vec<u8>>>) {
        let buf = Arc::new(Mutex::new(Vec::new()));
        (Console::new(Box::new(SharedBuf(buf.clone()))), buf)
    }
}

impl Write for Console {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        w.write_all(data)?;
        w.flush()?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// A `Write` into a shared `Vec<u8>`.
#[derive(Debug, Clone)]
pub struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
