//! The `file` source: reads text files (one file, or the visible regular files of a
//! directory) as a `line` column, split across subtasks by byte range.
//!
//! Splitting is Hadoop style: every file is cut into `parallelism` byte ranges and a line
//! belongs to the range holding its first byte. Subtask `i` reads range `i` of every file,
//! skipping the line it starts inside of (its predecessor reads that one) and reading past its
//! range end to finish its last line. So every line is read by exactly one subtask without
//! any coordination between them.
//!
//! A subtask's work is a queue of [`FileSplit`]s (at a fresh start, its range of every file):
//! each not started yet (a byte range, cut from the file's size when the split is opened) or
//! resumed (the offset of a line start and the range end). The reader is replayable and, like Flink's FLIP-27 file source,
//! rescalable: its checkpoint state is one element per split it has still to read — the one it
//! is in, as a resumed split at the first line it has not emitted, then the ones it has not
//! opened. No element names a subtask, so the runtime may deal the elements of all old subtasks
//! over any number of new ones (round-robin, `weir_state::operator_state::redistribute_round_robin`):
//! each split is read by exactly one new subtask, and as a split keeps its range's
//! line-ownership rule, every line is still emitted exactly once. Splits are not cut again: a
//! new subtask that is dealt no split has nothing to read and ends at once.
//!
//! Checkpoints of the previous format (`WFS2`, one position per subtask: its current file and
//! the files it had not opened) still restore, at any parallelism: each such element is read as
//! the splits it stands for (see `FileSourcePositionV2`).

use crate::state::{self, StoredPath};
use crate::text::Utf8Column;
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weir_core::operator::{OpResult, OperatorError, SourcePoll, SourceReader, SubtaskInfo};

/// Most lines in one batch.
const BATCH_LINES: usize = 4096;
/// A batch also ends once it holds this many bytes, so very long lines do not make huge
/// batches.
const BATCH_BYTES: usize = 4 * 1024 * 1024;
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Magic of a file source state element (a [`FileSplit`]).
const STATE_MAGIC: &[u8; 4] = b"WFS3";
/// Magic of the previous format's element (a [`FileSourcePositionV2`]): read, never written.
const STATE_MAGIC_V2: &[u8; 4] = b"WFS2";

/// Part of one file still to read; a checkpoint holds one per split as a state element.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileSplit {
    file: StoredPath,
    start: SplitStart,
}

/// Where a split starts reading, and so which lines it owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum SplitStart {
    /// Not opened yet: byte range `index` of `parallelism` equal ranges of the file, cut from
    /// its size when opened. It owns the lines whose first byte is in the range, so unless it
    /// starts at offset 0 it skips the line it starts inside of.
    Range { index: u32, parallelism: u32 },
    /// Opened and partly read: `pos` is the first byte of the next line not emitted (that
    /// line is read), `end` the end of the range it was opened with.
    Resume { pos: u64, end: u64 },
}

impl FileSplit {
    /// Decodes one state element, refusing a range no fresh start could have made.
    fn decode(element: &[u8]) -> OpResult<Self> {
        let split: Self = state::decode(element, STATE_MAGIC, "file source")?;
        if let SplitStart::Range { index, parallelism } = split.start {
            if index >= parallelism {
                return Err(OperatorError::Failed(format!(
                    "file source cannot restore: its split of '{}' is range {index} of {parallelism}, which does not exist",
                    split.file.0.display()
                )));
            }
        }
        Ok(split)
    }

    /// The splits one state element stands for: one for a [`FileSplit`] (`WFS3`), the
    /// subtask's whole remaining work for a position of the previous format (`WFS2`).
    fn decode_element(element: &[u8]) -> OpResult<Vec<Self>> {
        if element.starts_with(STATE_MAGIC_V2) {
            state::decode::<FileSourcePositionV2>(element, STATE_MAGIC_V2, "file source")?.into_splits()
        } else {
            Ok(vec![Self::decode(element)?])
        }
    }
}

/// A subtask's checkpoint state in the previous format (`WFS2`, before splits were state
/// elements): which subtask of which parallelism it was, where it was in the file it had open,
/// and the files it had not opened yet. Read so that retained checkpoints and savepoints taken
/// by the previous version still restore; the field order is its encoding, so it must not
/// change.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct FileSourcePositionV2 {
    parallelism: u32,
    index: u32,
    /// The file being read, if one was open.
    current: Option<SplitPositionV2>,
    /// The files still to open, in order.
    rest: Vec<StoredPath>,
}

/// Where a `WFS2` subtask was in its open file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct SplitPositionV2 {
    file: StoredPath,
    /// Offset of the next line not emitted yet.
    pos: u64,
    /// End of the subtask's byte range.
    end: u64,
}

impl FileSourcePositionV2 {
    /// The same work as splits: the open file resumes at `pos` up to `end`, and every file not
    /// opened yet is range `index` of `parallelism` of it, the range the old subtask would
    /// have read. The splits keep the old subtask's line ownership, so they can go to any new
    /// subtask, or with other old subtasks' splits to one.
    fn into_splits(self) -> OpResult<Vec<FileSplit>> {
        let Self { parallelism, index, current, rest } = self;
        if index >= parallelism {
            return Err(OperatorError::Failed(format!(
                "file source cannot restore: a position of the previous format (WFS2) is of subtask {index} of {parallelism}, \
                 which does not exist"
            )));
        }
        let resumed = current.map(|c| FileSplit { file: c.file, start: SplitStart::Resume { pos: c.pos, end: c.end } });
        let range = SplitStart::Range { index, parallelism };
        Ok(resumed.into_iter().chain(rest.into_iter().map(|file| FileSplit { file, start: range })).collect())
    }
}

/// The files under `path`: the path itself if it is a file, else the regular files directly
/// inside the directory, sorted by name, without hidden (`.`) or marker (`_`) files — the
/// same convention the file sink uses for files that are not (yet) committed output.
fn list_input_files(path: &str) -> OpResult<Vec<PathBuf>> {
    let meta = fs::metadata(path).map_err(|e| OperatorError::io("file source cannot read", path, e))?;
    if meta.is_file() {
        return Ok(vec![PathBuf::from(path)]);
    }
    if !meta.is_dir() {
        return Err(OperatorError::Failed(format!("file source path '{path}' is neither a regular file nor a directory")));
    }
    let entries = fs::read_dir(path).map_err(|e| OperatorError::io("file source cannot list", path, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| OperatorError::io("file source cannot list", path, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let entry_path = entry.path();
        // metadata() follows symlinks, so a link to a regular file counts as one.
        match fs::metadata(&entry_path) {
            Ok(m) if m.is_file() => files.push(entry_path),
            Ok(_) => {}
            Err(e) => return Err(OperatorError::io("file source cannot read", entry_path.display().to_string(), e)),
        }
    }
    files.sort();
    Ok(files)
}

/// An open split: a file positioned at the next line to read.
struct Split {
    file: PathBuf,
    /// The path as text, for error messages.
    path: String,
    reader: BufReader<File>,
    /// Offset of the next unread byte (the first byte of the next line).
    pos: u64,
    end: u64,
}

impl Split {
    /// Opens `split`'s file at its first line to read; None when it is a range that holds no
    /// line start.
    fn open(split: &FileSplit) -> OpResult<Option<Self>> {
        let path: &Path = &split.file.0;
        let name = path.display().to_string();
        let io_err = |what, e| OperatorError::io(what, name.clone(), e);
        let file = File::open(path).map_err(|e| io_err("file source cannot open", e))?;
        let (start, end) = match split.start {
            SplitStart::Resume { pos, end } => (pos, end),
            SplitStart::Range { index, parallelism } => {
                let size = file.metadata().map_err(|e| io_err("file source cannot read", e))?.len();
                let cut = |i: u32| (u128::from(size) * u128::from(i) / u128::from(parallelism)) as u64;
                (cut(index), cut(index + 1))
            }
        };
        if start >= end {
            return Ok(None);
        }
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
        let pos = match split.start {
            SplitStart::Resume { pos, .. } => {
                reader.seek(SeekFrom::Start(pos)).map_err(|e| io_err("file source cannot seek in", e))?;
                pos
            }
            SplitStart::Range { .. } if start == 0 => 0,
            SplitStart::Range { .. } => {
                // The line holding byte start-1 belongs to the previous range (if start-1 is
                // a '\n', that line ends right there and ours begins at start).
                let mut pos = start - 1;
                reader.seek(SeekFrom::Start(pos)).map_err(|e| io_err("file source cannot seek in", e))?;
                loop {
                    let buf = reader.fill_buf().map_err(|e| io_err("file source cannot read", e))?;
                    if buf.is_empty() {
                        break;
                    }
                    match buf.iter().position(|&b| b == b'\n') {
                        Some(i) => {
                            reader.consume(i + 1);
                            pos += i as u64 + 1;
                            break;
                        }
                        None => {
                            let n = buf.len();
                            reader.consume(n);
                            pos += n as u64;
                        }
                    }
                }
                pos
            }
        };
        Ok(Some(Self { file: path.to_path_buf(), path: name, reader, pos, end }))
    }

    /// Reads lines into `col` until it is full; true when the split is done.
    fn read_into(&mut self, col: &mut Utf8Column) -> OpResult<bool> {
        while col.len() < BATCH_LINES && col.value_bytes() < BATCH_BYTES {
            if self.pos >= self.end {
                return Ok(true);
            }
            let start = col.pending_start();
            let n = self
                .reader
                .read_until(b'\n', col.values_mut())
                .map_err(|e| OperatorError::io("file source cannot read", self.path.clone(), e))?;
            if n == 0 {
                return Ok(true);
            }
            self.pos += n as u64;
            let line = &col.values_mut()[start..];
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let len = line.len();
            col.truncate_pending(len);
            col.commit_value(&self.path)?;
        }
        Ok(self.pos >= self.end)
    }

    /// The rest of this split, as a split to resume: from the next line not read.
    fn remaining(&self) -> FileSplit {
        FileSplit { file: StoredPath(self.file.clone()), start: SplitStart::Resume { pos: self.pos, end: self.end } }
    }
}

pub struct FileReader {
    schema: SchemaRef,
    /// The split being read, if one is open.
    current: Option<Split>,
    /// The splits still to open, in order.
    pending: VecDeque<FileSplit>,
    index: u32,
}

impl FileReader {
    /// A reader of range `info.index` of `info.parallelism` of every file under `path`.
    pub fn new(path: &str, info: &SubtaskInfo, schema: SchemaRef) -> OpResult<Self> {
        let files = list_input_files(path)?;
        tracing::debug!(path, files = files.len(), index = info.index, "file source listed its input");
        let start = SplitStart::Range { index: info.index, parallelism: info.parallelism.max(1) };
        let pending = files.into_iter().map(|f| FileSplit { file: StoredPath(f), start }).collect();
        Ok(Self { schema, current: None, pending, index: info.index })
    }
}

impl SourceReader for FileReader {
    fn poll_next(&mut self) -> OpResult<SourcePoll> {
        let mut col = Utf8Column::with_capacity(BATCH_LINES, 64 * 1024);
        // Fill one batch, moving on to the next split when one is done, so small files do
        // not each make a small batch.
        while col.len() < BATCH_LINES && col.value_bytes() < BATCH_BYTES {
            if self.current.is_none() {
                let Some(next) = self.pending.pop_front() else { break };
                self.current = Split::open(&next)?;
            }
            let Some(split) = self.current.as_mut() else { continue };
            if split.read_into(&mut col)? {
                self.current = None;
            }
        }
        if col.is_empty() {
            return Ok(SourcePoll::End);
        }
        let batch = RecordBatch::try_new(self.schema.clone(), vec![Arc::new(col.finish()?)])?;
        Ok(SourcePoll::Batch(batch))
    }

    /// One element per split still to read: the open one first, then the others in order
    /// (none once everything is read). Each poll emits whole lines only and `Split::pos`
    /// advances per emitted line (whatever the `BufReader` read ahead), so between two polls
    /// the open split resumes at the first line not emitted yet.
    fn snapshot_state(&mut self, _checkpoint: u64) -> OpResult<Option<Vec<Vec<u8>>>> {
        let current = self.current.as_ref().map(Split::remaining);
        let elements = current.iter().chain(&self.pending).map(|split| state::encode(STATE_MAGIC, split, "file source"));
        Ok(Some(elements.collect::<OpResult<Vec<_>>>()?))
    }

    /// Reads exactly the splits given, in their order, and nothing else: at the same
    /// parallelism the subtask's own (so it resumes where the snapshot was taken), at another
    /// one whichever splits the runtime dealt it. The checkpoint's file list is kept (files
    /// that appeared in the directory since the job first listed it are not read). Elements of
    /// the previous format are read as the splits they stand for.
    fn restore_state(&mut self, elements: Vec<Vec<u8>>) -> OpResult {
        let mut splits = VecDeque::new();
        for element in &elements {
            splits.extend(FileSplit::decode_element(element)?);
        }
        tracing::debug!(index = self.index, splits = splits.len(), "file source restored its splits");
        self.current = None;
        self.pending = splits;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::info;
    use arrow_array::cast::AsArray;
    use arrow_schema::{DataType, Field, Schema};

    fn line_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, false)]))
    }

    /// All lines subtask `index` of `parallelism` reads, checking batch limits on the way.
    fn read_subtask(path: &str, index: u32, parallelism: u32) -> Vec<String> {
        let mut reader = FileReader::new(path, &info(index, parallelism), line_schema()).expect("open");
        let mut lines = Vec::new();
        loop {
            match reader.poll_next().expect("poll") {
                SourcePoll::Batch(b) => {
                    assert!(b.num_rows() > 0 && b.num_rows() <= BATCH_LINES);
                    lines.extend(b.column(0).as_string::<i32>().iter().map(|v| v.unwrap_or_default().to_string()));
                }
                SourcePoll::Idle(_) => panic!("the file source never idles"),
                SourcePoll::End => break,
            }
        }
        lines
    }

    /// The lines every subtask reads, concatenated in subtask order.
    fn read_all(path: &str, parallelism: u32) -> Vec<String> {
        (0..parallelism).flat_map(|i| read_subtask(path, i, parallelism)).collect()
    }

    /// Lines of assorted lengths (empty, short, several KiB) with '\n' and "\r\n" endings,
    /// and the file's text (whose last line has no newline).
    fn assorted(tag: &str, count: usize) -> (Vec<String>, String) {
        let mut lines = Vec::new();
        let mut text = String::new();
        for i in 0..count {
            let line = match i % 7 {
                0 => String::new(),
                1 => format!("{tag}{i}"),
                2 => format!("{tag}{i} {}", "long".repeat(1000 + i)),
                3 => format!("{tag}{i} with spaces and ünïcödé"),
                _ => format!("{tag}{i}-{}", "y".repeat(i % 13)),
            };
            text.push_str(&line);
            text.push_str(if i % 5 == 0 { "\r\n" } else { "\n" });
            lines.push(line);
        }
        let last = format!("{tag}-last-without-newline");
        text.push_str(&last);
        lines.push(last);
        (lines, text)
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn file_reader_reads_every_line_exactly_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("input.txt");
        let (lines, text) = assorted("a", 10_000);
        fs::write(&path, text).expect("write");
        let path = path.to_str().expect("utf-8 path");
        // One subtask reads the file in order.
        assert_eq!(read_all(path, 1), lines);
        for parallelism in 2..=4 {
            assert_eq!(sorted(read_all(path, parallelism)), sorted(lines.clone()), "parallelism {parallelism}");
        }
        // More subtasks than lines or bytes.
        let tiny = dir.path().join("tiny.txt");
        fs::write(&tiny, "a\n\nb\n").expect("write");
        let tiny = tiny.to_str().expect("utf-8 path");
        for parallelism in 1..=8 {
            assert_eq!(sorted(read_all(tiny, parallelism)), vec!["", "a", "b"], "parallelism {parallelism}");
        }
    }

    #[test]
    fn file_reader_reads_visible_files_of_a_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (b_lines, b_text) = assorted("b", 3_000);
        let (a_lines, a_text) = assorted("a", 500);
        fs::write(dir.path().join("b.txt"), b_text).expect("write");
        fs::write(dir.path().join("a.txt"), a_text).expect("write");
        fs::write(dir.path().join(".hidden"), "hidden line\n").expect("write");
        fs::write(dir.path().join("_SUCCESS"), "marker\n").expect("write");
        fs::write(dir.path().join("empty.txt"), "").expect("write");
        fs::create_dir(dir.path().join("nested")).expect("mkdir");
        fs::write(dir.path().join("nested").join("c.txt"), "nested line\n").expect("write");
        let path = dir.path().to_str().expect("utf-8 path");
        let mut expected = a_lines.clone();
        expected.extend(b_lines);
        // Files in name order.
        assert_eq!(read_all(path, 1), expected);
        for parallelism in 2..=4 {
            assert_eq!(sorted(read_all(path, parallelism)), sorted(expected.clone()), "parallelism {parallelism}");
        }
    }

    #[test]
    fn file_reader_missing_path_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("no-such-input");
        let missing = missing.to_str().expect("utf-8 path");
        let err = match FileReader::new(missing, &info(0, 1), line_schema()) {
            Ok(_) => panic!("opened a missing path"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(missing), "{err}");
    }

    fn lines_of(poll: SourcePoll) -> Option<Vec<String>> {
        match poll {
            SourcePoll::Batch(b) => Some(b.column(0).as_string::<i32>().iter().map(|v| v.unwrap_or_default().to_string()).collect()),
            SourcePoll::Idle(_) => panic!("the file source never idles"),
            SourcePoll::End => None,
        }
    }

    /// Reads `before` batches, snapshots, reads `lost` more (lost in a crash), restores a new
    /// reader from the snapshot and drains it: the lines of the first and the last part.
    fn interrupted_run(path: &str, index: u32, parallelism: u32, before: usize, lost: usize) -> Vec<String> {
        let mut first = FileReader::new(path, &info(index, parallelism), line_schema()).expect("open");
        let mut lines = Vec::new();
        for _ in 0..before {
            lines.extend(lines_of(first.poll_next().expect("poll")).unwrap_or_default());
        }
        let state = first.snapshot_state(7).expect("snapshot").expect("file source has state");
        for _ in 0..lost {
            first.poll_next().expect("poll");
        }
        drop(first);
        let mut restored = FileReader::new(path, &info(index, parallelism), line_schema()).expect("open");
        restored.restore_state(state).expect("restore");
        while let Some(batch) = lines_of(restored.poll_next().expect("poll")) {
            assert!(!batch.is_empty() && batch.len() <= BATCH_LINES);
            lines.extend(batch);
        }
        assert!(lines_of(restored.poll_next().expect("poll")).is_none(), "stays ended");
        lines
    }

    #[test]
    fn file_reader_snapshot_restore_continues_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Several files: one with lines long enough that batches end on the byte limit, one
        // with more lines than a batch holds, tiny and empty ones; every file's lines go on
        // into the next batch, so snapshots fall in the middle of files.
        let (_, big_text) = assorted("a", 3_000);
        let many: String = (0..10_000).map(|i| format!("many {i}\n")).collect();
        fs::write(dir.path().join("a.txt"), big_text).expect("write");
        fs::write(dir.path().join("b.txt"), many).expect("write");
        fs::write(dir.path().join("c.txt"), "x\r\ny\n\nz").expect("write");
        fs::write(dir.path().join("d.txt"), "").expect("write");
        let (_, small_text) = assorted("e", 50);
        fs::write(dir.path().join("e.txt"), small_text).expect("write");
        let path = dir.path().to_str().expect("utf-8 path");
        for parallelism in [1, 2, 3] {
            for index in 0..parallelism {
                let uninterrupted = read_subtask(path, index, parallelism);
                assert!(!uninterrupted.is_empty());
                for (before, lost) in [(0, 0), (0, 1), (1, 0), (1, 2), (2, 1), (3, 3), (4, 1), (50, 1)] {
                    assert_eq!(
                        interrupted_run(path, index, parallelism, before, lost),
                        uninterrupted,
                        "subtask {index} of {parallelism}, snapshot after {before} polls"
                    );
                }
            }
        }
    }

    #[test]
    fn file_reader_restore_keeps_the_checkpointed_file_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let many: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
        fs::write(dir.path().join("a.txt"), &many).expect("write");
        fs::write(dir.path().join("b.txt"), &many).expect("write");
        let path = dir.path().to_str().expect("utf-8 path");
        let uninterrupted = read_subtask(path, 0, 1);
        let mut first = FileReader::new(path, &info(0, 1), line_schema()).expect("open");
        let mut lines = lines_of(first.poll_next().expect("poll")).expect("a batch");
        let state = first.snapshot_state(1).expect("snapshot").expect("state");
        // A file that appears after the job listed its input is not part of this run.
        fs::write(dir.path().join("0-new.txt"), "new\n").expect("write");
        let mut restored = FileReader::new(path, &info(0, 1), line_schema()).expect("open");
        restored.restore_state(state).expect("restore");
        while let Some(batch) = lines_of(restored.poll_next().expect("poll")) {
            lines.extend(batch);
        }
        assert_eq!(lines, uninterrupted);
    }

    /// Files that exercise the splitting: lines long enough that batches end on the byte
    /// limit and lines crossing range boundaries, more lines than a batch holds, tiny files, an
    /// empty one, and last lines without a newline. Returns the directory's path and every
    /// line of every file.
    fn split_test_input(dir: &Path) -> (String, Vec<String>) {
        let (a_lines, a_text) = assorted("a", 3_000);
        let b_lines: Vec<String> = (0..10_000).map(|i| format!("many {i}")).collect();
        let b_text: String = b_lines.iter().map(|l| format!("{l}\n")).collect();
        let (e_lines, e_text) = assorted("e", 50);
        let f_line = format!("f {}", "one long line".repeat(500));
        fs::write(dir.join("a.txt"), a_text).expect("write");
        fs::write(dir.join("b.txt"), b_text).expect("write");
        fs::write(dir.join("c.txt"), "x\r\ny\n\nz").expect("write");
        fs::write(dir.join("d.txt"), "").expect("write");
        fs::write(dir.join("e.txt"), e_text).expect("write");
        fs::write(dir.join("f.txt"), &f_line).expect("write");
        let mut all = a_lines;
        all.extend(b_lines);
        all.extend(["x", "y", "", "z"].map(String::from));
        all.extend(e_lines);
        all.push(f_line);
        (dir.to_str().expect("utf-8 path").to_string(), all)
    }

    /// Readers of every subtask of `parallelism`, restored from `dealt` (one list per subtask)
    /// or fresh when `dealt` is None.
    fn readers(path: &str, parallelism: u32, dealt: Option<Vec<Vec<Vec<u8>>>>) -> Vec<FileReader> {
        let mut readers: Vec<FileReader> =
            (0..parallelism).map(|i| FileReader::new(path, &info(i, parallelism), line_schema()).expect("open")).collect();
        if let Some(dealt) = dealt {
            assert_eq!(dealt.len(), readers.len());
            for (reader, elements) in readers.iter_mut().zip(dealt) {
                reader.restore_state(elements).expect("restore");
            }
        }
        readers
    }

    /// Polls each reader `polls[i]` times (or to its end), adding what it emits to `lines`.
    fn poll_each(readers: &mut [FileReader], polls: &[usize], lines: &mut Vec<String>) {
        for (reader, &n) in readers.iter_mut().zip(polls.iter().cycle()) {
            for _ in 0..n {
                let Some(batch) = lines_of(reader.poll_next().expect("poll")) else { break };
                assert!(!batch.is_empty() && batch.len() <= BATCH_LINES);
                lines.extend(batch);
            }
        }
    }

    /// Every reader's state, dealt over `parallelism` new subtasks as the runtime deals it
    /// when the parallelism changed: element i of the old lists, taken in subtask order, goes
    /// to new subtask `i % parallelism` (`weir_state::operator_state::redistribute_round_robin`,
    /// which this crate does not depend on).
    fn snapshot_and_deal(readers: &mut [FileReader], parallelism: u32) -> Vec<Vec<Vec<u8>>> {
        let mut dealt = vec![Vec::new(); parallelism as usize];
        let old = readers.iter_mut().flat_map(|r| r.snapshot_state(3).expect("snapshot").expect("file source has state"));
        for (i, element) in old.enumerate() {
            dealt[i % parallelism as usize].push(element);
        }
        dealt
    }

    #[test]
    fn file_reader_restored_at_another_parallelism_reads_every_line_exactly_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, all) = split_test_input(dir.path());
        let expected = sorted(all);
        // Batches each old subtask reads before the snapshot: none, inside its first file,
        // inside its big files, everything.
        for before in [[0, 0], [1, 0], [0, 2], [1, 1], [2, 3], [3, 1], [50, 50]] {
            for new_parallelism in [1, 3, 4, 16] {
                let mut old = readers(&path, 2, None);
                let mut lines = Vec::new();
                poll_each(&mut old, &before, &mut lines);
                let dealt = snapshot_and_deal(&mut old, new_parallelism);
                // What the old subtasks emit after the snapshot is lost in the failover.
                poll_each(&mut old, &[1], &mut Vec::new());
                let mut new = readers(&path, new_parallelism, Some(dealt));
                poll_each(&mut new, &[usize::MAX], &mut lines);
                assert_eq!(sorted(lines), expected, "2 -> {new_parallelism} after {before:?} batches");
            }
        }
    }

    #[test]
    fn file_reader_rescaled_twice_reads_every_line_exactly_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, all) = split_test_input(dir.path());
        for (first, second) in [(3, 1), (3, 2), (1, 3), (5, 2)] {
            let mut lines = Vec::new();
            let mut old = readers(&path, 2, None);
            poll_each(&mut old, &[1, 2], &mut lines);
            let dealt = snapshot_and_deal(&mut old, first);
            let mut middle = readers(&path, first, Some(dealt));
            poll_each(&mut middle, &[1, 0, 2], &mut lines);
            let dealt = snapshot_and_deal(&mut middle, second);
            let mut last = readers(&path, second, Some(dealt));
            poll_each(&mut last, &[usize::MAX], &mut lines);
            assert_eq!(sorted(lines), sorted(all.clone()), "2 -> {first} -> {second}");
        }
    }

    #[test]
    fn file_reader_state_is_one_element_per_split_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _) = split_test_input(dir.path());
        let mut reader = FileReader::new(&path, &info(0, 2), line_schema()).expect("open");
        let splits = |r: &mut FileReader| -> Vec<FileSplit> {
            let state = r.snapshot_state(1).expect("snapshot").expect("state");
            state.iter().map(|e| FileSplit::decode(e).expect("decode")).collect()
        };
        let names = |splits: &[FileSplit]| -> Vec<String> {
            splits.iter().map(|s| s.file.0.file_name().expect("a file").to_string_lossy().into_owned()).collect()
        };
        let range = SplitStart::Range { index: 0, parallelism: 2 };
        let fresh = splits(&mut reader);
        assert_eq!(names(&fresh), ["a.txt", "b.txt", "c.txt", "d.txt", "e.txt", "f.txt"]);
        assert!(fresh.iter().all(|s| s.start == range), "{fresh:?}");
        // The first batch holds all of range 0 of a.txt (about 1500 lines) and ends inside
        // range 0 of b.txt.
        let first = lines_of(reader.poll_next().expect("poll")).expect("a batch");
        assert_eq!(first.len(), BATCH_LINES);
        let left = splits(&mut reader);
        assert_eq!(names(&left), ["b.txt", "c.txt", "d.txt", "e.txt", "f.txt"]);
        assert!(matches!(left[0].start, SplitStart::Resume { pos, end } if pos > 0 && pos < end), "{:?}", left[0]);
        assert!(left[1..].iter().all(|s| s.start == range), "{left:?}");
        while lines_of(reader.poll_next().expect("poll")).is_some() {}
        assert!(splits(&mut reader).is_empty(), "nothing left once read to the end");
        // A subtask dealt no split reads nothing.
        let mut idle = FileReader::new(&path, &info(2, 3), line_schema()).expect("open");
        idle.restore_state(Vec::new()).expect("restore");
        assert!(lines_of(idle.poll_next().expect("poll")).is_none());
    }

    #[test]
    fn file_reader_refuses_old_corrupt_and_impossible_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let many: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
        fs::write(dir.path().join("a.txt"), &many).expect("write");
        let path = dir.path().to_str().expect("utf-8 path");
        let restore = |elements: Vec<Vec<u8>>| {
            let mut reader = FileReader::new(path, &info(0, 1), line_schema()).expect("open");
            reader.restore_state(elements).expect_err("restore must fail").to_string()
        };
        let mut reader = FileReader::new(path, &info(0, 1), line_schema()).expect("open");
        reader.poll_next().expect("poll");
        let good = reader.snapshot_state(1).expect("snapshot").expect("state").remove(0);
        // A format this version does not know (older than WFS2, or newer than WFS3).
        for magic in [b"WFS1", b"WFS4"] {
            let mut unknown = good.clone();
            unknown[..4].copy_from_slice(magic);
            let err = restore(vec![good.clone(), unknown]);
            assert!(err.contains("file source cannot restore") && err.contains("unknown format or version"), "{err}");
        }
        let mut corrupt = good.clone();
        corrupt.truncate(corrupt.len() - 3);
        let err = restore(vec![corrupt]);
        assert!(err.contains("truncated or corrupt"), "{err}");
        let impossible = FileSplit { file: StoredPath(dir.path().join("a.txt")), start: SplitStart::Range { index: 2, parallelism: 2 } };
        let err = restore(vec![state::encode(STATE_MAGIC, &impossible, "file source").expect("encode")]);
        assert!(err.contains("a.txt") && err.contains("range 2 of 2"), "{err}");
        let impossible_v2 = OldFileSourcePosition { parallelism: 2, index: 2, current: None, rest: Vec::new() };
        let err = restore(vec![state::encode(b"WFS2", &impossible_v2, "file source").expect("encode")]);
        assert!(err.contains("WFS2") && err.contains("subtask 2 of 2"), "{err}");
        let mut corrupt_v2 = state::encode(b"WFS2", &impossible_v2, "file source").expect("encode");
        corrupt_v2.push(0);
        assert!(restore(vec![corrupt_v2]).contains("truncated or corrupt"));
    }

    /// The element of the previous format (`WFS2`) as the previous version declared it (`git
    /// show baaee40:crates/weir-connectors/src/file_source.rs`), to write state as it wrote it.
    #[derive(Serialize)]
    struct OldFileSourcePosition {
        parallelism: u32,
        index: u32,
        current: Option<OldSplitPosition>,
        rest: Vec<StoredPath>,
    }

    #[derive(Serialize)]
    struct OldSplitPosition {
        file: StoredPath,
        pos: u64,
        end: u64,
    }

    /// The `WFS2` element the previous version would have written for `reader`, subtask
    /// `index` of `parallelism`: it read the same lines (the ranges and the line ownership
    /// did not change), so its open file and the files it had not opened are the reader's
    /// splits.
    fn old_position(reader: &mut FileReader, index: u32, parallelism: u32) -> Vec<u8> {
        let state = reader.snapshot_state(1).expect("snapshot").expect("state");
        let mut splits: VecDeque<FileSplit> = state.iter().map(|e| FileSplit::decode(e).expect("decode")).collect();
        let current = match splits.front().map(|s| s.start) {
            Some(SplitStart::Resume { pos, end }) => {
                let file = splits.pop_front().expect("a split").file;
                Some(OldSplitPosition { file, pos, end })
            }
            _ => None,
        };
        let own = SplitStart::Range { index, parallelism };
        assert!(splits.iter().all(|s| s.start == own), "{splits:?}");
        let rest = splits.into_iter().map(|s| s.file).collect();
        let position = OldFileSourcePosition { parallelism, index, current, rest };
        state::encode(b"WFS2", &position, "file source").expect("encode")
    }

    #[test]
    fn a_position_of_the_previous_format_is_read_as_its_splits() {
        let position = OldFileSourcePosition {
            parallelism: 3,
            index: 1,
            current: Some(OldSplitPosition { file: StoredPath("/in/a.txt".into()), pos: 10, end: 20 }),
            rest: vec![StoredPath("/in/b.txt".into()), StoredPath("/in/c.txt".into())],
        };
        let element = state::encode(b"WFS2", &position, "file source").expect("encode");
        let split = |f: &str, start| FileSplit { file: StoredPath(f.into()), start };
        let range = SplitStart::Range { index: 1, parallelism: 3 };
        assert_eq!(
            FileSplit::decode_element(&element).expect("decode"),
            [split("/in/a.txt", SplitStart::Resume { pos: 10, end: 20 }), split("/in/b.txt", range), split("/in/c.txt", range)]
        );
        let done = OldFileSourcePosition { parallelism: 3, index: 2, current: None, rest: Vec::new() };
        let element = state::encode(b"WFS2", &done, "file source").expect("encode");
        assert!(FileSplit::decode_element(&element).expect("decode").is_empty());
    }

    #[test]
    fn a_checkpoint_of_the_previous_format_restores_at_any_parallelism_reading_every_line_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, all) = split_test_input(dir.path());
        let expected = sorted(all);
        // Batches each old subtask reads before the snapshot: none, inside its first file,
        // inside its big files, everything.
        for before in [[0, 0], [1, 0], [0, 2], [1, 1], [2, 3], [50, 50]] {
            for new_parallelism in [1, 2, 3] {
                let mut old = readers(&path, 2, None);
                let mut lines = Vec::new();
                poll_each(&mut old, &before, &mut lines);
                // One element per old subtask, dealt round-robin as the runtime deals them.
                let mut dealt = vec![Vec::new(); new_parallelism as usize];
                for (i, reader) in old.iter_mut().enumerate() {
                    dealt[i % new_parallelism as usize].push(old_position(reader, i as u32, 2));
                }
                poll_each(&mut old, &[1], &mut Vec::new());
                let mut new = readers(&path, new_parallelism, Some(dealt));
                poll_each(&mut new, &[usize::MAX], &mut lines);
                assert_eq!(sorted(lines), expected, "WFS2 at 2 -> {new_parallelism} after {before:?} batches");
            }
        }
    }
}
