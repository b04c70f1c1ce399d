//! Manifest text shown to people: in reports, terminals and messages.

/// A character that can hide, reorder or colour what a person reads:
/// control characters (ESC sequences), bidirectional overrides and
/// isolates, zero-width and other invisible formatting (T21).
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}'
        )
}

/// `text` with every hidden character shown as U+FFFD.
pub fn visible(text: &str) -> String {
    text.chars()
        .map(|c| if is_hidden(c) { '\u{fffd}' } else { c })
        .collect()
}
