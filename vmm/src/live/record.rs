//! The `--record FILE` writer: JSON Lines in [`mmu::record`]'s format, one header line,
//! then one [`FaultRecord`] per uffd fault and per injected event, as they happen.

use mmu::record::{FaultRecord, RecordHeader};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writing the recording failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the recording {path}: {source}; pick a writable path for --record")]
pub struct RecordWriteError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// An open recording.
#[derive(Debug)]
pub struct RecordWriter {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    seq: u64,
}

impl RecordWriter {
    /// Creates `path` and writes the header line.
    pub fn create(path: &Path, header: &RecordHeader) -> Result<Self, RecordWriteError> {
        let err = |source| RecordWriteError {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::create(path).map_err(err)?;
        let mut w = RecordWriter {
            path: path.to_path_buf(),
            out: std::io::BufWriter::new(file),
            seq: 0,
        };
        let line = serde_json::to_string(header).map_err(|e| err(std::io::Error::other(e)))?;
        writeln!(w.out, "{line}").map_err(err)?;
        Ok(w)
    }

    /// The seq the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// Appends `rec`, giving it the next seq.
    pub fn write(&mut self, mut rec: FaultRecord) -> Result<(), RecordWriteError> {
        rec.seq = self.seq;
        self.seq += 1;
        let err = |source| RecordWriteError {
            path: self.path.clone(),
            source,
        };
        let line = serde_json::to_string(&rec).map_err(|e| err(std::io::Error::other(e)))?;
        writeln!(self.out, "{line}").map_err(err)
    }

    /// Flushes the file.
    pub fn finish(mut self) -> Result<(), RecordWriteError> {
        let path = self.path.clone();
        self.out
            .flush()
            .map_err(|source| RecordWriteError { path, source })
    }
}
