//! The host's wall clock, in the units the keyspace stores.

/// Wall-clock milliseconds since the Unix epoch (0 before it, saturating far after).
pub(crate) fn now_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}
