//! The hash chain of a run's journal (see [`crate::journal`]): its encoding, and [`Chain`],
//! the head the ledger's writer extends as it writes a live run's records. Here, below the
//! journal, because the writer computes it.

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

/// Versions the head's encoding.
const DOMAIN: &[u8] = b"warden-journal-v1\0";

/// The head of a run's journal, extended one record at a time in the records' order: by the
/// ledger's writer as it writes a live run's records, by the journal itself as a replay
/// answers recorded ones (which are not written again).
pub struct Chain {
    head: Mutex<[u8; 32]>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chain({})", head_text(&self.head()))
    }
}

impl Chain {
    /// The chain of run `run_id`, before its first record.
    pub fn new(run_id: &str) -> Chain {
        Chain {
            head: Mutex::new(genesis(run_id)),
        }
    }

    /// Extend by record `seq`; the head after it.
    pub fn extend(&self, seq: u64, op: &str, args_digest: &str, payload: &[u8]) -> [u8; 32] {
        let mut head = self.head.lock();
        *head = next_head(&head, seq, op, args_digest, payload);
        *head
    }

    /// The head after the last record chained.
    pub fn head(&self) -> [u8; 32] {
        *self.head.lock()
    }
}

/// `sha256:<hex>` of raw bytes (an artifact's content as an argument).
pub fn bytes_digest(bytes: &[u8]) -> String {
    sha256_text(&Sha256::digest(bytes).into())
}

/// `sha256:<hex>` of a digest, in one allocation: on every call's path, twice.
pub(crate) fn sha256_text(digest: &[u8; 32]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 7 + 64];
    out[..7].copy_from_slice(b"sha256:");
    for (pair, byte) in out[7..].chunks_exact_mut(2).zip(digest) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
    // ASCII by construction, so the check cannot fail.
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// The first head of run `run_id`'s journal.
pub fn genesis(run_id: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(run_id.as_bytes());
    h.finalize().into()
}

/// The head after one record.
pub fn next_head(
    prev: &[u8; 32],
    seq: u64,
    op: &str,
    args_digest: &str,
    payload: &[u8],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    for field in [op.as_bytes(), args_digest.as_bytes(), payload] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field);
    }
    h.finalize().into()
}

/// How a head is written in the ledger.
pub fn head_text(head: &[u8; 32]) -> String {
    sha256_text(head)
}
