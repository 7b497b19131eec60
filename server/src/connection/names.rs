//! Display names as the server broadcasts them: no control or format
//! characters, so that a name cannot reorder or hide text in other users'
//! editors (bidi overrides such as U+202E, zero-width characters, BOMs).

use ot_protocol::MAX_NAME_CHARS;

/// Whether `c` is in Unicode's general category Cf (format).
fn is_format(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

/// `name` without control and format characters, trimmed, at most
/// [`MAX_NAME_CHARS`] characters.
pub(crate) fn display_name(name: &str) -> String {
    let kept: String = name
        .chars()
        .filter(|&c| !c.is_control() && !is_format(c))
        .take(MAX_NAME_CHARS)
        .collect();
    kept.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::display_name;

    #[test]
    fn control_and_format_characters_are_removed() {
        assert_eq!(display_name("Ann"), "Ann");
        assert_eq!(display_name("A\u{202E}nn\u{200B}"), "Ann");
        assert_eq!(display_name("\u{FEFF}Bob\n\t\u{7}"), "Bob");
        assert_eq!(display_name("Zoë 🙂"), "Zoë 🙂", "letters and emoji stay");
        assert_eq!(display_name("a\u{2066}b\u{2069}c\u{E0041}"), "abc");
        assert_eq!(
            display_name(&"x".repeat(1000)).chars().count(),
            super::MAX_NAME_CHARS
        );
    }
}
