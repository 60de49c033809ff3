//! The byte encoding of the connectors' checkpoint state elements.
//!
//! An element is a 4-byte magic naming the connector and the format version (`WDG2`, ...),
//! then the connector's element type in its `serde` form, encoded with `postcard` (compact,
//! varint integers, no field names). Each connector declares its elements as plain
//! `#[derive(Serialize, Deserialize)]` types, so their layout is written down once, as types,
//! and every connector encodes the same way. An element never refers to another one, so the
//! runtime may deal elements of several old subtasks to any new subtask.
//!
//! Changing an element type changes its encoding: bump the version in its magic, so an old
//! element is never misread. Keep decoding the old version where it converts to the new one, so
//! that retained checkpoints and savepoints still restore (the file source reads `WFS2`
//! positions as splits); a version a connector does not read is refused by name.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use weir_core::operator::{OpResult, OperatorError};

/// Encodes one element under `magic`; `what` names the connector in errors ("datagen", ...).
pub fn encode<T: Serialize>(magic: &[u8; 4], element: &T, what: &str) -> OpResult<Vec<u8>> {
    postcard::to_extend(element, magic.to_vec())
        .map_err(|e| OperatorError::Failed(format!("{what} cannot encode its checkpoint state: {e}")))
}

/// Decodes one element, checking its magic and that no byte is left over.
pub fn decode<T: DeserializeOwned>(element: &[u8], magic: &[u8; 4], what: &str) -> OpResult<T> {
    let Some(body) = element.strip_prefix(magic.as_slice()) else {
        return Err(OperatorError::Failed(format!(
            "{what} cannot restore: a checkpoint state element is not a {what} position (unknown format or version)"
        )));
    };
    let malformed = || OperatorError::Failed(format!("{what} cannot restore: a checkpoint state element is truncated or corrupt"));
    match postcard::take_from_bytes(body) {
        Ok((value, [])) => Ok(value),
        Ok(_) | Err(_) => Err(malformed()),
    }
}

/// A path stored as its bytes: on Unix a file name need not be UTF-8, and serde's own `Path`
/// form refuses such names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPath(pub PathBuf);

impl Serialize for StoredPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        path_to_bytes(&self.0).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for StoredPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = Vec::<u8>::deserialize(deserializer)?;
        path_from_bytes(bytes).map(StoredPath).ok_or_else(|| serde::de::Error::custom("a path that is not valid here"))
    }
}

#[cfg(unix)]
fn path_to_bytes(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}

#[cfg(unix)]
fn path_from_bytes(b: Vec<u8>) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    Some(PathBuf::from(OsString::from_vec(b)))
}

#[cfg(not(unix))]
fn path_to_bytes(p: &Path) -> Vec<u8> {
    p.to_string_lossy().into_owned().into_bytes()
}

#[cfg(not(unix))]
fn path_from_bytes(b: Vec<u8>) -> Option<PathBuf> {
    String::from_utf8(b).ok().map(|s| PathBuf::from(OsString::from(s)))
}

/// The error for a source restored with a parallelism other than its checkpoint's.
pub fn rescale_error(what: &str, was: &str, now: u32) -> OperatorError {
    OperatorError::Failed(format!("{what} cannot be restored at a different parallelism (was {was}, now {now})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Element {
        Position { index: u32, offset: u64, path: StoredPath, rest: Vec<StoredPath> },
        Name(String),
    }

    fn position() -> Element {
        Element::Position {
            index: 7,
            offset: u64::MAX,
            path: StoredPath(PathBuf::from("/x/y")),
            rest: vec![StoredPath(PathBuf::from("a")), StoredPath(PathBuf::from(""))],
        }
    }

    #[test]
    fn elements_round_trip_under_their_magic() {
        for element in [position(), Element::Name("part-0-1".into())] {
            let bytes = encode(b"TST1", &element, "test").expect("encode");
            assert!(bytes.starts_with(b"TST1"));
            assert_eq!(decode::<Element>(&bytes, b"TST1", "test").expect("decode"), element);
        }
    }

    #[cfg(unix)]
    #[test]
    fn paths_that_are_not_utf8_round_trip() {
        use std::os::unix::ffi::OsStringExt;
        let odd = StoredPath(PathBuf::from(OsString::from_vec(vec![b'/', 0xff, b'x'])));
        let bytes = encode(b"TST1", &odd, "test").expect("encode");
        assert_eq!(decode::<StoredPath>(&bytes, b"TST1", "test").expect("decode"), odd);
    }

    #[test]
    fn other_magic_truncation_and_trailing_bytes_are_refused_by_name() {
        let bytes = encode(b"TST1", &position(), "test").expect("encode");
        let err = decode::<Element>(&bytes, b"TST2", "test").expect_err("other version").to_string();
        assert!(err.contains("test cannot restore") && err.contains("unknown format or version"), "{err}");
        let err = decode::<Element>(&bytes[..bytes.len() - 1], b"TST1", "test").expect_err("truncated").to_string();
        assert!(err.contains("truncated or corrupt"), "{err}");
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode::<Element>(&longer, b"TST1", "test").is_err());
    }
}
