//! One manifest line rewritten to a smaller grant, for `--format diff`
//! (T16). Grants are often one inline table on one line (`grants = { kv =
//! { a = "read-write" }, secrets = ["x"] }`), so an edit works inside the
//! line: a small lexer finds keys, strings and brackets outside strings and
//! comments, a reader gives every key its full path (the inline tables it
//! sits in), and an edit changes only the grant at its own path: the store
//! `kv` in `kv = { kv = .. }`, not the capability's table; the kv store
//! `access`, not a SQL grant's `access`. A line that does not hold what the
//! edit expects where it expects it (a table spread over several lines, a
//! name found twice) is not guessed at: the edit fails and the diff says to
//! change it by hand.

/// A change to one grant's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Edit {
    /// `STORE = "read-write"`, or `access = "read-write"` in the store's
    /// table, becomes `"read"`: the store's key in the `FIELD` table
    /// (`kv`, `sql`), never a key of that name elsewhere on the line.
    ReadOnly { field: &'static str, store: String },
    /// `KEY = VALUE` goes from the `FIELD` table, or as its own line.
    RemoveKey { field: &'static str, key: String },
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

/// One `key = value` of the line: its full key path (the inline tables
/// it sits in, then its own dotted key), and where it is.
#[derive(Debug, Clone)]
struct Entry {
    path: Vec<String>,
    /// How much of `path` is the table it sits in.
    base: usize,
    /// The first token of its (dotted) key.
    first: usize,
    /// The first token of its value.
    value: usize,
    /// The last token of its value; `None` when it does not end on the
    /// line.
    end: Option<usize>,
}

/// A string item of an array on the line.
#[derive(Debug, Clone)]
struct Item {
    /// The key path of its array; `None` for an item line of an array
    /// opened on an earlier line.
    array: Option<Vec<String>>,
    token: usize,
}

/// What one line holds, read as TOML: its keys, each with its full path,
/// and its arrays' string items.
#[derive(Debug, Default)]
struct Parsed {
    entries: Vec<Entry>,
    items: Vec<Item>,
}

/// Why reading stopped early.
enum Halt {
    /// The line ends inside a value (a table or array spread over lines).
    Open,
    /// Not what a grant line holds: read no further, guess nothing.
    Bad,
}

struct Reader<'a> {
    line: &'a str,
    tokens: &'a [Token],
    at: usize,
    out: Parsed,
}

impl Reader<'_> {
    fn peek(&self) -> Result<Token, Halt> {
        self.tokens.get(self.at).copied().ok_or(Halt::Open)
    }

    /// `a.b.c = VALUE` inside the table at `prefix`.
    fn keyval(&mut self, prefix: &[String]) -> Result<(), Halt> {
        let first = self.at;
        let mut path = prefix.to_vec();
        loop {
            let t = self.peek()?;
            if !matches!(t.kind, Kind::Bare | Kind::Str) {
                return Err(Halt::Bad);
            }
            path.push(t.name(self.line).to_string());
            self.at += 1;
            let next = self.peek()?;
            if next.is(b'.') {
                self.at += 1;
            } else if next.is(b'=') {
                self.at += 1;
                break;
            } else {
                return Err(Halt::Bad);
            }
        }
        let index = self.out.entries.len();
        self.out.entries.push(Entry {
            path: path.clone(),
            base: prefix.len(),
            first,
            value: self.at,
            end: None,
        });
        self.value(&path, false)?;
        self.out.entries[index].end = Some(self.at - 1);
        Ok(())
    }

    /// One value at `path`; `in_array`: an item of the array at `path`.
    fn value(&mut self, path: &[String], in_array: bool) -> Result<(), Halt> {
        let t = self.peek()?;
        self.at += 1;
        match t.kind {
            Kind::Str => {
                if in_array {
                    self.out.items.push(Item {
                        array: Some(path.to_vec()),
                        token: self.at - 1,
                    });
                }
                Ok(())
            }
            Kind::Bare => Ok(()),
            Kind::Punct(b'{') => self.sequence(b'}', |r| r.keyval(path)),
            Kind::Punct(b'[') => self.sequence(b']', |r| r.value(path, true)),
            Kind::Punct(_) => Err(Halt::Bad),
        }
    }

    /// Elements separated by commas up to `close` (a trailing comma too).
    fn sequence(
        &mut self,
        close: u8,
        mut element: impl FnMut(&mut Self) -> Result<(), Halt>,
    ) -> Result<(), Halt> {
        loop {
            if self.peek()?.is(close) {
                self.at += 1;
                return Ok(());
            }
            element(self)?;
            let t = self.peek()?;
            if t.is(b',') {
                self.at += 1;
            } else if !t.is(close) {
                return Err(Halt::Bad);
            }
        }
    }
}

/// The line read as TOML; `None` for what is not a grant line as this
/// reader knows them (a table header, bytes it does not read, a syntax it
/// does not follow). A line that ends inside a value keeps what it read.
fn parse(line: &str, tokens: &[Token]) -> Option<Parsed> {
    let mut r = Reader {
        line,
        tokens,
        at: 0,
        out: Parsed::default(),
    };
    let starts_with_key =
        tokens.len() >= 2 && matches!(tokens[0].kind, Kind::Bare | Kind::Str) && {
            // `key =` or `a.b =`: a key/value line.
            let mut i = 1;
            while tokens.get(i).is_some_and(|t| t.is(b'.')) {
                i += 2;
            }
            tokens.get(i).is_some_and(|t| t.is(b'='))
        };
    let result = if tokens.is_empty() {
        Ok(())
    } else if starts_with_key {
        // Top-level `key = value`, or `key = value,` lines of an inline
        // table spread over lines (TOML 1.1).
        (|| {
            loop {
                r.keyval(&[])?;
                match r.tokens.get(r.at) {
                    None => return Ok(()),
                    Some(t) if t.is(b',') => r.at += 1,
                    Some(_) => return Err(Halt::Bad),
                }
                if r.at == r.tokens.len() {
                    return Ok(());
                }
            }
        })()
    } else if tokens.iter().all(|t| t.kind == Kind::Str || t.is(b',')) {
        // An item line of an array opened above: `"a", "b",`.
        for (i, t) in tokens.iter().enumerate() {
            if t.kind == Kind::Str {
                r.out.items.push(Item {
                    array: None,
                    token: i,
                });
            }
        }
        Ok(())
    } else {
        Err(Halt::Bad)
    };
    match result {
        Ok(()) | Err(Halt::Open) => Some(r.out),
        Err(Halt::Bad) => None,
    }
}

/// The entry granting `name` under `field` (`kv`, `sql`): the one key
/// whose path is `grants.FIELD.NAME` (`grants = { kv = { NAME = .. } }`,
/// `grants.kv.NAME = ..`) or `FIELD.NAME`, else the line's one top-level key `NAME` (the
/// line sits in a `[function.grants.FIELD]` table). Never a key of the
/// same name elsewhere on the line: in another capability's table or
/// inside another grant.
fn grant_entry<'p>(
    tokens: &[Token],
    parsed: &'p Parsed,
    field: &str,
    name: &str,
) -> Option<&'p Entry> {
    // `grants.FIELD.NAME` under `[[function]]`, `FIELD.NAME` under
    // `[function.grants]`; a path that only ends so is another grant's
    // key (`sql = { kv = { access = .. } }`).
    let mut under = parsed.entries.iter().filter(|e| match e.path.as_slice() {
        [f, n] => f == field && n == name,
        [g, f, n] => g == "grants" && f == field && n == name,
        _ => false,
    });
    if let Some(found) = under.next() {
        return under.next().is_none().then_some(found);
    }
    let mut own = parsed
        .entries
        .iter()
        .filter(|e| e.path.len() == 1 && e.path[0] == name);
    let found = own.next()?;
    if own.next().is_some() {
        return None;
    }
    // A grant's value: a string, or (SQL) a table of `access` and
    // `statements`; anything else is not a grant line of this field.
    let value = tokens.get(found.value)?;
    let fits = match value.kind {
        Kind::Str => true,
        Kind::Punct(b'{') => {
            field == "sql"
                && parsed
                    .entries
                    .iter()
                    .filter(|e| e.path.len() == 2 && e.path[0] == name)
                    .all(|e| matches!(e.path[1].as_str(), "access" | "statements"))
        }
        _ => false,
    };
    fits.then_some(found)
}

/// The string item `item` of the array `grants.FIELD` (or `FIELD`, under
/// `[function.grants]`) on the line, else of the array an item line continues.
fn grant_item(
    line: &str,
    parsed: &Parsed,
    tokens: &[Token],
    field: &str,
    item: &str,
) -> Option<Item> {
    let named = |i: &&Item| tokens[i.token].name(line) == item;
    let mut found = parsed
        .items
        .iter()
        .filter(|i| match i.array.as_deref() {
            Some([f]) => f == field,
            Some([g, f]) => g == "grants" && f == field,
            _ => false,
        })
        .filter(named);
    if let Some(first) = found.next() {
        return found.next().is_none().then(|| first.clone());
    }
    let mut loose = parsed
        .items
        .iter()
        .filter(|i| i.array.is_none())
        .filter(named);
    let first = loose.next()?;
    loose.next().is_none().then(|| first.clone())
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

/// `line` without `entry` (a dotted key whole), then without the table
/// or array holding it if that is left empty, and so on up.
fn remove_entry(line: &str, tokens: &[Token], entry: &Entry) -> Option<String> {
    let (from, to) = removal(tokens, entry.first, entry.end?);
    let container = entry.path[..entry.base].to_vec();
    Some(drop_emptied(cut(line, from, to), &container))
}

/// `line` without the entry at `path` if its value is now `{}` or `[]`.
fn drop_emptied(line: String, path: &[String]) -> String {
    if path.is_empty() {
        return line;
    }
    let Some(tokens) = lex(&line) else {
        return line;
    };
    let Some(parsed) = parse(&line, &tokens) else {
        return line;
    };
    let Some(entry) = parsed.entries.iter().find(|e| e.path == path) else {
        return line;
    };
    let empty = entry.end == Some(entry.value + 1)
        && tokens
            .get(entry.value)
            .zip(tokens.get(entry.value + 1))
            .is_some_and(|(o, c)| (o.is(b'{') && c.is(b'}')) || (o.is(b'[') && c.is(b']')));
    if !empty {
        return line;
    }
    match remove_entry(&line, &tokens, entry) {
        Some(shorter) => shorter,
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
/// when the line does not hold what the edit names where it names it.
pub(super) fn apply(line: &str, edit: &Edit) -> Option<String> {
    let tokens = lex(line)?;
    let parsed = parse(line, &tokens)?;
    let edited = match edit {
        Edit::ReadOnly { field, store } => {
            let entry = grant_entry(&tokens, &parsed, field, store)?;
            let value = tokens.get(entry.value)?;
            let target = if value.kind == Kind::Str {
                entry.value
            } else if value.is(b'{') {
                let mut access = entry.path.clone();
                access.push("access".into());
                parsed.entries.iter().find(|e| e.path == access)?.value
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
        Edit::RemoveKey { field, key } => {
            let entry = grant_entry(&tokens, &parsed, field, key)?;
            remove_entry(line, &tokens, entry)?
        }
        Edit::RemoveItem { field, item } | Edit::ReplaceItem { field, item, .. } => {
            let found = grant_item(line, &parsed, &tokens, field, item)?;
            let t = tokens[found.token];
            match edit {
                Edit::ReplaceItem { with, .. } => {
                    let quote = &line[t.start..=t.start];
                    let items: Vec<String> =
                        with.iter().map(|w| format!("{quote}{w}{quote}")).collect();
                    format!("{}{}{}", &line[..t.start], items.join(", "), &line[t.end..])
                }
                _ => {
                    let (from, to) = removal(&tokens, found.token, found.token);
                    let array = found.array.unwrap_or_default();
                    drop_emptied(cut(line, from, to), &array)
                }
            }
        }
    };
    let edited = tidy(edited);
    Some(edited.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_only(store: &str) -> Edit {
        Edit::ReadOnly {
            field: "kv",
            store: store.into(),
        }
    }

    fn remove_key(field: &'static str, key: &str) -> Edit {
        Edit::RemoveKey {
            field,
            key: key.into(),
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
            apply(
                sql,
                &Edit::ReadOnly {
                    field: "sql",
                    store: "events".into()
                }
            )
            .as_deref(),
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
                remove_key("kv", "a"),
                r#"grants = { kv = { b = "read-write" }, secrets = ["x", "y"] }"#,
            ),
            (
                remove_key("kv", "b"),
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
            apply(r#"grants.kv.spare = "read""#, &remove_key("kv", "spare")).as_deref(),
            Some("")
        );
        // A statement list spread over lines is not cut in half.
        assert_eq!(
            apply(
                r#"grants = { sql = { events = { access = "read", statements = ["#,
                &remove_key("sql", "events")
            ),
            None
        );
    }

    /// Outside review, issue 13 (T16): a grant is found in its own
    /// capability's table, never by a key of the same name elsewhere.
    #[test]
    fn t16_a_grant_is_found_in_its_own_table_not_by_its_name_anywhere() {
        // The store `kv` in the `kv` table: that key goes, not the table.
        let line =
            r#"grants = { kv = { kv = "read", data = "read-write", other = "read-write" } }"#;
        assert_eq!(
            apply(line, &remove_key("kv", "kv")).as_deref(),
            Some(r#"grants = { kv = { data = "read-write", other = "read-write" } }"#)
        );
        assert_eq!(
            apply(line, &read_only("other")).as_deref(),
            Some(r#"grants = { kv = { kv = "read", data = "read-write", other = "read" } }"#)
        );
        // The kv store `access`, not the SQL grant's `access`.
        let line = r#"grants = { sql = { events = { access = "read-write", statements = ["SELECT 1"] } }, kv = { access = "read" } }"#;
        assert_eq!(
            apply(line, &remove_key("kv", "access")).as_deref(),
            Some(
                r#"grants = { sql = { events = { access = "read-write", statements = ["SELECT 1"] } } }"#
            )
        );
        let line = r#"grants = { sql = { events = { access = "read-write" } }, kv = { access = "read-write" } }"#;
        assert_eq!(
            apply(line, &read_only("access")).as_deref(),
            Some(
                r#"grants = { sql = { events = { access = "read-write" } }, kv = { access = "read" } }"#
            )
        );
        // The SQL store `kv`, not the kv table.
        let line = r#"grants = { kv = { cache = "read" }, sql = { kv = "read" } }"#;
        assert_eq!(
            apply(line, &remove_key("sql", "kv")).as_deref(),
            Some(r#"grants = { kv = { cache = "read" } }"#)
        );
        // A secret named as a config key: the secrets array's.
        let line = r#"grants = { config = ["token"], secrets = ["token", "x"] }"#;
        assert_eq!(
            apply(line, &remove_item("secrets", "token")).as_deref(),
            Some(r#"grants = { config = ["token"], secrets = ["x"] }"#)
        );
        // A store whose name is only a value or another key: no edit.
        assert_eq!(
            apply(
                r#"grants = { sql = { kv = { access = "read" } } }"#,
                &remove_key("kv", "access")
            ),
            None
        );
        assert_eq!(
            apply(r#"kv = { data = "read" }"#, &remove_key("kv", "kv")),
            None
        );
        // A grant table's own line (`[function.grants.kv]`) and TOML 1.1
        // inline tables spread over lines.
        assert_eq!(
            apply(r#"kv = "read-write""#, &read_only("kv")).as_deref(),
            Some(r#"kv = "read""#)
        );
        assert_eq!(
            apply(
                r#"    kv = "read", data = "read","#,
                &remove_key("kv", "kv")
            )
            .as_deref(),
            Some(r#"    data = "read","#)
        );
        // Strings that look like keys stay strings.
        let line = r#"grants = { sql = { events = { access = "read", statements = ["SELECT 'kv = {'", "x"] } }, kv = { a = "read" } }"#;
        assert_eq!(
            apply(line, &remove_key("kv", "a")).as_deref(),
            Some(
                r#"grants = { sql = { events = { access = "read", statements = ["SELECT 'kv = {'", "x"] } } }"#
            )
        );
        // A kv and a SQL store of one name: each edit its own.
        let line = r#"grants = { kv = { events = "read-write" }, sql = { events = { access = "read-write" } } }"#;
        assert_eq!(
            apply(
                line,
                &Edit::ReadOnly {
                    field: "sql",
                    store: "events".into()
                }
            )
            .as_deref(),
            Some(
                r#"grants = { kv = { events = "read-write" }, sql = { events = { access = "read" } } }"#
            )
        );
        assert_eq!(
            apply(line, &remove_key("kv", "events")).as_deref(),
            Some(r#"grants = { sql = { events = { access = "read-write" } } }"#)
        );
        // Under `[function.grants]`: `FIELD = { .. }` and `FIELD.NAME`.
        assert_eq!(
            apply(
                r#"kv = { kv = "read", data = "read" }  # kv: old"#,
                &remove_key("kv", "kv")
            )
            .as_deref(),
            Some(r#"kv = { data = "read" }  # kv: old"#)
        );
        assert_eq!(
            apply(r#"kv.kv = "read""#, &remove_key("kv", "kv")).as_deref(),
            Some("")
        );
        // An empty list a grant had before is not the edit's to drop.
        let line = r#"grants = { kv = { a = "read" }, config = [], secrets = ["x"] }"#;
        assert_eq!(
            apply(line, &remove_key("kv", "a")).as_deref(),
            Some(r#"grants = { config = [], secrets = ["x"] }"#)
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
