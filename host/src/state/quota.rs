//! Quotas on what a writer may make the store keep, checked in the same atomic step as the
//! write.
//!
//! A scope (an agent's own state, a task's artifacts, blackboard or messages) holds a count
//! of entries and of bytes in a usage record beside its data (`agent:{id}:state_usage`,
//! `task:{id}:artifact_usage`, `blackboard:{task}:usage`, `msg:{task}:usage`: hashes with the
//! fields [`ENTRIES_FIELD`] and [`BYTES_FIELD`]). A write names its [`Quota`]; the backend
//! reads the usage, decides with [`Quota::admit`] and either writes the data and the new usage
//! or writes nothing, all in one transaction (SQLite `BEGIN IMMEDIATE`, one Lua script on
//! Redis, one critical section in memory). So writers sharing a scope — several agents of a
//! task, several hosts on one Redis — can never together take it past the quota.
//!
//! What counts, per scope:
//!
//! | scope                   | entries                      | bytes                                        |
//! |-------------------------|------------------------------|----------------------------------------------|
//! | an agent's state        | its `kv:` keys               | key + value of each                          |
//! | a task's artifacts      | distinct names               | the content of every version pushed          |
//! | a task's blackboard     | entries of all four sections | key + value of each                          |
//! | a task's messages       | messages sent (a log)        | kind + body of every message sent            |
//!
//! Artifact versions and messages are never deleted, so their bytes only grow; state and
//! blackboard entries count what is stored now, so a delete (state) gives its bytes back.

/// Field of a usage hash holding the entry count.
pub const ENTRIES_FIELD: &str = "entries";
/// Field of a usage hash holding the byte count.
pub const BYTES_FIELD: &str = "bytes";

/// How much one scope may hold. Host-side writes pass [`Quota::UNLIMITED`] (they are still
/// counted, so they take up room the agents' quota sees).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    /// Most entries the scope may hold.
    pub max_entries: u64,
    /// Most bytes the scope may hold.
    pub max_bytes: u64,
}

/// What a scope holds, as its usage record counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    /// Entries held.
    pub entries: u64,
    /// Bytes held.
    pub bytes: u64,
}

/// Which bound of a [`Quota`] a write would cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Bound {
    /// [`Quota::max_entries`].
    Entries,
    /// [`Quota::max_bytes`].
    Bytes,
}

impl Bound {
    /// `entries` or `bytes`, as in messages and the usage hashes.
    pub fn as_str(self) -> &'static str {
        match self {
            Bound::Entries => ENTRIES_FIELD,
            Bound::Bytes => BYTES_FIELD,
        }
    }
}

/// A write its quota refused; nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct OverQuota {
    /// The bound the write would cross.
    pub bound: Bound,
    /// That bound's limit.
    pub limit: u64,
    /// What the scope holds now, in the bound's unit.
    pub used: u64,
    /// What it would hold after the write.
    pub requested: u64,
}

/// What a quota-checked write did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[must_use = "a refused write stored nothing; the caller must tell whoever asked"]
pub enum Admission<T = ()> {
    /// Written (with what the write returns: a message's id).
    Stored(T),
    /// Refused by the quota; nothing was written.
    Refused(OverQuota),
}

impl<T> Admission<T> {
    /// `Ok` with what was stored, `Err` with what refused it.
    pub fn into_result(self) -> Result<T, OverQuota> {
        match self {
            Admission::Stored(value) => Ok(value),
            Admission::Refused(over) => Err(over),
        }
    }
}

impl Quota {
    /// No bound.
    pub const UNLIMITED: Quota = Quota {
        max_entries: u64::MAX,
        max_bytes: u64::MAX,
    };

    /// Whether a write taking the scope from `before` to `after` is admitted. A write that
    /// grows neither count is always admitted (a replacement by something smaller, or one of
    /// an entry that already exists, even when the quota was lowered below what is held); a
    /// write that grows a count past its limit is refused. Entries are checked first.
    ///
    /// The Redis scripts apply the same rule on the server; the conformance suite holds every
    /// backend to it.
    pub fn admit(self, before: Usage, after: Usage) -> Result<(), OverQuota> {
        if after.entries > before.entries && after.entries > self.max_entries {
            return Err(OverQuota {
                bound: Bound::Entries,
                limit: self.max_entries,
                used: before.entries,
                requested: after.entries,
            });
        }
        if after.bytes > before.bytes && after.bytes > self.max_bytes {
            return Err(OverQuota {
                bound: Bound::Bytes,
                limit: self.max_bytes,
                used: before.bytes,
                requested: after.bytes,
            });
        }
        Ok(())
    }
}

/// The bytes an entry of a keyed scope (state, blackboard) counts: its key and its value.
pub fn entry_bytes(key: &str, value: &str) -> u64 {
    let len = key.len().saturating_add(value.len());
    u64::try_from(len).unwrap_or(u64::MAX)
}

/// The bytes a message counts: its kind and its body.
pub fn message_bytes(kind: &str, body: &str) -> u64 {
    entry_bytes(kind, body)
}

impl Usage {
    /// The usage after adding an entry of `bytes` (`new_entry`: it did not exist before) and
    /// removing `freed` bytes of the entry it replaces, saturating.
    pub fn after_write(self, new_entry: bool, bytes: u64, freed: u64) -> Usage {
        Usage {
            entries: self.entries.saturating_add(u64::from(new_entry)),
            bytes: self.bytes.saturating_sub(freed).saturating_add(bytes),
        }
    }

    /// The usage after deleting an entry of `bytes`, saturating at zero.
    pub fn after_delete(self, bytes: u64) -> Usage {
        Usage {
            entries: self.entries.saturating_sub(1),
            bytes: self.bytes.saturating_sub(bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTA: Quota = Quota {
        max_entries: 2,
        max_bytes: 10,
    };

    fn usage(entries: u64, bytes: u64) -> Usage {
        Usage { entries, bytes }
    }

    #[test]
    fn a_write_up_to_the_limit_is_admitted_and_one_past_it_is_not() {
        assert_eq!(QUOTA.admit(usage(1, 4), usage(2, 10)), Ok(()));
        assert_eq!(
            QUOTA.admit(usage(2, 4), usage(3, 5)),
            Err(OverQuota {
                bound: Bound::Entries,
                limit: 2,
                used: 2,
                requested: 3
            })
        );
        assert_eq!(
            QUOTA.admit(usage(1, 4), usage(1, 11)),
            Err(OverQuota {
                bound: Bound::Bytes,
                limit: 10,
                used: 4,
                requested: 11
            })
        );
    }

    /// A quota lowered below what is held still lets writes that do not grow through, so an
    /// agent can always replace an entry with a smaller one.
    #[test]
    fn a_write_that_grows_nothing_is_admitted_over_the_limit() {
        assert_eq!(QUOTA.admit(usage(5, 50), usage(5, 40)), Ok(()));
        assert_eq!(QUOTA.admit(usage(5, 50), usage(5, 50)), Ok(()));
        assert!(QUOTA.admit(usage(5, 50), usage(5, 51)).is_err());
        assert_eq!(
            Quota::UNLIMITED.admit(usage(0, 0), usage(u64::MAX, u64::MAX)),
            Ok(())
        );
    }

    #[test]
    fn usage_arithmetic_saturates() {
        assert_eq!(usage(1, 5).after_write(true, 3, 0), usage(2, 8));
        assert_eq!(usage(1, 5).after_write(false, 3, 4), usage(1, 4));
        assert_eq!(usage(0, 2).after_delete(5), usage(0, 0));
        assert_eq!(entry_bytes("ké", "v"), 4, "bytes, not characters");
    }
}
