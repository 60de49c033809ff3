//! The `file` sink: each subtask writes part files (CSV or JSON lines) into the output
//! directory, exactly once across failures when checkpointing is on (two-phase commit).
//!
//! ## Part names
//! A part file is named `part-{job}-{attempt}-{i}-{s}` (committed), `.part-…-{s}.inprogress`
//! or `.part-…-{s}.pending`: the job id, the attempt that wrote it, the subtask index `i` and
//! a sequence number `s`, as Flink's `part-<uuid>-<subtask>-<n>`. So no two jobs, and no two
//! attempts of one job, ever write the same name: several jobs can share an output directory,
//! and a committed file is never overwritten. The sink touches only files of its own job
//! (deletes leftovers, numbers after them); another job's files, hidden or committed, are
//! never renamed or deleted, except that a restore commits the pending files its checkpoint
//! lists, whoever wrote them.
//!
//! ## File life cycle (subtask `i`, file sequence number `s`)
//! - Rows go to `.part-{job}-{attempt}-{i}-{s}.inprogress`, opened at the first batch after a
//!   roll.
//! - At a checkpoint barrier ([`Operator::snapshot_state`] for checkpoint n) that file is
//!   flushed, fsynced and renamed to `.part-…-{s}.pending` (an empty one is deleted), and
//!   the next batch opens `s + 1`. The pending file is *pre-committed*: durable, invisible.
//! - When checkpoint n completed everywhere ([`Operator::notify_checkpoint_complete`]) every
//!   pending file of a checkpoint `<= n` is renamed to `part-…-{s}`: committed, and never
//!   touched again.
//! - At the end of bounded input (`finish()`) the in-progress and all pending files are
//!   committed. A subtask that committed nothing commits an empty file, so a finished job's
//!   directory holds at least one part file per subtask (one, `part-{job}-{attempt}-{i}-0`,
//!   without checkpoints).
//! - On a restore from checkpoint n, the pending files listed in the state (all of
//!   checkpoints `<= n`, which completed) are committed if they are not already, and only
//!   those: this job's leftovers of the subtask (in-progress files, and pending files not
//!   listed: rows written after checkpoint n, which the replay produces again) are deleted.
//!   Numbering continues after the highest sequence number of the job's files of the
//!   subtask. After scaling down, the subtask that receives an old subtask's header also
//!   cleans that index.
//! - A restart without a completed checkpoint (`restore_state(0, [])`) deletes every file the
//!   job wrote for the subtask, committed ones included: the replay writes its whole output
//!   again. A first run deletes the job's uncommitted leftovers of the subtask.
//!
//! Readers (including Weir's own file source) skip names starting with '.' or '_', so they
//! only ever see committed files.
//!
//! ## State elements
//! Each element is a [`StoredElement`] under the magic `WSK2` (see [`crate::state`]):
//! - a header, one per subtask: parallelism, index, the number of pending-file elements of
//!   this subtask and its next sequence number. It tells a restored subtask whether it
//!   received every pending file of its index, i.e. whether an unlisted pending file of its
//!   index is garbage or listed at another subtask (after rescaling).
//! - a pending file, one per file not yet committed: checkpoint id and the file name
//!   (`.part-{job}-{attempt}-{i}-{s}.pending`).

use arrow_array::RecordBatch;
use arrow_json::writer::LineDelimited;
use arrow_schema::{ArrowError, Field, Schema};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};
use weir_core::graph::FileFormat;
use weir_core::operator::{Collector, OpResult, Operator, OperatorError, SubtaskInfo};

use crate::state;

const WRITE_BUFFER_BYTES: usize = 256 * 1024;

const STATE_MAGIC: &[u8; 4] = b"WSK2";

/// The stage of a part file, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    InProgress,
    Pending,
    Committed,
}

/// A part file's name, parsed (see "Part names" above).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PartName {
    stage: Stage,
    /// The job that wrote it.
    job: String,
    /// The attempt of the job that wrote it.
    attempt: u32,
    /// The subtask index that wrote it.
    index: u32,
    seq: u64,
}

impl PartName {
    fn file_name(&self) -> String {
        let core = format!("part-{}-{}-{}-{}", self.job, self.attempt, self.index, self.seq);
        match self.stage {
            Stage::InProgress => format!(".{core}.inprogress"),
            Stage::Pending => format!(".{core}.pending"),
            Stage::Committed => core,
        }
    }

    fn at(&self, stage: Stage) -> Self {
        Self { stage, ..self.clone() }
    }

    /// Parses a part file name; None for any other name (including non-canonical spellings
    /// of the numbers). The job id may contain '-': the numbers are read from the right.
    fn parse(name: &str) -> Option<Self> {
        let (stage, core) = match name.strip_prefix('.') {
            Some(hidden) => match (hidden.strip_suffix(".pending"), hidden.strip_suffix(".inprogress")) {
                (Some(core), _) => (Stage::Pending, core),
                (None, Some(core)) => (Stage::InProgress, core),
                (None, None) => return None,
            },
            None => (Stage::Committed, name),
        };
        let mut parts = core.strip_prefix("part-")?.rsplitn(4, '-');
        let (seq, index, attempt, job) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if job.is_empty() {
            return None;
        }
        let parsed =
            Self { stage, job: job.to_string(), attempt: attempt.parse().ok()?, index: index.parse().ok()?, seq: seq.parse().ok()? };
        (parsed.file_name() == name).then_some(parsed)
    }
}

/// The file currently being written.
struct InProgress {
    seq: u64,
    path: PathBuf,
    writer: BufWriter<File>,
    rows: u64,
}

/// A pre-committed file of this subtask, waiting for its checkpoint to complete.
struct PendingFile {
    checkpoint: u64,
    seq: u64,
}

pub struct FileSink {
    dir: PathBuf,
    /// The job and attempt, part of every name this instance writes.
    job: String,
    attempt: u32,
    index: u32,
    parallelism: u32,
    format: FileFormat,
    /// Sequence number of the next in-progress file.
    next_seq: u64,
    current: Option<InProgress>,
    /// Pre-committed files, oldest checkpoint first.
    pending: Vec<PendingFile>,
    /// Whether a committed file of this subtask belongs to this run's output (committed by
    /// this instance, or found on restore).
    has_output: bool,
    /// Leftovers of earlier attempts handled (by the fresh-start cleanup or a restore).
    prepared: bool,
    /// `finish()` ran: everything is committed.
    finished: bool,
}

impl FileSink {
    pub fn new(path: &str, format: FileFormat, info: &SubtaskInfo) -> OpResult<Self> {
        fs::create_dir_all(path).map_err(|e| OperatorError::io("file sink cannot create directory", path, e))?;
        Ok(Self {
            dir: PathBuf::from(path),
            job: info.job_id.clone(),
            attempt: info.attempt,
            index: info.index,
            parallelism: info.parallelism.max(1),
            format,
            next_seq: 0,
            current: None,
            pending: Vec::new(),
            has_output: false,
            prepared: false,
            finished: false,
        })
    }

    /// The name of this instance's part file `seq` at `stage`.
    fn name_of(&self, stage: Stage, seq: u64) -> PartName {
        PartName { stage, job: self.job.clone(), attempt: self.attempt, index: self.index, seq }
    }

    fn path_of(&self, stage: Stage, seq: u64) -> PathBuf {
        self.dir.join(self.name_of(stage, seq).file_name())
    }

    /// The part files this job wrote in the directory, any attempt, any subtask: (file name,
    /// parsed). Other jobs' files are not the sink's to touch.
    fn list_parts(&self) -> OpResult<Vec<(String, PartName)>> {
        let dir = self.dir.display().to_string();
        let entries = fs::read_dir(&self.dir).map_err(|e| OperatorError::io("file sink cannot list", dir.clone(), e))?;
        let mut parts = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| OperatorError::io("file sink cannot list", dir.clone(), e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            match PartName::parse(name) {
                Some(part) if part.job == self.job => parts.push((name.to_string(), part)),
                _ => {}
            }
        }
        Ok(parts)
    }

    fn remove(&self, path: &Path) -> OpResult {
        match fs::remove_file(path) {
            Ok(()) => {
                tracing::debug!(path = %path.display(), "file sink deleted an uncommitted file");
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(OperatorError::io("file sink cannot delete", path.display().to_string(), e)),
        }
    }

    /// Before the first write of a run that is not restored from a checkpoint: what earlier
    /// attempts of the job left uncommitted will be produced again, so it goes.
    fn prepare(&mut self) -> OpResult {
        if self.prepared {
            return Ok(());
        }
        for (name, part) in self.list_parts()? {
            if part.index == self.index && part.stage != Stage::Committed {
                self.remove(&self.dir.join(name))?;
            }
        }
        self.prepared = true;
        Ok(())
    }

    /// A restart with no completed checkpoint (`restore_state(0, _)`): the replay produces
    /// this subtask's whole output again, so everything the job's earlier attempts wrote for
    /// it goes, committed files included (those of a subtask that finished before another
    /// failed).
    fn start_over(&mut self, elements: usize) -> OpResult {
        if elements > 0 {
            tracing::warn!(index = self.index, elements, "file sink ignores state handed over without a checkpoint");
        }
        for (name, part) in self.list_parts()? {
            if part.index == self.index {
                self.remove(&self.dir.join(name))?;
            }
        }
        self.sync_dir();
        self.next_seq = 0;
        self.current = None;
        self.pending.clear();
        self.has_output = false;
        self.prepared = true;
        self.finished = false;
        tracing::info!(index = self.index, "file sink starts over (no completed checkpoint)");
        Ok(())
    }

    fn open_current(&mut self) -> OpResult<&mut InProgress> {
        let seq = self.next_seq;
        let path = self.path_of(Stage::InProgress, seq);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| OperatorError::io("file sink cannot create", path.display().to_string(), e))?;
        self.next_seq += 1;
        Ok(self.current.insert(InProgress { seq, path, writer: BufWriter::with_capacity(WRITE_BUFFER_BYTES, file), rows: 0 }))
    }

    /// Flushes and fsyncs the in-progress file and closes it: its sequence number and whether
    /// it holds any row, or None when there is none.
    fn close_current(&mut self) -> OpResult<Option<(u64, bool)>> {
        let Some(current) = self.current.take() else { return Ok(None) };
        let io_err = |e| OperatorError::io("file sink cannot write", current.path.display().to_string(), e);
        let file = current.writer.into_inner().map_err(|e| io_err(e.into_error()))?;
        file.sync_all().map_err(io_err)?;
        Ok(Some((current.seq, current.rows > 0)))
    }

    fn rename(&self, from: &Path, to: &Path) -> OpResult {
        fs::rename(from, to).map_err(|e| OperatorError::io("file sink cannot commit", to.display().to_string(), e))
    }

    /// Renames a pending file to its committed name; fine if that already happened.
    fn commit_pending(&self, pending_name: &str, committed_name: &str) -> OpResult {
        let (from, to) = (self.dir.join(pending_name), self.dir.join(committed_name));
        match fs::rename(&from, &to) {
            Ok(()) => {
                tracing::info!(path = %to.display(), "file sink committed a part file");
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound && to.exists() => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(OperatorError::Failed(format!(
                "file sink cannot commit '{}': neither it nor the pending file '{}' exists",
                to.display(),
                from.display()
            ))),
            Err(e) => Err(OperatorError::io("file sink cannot commit", to.display().to_string(), e)),
        }
    }

    /// Makes renames and deletions durable; not every platform lets a directory be fsynced,
    /// and the data is already safe, so a failure here is only worth a warning.
    fn sync_dir(&self) {
        if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "file sink could not fsync its directory");
        }
    }

    /// Commits the pending files of checkpoints `<= upto`. On an error the files not
    /// committed yet stay pending.
    fn commit_pending_upto(&mut self, upto: u64) -> OpResult {
        let mut committed = false;
        let mut i = 0;
        let result = loop {
            let Some(file) = self.pending.get(i) else { break Ok(()) };
            if file.checkpoint > upto {
                i += 1;
                continue;
            }
            let pending = self.name_of(Stage::Pending, file.seq);
            if let Err(e) = self.commit_pending(&pending.file_name(), &pending.at(Stage::Committed).file_name()) {
                break Err(e);
            }
            self.pending.remove(i);
            committed = true;
            self.has_output = true;
        };
        if committed {
            self.sync_dir();
        }
        result
    }

    fn state_elements(&self) -> OpResult<Vec<Vec<u8>>> {
        let header = StoredElement::Header {
            parallelism: self.parallelism,
            index: self.index,
            pending: self.pending.len() as u32,
            next_seq: self.next_seq,
        };
        let pending = self
            .pending
            .iter()
            .map(|file| StoredElement::Pending { checkpoint: file.checkpoint, name: self.name_of(Stage::Pending, file.seq).file_name() });
        std::iter::once(header).chain(pending).map(|element| state::encode(STATE_MAGIC, &element, "file sink")).collect()
    }
}

/// A checkpoint state element of the file sink, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum StoredElement {
    /// One per subtask: how many pending files it listed, so a restored subtask knows whether
    /// it received all of them.
    Header { parallelism: u32, index: u32, pending: u32, next_seq: u64 },
    /// One per pending file not committed yet, with the checkpoint that pre-committed it.
    Pending { checkpoint: u64, name: String },
}

/// A decoded state element, its file name checked and parsed.
enum SinkElement {
    Header { parallelism: u32, index: u32, pending: u32 },
    Pending { checkpoint: u64, part: PartName },
}

fn decode_element(element: &[u8]) -> OpResult<SinkElement> {
    match state::decode(element, STATE_MAGIC, "file sink")? {
        StoredElement::Header { parallelism, index, pending, next_seq: _ } => Ok(SinkElement::Header { parallelism, index, pending }),
        StoredElement::Pending { checkpoint, name } => match PartName::parse(&name) {
            Some(part) if part.stage == Stage::Pending => Ok(SinkElement::Pending { checkpoint, part }),
            _ => Err(OperatorError::Failed(format!(
                "file sink cannot restore: '{name}' in its checkpoint state is not a pending part file name"
            ))),
        },
    }
}

/// The first column `format` cannot write, if any: CSV has no nested values (lists,
/// structs, maps). Checked per batch, before anything is written, so the error names the
/// column instead of a row and column number.
fn unwritable_column(format: FileFormat, schema: &Schema) -> Option<&Field> {
    match format {
        FileFormat::Csv => schema.fields().iter().find(|f| f.data_type().is_nested()).map(|f| f.as_ref()),
        FileFormat::Json => None,
        FileFormat::Text => match schema.fields().first() {
            Some(f) if schema.fields().len() == 1 && f.data_type() == &arrow_schema::DataType::Utf8 => None,
            first => first.map(|f| f.as_ref()),
        },
    }
}

/// Writes one batch to a part file with Arrow's own writers, which format every Arrow type
/// (numbers, booleans, decimals, dates and timestamps in RFC 3339, binary as hex, ...):
/// - CSV: no header, values joined by ','; a value is quoted (inner quotes doubled) only when
///   it holds a delimiter, quote or line break; a null is an empty field (a record of one
///   empty field is written `""`, so it is not an empty line).
/// - JSON lines: one object per row, the columns in schema order, nulls written as `null`.
/// - Text: the one text column, a row per line as it is (CSV that never quotes).
///
/// Neither format keeps state between batches (no header, no enclosing array), so a writer is
/// made per batch over the part file's buffer.
fn write_batch(format: FileFormat, out: &mut BufWriter<File>, batch: &RecordBatch) -> Result<(), ArrowError> {
    let out = NoFlush(out);
    match format {
        FileFormat::Csv => arrow_csv::WriterBuilder::new().with_header(false).build(out).write(batch),
        FileFormat::Json => arrow_json::WriterBuilder::new().with_explicit_nulls(true).build::<_, LineDelimited>(out).write(batch),
        FileFormat::Text => {
            arrow_csv::WriterBuilder::new().with_header(false).with_quote_style(arrow_csv::QuoteStyle::Never).build(out).write(batch)
        }
    }
}

/// Passes writes through and ignores `flush`: Arrow's CSV writer flushes its output after
/// every batch, which would cost a write call per batch; the part file's buffer is flushed
/// (and the file fsynced) when the file is closed instead.
struct NoFlush<'a>(&'a mut BufWriter<File>);

impl Write for NoFlush<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Operator for FileSink {
    fn process_batch(&mut self, batch: RecordBatch, _out: &mut dyn Collector) -> OpResult {
        if self.finished {
            return Err(OperatorError::Failed(format!(
                "file sink '{}' received a batch after it was committed",
                self.path_of(Stage::Committed, self.next_seq.saturating_sub(1)).display()
            )));
        }
        if let Some(field) = unwritable_column(self.format, &batch.schema()) {
            let why = match self.format {
                FileFormat::Text => "as text: the text format writes exactly one text column",
                _ => "as CSV: nested values have no CSV form (format: json writes them)",
            };
            return Err(OperatorError::Failed(format!(
                "file sink '{}' cannot write column '{}' of type {} {why}",
                self.dir.display(),
                field.name(),
                field.data_type()
            )));
        }
        self.prepare()?;
        let format = self.format;
        let current = match self.current {
            Some(ref mut current) => current,
            None => self.open_current()?,
        };
        current.rows += batch.num_rows() as u64;
        write_batch(format, &mut current.writer, &batch).map_err(|e| match e {
            ArrowError::IoError(_, source) => OperatorError::io("file sink cannot write", current.path.display().to_string(), source),
            other => OperatorError::Failed(format!("file sink cannot write '{}': {other}", current.path.display())),
        })
    }

    fn finish(&mut self, _out: &mut dyn Collector) -> OpResult {
        if self.finished {
            return Ok(());
        }
        self.prepare()?;
        if let Some((seq, has_rows)) = self.close_current()? {
            let path = self.path_of(Stage::InProgress, seq);
            if has_rows {
                let committed = self.path_of(Stage::Committed, seq);
                self.rename(&path, &committed)?;
                tracing::info!(path = %committed.display(), "file sink committed a part file");
                self.has_output = true;
            } else {
                self.remove(&path)?;
            }
        }
        self.commit_pending_upto(u64::MAX)?;
        if !self.has_output {
            // No rows at all: still one (empty) committed file for this subtask.
            self.open_current()?;
            if let Some((seq, _)) = self.close_current()? {
                self.rename(&self.path_of(Stage::InProgress, seq), &self.path_of(Stage::Committed, seq))?;
                self.has_output = true;
            }
        }
        self.sync_dir();
        self.finished = true;
        Ok(())
    }

    /// Pre-commits the in-progress file for checkpoint `checkpoint` and returns every pending
    /// file not committed yet, plus this subtask's header element.
    fn snapshot_state(&mut self, checkpoint: u64) -> OpResult<Option<Vec<Vec<u8>>>> {
        if !self.finished {
            self.prepare()?;
        }
        if let Some((seq, has_rows)) = self.close_current()? {
            let path = self.path_of(Stage::InProgress, seq);
            if has_rows {
                self.rename(&path, &self.path_of(Stage::Pending, seq))?;
                self.pending.push(PendingFile { checkpoint, seq });
            } else {
                self.remove(&path)?;
            }
            // A pending file of a checkpoint that completes must survive a crash.
            self.sync_dir();
        }
        Ok(Some(self.state_elements()?))
    }

    fn notify_checkpoint_complete(&mut self, checkpoint: u64) -> OpResult {
        self.commit_pending_upto(checkpoint)
    }

    fn restore_state(&mut self, checkpoint: u64, elements: Vec<Vec<u8>>) -> OpResult {
        if checkpoint == 0 {
            return self.start_over(elements.len());
        }
        let elements = elements.iter().map(|e| decode_element(e)).collect::<OpResult<Vec<_>>>()?;
        // 1. Every listed pending file belongs to a checkpoint <= `checkpoint`, which
        //    completed: commit it (whatever subtask index wrote it).
        let mut listed = HashSet::new();
        let mut listed_per_index: HashMap<u32, u64> = HashMap::new();
        for element in &elements {
            let SinkElement::Pending { checkpoint: cp, part } = element else { continue };
            let name = part.file_name();
            if *cp > checkpoint {
                tracing::warn!(file = %name, checkpoint = cp, restored = checkpoint, "file sink state lists a file of a later checkpoint; not committing it");
                continue;
            }
            self.commit_pending(&name, &part.at(Stage::Committed).file_name())?;
            if part.index == self.index {
                self.has_output = true;
            }
            listed.insert(name);
            *listed_per_index.entry(part.index).or_default() += 1;
        }
        // 2. Which pending files are garbage. Each old subtask's header says how many pending
        //    files it listed; if all of them were listed here, an unlisted pending file of that
        //    index holds rows written after the checkpoint. After rescaling some may be listed
        //    at another subtask, still to be committed there: those stay (with a warning).
        let headers: HashMap<u32, (u32, u32)> = elements
            .iter()
            .filter_map(|e| match e {
                SinkElement::Header { parallelism, index, pending } => Some((*index, (*parallelism, *pending))),
                SinkElement::Pending { .. } => None,
            })
            .collect();
        let complete = |k: u32| match headers.get(&k) {
            Some(&(_, pending)) => u64::from(pending) == listed_per_index.get(&k).copied().unwrap_or(0),
            // No subtask of the checkpoint had this index: none of its files was listed.
            None => headers.values().any(|&(parallelism, _)| k >= parallelism),
        };
        // Leftovers this subtask cleans: its own index's, and those of an old subtask index no
        // new subtask has (scaled down) whose header it received (exactly one subtask does).
        let responsible = |k: u32| k == self.index || (k >= self.parallelism && headers.contains_key(&k));
        // 3. Delete the job's leftovers and continue the numbering.
        let mut highest = None;
        let mut kept = 0;
        for (name, part) in self.list_parts()? {
            if part.index == self.index {
                highest = highest.max(Some(part.seq));
                if part.stage == Stage::Committed {
                    self.has_output = true;
                }
            }
            if !responsible(part.index) {
                continue;
            }
            let delete = match part.stage {
                Stage::InProgress => true,
                Stage::Pending if listed.contains(&name) => false,
                Stage::Pending if complete(part.index) => true,
                Stage::Pending => {
                    kept += 1;
                    false
                }
                Stage::Committed => false,
            };
            if delete {
                self.remove(&self.dir.join(&name))?;
            }
        }
        if kept > 0 {
            tracing::warn!(
                index = self.index,
                files = kept,
                "file sink kept unlisted pending files that may be listed at another subtask (restored at another parallelism); they stay hidden"
            );
        }
        self.sync_dir();
        self.next_seq = highest.map_or(0, |s: u64| s + 1);
        self.current = None;
        self.pending.clear();
        self.prepared = true;
        self.finished = false;
        tracing::info!(index = self.index, checkpoint, next_seq = self.next_seq, "file sink restored");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{info, NoOutput};
    use arrow_array::types::Int64Type;
    use arrow_array::{
        ArrayRef, BooleanArray, Date32Array, Float64Array, Int64Array, ListArray, StringArray, TimestampMillisecondArray, UInt8Array,
    };
    use std::sync::Arc;
    use weir_core::operator::SubtaskInfo;

    fn rows() -> RecordBatch {
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(-22), None, Some(4)]));
        let texts: ArrayRef = Arc::new(StringArray::from(vec![Some("plain"), Some("a,b \"quoted\""), Some("two\nlines\r"), None]));
        RecordBatch::try_from_iter([("id", ids), ("text", texts)]).expect("batch")
    }

    /// A one-column batch of the given ids (CSV lines are the ids).
    fn ids(values: std::ops::Range<i64>) -> RecordBatch {
        let ids: ArrayRef = Arc::new(Int64Array::from(values.collect::<Vec<_>>()));
        RecordBatch::try_from_iter([("id", ids)]).expect("batch")
    }

    fn lines(values: std::ops::Range<i64>) -> String {
        values.map(|v| format!("{v}\n")).collect()
    }

    /// The directory's file names, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).expect("list").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    fn read(dir: &Path, name: &str) -> String {
        fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn sink(dir: &Path, index: u32, parallelism: u32) -> FileSink {
        FileSink::new(dir.to_str().expect("utf-8 path"), FileFormat::Csv, &info(index, parallelism)).expect("open")
    }

    #[test]
    fn part_names_parse_only_canonical_spellings() {
        let part = |stage, job: &str, attempt, index, seq| Some(PartName { stage, job: job.into(), attempt, index, seq });
        assert_eq!(PartName::parse("part-job-0-3-17"), part(Stage::Committed, "job", 0, 3, 17));
        assert_eq!(PartName::parse(".part-a-b-2-0-2.pending"), part(Stage::Pending, "a-b", 2, 0, 2));
        assert_eq!(PartName::parse(".part-5f0c-1-12-0.inprogress"), part(Stage::InProgress, "5f0c", 1, 12, 0));
        for other in [
            "part-1-2",
            "part--0-1-2",
            ".part-1.inprogress",
            "part-j-0-01-2",
            "part-j-0-1-+2",
            "part-j-0-1-2.pending",
            ".part-j-0-1-2",
            "x",
        ] {
            assert_eq!(PartName::parse(other), None, "{other}");
        }
    }

    #[test]
    fn file_sink_csv_quotes_and_commits_on_finish() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("nested").join("out");
        let out_str = out.to_str().expect("utf-8 path");
        // Uncommitted files of an earlier attempt of the job are started over; other
        // subtasks' and other jobs' files are left alone.
        fs::create_dir_all(&out).expect("mkdir");
        fs::write(out.join(".part-other-0-1-0.inprogress"), "another job\n").expect("write");
        fs::write(out.join(".part-job-0-1-0.inprogress"), "stale rows\n").expect("write");
        fs::write(out.join(".part-job-0-1-4.pending"), "stale rows\n").expect("write");
        fs::write(out.join(".part-job-0-0-0.pending"), "other subtask\n").expect("write");

        let mut sink = FileSink::new(out_str, FileFormat::Csv, &info(1, 2)).expect("open");
        sink.process_batch(rows(), &mut NoOutput).expect("write");
        sink.process_batch(rows().slice(0, 1), &mut NoOutput).expect("write");
        assert_eq!(names(&out), vec![".part-job-0-0-0.pending", ".part-job-0-1-0.inprogress", ".part-other-0-1-0.inprogress"]);

        sink.finish(&mut NoOutput).expect("finish");
        assert_eq!(names(&out), vec![".part-job-0-0-0.pending", ".part-other-0-1-0.inprogress", "part-job-0-1-0"]);
        let text = read(&out, "part-job-0-1-0");
        assert_eq!(text, "1,plain\n-22,\"a,b \"\"quoted\"\"\"\n,\"two\nlines\r\"\n4,\n1,plain\n");
        // A second finish is harmless; writing after commit is an error.
        sink.finish(&mut NoOutput).expect("finish again");
        assert!(sink.process_batch(rows(), &mut NoOutput).is_err());
        assert_eq!(read(&out, "part-job-0-1-0"), text);
    }

    #[test]
    fn file_sink_writes_json_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("json");
        let mut sink = crate::file_sink(out.to_str().expect("utf-8 path"), FileFormat::Json, &info(0, 1)).expect("open");
        sink.process_batch(rows(), &mut NoOutput).expect("write");
        sink.finish(&mut NoOutput).expect("finish");
        let text = read(&out, "part-job-0-0-0");
        assert_eq!(
            text,
            concat!(
                "{\"id\":1,\"text\":\"plain\"}\n",
                "{\"id\":-22,\"text\":\"a,b \\\"quoted\\\"\"}\n",
                "{\"id\":null,\"text\":\"two\\nlines\\r\"}\n",
                "{\"id\":4,\"text\":null}\n",
            )
        );
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).expect("valid JSON");
            assert!(value.is_object());
        }
    }

    /// Columns of types other than Int64 and Utf8, with a null in each.
    fn typed_rows() -> RecordBatch {
        let ratio: ArrayRef = Arc::new(Float64Array::from(vec![Some(1.5), Some(-0.25), None]));
        let flag: ArrayRef = Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)]));
        let at: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![Some(1_700_000_000_123), Some(0), None]));
        let at_utc: ArrayRef =
            Arc::new(TimestampMillisecondArray::from(vec![None, Some(1_700_000_000_000), Some(-1)]).with_timezone("+00:00"));
        let day: ArrayRef = Arc::new(Date32Array::from(vec![Some(19_675), None, Some(0)]));
        let small: ArrayRef = Arc::new(UInt8Array::from(vec![Some(255), Some(0), None]));
        RecordBatch::try_from_iter([("ratio", ratio), ("flag", flag), ("at", at), ("at_utc", at_utc), ("day", day), ("small", small)])
            .expect("batch")
    }

    #[test]
    fn file_sink_writes_floats_booleans_dates_and_timestamps_as_csv() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sink = sink(dir.path(), 0, 1);
        sink.process_batch(typed_rows(), &mut NoOutput).expect("write");
        // A record of one empty value is quoted, so that it is not an empty line.
        let lone: ArrayRef = Arc::new(StringArray::from(vec![Some(""), None, Some("x")]));
        sink.process_batch(RecordBatch::try_from_iter([("text", lone)]).expect("batch"), &mut NoOutput).expect("write");
        sink.finish(&mut NoOutput).expect("finish");
        assert_eq!(
            read(dir.path(), "part-job-0-0-0"),
            concat!(
                "1.5,true,2023-11-14T22:13:20.123,,2023-11-14,255\n",
                "-0.25,,1970-01-01T00:00:00,2023-11-14T22:13:20Z,,0\n",
                ",false,,1969-12-31T23:59:59.999Z,1970-01-01,\n",
                "\"\"\n",
                "\"\"\n",
                "x\n",
            )
        );
    }

    #[test]
    fn file_sink_writes_floats_booleans_dates_and_timestamps_as_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("json");
        let mut sink = crate::file_sink(out.to_str().expect("utf-8 path"), FileFormat::Json, &info(0, 1)).expect("open");
        sink.process_batch(typed_rows(), &mut NoOutput).expect("write");
        sink.finish(&mut NoOutput).expect("finish");
        assert_eq!(
            read(&out, "part-job-0-0-0"),
            concat!(
                "{\"ratio\":1.5,\"flag\":true,\"at\":\"2023-11-14T22:13:20.123\",\"at_utc\":null,\"day\":\"2023-11-14\",\"small\":255}\n",
                "{\"ratio\":-0.25,\"flag\":null,\"at\":\"1970-01-01T00:00:00\",\"at_utc\":\"2023-11-14T22:13:20Z\",\"day\":null,\"small\":0}\n",
                "{\"ratio\":null,\"flag\":false,\"at\":null,\"at_utc\":\"1969-12-31T23:59:59.999Z\",\"day\":\"1970-01-01\",\"small\":null}\n",
            )
        );
    }

    #[test]
    fn file_sink_refuses_nested_columns_in_csv_naming_the_column() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sink = sink(dir.path(), 0, 1);
        let lists: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(vec![Some(vec![Some(1), Some(2)])]));
        let batch = RecordBatch::try_from_iter([("pair", lists)]).expect("batch");
        let err = sink.process_batch(batch, &mut NoOutput).expect_err("list column").to_string();
        assert!(err.contains("'pair'") && err.contains("CSV"), "{err}");
        assert!(names(dir.path()).is_empty(), "nothing written: {:?}", names(dir.path()));
    }

    #[test]
    fn file_sink_without_rows_commits_one_empty_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut quiet = sink(dir.path(), 2, 4);
        quiet.finish(&mut NoOutput).expect("finish");
        // Even with checkpoints that had nothing to pre-commit.
        let mut checkpointed = sink(dir.path(), 3, 4);
        checkpointed.snapshot_state(1).expect("snapshot");
        checkpointed.process_batch(ids(0..0), &mut NoOutput).expect("empty batch");
        checkpointed.snapshot_state(2).expect("snapshot");
        checkpointed.notify_checkpoint_complete(2).expect("notify");
        checkpointed.finish(&mut NoOutput).expect("finish");
        assert_eq!(names(dir.path()), vec!["part-job-0-2-0", "part-job-0-3-1"]);
        assert_eq!(read(dir.path(), "part-job-0-2-0"), "");
        assert_eq!(read(dir.path(), "part-job-0-3-1"), "");
    }

    #[test]
    fn file_sink_snapshot_pre_commits_and_notify_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sink = sink(dir.path(), 0, 1);
        sink.process_batch(ids(0..10), &mut NoOutput).expect("write");
        sink.process_batch(ids(10..20), &mut NoOutput).expect("write");
        let state1 = sink.snapshot_state(1).expect("snapshot").expect("state");
        // Pending, durable, not visible; nothing committed yet.
        assert_eq!(names(dir.path()), vec![".part-job-0-0-0.pending"]);
        assert_eq!(read(dir.path(), ".part-job-0-0-0.pending"), lines(0..20));
        assert_eq!(state1.len(), 2, "a header and the one pending file");

        // Checkpoint 2 is taken before 1 completes; a checkpoint with no rows pends nothing.
        sink.process_batch(ids(20..30), &mut NoOutput).expect("write");
        assert_eq!(names(dir.path()), vec![".part-job-0-0-0.pending", ".part-job-0-0-1.inprogress"]);
        let state2 = sink.snapshot_state(2).expect("snapshot").expect("state");
        assert_eq!(state2.len(), 3, "both pending files await their commit");
        let state3 = sink.snapshot_state(3).expect("snapshot").expect("state");
        assert_eq!(state3.len(), 3);
        assert_eq!(names(dir.path()), vec![".part-job-0-0-0.pending", ".part-job-0-0-1.pending"]);

        sink.notify_checkpoint_complete(1).expect("notify");
        assert_eq!(names(dir.path()), vec![".part-job-0-0-1.pending", "part-job-0-0-0"]);
        assert_eq!(read(dir.path(), "part-job-0-0-0"), lines(0..20));
        assert_eq!(sink.snapshot_state(4).expect("snapshot").expect("state").len(), 2);
        // A later notification covers every earlier checkpoint.
        sink.notify_checkpoint_complete(4).expect("notify");
        assert_eq!(names(dir.path()), vec!["part-job-0-0-0", "part-job-0-0-1"]);
        assert_eq!(read(dir.path(), "part-job-0-0-1"), lines(20..30));
        sink.notify_checkpoint_complete(4).expect("a repeated notification is harmless");
    }

    #[test]
    fn file_sink_finish_commits_pending_and_in_progress_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sink = sink(dir.path(), 1, 2);
        sink.process_batch(ids(0..5), &mut NoOutput).expect("write");
        sink.snapshot_state(1).expect("snapshot");
        sink.process_batch(ids(5..10), &mut NoOutput).expect("write");
        sink.snapshot_state(2).expect("snapshot");
        sink.notify_checkpoint_complete(1).expect("notify");
        sink.process_batch(ids(10..15), &mut NoOutput).expect("write");
        assert_eq!(names(dir.path()), vec![".part-job-0-1-1.pending", ".part-job-0-1-2.inprogress", "part-job-0-1-0"]);
        sink.finish(&mut NoOutput).expect("finish");
        assert_eq!(names(dir.path()), vec!["part-job-0-1-0", "part-job-0-1-1", "part-job-0-1-2"]);
        let all: String = ["part-job-0-1-0", "part-job-0-1-1", "part-job-0-1-2"].iter().map(|n| read(dir.path(), n)).collect();
        assert_eq!(all, lines(0..15));
        // Nothing is pending any more.
        assert_eq!(sink.snapshot_state(3).expect("snapshot").expect("state").len(), 1);
    }

    #[test]
    fn file_sink_restore_after_crash_keeps_exactly_the_completed_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut first = sink(dir.path(), 0, 1);
        first.process_batch(ids(0..10), &mut NoOutput).expect("write");
        let state1 = first.snapshot_state(1).expect("snapshot").expect("state");
        first.notify_checkpoint_complete(1).expect("notify");
        // Output after checkpoint 1: pre-committed for checkpoint 2 (never completed), then
        // in progress when the process dies.
        first.process_batch(ids(10..20), &mut NoOutput).expect("write");
        first.snapshot_state(2).expect("snapshot");
        first.process_batch(ids(20..30), &mut NoOutput).expect("write");
        drop(first); // a crash: no finish
        assert_eq!(names(dir.path()), vec![".part-job-0-0-1.pending", ".part-job-0-0-2.inprogress", "part-job-0-0-0"]);

        let mut restored = sink(dir.path(), 0, 1);
        restored.restore_state(1, state1).expect("restore");
        assert_eq!(names(dir.path()), vec!["part-job-0-0-0"]);
        assert_eq!(read(dir.path(), "part-job-0-0-0"), lines(0..10));
        // The replay writes the rows after checkpoint 1 again, under new names.
        restored.process_batch(ids(10..30), &mut NoOutput).expect("write");
        restored.finish(&mut NoOutput).expect("finish");
        assert_eq!(names(dir.path()), vec!["part-job-0-0-0", "part-job-0-0-3"]);
        assert_eq!(read(dir.path(), "part-job-0-0-3"), lines(10..30));
    }

    #[test]
    fn file_sink_restore_commits_a_listed_pending_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut first = sink(dir.path(), 0, 1);
        first.process_batch(ids(0..10), &mut NoOutput).expect("write");
        let state1 = first.snapshot_state(1).expect("snapshot").expect("state");
        first.process_batch(ids(10..20), &mut NoOutput).expect("write");
        // Checkpoint 1 completed, but the process died before the notification arrived.
        drop(first);
        assert_eq!(names(dir.path()), vec![".part-job-0-0-0.pending", ".part-job-0-0-1.inprogress"]);

        let mut restored = sink(dir.path(), 0, 1);
        restored.restore_state(1, state1.clone()).expect("restore");
        assert_eq!(names(dir.path()), vec!["part-job-0-0-0"]);
        assert_eq!(read(dir.path(), "part-job-0-0-0"), lines(0..10));
        // Restoring the same checkpoint again (the restored attempt failed too) is idempotent.
        restored.process_batch(ids(10..15), &mut NoOutput).expect("write");
        drop(restored);
        let mut again = sink(dir.path(), 0, 1);
        again.restore_state(1, state1.clone()).expect("restore again");
        assert_eq!(names(dir.path()), vec!["part-job-0-0-0"]);
        again.finish(&mut NoOutput).expect("finish");
        // The restored run committed nothing new, but part-job-0-0-0 is its output: no empty file.
        assert_eq!(names(dir.path()), vec!["part-job-0-0-0"]);

        // A listed file that exists neither pending nor committed is lost output: an error.
        fs::remove_file(dir.path().join("part-job-0-0-0")).expect("remove");
        let err = sink(dir.path(), 0, 1).restore_state(1, state1).expect_err("missing file").to_string();
        assert!(err.contains("part-job-0-0-0"), "{err}");
    }

    #[test]
    fn file_sink_restart_without_a_completed_checkpoint_starts_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Attempt 0: subtask 0 took snapshots (none completed) and finished, committing two
        // files; subtask 1 was still writing when the job failed.
        let mut finished = sink(dir.path(), 0, 2);
        finished.process_batch(ids(0..5), &mut NoOutput).expect("write");
        finished.snapshot_state(1).expect("snapshot");
        finished.process_batch(ids(5..10), &mut NoOutput).expect("write");
        finished.finish(&mut NoOutput).expect("finish");
        let mut failed = sink(dir.path(), 1, 2);
        failed.process_batch(ids(100..105), &mut NoOutput).expect("write");
        failed.snapshot_state(1).expect("snapshot");
        failed.process_batch(ids(105..110), &mut NoOutput).expect("write");
        drop(failed);
        assert_eq!(names(dir.path()), vec![".part-job-0-1-0.pending", ".part-job-0-1-1.inprogress", "part-job-0-0-0", "part-job-0-0-1"]);

        // Attempt 1 replays everything from the start.
        let mut sinks: Vec<FileSink> = (0..2).map(|i| sink(dir.path(), i, 2)).collect();
        for s in &mut sinks {
            s.restore_state(0, Vec::new()).expect("start over");
        }
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
        sinks[0].process_batch(ids(0..10), &mut NoOutput).expect("write");
        sinks[1].process_batch(ids(100..110), &mut NoOutput).expect("write");
        for s in &mut sinks {
            s.finish(&mut NoOutput).expect("finish");
        }
        assert_eq!(names(dir.path()), vec!["part-job-0-0-0", "part-job-0-1-0"]);
        assert_eq!(committed_lines(dir.path()), (0..10).chain(100..110).collect::<Vec<i64>>());
    }

    #[test]
    fn file_sink_restore_rejects_foreign_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = sink(dir.path(), 0, 1).restore_state(1, vec![b"WDG1....".to_vec()]).expect_err("bad").to_string();
        assert!(err.contains("file sink cannot restore"), "{err}");
        // A name that is not a pending part file (e.g. a path) is refused.
        let outside = StoredElement::Pending { checkpoint: 1, name: "../etc/passwd".into() };
        let element = state::encode(STATE_MAGIC, &outside, "file sink").expect("encode");
        let err = sink(dir.path(), 0, 1).restore_state(1, vec![element]).expect_err("bad").to_string();
        assert!(err.contains("not a pending part file name"), "{err}");
    }

    fn sink_of(dir: &Path, job: &str, attempt: u32, index: u32) -> FileSink {
        let info = SubtaskInfo { job_id: job.into(), attempt, ..info(index, 1) };
        FileSink::new(dir.to_str().expect("utf-8 path"), FileFormat::Csv, &info).expect("open")
    }

    /// Two jobs write to one directory, one of them crashing and restarting with and without
    /// a checkpoint: each keeps all its output, and neither touches the other's files.
    #[test]
    fn two_jobs_on_one_directory_both_keep_all_their_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = sink_of(dir.path(), "a", 0, 0);
        let mut b = sink_of(dir.path(), "b", 0, 0);
        a.process_batch(ids(0..10), &mut NoOutput).expect("write");
        b.process_batch(ids(100..110), &mut NoOutput).expect("write");
        let a_state = a.snapshot_state(1).expect("snapshot").expect("state");
        b.snapshot_state(1).expect("snapshot");
        a.notify_checkpoint_complete(1).expect("commit");
        b.notify_checkpoint_complete(1).expect("commit");
        a.process_batch(ids(10..20), &mut NoOutput).expect("write");
        b.process_batch(ids(110..120), &mut NoOutput).expect("write");
        b.snapshot_state(2).expect("snapshot");
        // Job a crashes and restores checkpoint 1 in attempt 1: its leftovers go, b's stay.
        drop(a);
        let mut a = sink_of(dir.path(), "a", 1, 0);
        a.restore_state(1, a_state).expect("restore");
        assert_eq!(names(dir.path()), vec![".part-b-0-0-1.pending", "part-a-0-0-0", "part-b-0-0-0"]);
        a.process_batch(ids(10..20), &mut NoOutput).expect("write");
        a.finish(&mut NoOutput).expect("finish");
        b.finish(&mut NoOutput).expect("finish");
        assert_eq!(names(dir.path()), vec!["part-a-0-0-0", "part-a-1-0-2", "part-b-0-0-0", "part-b-0-0-1"]);
        assert_eq!(committed_lines(dir.path()), (0..20).chain(100..120).collect::<Vec<_>>());
        // A restart of job b without a checkpoint starts b over; a's output stays.
        let mut b = sink_of(dir.path(), "b", 1, 0);
        b.restore_state(0, Vec::new()).expect("start over");
        assert_eq!(names(dir.path()), vec!["part-a-0-0-0", "part-a-1-0-2"]);
    }

    /// A restore commits the pending files its checkpoint lists and nothing else: a pending
    /// file of a later checkpoint of the job is deleted, another job's stays hidden.
    #[test]
    fn a_restore_commits_only_the_files_its_checkpoint_lists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = sink_of(dir.path(), "a", 0, 0);
        s.process_batch(ids(0..10), &mut NoOutput).expect("write");
        let state = s.snapshot_state(1).expect("snapshot").expect("state");
        s.process_batch(ids(10..20), &mut NoOutput).expect("write");
        s.snapshot_state(2).expect("snapshot");
        fs::write(dir.path().join(".part-b-0-0-0.pending"), "another job\n").expect("write");
        drop(s);
        sink_of(dir.path(), "a", 1, 0).restore_state(1, state).expect("restore");
        assert_eq!(names(dir.path()), vec![".part-b-0-0-0.pending", "part-a-0-0-0"]);
        assert_eq!(committed_lines(dir.path()), (0..10).collect::<Vec<_>>());
    }

    /// Two old subtasks of a job that dies after checkpoint 2 completed but before any
    /// notification arrived: each leaves pending files of checkpoints 1 and 2 (listed in its
    /// state of checkpoint 2, which is returned), one of checkpoint 3 (never completed) and an
    /// in-progress file.
    fn two_crashed_subtasks(dir: &Path) -> Vec<Vec<Vec<u8>>> {
        let mut states = Vec::new();
        for index in 0..2 {
            let base = i64::from(index) * 1000;
            let mut s = sink(dir, index, 2);
            s.process_batch(ids(base..base + 10), &mut NoOutput).expect("write");
            s.snapshot_state(1).expect("snapshot");
            s.process_batch(ids(base + 10..base + 20), &mut NoOutput).expect("write");
            states.push(s.snapshot_state(2).expect("snapshot").expect("state"));
            s.process_batch(ids(base + 20..base + 30), &mut NoOutput).expect("write");
            s.snapshot_state(3).expect("snapshot");
            s.process_batch(ids(base + 30..base + 40), &mut NoOutput).expect("write");
        }
        states
    }

    fn deal(states: &[Vec<Vec<u8>>], parallelism: usize) -> Vec<Vec<Vec<u8>>> {
        let mut dealt = vec![Vec::new(); parallelism];
        for (i, element) in states.iter().flatten().enumerate() {
            dealt[i % parallelism].push(element.clone());
        }
        dealt
    }

    fn committed_lines(dir: &Path) -> Vec<i64> {
        let mut all: Vec<i64> = names(dir)
            .iter()
            .filter(|n| !n.starts_with('.'))
            .flat_map(|n| read(dir, n).lines().map(|l| l.parse::<i64>().expect("id")).collect::<Vec<_>>())
            .collect();
        all.sort();
        all
    }

    #[test]
    fn file_sink_restore_at_lower_parallelism_commits_and_cleans_every_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let states = two_crashed_subtasks(dir.path());
        let dealt = deal(&states, 1);
        sink(dir.path(), 0, 1).restore_state(2, dealt[0].clone()).expect("restore");
        assert_eq!(names(dir.path()), vec!["part-job-0-0-0", "part-job-0-0-1", "part-job-0-1-0", "part-job-0-1-1"]);
        let expected: Vec<i64> = (0..20).chain(1000..1020).collect();
        assert_eq!(committed_lines(dir.path()), expected);
    }

    #[test]
    fn file_sink_restore_at_higher_parallelism_never_deletes_files_listed_elsewhere() {
        let dir = tempfile::tempdir().expect("tempdir");
        let states = two_crashed_subtasks(dir.path());
        // Elements [H0, P0a, P0b, H1, P1a, P1b] over 3: subtask 0 gets both headers but
        // none of the pending files it would need to tell index 0's garbage apart.
        let dealt = deal(&states, 3);
        let mut sinks: Vec<FileSink> = (0..3).map(|i| sink(dir.path(), i, 3)).collect();
        for (i, s) in sinks.iter_mut().enumerate() {
            s.restore_state(2, dealt[i].clone()).expect("restore");
        }
        let expected: Vec<i64> = (0..20).chain(1000..1020).collect();
        assert_eq!(committed_lines(dir.path()), expected);
        assert!(!names(dir.path()).iter().any(|n| n.ends_with(".inprogress")), "{:?}", names(dir.path()));
        // New files continue after the highest sequence number of each index.
        for s in &mut sinks {
            s.process_batch(ids(5000..5001), &mut NoOutput).expect("write");
            s.finish(&mut NoOutput).expect("finish");
        }
        let committed: Vec<String> = names(dir.path()).into_iter().filter(|n| !n.starts_with('.')).collect();
        assert_eq!(
            committed,
            vec![
                "part-job-0-0-0",
                "part-job-0-0-1",
                "part-job-0-0-4",
                "part-job-0-1-0",
                "part-job-0-1-1",
                "part-job-0-1-4",
                "part-job-0-2-0"
            ]
        );
    }
}
