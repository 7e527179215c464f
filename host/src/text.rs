//! Bounding strings the host keeps or shows: a guest or a backend may hand over any length.

/// `text` cut to at most `max` bytes at a character boundary, with a note of how much was cut.
/// The note is extra: the result is at most `max` plus about 24 bytes.
pub(crate) fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &text[..end], text.len() - end)
}

#[cfg(test)]
mod tests {
    use super::clip;

    #[test]
    fn clips_at_a_character_boundary_and_says_so() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("abcdef", 3), "abc… (3 bytes cut)");
        // `é` is two bytes: a cut inside it moves back before it.
        assert_eq!(clip("aé", 2), "a… (2 bytes cut)");
    }
}
