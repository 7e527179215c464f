//! The one duration style of every configuration file: humantime strings (`"5s"`, `"500ms"`,
//! `"1m 30s"`, `"2h"`). Keys that held milliseconds or seconds as numbers (`timeout_ms = 5000`)
//! are refused with the new form (`timeout = "5s"`), so an old file fails loudly instead of
//! being misread.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parse a humantime duration, or say what would be accepted.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|_| {
        format!("`{text}` is not a duration: expected e.g. `5s`, `500ms`, `1m 30s` or `2h`")
    })
}

/// A duration as configuration files write it (`30s`, `10m`).
pub(crate) fn format(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// `#[serde(serialize_with = "crate::duration::ser")]`: the string form.
pub(crate) fn ser<S: serde::Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(*duration))
}

/// `#[serde(deserialize_with = "crate::duration::de")]`.
pub(crate) fn de<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// `#[serde(default, deserialize_with = "crate::duration::de_opt")]`.
pub(crate) fn de_opt<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    de(deserializer).map(Some)
}

/// The error for an old numeric duration key found in a file: `key = value` → its new form.
pub(crate) fn old_key(key: &str, value: u64) -> String {
    let value = toml::Value::Integer(i64::try_from(value).unwrap_or(i64::MAX));
    let new_form =
        renamed(key, &value).unwrap_or_else(|| format!("`{}` as a duration string", stem(key)));
    format!("`{key}` is the old form; durations are strings now: write {new_form}")
}

/// The new form of an old numeric key: `timeout_ms = 5000` → `` `timeout = "5s"` ``, or
/// `None` when `key` is not an old duration key (`_ms` or `_s` suffix) or its value is not a
/// number.
pub(crate) fn renamed(key: &str, value: &toml::Value) -> Option<String> {
    let number = value.as_integer().and_then(|n| u64::try_from(n).ok())?;
    let (new_key, duration) = if let Some(stem) = key.strip_suffix("_ms") {
        (stem, Duration::from_millis(number))
    } else if let Some(stem) = key.strip_suffix("_s") {
        (stem, Duration::from_secs(number))
    } else {
        return None;
    };
    Some(format!("`{new_key} = \"{}\"`", format(duration)))
}

/// Refuse old numeric duration keys in a table: `origin` names the table in the error
/// (`tools.toml [[tool]] 2`), `keys` the old keys it may hold.
pub(crate) fn refuse_renamed(
    origin: &str,
    table: &toml::Table,
    keys: &[&str],
) -> Result<(), String> {
    for key in keys {
        if let Some(value) = table.get(*key) {
            let new_form = renamed(key, value)
                .unwrap_or_else(|| format!("`{}` as a duration string", stem(key)));
            return Err(format!(
                "{origin}: `{key}` is the old form; durations are strings now: write {new_form}"
            ));
        }
    }
    Ok(())
}

fn stem(key: &str) -> &str {
    key.strip_suffix("_ms")
        .or_else(|| key.strip_suffix("_s"))
        .unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_parse_and_old_numbers_get_their_new_form() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse(" 1m 30s "), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse("thirty").unwrap_err(),
            "`thirty` is not a duration: expected e.g. `5s`, `500ms`, `1m 30s` or `2h`"
        );
        assert_eq!(format(Duration::from_millis(600_000)), "10m");
        assert_eq!(
            renamed("timeout_ms", &toml::Value::Integer(5000)).as_deref(),
            Some("`timeout = \"5s\"`")
        );
        assert_eq!(
            renamed("secrets_ttl_s", &toml::Value::Integer(900)).as_deref(),
            Some("`secrets_ttl = \"15m\"`")
        );
        assert_eq!(renamed("timeout", &toml::Value::Integer(5)), None);
        let table: toml::Table = toml::from_str("timeout_ms = 1500").expect("toml");
        assert_eq!(
            refuse_renamed("`tools.toml`", &table, &["timeout_ms"]).unwrap_err(),
            "`tools.toml`: `timeout_ms` is the old form; durations are strings now: write `timeout = \"1s 500ms\"`"
        );
    }
}
