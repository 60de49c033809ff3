//! The `file` source: reads text files (one file, or the visible regular files of a
//! directory) as a `line` column, split across subtasks by byte range.
//!
//! Splitting is Hadoop style: every file is cut into `parallelism` byte ranges and a line
//! belongs to the range holding its first byte. Subtask `i` reads range `i` of every file,
//! skipping the line it starts inside of (its predecessor reads that one) and reading past its
//! range end to finish its last line. So every line is read by exactly one subtask without
//! any coordination between them.
//!
//! The reader is replayable: its checkpoint state is the file it is in (with the byte offset
//! of the next line it has not emitted and its range end) and the files it has still to read.

use crate::state::{self, rescale_error, StoredPath};
use crate::text::Utf8Column;
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use serde::{Deserialize, Serialize};
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

/// Magic of a file source state element (a [`FileSourcePosition`]).
const STATE_MAGIC: &[u8; 4] = b"WFS2";

/// A file source subtask's checkpoint state: which subtask it is, where it is in its current
/// file, and the files it has still to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileSourcePosition {
    parallelism: u32,
    index: u32,
    /// The file being read, if one is open.
    current: Option<SplitPosition>,
    /// The files still to read, in order.
    rest: Vec<StoredPath>,
}

/// Where a subtask is in one file's byte range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SplitPosition {
    file: StoredPath,
    /// Offset of the next line not emitted yet.
    pos: u64,
    /// End of the subtask's byte range.
    end: u64,
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

/// This subtask's byte range of one open file.
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
    /// Opens `path` and positions it at the first line starting in range `index` of
    /// `parallelism`; None when that range holds no line start.
    fn open(path: &Path, index: u32, parallelism: u32) -> OpResult<Option<Self>> {
        let name = path.display().to_string();
        let io_err = |what, e| OperatorError::io(what, name.clone(), e);
        let file = File::open(path).map_err(|e| io_err("file source cannot open", e))?;
        let size = file.metadata().map_err(|e| io_err("file source cannot read", e))?.len();
        let cut = |i: u32| (u128::from(size) * u128::from(i) / u128::from(parallelism)) as u64;
        let (start, end) = (cut(index), cut(index + 1));
        if start >= end {
            return Ok(None);
        }
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
        let mut pos = 0;
        if start > 0 {
            // The line holding byte start-1 belongs to the previous range (if start-1 is a
            // '\n', that line ends right there and ours begins at start).
            pos = start - 1;
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
        }
        Ok(Some(Self { file: path.to_path_buf(), path: name, reader, pos, end }))
    }

    /// Reopens a split where a snapshot left it: `pos` is the first byte of the next line to
    /// read, `end` the range end computed when the split was first opened.
    fn resume(path: &Path, pos: u64, end: u64) -> OpResult<Self> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| OperatorError::io("file source cannot reopen", name.clone(), e))?;
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
        reader.seek(SeekFrom::Start(pos)).map_err(|e| OperatorError::io("file source cannot seek in", name.clone(), e))?;
        Ok(Self { file: path.to_path_buf(), path: name, reader, pos, end })
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
}

pub struct FileReader {
    schema: SchemaRef,
    files: Vec<PathBuf>,
    next_file: usize,
    current: Option<Split>,
    index: u32,
    parallelism: u32,
}

impl FileReader {
    pub fn new(path: &str, info: &SubtaskInfo, schema: SchemaRef) -> OpResult<Self> {
        let files = list_input_files(path)?;
        tracing::debug!(path, files = files.len(), index = info.index, "file source listed its input");
        Ok(Self { schema, files, next_file: 0, current: None, index: info.index, parallelism: info.parallelism.max(1) })
    }
}

impl SourceReader for FileReader {
    fn poll_next(&mut self) -> OpResult<SourcePoll> {
        let mut col = Utf8Column::with_capacity(BATCH_LINES, 64 * 1024);
        // Fill one batch, moving on to the next file when one is done, so small files do
        // not each make a small batch.
        while col.len() < BATCH_LINES && col.value_bytes() < BATCH_BYTES {
            if self.current.is_none() {
                let Some(path) = self.files.get(self.next_file) else { break };
                self.next_file += 1;
                self.current = Split::open(path, self.index, self.parallelism)?;
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

    /// One element. Each poll emits whole lines only and `Split::pos` advances per emitted
    /// line (whatever the `BufReader` read ahead), so between two polls it is the offset of
    /// the first line not emitted yet.
    fn snapshot_state(&mut self, _checkpoint: u64) -> OpResult<Option<Vec<Vec<u8>>>> {
        let position = FileSourcePosition {
            parallelism: self.parallelism,
            index: self.index,
            current: self.current.as_ref().map(|split| SplitPosition {
                file: StoredPath(split.file.clone()),
                pos: split.pos,
                end: split.end,
            }),
            rest: self.files[self.next_file.min(self.files.len())..].iter().cloned().map(StoredPath).collect(),
        };
        Ok(Some(vec![state::encode(STATE_MAGIC, &position, "file source")?]))
    }

    /// Resumes exactly where the snapshot was taken, with the checkpoint's file list (files
    /// that appeared in the directory since the job first listed it are not read). Only the
    /// subtask's own position at the same parallelism is accepted: byte ranges depend on the
    /// parallelism.
    fn restore_state(&mut self, elements: Vec<Vec<u8>>) -> OpResult {
        let mut positions =
            elements.iter().map(|e| state::decode::<FileSourcePosition>(e, STATE_MAGIC, "file source")).collect::<OpResult<Vec<_>>>()?;
        let now = self.parallelism;
        let (current, rest) = match positions.pop() {
            None => return Err(rescale_error("file source", &format!("at most {}", self.index), now)),
            Some(p) if p.parallelism != now => return Err(rescale_error("file source", &p.parallelism.to_string(), now)),
            Some(p) if p.index == self.index && positions.is_empty() => (p.current, p.rest),
            Some(last) => {
                positions.push(last);
                let got: Vec<String> = positions.iter().map(|p| format!("{} of {}", p.index, p.parallelism)).collect();
                return Err(OperatorError::Failed(format!(
                    "file source subtask {} of {} cannot restore from the positions of subtasks [{}]",
                    self.index,
                    self.parallelism,
                    got.join(", ")
                )));
            }
        };
        self.current = match current {
            Some(SplitPosition { file, pos, end }) => Some(Split::resume(&file.0, pos, end)?),
            None => None,
        };
        tracing::debug!(index = self.index, files = rest.len(), "file source restored its position");
        self.files = rest.into_iter().map(|p| p.0).collect();
        self.next_file = 0;
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
        assert_eq!(state.len(), 1, "one element per subtask");
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

    #[test]
    fn file_reader_restore_at_another_parallelism_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let many: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
        fs::write(dir.path().join("a.txt"), &many).expect("write");
        let path = dir.path().to_str().expect("utf-8 path");
        let snapshot = |index, parallelism| {
            let mut reader = FileReader::new(path, &info(index, parallelism), line_schema()).expect("open");
            reader.poll_next().expect("poll");
            reader.snapshot_state(1).expect("snapshot").expect("state").remove(0)
        };
        let restore = |index, parallelism, elements: Vec<Vec<u8>>| {
            let mut reader = FileReader::new(path, &info(index, parallelism), line_schema()).expect("open");
            reader.restore_state(elements).expect_err("restore must fail").to_string()
        };
        let err = restore(1, 3, vec![snapshot(1, 2)]);
        assert!(err.contains("file source cannot be restored at a different parallelism (was 2, now 3)"), "{err}");
        let err = restore(2, 3, vec![]);
        assert!(err.contains("file source cannot be restored at a different parallelism (was at most 2, now 3)"), "{err}");
        let err = restore(0, 1, vec![snapshot(0, 2), snapshot(1, 2)]);
        assert!(err.contains("file source cannot be restored at a different parallelism (was 2, now 1)"), "{err}");
        let err = restore(1, 2, vec![snapshot(0, 2)]);
        assert!(err.contains("subtasks [0 of 2]"), "{err}");
        let mut corrupt = snapshot(0, 1);
        corrupt.truncate(corrupt.len() - 3);
        let err = restore(0, 1, vec![corrupt]);
        assert!(err.contains("truncated or corrupt"), "{err}");
    }
}
