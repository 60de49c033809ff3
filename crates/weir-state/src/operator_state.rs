//! Operator (non-keyed) list state, such as source offsets: each subtask keeps a list of
//! opaque elements; on restore at another parallelism the elements of all old subtasks are
//! dealt round-robin over the new ones (Flink's `ListState` redistribution).

use crate::format::{frame, unframe, Reader, OPERATOR_MAGIC};
use crate::storage::{CheckpointStorage, StoredFile};
use crate::StateError;

/// Encodes a subtask's list as a framed file.
///
/// Body: `(element len u32, element)*`, big-endian, under [`OPERATOR_MAGIC`]. An empty list is
/// a valid, empty body.
pub fn encode_list(elements: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    for e in elements {
        body.extend_from_slice(&(e.len() as u32).to_be_bytes());
        body.extend_from_slice(e);
    }
    frame(OPERATOR_MAGIC, &body)
}

/// Verifies the frame and splits the body back into elements. `path` names the file in errors.
pub fn decode_list(bytes: &[u8], path: &str) -> Result<Vec<Vec<u8>>, StateError> {
    let body = unframe(OPERATOR_MAGIC, bytes, path)?;
    let mut r = Reader { buf: body, pos: 0 };
    let mut out = Vec::new();
    while r.pos < body.len() {
        let e = r.slice().ok_or_else(|| StateError::Corrupt { path: path.to_string(), reason: "truncated element".into() })?;
        out.push(e.to_vec());
    }
    Ok(out)
}

/// Uploads a subtask's list to `rel` and returns the record `_metadata` keeps. The runtime uses
/// `chk-<n>/<uid>-<subtask>/operator-state`, a file owned by checkpoint n alone.
pub async fn write_list(storage: &CheckpointStorage, rel: &str, elements: &[Vec<u8>]) -> Result<StoredFile, StateError> {
    storage.put_bytes(rel, encode_list(elements)).await
}

/// Downloads a list, checks its size and CRC-32 against the record, then its frame.
pub async fn read_list(storage: &CheckpointStorage, file: &StoredFile) -> Result<Vec<Vec<u8>>, StateError> {
    let bytes = storage.get_bytes_checked(file).await?;
    decode_list(&bytes, &storage.display(&file.path))
}

/// Deals the elements of every old subtask round-robin over `new_parallelism` subtasks.
///
/// Element i of the old lists, taken in subtask order, goes to new subtask `i % new_parallelism`.
/// The new lists' lengths therefore differ by at most one. `new_parallelism` must be positive.
/// The runtime calls this only when the parallelism changed. At the same parallelism, each
/// subtask gets its own list back.
pub fn redistribute_round_robin(old: Vec<Vec<Vec<u8>>>, new_parallelism: usize) -> Vec<Vec<Vec<u8>>> {
    let mut out = vec![Vec::new(); new_parallelism];
    for (i, e) in old.into_iter().flatten().enumerate() {
        out[i % new_parallelism].push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_and_redistribute_evenly() {
        let elems = vec![b"a".to_vec(), Vec::new(), b"ccc".to_vec()];
        assert_eq!(decode_list(&encode_list(&elems), "f").unwrap(), elems);
        let old = vec![vec![b"1".to_vec(), b"2".to_vec()], vec![b"3".to_vec()], vec![b"4".to_vec(), b"5".to_vec()]];
        let new = redistribute_round_robin(old, 2);
        assert_eq!(new[0].len() + new[1].len(), 5);
        assert!(new[0].len().abs_diff(new[1].len()) <= 1);
        let mut bad = encode_list(&elems);
        bad[20] ^= 1;
        assert!(decode_list(&bad, "op/0").unwrap_err().to_string().contains("op/0"));
    }
}
