//! What the CLI prints that came from outside (payloads, client strings
//! in audit records) goes through [`safe`] first (T08).

/// JSON text with every character a terminal may act on escaped as
/// `\uXXXX`: serde_json escapes only those below U+0020, so C1 controls
/// (U+0080 to U+009F, e.g. the one-byte CSI U+009B) and the bidirectional
/// overrides and isolates would reach the operator's terminal raw (T08;
/// outside reviews of issues 15 and 18). Inside JSON strings these escapes are
/// the same text; outside strings JSON has no such characters.
pub(crate) fn safe(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        let risky = c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}');
        if risky && c != '\n' {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn c1_controls_and_bidi_overrides_never_reach_the_terminal_t08() {
        let row = json!({ "payload": "fail\u{9b}2J\u{202e}evil\u{1b}[31m" });
        let text = safe(&serde_json::to_string(&row).unwrap());
        assert!(
            text.chars().all(|c| !c.is_control() && c != '\u{202e}'),
            "{text:?}"
        );
        assert!(text.contains("\\u009b2J\\u202eevil\\u001b[31m"), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, row);
        // Pretty output keeps its line breaks.
        assert!(safe("[\n  1\n]").contains('\n'));
    }
}
