//! Canonical row encoding and the hash chain.
//!
//! `row_hash = hex(sha256(DOMAIN ‖ enc(prev_hash) ‖ enc(table) ‖ enc(seq) ‖
//! enc(column)…))` over the table's content columns in schema order. Every
//! field is type-tagged and text/blob fields are length-prefixed, so no two
//! different rows share an encoding (NULL differs from `''`, `("ab","c")`
//! from `("a","bc")`, integer `1` from text `'1'`). The writer hashes exactly
//! the values it binds, and `verify` hashes exactly the values SQLite
//! returns, so a changed storage type is caught as well as a changed value.

use rusqlite::ToSql;
use rusqlite::types::{ToSqlOutput, ValueRef};
use sha2::{Digest, Sha256};

/// `prev_hash` of the first row.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Versions the encoding; changing it must change this tag.
const DOMAIN: &[u8] = b"warden-ledger-row-v1\0";

/// One column value, as bound and as hashed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Field<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a [u8]),
    Blob(&'a [u8]),
}

impl<'a> Field<'a> {
    pub(crate) fn text(s: &'a str) -> Self {
        Field::Text(s.as_bytes())
    }

    pub(crate) fn opt_text(s: Option<&'a str>) -> Self {
        s.map_or(Field::Null, Field::text)
    }

    /// A REAL that survives a round trip through SQLite bit-for-bit: SQLite
    /// stores NaN as NULL and may store `-0.0` as integer `0`, which would
    /// otherwise make an untouched row fail verification.
    pub(crate) fn real(v: Option<f64>) -> Self {
        match v {
            None => Field::Null,
            Some(v) if v.is_nan() => Field::Null,
            // Also matches -0.0.
            Some(0.0) => Field::Real(0.0),
            Some(v) => Field::Real(v),
        }
    }

    fn feed(&self, h: &mut Sha256) {
        match *self {
            Field::Null => h.update([0u8]),
            Field::Int(v) => {
                h.update([1u8]);
                h.update(v.to_be_bytes());
            }
            Field::Real(v) => {
                h.update([2u8]);
                h.update(v.to_bits().to_be_bytes());
            }
            Field::Text(b) => {
                h.update([3u8]);
                h.update((b.len() as u64).to_be_bytes());
                h.update(b);
            }
            Field::Blob(b) => {
                h.update([4u8]);
                h.update((b.len() as u64).to_be_bytes());
                h.update(b);
            }
        }
    }
}

impl<'a> From<ValueRef<'a>> for Field<'a> {
    fn from(v: ValueRef<'a>) -> Self {
        match v {
            ValueRef::Null => Field::Null,
            ValueRef::Integer(i) => Field::Int(i),
            ValueRef::Real(r) => Field::Real(r),
            ValueRef::Text(t) => Field::Text(t),
            ValueRef::Blob(b) => Field::Blob(b),
        }
    }
}

impl ToSql for Field<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Field::Null => ValueRef::Null,
            Field::Int(i) => ValueRef::Integer(i),
            Field::Real(r) => ValueRef::Real(r),
            Field::Text(t) => ValueRef::Text(t),
            Field::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// The last row of the chain: its sequence number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub seq: i64,
    pub hash: String,
}

/// The hash of one row of `table` (its SQL name) given its predecessor's hash.
pub(crate) fn row_hash(prev_hash: &[u8], table: &str, seq: i64, fields: &[Field<'_>]) -> String {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    Field::Text(prev_hash).feed(&mut h);
    Field::text(table).feed(&mut h);
    Field::Int(seq).feed(&mut h);
    for field in fields {
        field.feed(&mut h);
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_unambiguous() {
        let t = "agent_actions";
        let h = |f: &[Field<'_>]| row_hash(GENESIS_HASH.as_bytes(), t, 1, f);
        assert_ne!(h(&[Field::Null]), h(&[Field::text("")]));
        assert_ne!(
            h(&[Field::text("ab"), Field::text("c")]),
            h(&[Field::text("a"), Field::text("bc")])
        );
        assert_ne!(h(&[Field::Int(1)]), h(&[Field::text("1")]));
        assert_ne!(h(&[Field::Int(1)]), h(&[Field::Real(1.0)]));
        assert_ne!(
            row_hash(GENESIS_HASH.as_bytes(), t, 1, &[]),
            row_hash(GENESIS_HASH.as_bytes(), "violations", 1, &[])
        );
        assert_ne!(
            row_hash(GENESIS_HASH.as_bytes(), t, 1, &[]),
            row_hash(GENESIS_HASH.as_bytes(), t, 2, &[])
        );
        assert_eq!(Field::real(Some(-0.0)), Field::Real(0.0));
        assert_eq!(Field::real(Some(f64::NAN)), Field::Null);
    }
}
