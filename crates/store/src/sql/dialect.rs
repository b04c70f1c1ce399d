//! What a guest's statement is, read from its text before PostgreSQL sees
//! it (issue 16, T06, T16): its kind (the first keyword), and its `?NNN`
//! placeholders in PostgreSQL's `$NNN` form, so one guest runs unchanged
//! on either backend. This is not a parser: PostgreSQL parses, the grant's
//! database role decides what the statement may touch, and anything this
//! module cannot read plainly is refused with what to write instead.

/// What a statement does, by its first keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatementKind {
    Read,
    Write,
}

/// The kind of `statement`, or why guests may not run it. Only data
/// statements pass: sessions, transactions, DDL, COPY and notifications
/// are the host's (T06).
pub(crate) fn statement_kind(statement: &str) -> Result<StatementKind, &'static str> {
    let text = statement.trim_start();
    let word: String = text
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase();
    match word.as_str() {
        "SELECT" | "VALUES" | "TABLE" => Ok(StatementKind::Read),
        "INSERT" | "UPDATE" | "DELETE" | "MERGE" => Ok(StatementKind::Write),
        // A data-modifying WITH needs the write grant's role; the kind only
        // tells the privilege review which it was (T16).
        "WITH" => Ok(if has_write_keyword(text) {
            StatementKind::Write
        } else {
            StatementKind::Read
        }),
        "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT" | "RELEASE"
        | "PREPARE" => Err("a transaction statement (each call is one statement)"),
        "CREATE" | "ALTER" | "DROP" | "TRUNCATE" | "GRANT" | "REVOKE" | "COMMENT" | "REINDEX"
        | "CLUSTER" | "VACUUM" | "ANALYZE" | "SECURITY" | "REFRESH" | "IMPORT" => {
            Err("DDL (schema changes come from migrations only)")
        }
        "SET" | "RESET" | "SHOW" | "DISCARD" => Err("a session setting (SET, RESET, SHOW)"),
        "COPY" => Err("COPY"),
        "LISTEN" | "NOTIFY" | "UNLISTEN" => Err("LISTEN or NOTIFY"),
        "" => Err("a statement must start with SELECT, INSERT, UPDATE, DELETE or WITH"),
        _ => Err("an operation Bulkhead does not allow"),
    }
}

fn has_write_keyword(text: &str) -> bool {
    text.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .any(|w| {
            ["INSERT", "UPDATE", "DELETE", "MERGE"]
                .iter()
                .any(|k| w.eq_ignore_ascii_case(k))
        })
}

/// `statement` with SQLite's `?NNN` and `?` placeholders written as
/// PostgreSQL's `$NNN` (a bare `?` is the next number), outside string
/// literals, quoted names and comments. A statement already in `$NNN`
/// form passes unchanged. Refused: a `?` next to text this reader does
/// not follow (escape strings, dollar quoting), rather than guessed at.
pub(crate) fn to_postgres_placeholders(statement: &str) -> Result<String, &'static str> {
    if !statement.contains('?') {
        return Ok(statement.to_string());
    }
    const UNCLEAR: &str = "a statement with `?` placeholders must not also hold E'…' strings or $-quoted text; write $1, $2… instead";
    let bytes = statement.as_bytes();
    let mut out = String::with_capacity(statement.len() + 8);
    let mut next = 1u32;
    let mut i = 0;
    // Copies from `start` up to `i` as they are.
    let mut start = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => {
                let quote = bytes[i];
                if quote == b'\'' && i > 0 && matches!(bytes[i - 1], b'e' | b'E') {
                    return Err(UNCLEAR);
                }
                i += 1;
                // A doubled quote is the quote itself; the literal goes on.
                loop {
                    match bytes.get(i) {
                        None => return Err("an unterminated quoted string or name"),
                        Some(&b) if b == quote => {
                            if bytes.get(i + 1) == Some(&quote) {
                                i += 2;
                            } else {
                                i += 1;
                                break;
                            }
                        }
                        Some(_) => i += 1,
                    }
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                // Nested, as PostgreSQL reads them.
                let mut depth = 0usize;
                loop {
                    match (bytes.get(i), bytes.get(i + 1)) {
                        (None, _) => return Err("an unterminated comment"),
                        (Some(b'/'), Some(b'*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (Some(b'*'), Some(b'/')) => {
                            depth -= 1;
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => i += 1,
                    }
                }
            }
            // `$1` is a placeholder already; `$tag$` or `$$` opens quoting.
            b'$' if !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => return Err(UNCLEAR),
            b'?' => {
                out.push_str(&statement[start..i]);
                i += 1;
                let digits_start = i;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                out.push('$');
                if i > digits_start {
                    out.push_str(&statement[digits_start..i]);
                } else {
                    out.push_str(&next.to_string());
                    next = next.saturating_add(1);
                }
                start = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&statement[start..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_postgres_outside_literals() {
        let cases = [
            (
                "SELECT body FROM events WHERE id = ?1",
                "SELECT body FROM events WHERE id = $1",
            ),
            (
                "INSERT INTO t (a, b) VALUES (?, ?)",
                "INSERT INTO t (a, b) VALUES ($1, $2)",
            ),
            (
                "SELECT '?1', \"a?\" FROM t WHERE x = ?2",
                "SELECT '?1', \"a?\" FROM t WHERE x = $2",
            ),
            (
                "SELECT 'it''s ?' WHERE a = ?3",
                "SELECT 'it''s ?' WHERE a = $3",
            ),
            (
                "SELECT 1 -- ?\n WHERE a = ?",
                "SELECT 1 -- ?\n WHERE a = $1",
            ),
            ("SELECT /* ? /* ? */ */ ?7", "SELECT /* ? /* ? */ */ $7"),
            ("SELECT $1, $2", "SELECT $1, $2"),
            ("SELECT ?12", "SELECT $12"),
        ];
        for (sqlite, postgres) in cases {
            assert_eq!(
                to_postgres_placeholders(sqlite).as_deref(),
                Ok(postgres),
                "{sqlite}"
            );
        }
        for unclear in [
            "SELECT E'\\' ?' , ?",
            "SELECT $$?$$, ?",
            "SELECT 'open ?",
            "SELECT /* ? ",
        ] {
            assert!(to_postgres_placeholders(unclear).is_err(), "{unclear}");
        }
    }

    #[test]
    fn t06_only_data_statements_pass() {
        assert_eq!(statement_kind("  select 1"), Ok(StatementKind::Read));
        assert_eq!(statement_kind("DELETE FROM t"), Ok(StatementKind::Write));
        assert_eq!(
            statement_kind("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"),
            Ok(StatementKind::Write)
        );
        assert_eq!(
            statement_kind("WITH d AS (SELECT 1) SELECT * FROM d"),
            Ok(StatementKind::Read)
        );
        for refused in [
            "COMMIT",
            "BEGIN",
            "SET ROLE postgres",
            "RESET ROLE",
            "DROP TABLE t",
            "COPY t TO STDOUT",
            "NOTIFY bulkhead_deploys",
            "/* x */ SELECT 1",
            "(SELECT 1)",
            "",
            "DO $$ BEGIN END $$",
        ] {
            assert!(statement_kind(refused).is_err(), "{refused}");
        }
    }
}
