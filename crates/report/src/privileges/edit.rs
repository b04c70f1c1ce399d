//! One manifest line rewritten to a smaller grant, for `--format diff`
//! (T16). Grants are often one inline table on one line (`grants = { kv =
//! { a = "read-write" }, secrets = ["x"] }`), so an edit works inside the
//! line: a small lexer finds keys, strings and brackets outside strings and
//! comments, and an edit changes only the tokens it names. A line that does
//! not hold what the edit expects (a table spread over several lines, say)
//! is not guessed at: the edit fails and the diff says to change it by hand.

/// A change to one grant's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Edit {
    /// `STORE = "read-write"`, or `access = "read-write"` in the store's
    /// table, becomes `"read"`.
    ReadOnly { store: String },
    /// `KEY = VALUE` goes, from an inline table or as its own line.
    RemoveKey { key: String },
    /// `"ITEM"` goes from the `FIELD = [...]` array.
    RemoveItem { field: &'static str, item: String },
    /// `"ITEM"` in the `FIELD = [...]` array becomes these items.
    ReplaceItem {
        field: &'static str,
        item: String,
        with: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A run of `A-Za-z0-9_-`.
    Bare,
    /// A quoted string, quotes included.
    Str,
    /// One of `= , . [ ] { }`.
    Punct(u8),
}

#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

impl Token {
    /// The text a key or string names: a string without its quotes.
    fn name<'a>(&self, line: &'a str) -> &'a str {
        match self.kind {
            Kind::Str => &line[self.start + 1..self.end - 1],
            _ => &line[self.start..self.end],
        }
    }

    fn is(&self, punct: u8) -> bool {
        self.kind == Kind::Punct(punct)
    }
}

/// The tokens of `line` up to a comment; `None` for what this lexer does
/// not read (a multi-line string, an unterminated one, other bytes).
fn lex(line: &str) -> Option<Vec<Token>> {
    let bytes = line.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let start = i;
        match b {
            b' ' | b'\t' | b'\r' => i += 1,
            b'#' => break,
            b'"' | b'\'' => {
                if bytes.get(i + 1) == Some(&b) && bytes.get(i + 2) == Some(&b) {
                    return None;
                }
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return None,
                        Some(b'\\') if b == b'"' => i += 2,
                        Some(c) if *c == b => break,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
                tokens.push(Token {
                    kind: Kind::Str,
                    start,
                    end: i,
                });
            }
            b'=' | b',' | b'.' | b'[' | b']' | b'{' | b'}' => {
                i += 1;
                tokens.push(Token {
                    kind: Kind::Punct(b),
                    start,
                    end: i,
                });
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' => {
                while bytes
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
                {
                    i += 1;
                }
                tokens.push(Token {
                    kind: Kind::Bare,
                    start,
                    end: i,
                });
            }
            _ => return None,
        }
    }
    Some(tokens)
}

/// The index of the token closing the bracket at `open`, if on this line.
fn closing(tokens: &[Token], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t.kind {
            Kind::Punct(b'[' | b'{') => depth += 1,
            Kind::Punct(b']' | b'}') => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The key token named `key` that is followed by `=`, searched in
/// `tokens[from..to]`.
fn find_key(line: &str, tokens: &[Token], key: &str, from: usize, to: usize) -> Option<usize> {
    (from..to.min(tokens.len())).find(|&i| {
        let t = tokens[i];
        matches!(t.kind, Kind::Bare | Kind::Str)
            && t.name(line) == key
            && tokens.get(i + 1).is_some_and(|n| n.is(b'='))
    })
}

/// The last token of the value that starts at `tokens[at]`; `None` when a
/// bracketed value does not close on this line.
fn value_end(tokens: &[Token], at: usize) -> Option<usize> {
    let t = tokens.get(at)?;
    match t.kind {
        Kind::Punct(b'[' | b'{') => closing(tokens, at),
        Kind::Punct(_) => None,
        Kind::Bare | Kind::Str => Some(at),
    }
}

/// The range `[from, to)` of `line` holding a whole `key = value` or an
/// array item (tokens `first..=last`), with one neighbouring comma.
fn removal(tokens: &[Token], first: usize, last: usize) -> (usize, usize) {
    let next = tokens.get(last + 1);
    if let Some(comma) = next.filter(|t| t.is(b',')) {
        // `a, b` -> `b`: up to the token after the comma, if any.
        let to = tokens.get(last + 2).map_or(comma.end, |t| t.start);
        return (tokens[first].start, to);
    }
    if first > 0 && tokens[first - 1].is(b',') {
        // `a, b` -> `a`.
        return (tokens[first - 1].start, tokens[last].end);
    }
    (tokens[first].start, tokens[last].end)
}

/// `line` with `[from, to)` cut out.
fn cut(line: &str, from: usize, to: usize) -> String {
    format!("{}{}", &line[..from], &line[to..])
}

/// The first token of the dotted key ending at `key` (`grants.kv.a`).
fn dotted_start(tokens: &[Token], key: usize) -> usize {
    let mut first = key;
    while first >= 2
        && tokens[first - 1].is(b'.')
        && matches!(tokens[first - 2].kind, Kind::Bare | Kind::Str)
    {
        first -= 2;
    }
    first
}

/// `line` without `tokens[key] = value` (a dotted key whole).
fn remove_pair(line: &str, tokens: &[Token], key: usize) -> Option<String> {
    let last = value_end(tokens, key + 2)?;
    let first = dotted_start(tokens, key);
    let (from, to) = removal(tokens, first, last);
    Some(cut(line, from, to))
}

/// `field = []` or `field = {}` left by a removal goes too.
fn drop_empty(line: String) -> String {
    let Some(tokens) = lex(&line) else {
        return line;
    };
    let empty = (0..tokens.len().saturating_sub(3)).find(|&i| {
        matches!(tokens[i].kind, Kind::Bare | Kind::Str)
            && tokens[i + 1].is(b'=')
            && ((tokens[i + 2].is(b'[') && tokens[i + 3].is(b']'))
                || (tokens[i + 2].is(b'{') && tokens[i + 3].is(b'}')))
            && dotted_start(&tokens, i) == i
    });
    match empty.and_then(|i| remove_pair(&line, &tokens, i)) {
        Some(shorter) => drop_empty(shorter),
        None => line,
    }
}

/// `{ }` and `[ ]` left with only spaces inside read as `{}` and `[]`.
fn tidy(line: String) -> String {
    let Some(tokens) = lex(&line) else {
        return line;
    };
    let mut out = line;
    // From the end, so the earlier positions still hold.
    for pair in tokens.windows(2).rev() {
        let (open, close) = (pair[0], pair[1]);
        let empty = (open.is(b'{') && close.is(b'}')) || (open.is(b'[') && close.is(b']'));
        if empty && close.start > open.end {
            out = cut(&out, open.end, close.start);
        }
    }
    out
}

/// `line` with `edit` applied; `Some("")` when the line should go, `None`
/// when the line does not hold what the edit names.
pub(super) fn apply(line: &str, edit: &Edit) -> Option<String> {
    let tokens = lex(line)?;
    let edited = match edit {
        Edit::ReadOnly { store } => {
            let key = find_key(line, &tokens, store, 0, tokens.len())?;
            let value = tokens.get(key + 2)?;
            let target = if value.kind == Kind::Str {
                key + 2
            } else if value.is(b'{') {
                let end = closing(&tokens, key + 2).unwrap_or(tokens.len());
                find_key(line, &tokens, "access", key + 3, end)? + 2
            } else {
                return None;
            };
            let t = tokens.get(target)?;
            if t.kind != Kind::Str || t.name(line) != "read-write" {
                return None;
            }
            let quote = &line[t.start..=t.start];
            format!("{}{quote}read{quote}{}", &line[..t.start], &line[t.end..])
        }
        Edit::RemoveKey { key } => {
            let at = find_key(line, &tokens, key, 0, tokens.len())?;
            remove_pair(line, &tokens, at)?
        }
        Edit::RemoveItem { field, item } | Edit::ReplaceItem { field, item, .. } => {
            let at = item_in(line, &tokens, field, item)?;
            match edit {
                Edit::ReplaceItem { with, .. } => {
                    let t = tokens[at];
                    let quote = &line[t.start..=t.start];
                    let items: Vec<String> =
                        with.iter().map(|w| format!("{quote}{w}{quote}")).collect();
                    format!("{}{}{}", &line[..t.start], items.join(", "), &line[t.end..])
                }
                _ => {
                    let (from, to) = removal(&tokens, at, at);
                    cut(line, from, to)
                }
            }
        }
    };
    let edited = tidy(drop_empty(edited));
    Some(edited.trim_end().to_string())
}

/// The string token `item` of the array `field = [...]`: inside that
/// array when the line opens it, else anywhere on the line (an item line
/// of an array spread over several lines).
fn item_in(line: &str, tokens: &[Token], field: &str, item: &str) -> Option<usize> {
    let is_item = |i: usize| tokens[i].kind == Kind::Str && tokens[i].name(line) == item;
    match find_key(line, tokens, field, 0, tokens.len()) {
        Some(key) if tokens.get(key + 2).is_some_and(|t| t.is(b'[')) => {
            let end = closing(tokens, key + 2).unwrap_or(tokens.len());
            (key + 3..end).find(|&i| is_item(i))
        }
        _ => (0..tokens.len()).find(|&i| is_item(i)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_only(store: &str) -> Edit {
        Edit::ReadOnly {
            store: store.into(),
        }
    }

    fn remove_item(field: &'static str, item: &str) -> Edit {
        Edit::RemoveItem {
            field,
            item: item.into(),
        }
    }

    #[test]
    fn a_read_write_store_becomes_read_in_place() {
        let line = r#"grants = { kv = { cache = "read-write", other = "read-write" }, secrets = ["read-write"] }"#;
        assert_eq!(
            apply(line, &read_only("other")).as_deref(),
            Some(
                r#"grants = { kv = { cache = "read-write", other = "read" }, secrets = ["read-write"] }"#
            )
        );
        // A SQL table grant: its `access`, statements kept.
        let sql = r#"grants = { sql = { events = { access = 'read-write', statements = ["SELECT 1"] } } }"#;
        assert_eq!(
            apply(sql, &read_only("events")).as_deref(),
            Some(
                r#"grants = { sql = { events = { access = 'read', statements = ["SELECT 1"] } } }"#
            )
        );
        // In a `[function.grants.kv]` table, with a comment kept.
        assert_eq!(
            apply(r#"cache = "read-write"  # hot path"#, &read_only("cache")).as_deref(),
            Some(r#"cache = "read"  # hot path"#)
        );
        // Not what the line holds: no guess.
        assert_eq!(
            apply(r#"kv = { cache = "read" }"#, &read_only("cache")),
            None
        );
        assert_eq!(
            apply(r#"kv = { cachex = "read-write" }"#, &read_only("cache")),
            None
        );
    }

    #[test]
    fn a_removed_grant_takes_its_comma_and_empty_collections_go() {
        let line = r#"grants = { kv = { a = "read", b = "read-write" }, secrets = ["x", "y"] }"#;
        let cases = [
            (
                Edit::RemoveKey { key: "a".into() },
                r#"grants = { kv = { b = "read-write" }, secrets = ["x", "y"] }"#,
            ),
            (
                Edit::RemoveKey { key: "b".into() },
                r#"grants = { kv = { a = "read" }, secrets = ["x", "y"] }"#,
            ),
            (
                remove_item("secrets", "x"),
                r#"grants = { kv = { a = "read", b = "read-write" }, secrets = ["y"] }"#,
            ),
            (
                remove_item("secrets", "y"),
                r#"grants = { kv = { a = "read", b = "read-write" }, secrets = ["x"] }"#,
            ),
        ];
        for (edit, expected) in cases {
            assert_eq!(apply(line, &edit).as_deref(), Some(expected), "{edit:?}");
        }
        // The last secret goes, and its now empty `secrets` with it; an
        // empty `grants` is no grant, so its line goes too.
        assert_eq!(
            apply(
                r#"grants = { kv = { a = "read" }, secrets = ["x"] }"#,
                &remove_item("secrets", "x")
            )
            .as_deref(),
            Some(r#"grants = { kv = { a = "read" } }"#)
        );
        assert_eq!(
            apply(
                r#"grants = { secrets = ["x"] }"#,
                &remove_item("secrets", "x")
            )
            .as_deref(),
            Some("")
        );
        // A name that is also a value elsewhere on the line: the array's.
        assert_eq!(
            apply(
                r#"grants = { config = ["read"], secrets = ["read"] }"#,
                &remove_item("secrets", "read")
            )
            .as_deref(),
            Some(r#"grants = { config = ["read"] }"#)
        );
    }

    #[test]
    fn a_line_that_holds_only_the_grant_goes() {
        assert_eq!(
            apply(r#"  "old_token","#, &remove_item("secrets", "old_token")).as_deref(),
            Some("")
        );
        assert_eq!(
            apply(
                r#"grants.kv.spare = "read""#,
                &Edit::RemoveKey {
                    key: "spare".into()
                }
            )
            .as_deref(),
            Some("")
        );
        // A statement list spread over lines is not cut in half.
        assert_eq!(
            apply(
                r#"grants = { sql = { events = { access = "read", statements = ["#,
                &Edit::RemoveKey {
                    key: "events".into()
                }
            ),
            None
        );
    }

    #[test]
    fn a_wildcard_becomes_the_origins_called() {
        let line = r#"grants = { outbound = ["https://*.example.com", "https://api.github.com"] }"#;
        let edit = Edit::ReplaceItem {
            field: "outbound",
            item: "https://*.example.com".into(),
            with: vec![
                "https://a.example.com".into(),
                "https://b.example.com".into(),
            ],
        };
        assert_eq!(
            apply(line, &edit).as_deref(),
            Some(
                r#"grants = { outbound = ["https://a.example.com", "https://b.example.com", "https://api.github.com"] }"#
            )
        );
    }
}
