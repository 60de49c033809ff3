//! The byte encoding of the connectors' checkpoint state elements.
//!
//! Every element is self-describing: a 4-byte magic naming the connector and the format
//! version, then fixed-width little-endian integers and length-prefixed byte strings. An
//! element never refers to another one, so the runtime may deal elements of several old
//! subtasks to any new subtask.

use std::ffi::OsString;
use std::path::PathBuf;
use weir_core::operator::{OpResult, OperatorError};

/// Builds one state element.
pub struct ElementWriter {
    buf: Vec<u8>,
}

impl ElementWriter {
    pub fn new(magic: &[u8; 4]) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(magic);
        Self { buf }
    }

    pub fn u8(mut self, v: u8) -> Self {
        self.buf.push(v);
        self
    }

    pub fn u32(mut self, v: u32) -> Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(mut self, v: u64) -> Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A byte string, prefixed with its length as a u64.
    pub fn bytes(self, v: &[u8]) -> Self {
        let mut w = self.u64(v.len() as u64);
        w.buf.extend_from_slice(v);
        w
    }

    pub fn path(self, p: &std::path::Path) -> Self {
        self.bytes(&path_to_bytes(p))
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads one state element back, with errors naming the connector.
pub struct ElementReader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> ElementReader<'a> {
    /// Checks the magic; `what` names the connector in errors ("datagen", ...).
    pub fn new(buf: &'a [u8], magic: &[u8; 4], what: &'static str) -> OpResult<Self> {
        match buf.strip_prefix(magic.as_slice()) {
            Some(rest) => Ok(Self { buf: rest, what }),
            None => Err(OperatorError::Failed(format!(
                "{what} cannot restore: a checkpoint state element is not a {what} position (unknown format or version)"
            ))),
        }
    }

    fn malformed(&self) -> OperatorError {
        OperatorError::Failed(format!("{} cannot restore: a checkpoint state element is truncated or corrupt", self.what))
    }

    fn take(&mut self, n: usize) -> OpResult<&'a [u8]> {
        if self.buf.len() < n {
            return Err(self.malformed());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn u8(&mut self) -> OpResult<u8> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> OpResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> OpResult<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub fn bytes(&mut self) -> OpResult<&'a [u8]> {
        let len = self.u64()?;
        let len = usize::try_from(len).map_err(|_| self.malformed())?;
        self.take(len)
    }

    pub fn string(&mut self) -> OpResult<String> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| self.malformed())
    }

    pub fn path(&mut self) -> OpResult<PathBuf> {
        let b = self.bytes()?;
        path_from_bytes(b).ok_or_else(|| self.malformed())
    }

    /// Fails if bytes are left over (a newer or corrupt encoding).
    pub fn end(self) -> OpResult {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.malformed())
        }
    }
}

#[cfg(unix)]
fn path_to_bytes(p: &std::path::Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}

#[cfg(unix)]
fn path_from_bytes(b: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    Some(PathBuf::from(OsString::from_vec(b.to_vec())))
}

#[cfg(not(unix))]
fn path_to_bytes(p: &std::path::Path) -> Vec<u8> {
    p.to_string_lossy().into_owned().into_bytes()
}

#[cfg(not(unix))]
fn path_from_bytes(b: &[u8]) -> Option<PathBuf> {
    String::from_utf8(b.to_vec()).ok().map(|s| PathBuf::from(OsString::from(s)))
}

/// The error for a source restored with a parallelism other than its checkpoint's.
pub fn rescale_error(what: &str, was: &str, now: u32) -> OperatorError {
    OperatorError::Failed(format!("{what} cannot be restored at a different parallelism (was {was}, now {now})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_element_round_trip_and_corruption() {
        let e = ElementWriter::new(b"TST1").u8(7).u32(42).u64(u64::MAX).bytes(b"abc").path(std::path::Path::new("/x/y")).finish();
        let mut r = ElementReader::new(&e, b"TST1", "test").expect("magic");
        assert_eq!(r.u8().expect("u8"), 7);
        assert_eq!(r.u32().expect("u32"), 42);
        assert_eq!(r.u64().expect("u64"), u64::MAX);
        assert_eq!(r.bytes().expect("bytes"), b"abc");
        assert_eq!(r.path().expect("path"), PathBuf::from("/x/y"));
        r.end().expect("no trailing bytes");

        assert!(ElementReader::new(&e, b"TST2", "test").is_err());
        let mut r = ElementReader::new(&e[..e.len() - 1], b"TST1", "test").expect("magic");
        r.u8().expect("u8");
        r.u32().expect("u32");
        r.u64().expect("u64");
        r.bytes().expect("bytes");
        assert!(r.path().is_err());
    }
}
