//! The `--record FILE` writer: JSON Lines in [`mmu::record`]'s format, one header line,
//! then one [`FaultRecord`] per uffd fault and per injected event, in seq order.
//!
//! Serialising a record costs microseconds (its resolution's strings, serde_json): more than
//! the guest's time between two faults. So the fault server only numbers the records and
//! collects them in batches of [`BATCH`]; a writer thread of its own serialises them into a
//! buffered file. One hand-off (one wake-up) per batch; [`RecordWriter::finish`] sends the
//! last, partial batch and waits for the file to be complete and flushed.
//!
//! With several resolvers a record's seq is taken when its model step runs
//! ([`RecordWriter::reserve`]) and the record is handed in later
//! ([`RecordWriter::write_reserved`]), possibly after records with higher seqs: the writer
//! holds those back, so the file stays in seq order, which is the order the model ran the
//! steps in (and the order `sim --replay` runs them in).

use mmu::record::{FaultRecord, RecordHeader, Resolution};
use mmu::scenario::{StepOutcome, StepRecord};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Records per hand-off to the writer thread.
pub const BATCH: usize = 256;

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
    seq: u64,
    /// The seq the next record in the file has.
    next_out: u64,
    /// Records handed in ahead of `next_out`, by seq.
    early: BTreeMap<u64, Pending>,
    batch: Vec<Pending>,
    tx: Option<mpsc::Sender<Vec<Pending>>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

/// A record on its way to the file: its model resolution may still be the model's raw
/// [`StepRecord`] or typed [`StepOutcome`], converted by the writer thread.
#[derive(Debug)]
struct Pending {
    rec: FaultRecord,
    step: Option<Model>,
}

/// The model's result for a record, not yet made into its [`Resolution`].
#[derive(Debug)]
enum Model {
    Record(Box<StepRecord>),
    Outcome(Box<StepOutcome>),
}

/// The writer thread: serialises each batch it receives, one line per record.
fn write_batches(
    mut out: std::io::BufWriter<std::fs::File>,
    rx: &mpsc::Receiver<Vec<Pending>>,
) -> std::io::Result<()> {
    while let Ok(batch) = rx.recv() {
        for Pending { mut rec, step } in batch {
            match step {
                Some(Model::Record(s)) => rec.model = Resolution::from(&*s),
                Some(Model::Outcome(o)) => rec.model = Resolution::from(&StepRecord::from(&*o)),
                None => {}
            }
            serde_json::to_writer(&mut out, &rec).map_err(std::io::Error::other)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()
}

impl RecordWriter {
    /// Creates `path`, writes the header line and starts the writer thread.
    pub fn create(path: &Path, header: &RecordHeader) -> Result<Self, RecordWriteError> {
        let err = |source| RecordWriteError {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::create(path).map_err(err)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let line = serde_json::to_string(header).map_err(|e| err(std::io::Error::other(e)))?;
        writeln!(out, "{line}").map_err(err)?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("live-record".into())
            .spawn(move || write_batches(out, &rx))
            .map_err(err)?;
        Ok(RecordWriter {
            path: path.to_path_buf(),
            seq: 0,
            next_out: 0,
            early: BTreeMap::new(),
            batch: Vec::with_capacity(BATCH),
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// The seq the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// Takes the next seq for a record handed in later with [`RecordWriter::write_reserved`]
    /// or [`RecordWriter::write_step_reserved`]. Every reserved seq must be written: the
    /// records after it wait for it (until [`RecordWriter::finish`]).
    pub fn reserve(&mut self) -> u64 {
        let s = self.seq;
        self.seq += 1;
        s
    }

    /// Appends `rec`, giving it the next seq. An error of the writer thread (the disk is
    /// full, ...) shows at the next hand-off.
    pub fn write(&mut self, rec: FaultRecord) -> Result<(), RecordWriteError> {
        let seq = self.reserve();
        self.push(seq, rec, None)
    }

    /// [`RecordWriter::write`] with the record's `model` resolution made from the model's
    /// step record `step` by the writer thread (off the fault server's path).
    pub fn write_step(
        &mut self,
        rec: FaultRecord,
        step: StepRecord,
    ) -> Result<(), RecordWriteError> {
        let seq = self.reserve();
        self.push(seq, rec, Some(Model::Record(Box::new(step))))
    }

    /// Hands in the record of a seq taken with [`RecordWriter::reserve`].
    pub fn write_reserved(&mut self, seq: u64, rec: FaultRecord) -> Result<(), RecordWriteError> {
        self.push(seq, rec, None)
    }

    /// [`RecordWriter::write_reserved`] with the `model` resolution made from `step` by the
    /// writer thread.
    pub fn write_step_reserved(
        &mut self,
        seq: u64,
        rec: FaultRecord,
        step: StepRecord,
    ) -> Result<(), RecordWriteError> {
        self.push(seq, rec, Some(Model::Record(Box::new(step))))
    }

    /// [`RecordWriter::write_reserved`] with the `model` resolution made from the model's
    /// typed outcome by the writer thread (the strings of a [`StepRecord`] cost the
    /// resolver microseconds).
    pub fn write_outcome_reserved(
        &mut self,
        seq: u64,
        rec: FaultRecord,
        outcome: Box<StepOutcome>,
    ) -> Result<(), RecordWriteError> {
        self.push(seq, rec, Some(Model::Outcome(outcome)))
    }

    fn push(
        &mut self,
        seq: u64,
        mut rec: FaultRecord,
        step: Option<Model>,
    ) -> Result<(), RecordWriteError> {
        rec.seq = seq;
        if seq != self.next_out {
            self.early.insert(seq, Pending { rec, step });
            return Ok(());
        }
        self.batch.push(Pending { rec, step });
        self.next_out += 1;
        while let Some(p) = self.early.remove(&self.next_out) {
            self.batch.push(p);
            self.next_out += 1;
        }
        if self.batch.len() >= BATCH {
            self.hand_off()?;
        }
        Ok(())
    }

    fn hand_off(&mut self) -> Result<(), RecordWriteError> {
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(batch).is_ok());
        if sent {
            Ok(())
        } else {
            // The thread has ended: it failed; its error says why.
            Err(self.join().err().unwrap_or_else(|| RecordWriteError {
                path: self.path.clone(),
                source: std::io::Error::other("the recording's writer thread has ended"),
            }))
        }
    }

    fn join(&mut self) -> Result<(), RecordWriteError> {
        self.tx = None;
        let err = |source| RecordWriteError {
            path: self.path.clone(),
            source,
        };
        match self.thread.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(err(e)),
            Some(Err(_)) => Err(err(std::io::Error::other(
                "the recording's writer thread panicked",
            ))),
        }
    }

    /// Writes the last records and flushes the file.
    pub fn finish(mut self) -> Result<(), RecordWriteError> {
        // A reserved seq never written (its resolver failed) holds nothing back any more.
        let early = std::mem::take(&mut self.early);
        self.batch.extend(early.into_values());
        if !self.batch.is_empty() {
            self.hand_off()?;
        }
        self.join()
    }
}

impl Drop for RecordWriter {
    fn drop(&mut self) {
        // A writer dropped without finish() (an error path) still ends its thread.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> RecordHeader {
        RecordHeader {
            format: mmu::record::RECORD_FORMAT,
            faultline: "test".into(),
            kernel_rules: mmu::types::KernelVersion::V6_12,
            host_kernel: String::new(),
            backing: "anon".into(),
            vcpus: 1,
            guest: "touch".into(),
            scenario: String::new(),
        }
    }

    fn record(gpa: u64) -> FaultRecord {
        FaultRecord {
            seq: 99,
            t_ns: gpa,
            step: mmu::scenario::Step::Read(mmu::scenario::step::GuestStep {
                gpa: mmu::scenario::Num(gpa),
                vcpu: None,
                mmio: false,
                race: false,
            }),
            uffd: None,
            hva: None,
            model: mmu::record::Resolution::default(),
            applied: None,
            model_only: false,
            real: None,
            disagreements: vec![],
        }
    }

    #[test]
    fn every_record_reaches_the_file_in_seq_order_across_batches() {
        let dir = std::env::temp_dir().join(format!("faultline-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.jsonl");
        let mut w = RecordWriter::create(&path, &header()).unwrap();
        let n = BATCH * 2 + 7;
        for i in 0..n {
            w.write(record(i as u64 * 4096)).unwrap();
        }
        assert_eq!(w.next_seq(), n as u64);
        w.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), n + 1, "header + one line per record");
        for (i, l) in lines[1..].iter().enumerate() {
            let r: FaultRecord = serde_json::from_str(l).unwrap();
            assert_eq!(r.seq, i as u64, "{l}");
            assert_eq!(r.t_ns, i as u64 * 4096);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reserved_records_handed_in_out_of_order_reach_the_file_in_seq_order() {
        let dir = std::env::temp_dir().join(format!("faultline-record-r-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.jsonl");
        let mut w = RecordWriter::create(&path, &header()).unwrap();
        let n = BATCH + 10;
        let seqs: Vec<u64> = (0..n).map(|_| w.reserve()).collect();
        // Hand them in pairwise swapped (as two resolvers finish), then one written plainly.
        for pair in seqs.chunks(2) {
            for &s in pair.iter().rev() {
                w.write_reserved(s, record(s * 4096)).unwrap();
            }
        }
        w.write(record(n as u64 * 4096)).unwrap();
        w.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let seqs: Vec<u64> = text
            .lines()
            .skip(1)
            .map(|l| serde_json::from_str::<FaultRecord>(l).unwrap().seq)
            .collect();
        assert_eq!(seqs, (0..=n as u64).collect::<Vec<_>>());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_path_names_the_fix() {
        let e = RecordWriter::create(Path::new("/nonexistent-dir/r.jsonl"), &header()).unwrap_err();
        assert!(e.to_string().contains("pick a writable path"), "{e}");
    }
}
