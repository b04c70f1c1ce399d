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

/// The keyword `statement` starts with, in capitals (what decides its
/// kind, [`statement_kind`]).
pub(crate) fn leading_word(statement: &str) -> String {
    statement
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase()
}

/// The kind of `statement`, or why guests may not run it. Only data
/// statements pass: sessions, transactions, DDL, COPY and notifications
/// are the host's (T06).
pub(crate) fn statement_kind(statement: &str) -> Result<StatementKind, &'static str> {
    let text = statement.trim_start();
    match leading_word(text).as_str() {
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

/// Whether a bare word of `text` (not a literal, comment or quoted name)
/// is a data-changing keyword.
fn has_write_keyword(text: &str) -> bool {
    let mut write = false;
    let _ = scan(text, |token| {
        if let Token::Word(word) = token {
            write |= ["INSERT", "UPDATE", "DELETE", "MERGE"]
                .iter()
                .any(|k| word.eq_ignore_ascii_case(k));
        }
    });
    write
}

/// Names guests may not use on PostgreSQL (T05, T16), the way SQLite's
/// authorizer refuses `load_extension`: PostgreSQL lets every role call
/// these, so a read grant could otherwise write large objects or the WAL,
/// hold locks past its call or against every node's start, signal other
/// sessions, change its own bounds or the next call's, read what other
/// calls on its connection prepared, or run SQL hidden in a string
/// (outside reviews of issue 16). Whole families by prefix: `pg_` (the
/// server's own functions and views: locks, signals, WAL, settings,
/// statistics, catalogs), `lo_` (large objects) and `txid_` (transaction
/// ids: `txid_current` writes the WAL).
const DENIED_PREFIXES: &[&str] = &["pg_", "lo_", "txid_"];
const DENIED_NAMES: &[&str] = &[
    "lowrite",
    "loread",
    // SQL run from a string, out of every check here.
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "ts_stat",
    "ts_rewrite",
    "dblink",
    "dblink_exec",
    // The session's settings and state.
    "set_config",
    "setseed",
    // Data of the whole database, beside the grant.
    "database_to_xml",
    "schema_to_xml",
    "database_to_xmlschema",
    "schema_to_xmlschema",
    // The server and the rest of the database, by name (second outside
    // review of the revokes: an `oid` cast to `regrole` or `regclass`
    // named every role of the server and every table, the app's own
    // included, with no privilege checked). The database refuses the
    // functions too; the casts only this check.
    "current_setting",
    "inet_server_addr",
    "inet_server_port",
    "inet_client_addr",
    "inet_client_port",
    "to_regclass",
    "to_regcollation",
    "to_regnamespace",
    "to_regoper",
    "to_regoperator",
    "to_regproc",
    "to_regprocedure",
    "to_regrole",
    "to_regtype",
    "obj_description",
    "col_description",
    "shobj_description",
    "has_any_column_privilege",
    "has_column_privilege",
    "has_database_privilege",
    "has_foreign_data_wrapper_privilege",
    "has_function_privilege",
    "has_language_privilege",
    "has_parameter_privilege",
    "has_schema_privilege",
    "has_sequence_privilege",
    "has_server_privilege",
    "has_table_privilege",
    "has_tablespace_privilege",
    "has_type_privilege",
    // Third outside review: role names through privilege items, table
    // names through their row types, a table's existence.
    "acldefault",
    "aclexplode",
    "aclcontains",
    "aclinsert",
    "aclremove",
    "aclitem",
    "_aclitem",
    "makeaclitem",
    "format_type",
    "row_security_active",
    // Fifth outside review: `information_schema`'s privilege views list
    // every table's row type with its schema (PUBLIC may use every type),
    // and a table's number named it in this function's error.
    "information_schema",
    "satisfies_hash_partition",
];

/// The `reg…` types whose output names a role, table, schema, type (a
/// table's row type too), operator or function from its number with no
/// privilege checked: denied with their array types (`_regrole`, third
/// outside review) and their input, output, receive and send functions
/// (`regroleout`), as those exact names after any leading underscores
/// (a fifth review: a prefix rule refused columns like `regtype_id`).
/// `regconfig`, `regdictionary` and `regcollation` name only text-search
/// configurations and collations, and full-text search casts to them
/// (`'english'::regconfig`): left.
const OBJECT_NAME_TYPES: &[&str] = &[
    "regclass",
    "regnamespace",
    "regoper",
    "regoperator",
    "regproc",
    "regprocedure",
    "regrole",
    "regtype",
];

/// Whether `name` is one of [`OBJECT_NAME_TYPES`], its array type or one
/// of its I/O functions.
fn names_objects(name: &str) -> bool {
    let bare = name.trim_start_matches('_');
    OBJECT_NAME_TYPES.iter().any(|t| {
        bare.strip_prefix(t)
            .is_some_and(|rest| ["", "in", "out", "recv", "send"].contains(&rest))
    })
}

/// Why a statement's text is refused before PostgreSQL sees it: a server
/// function guests may not call, `SELECT … INTO` (a new table made by a
/// read), Unicode-escaped names (which could spell either), a NUL byte,
/// or text left open.
pub(crate) fn refused_text(statement: &str) -> Option<&'static str> {
    if statement.contains('\0') {
        return Some("a NUL byte in the statement");
    }
    let mut refused = None;
    // Tokens seen, and whether the first was INSERT or MERGE: `INTO` is
    // allowed only as the statement's second word (`INSERT INTO`,
    // `MERGE INTO`). Anywhere else it may be `SELECT … INTO`, which makes a
    // table, whatever precedes it (fourth outside review: a column named
    // `insert` passed a rule that looked only at the word before).
    let mut seen = 0usize;
    let mut starts_insert = false;
    let scanned = scan(statement, |token| {
        seen += 1;
        // `"into"` is a name; only the bare word is the keyword.
        let (name, keyword) = match token {
            Token::Word(word) => (word.to_ascii_lowercase(), true),
            Token::Quoted(name) => (name, false),
            Token::UnicodeEscaped => {
                refused.get_or_insert("a U& name or string (write it plainly)");
                return;
            }
            Token::Placeholder { .. } => return,
        };
        if seen == 1 {
            starts_insert = keyword && (name == "insert" || name == "merge");
        }
        if DENIED_NAMES.contains(&name.as_str())
            || DENIED_PREFIXES.iter().any(|p| name.starts_with(p))
            || names_objects(&name)
            || name.contains("_to_xml")
        {
            refused.get_or_insert("a server function guests may not call");
        } else if keyword && name == "into" && !(seen == 2 && starts_insert) {
            refused.get_or_insert("SELECT … INTO (a table made by a statement)");
        }
    });
    scanned.err().or(refused)
}

/// What [`scan`] reports outside literals and comments.
enum Token<'a> {
    /// A bare keyword or name.
    Word(&'a str),
    /// A double-quoted name, its `""` undone.
    Quoted(String),
    /// `U&'…'` or `U&"…"`.
    UnicodeEscaped,
    /// `?` or `?NNN`, at byte `at`, `len` bytes long.
    Placeholder { at: usize, len: usize },
}

/// Walk `statement` as PostgreSQL's lexer splits it: string literals
/// (`'…'`, `$tag$…$tag$`), quoted names
/// and comments (nested `/* */`, `--`) are passed over; words, quoted
/// names and `?` placeholders are reported. `Err` for text left open.
fn scan<'a>(statement: &'a str, mut on: impl FnMut(Token<'a>)) -> Result<(), &'static str> {
    let bytes = statement.as_bytes();
    let word_byte = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$';
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            // Names and dollar-quote tags may hold bytes past ASCII in
            // PostgreSQL (`$aé$` is a tag): outside strings and quoted
            // names they are refused, not followed (third outside review).
            b if b >= 0x80 => {
                return Err("a character beyond ASCII outside a string or a quoted name");
            }
            b'\'' => i = skip_quoted(bytes, i, b'\'')?,
            b'"' => {
                let end = skip_quoted(bytes, i, b'"')?;
                on(Token::Quoted(
                    statement[i + 1..end - 1].replace("\"\"", "\""),
                ));
                i = end;
            }
            // PostgreSQL ends a `--` comment at a newline or a carriage
            // return (outside review: `--\r` hid what followed).
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => i = skip_comment(bytes, i)?,
            b'$' => {
                // `$1` is a parameter; `$tag$` or `$$` opens dollar quoting.
                let tag_end = bytes[i + 1..]
                    .iter()
                    .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                    .map_or(bytes.len(), |n| i + 1 + n);
                if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    i = tag_end;
                } else if bytes.get(tag_end) == Some(&b'$') {
                    let tag = &statement[i..=tag_end];
                    let body = tag_end + 1;
                    let close = statement[body..]
                        .find(tag)
                        .ok_or("an unterminated $-quoted string")?;
                    i = body + close + tag.len();
                } else {
                    i += 1;
                }
            }
            b'?' => {
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                // Written as `$N`, a `?` touching a name would join it
                // (`x?` is `x$1`, one identifier): refused, not guessed.
                let before = i.checked_sub(1).and_then(|j| bytes.get(j));
                let after = bytes.get(i + 1 + digits);
                if before.is_some_and(|b| word_byte(*b)) || after.is_some_and(|b| word_byte(*b)) {
                    return Err(
                        "a `?` placeholder next to a name or `$`; put a space or an operator between",
                    );
                }
                on(Token::Placeholder {
                    at: i,
                    len: 1 + digits,
                });
                i += 1 + digits;
            }
            b if word_byte(b) && !b.is_ascii_digit() => {
                let start = i;
                while i < bytes.len() && word_byte(bytes[i]) {
                    i += 1;
                }
                let word = &statement[start..i];
                match (word, bytes.get(i), bytes.get(i + 1)) {
                    // An escape string continued on a later line stays an
                    // escape string to PostgreSQL (third outside review):
                    // refused rather than followed. Values go in as
                    // parameters.
                    ("E" | "e", Some(b'\''), _) => {
                        return Err("an E'…' escape string (pass the value as a parameter)");
                    }
                    ("U" | "u", Some(b'&'), Some(&quote)) if quote == b'\'' || quote == b'"' => {
                        on(Token::UnicodeEscaped);
                        i = skip_quoted(bytes, i + 1, quote)?;
                    }
                    _ => on(Token::Word(word)),
                }
            }
            // Digits (numbers), operators, punctuation, whitespace.
            _ => {
                let start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_digit() || (i == start && !word_byte(bytes[i])))
                {
                    i += 1;
                }
                // A number's trailing letters (`1e5`, `0x1F`) are part of it.
                while i < bytes.len()
                    && bytes[i].is_ascii_alphanumeric()
                    && bytes[start].is_ascii_digit()
                {
                    i += 1;
                }
                if i == start {
                    i += 1;
                }
            }
        }
    }
    Ok(())
}

/// The index just past the nested comment opened at `start`.
fn skip_comment(bytes: &[u8], start: usize) -> Result<usize, &'static str> {
    let mut depth = 0usize;
    let mut i = start;
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
                    return Ok(i);
                }
            }
            _ => i += 1,
        }
    }
}

/// The index just past the literal or name opened by `quote` at `start`
/// (a doubled quote is the quote itself).
fn skip_quoted(bytes: &[u8], start: usize, quote: u8) -> Result<usize, &'static str> {
    let mut i = start + 1;
    loop {
        match bytes.get(i) {
            None => return Err("an unterminated quoted string or name"),
            Some(&b) if b == quote => {
                if bytes.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return Ok(i + 1);
                }
            }
            Some(_) => i += 1,
        }
    }
}

/// `statement` with SQLite's `?NNN` and `?` placeholders written as
/// PostgreSQL's `$NNN` (a bare `?` is the next number), outside string
/// literals, quoted names and comments, so one guest runs on either
/// backend. A statement already in `$NNN` form passes unchanged.
pub(crate) fn to_postgres_placeholders(statement: &str) -> Result<String, &'static str> {
    if !statement.contains('?') {
        return Ok(statement.to_string());
    }
    let mut out = String::with_capacity(statement.len() + 8);
    let mut copied = 0;
    let mut next = 1u32;
    scan(statement, |token| {
        if let Token::Placeholder { at, len } = token {
            out.push_str(&statement[copied..at]);
            out.push('$');
            if len > 1 {
                out.push_str(&statement[at + 1..at + len]);
            } else {
                out.push_str(&next.to_string());
                next = next.saturating_add(1);
            }
            copied = at + len;
        }
    })?;
    out.push_str(&statement[copied..]);
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
        // Dollar quoting is passed over as PostgreSQL reads it; escape
        // strings, bytes past ASCII outside strings and text left open
        // are refused.
        assert_eq!(
            to_postgres_placeholders("SELECT $$?$$, $a$ ? $a$, 'é ?', ?").as_deref(),
            Ok("SELECT $$?$$, $a$ ? $a$, 'é ?', $1")
        );
        for unclear in [
            "SELECT 'open ?",
            "SELECT /* ? ",
            "SELECT $x$ ?",
            "SELECT E'\\' ?",
        ] {
            assert!(to_postgres_placeholders(unclear).is_err(), "{unclear}");
        }
    }

    #[test]
    fn t05_t16_server_functions_and_select_into_are_refused() {
        for statement in [
            "SELECT lo_from_bytea(0, $1)",
            "SELECT pg_catalog.LO_CREAT(-1)",
            "SELECT \"lo_from_bytea\"(0, $1)",
            "SELECT U&\"lo\\005ffrom_bytea\"(0, $1)",
            "SELECT lowrite(0, $1)",
            "SELECT pg_advisory_lock(1)",
            "SELECT pg_advisory_xact_lock(1), pg_sleep(8)",
            "SELECT pg_notify('bh_app_dev_deploys', 'x')",
            "SELECT pg_logical_emit_message(false, 'x', 'y')",
            "SELECT statement FROM pg_prepared_statements",
            "SELECT query_to_xml('SELECT lo_creat(-1)', true, true, '')",
            "SELECT word FROM ts_stat('SELECT to_tsvector(lo_creat(-1)::text)')",
            "SELECT ts_rewrite('a'::tsquery, 'SELECT 1')",
            "SELECT set_config('statement_timeout', '0', false)",
            "SELECT setseed(0.42)",
            "SELECT 1 AS a INTO TEMP t",
            "WITH x AS (SELECT 1 AS a) SELECT a AS update INTO TEMP t2 FROM x",
            "SELECT 'x\0'",
            "UPDATE t SET a = lo_unlink(1)",
            // Outside review: PostgreSQL ends `--` at a carriage return.
            "SELECT 1 AS a --\r, lo_creat(-1)::bigint AS x",
            // Third outside review: an escape string continued on the next
            // line, a dollar-quote tag past ASCII, transaction ids.
            "SELECT E'a'\n'\\' AS b, ' AS c, lo_creat(-1)::bigint AS d --'",
            "SELECT $aé$ ' $aé$ AS a, lo_creat(-1)::bigint AS b --'",
            "SELECT txid_current() AS x",
            // Fourth: a column named `insert` or `merge` before INTO, and
            // the rest of the `*_to_xml` family.
            "SELECT 1 AS insert INTO TEMP x",
            "SELECT v AS merge INTO TEMP y FROM t",
            "SELECT g insert INTO TEMP big FROM generate_series(1,2000000) g",
            "WITH x AS (SELECT 1) SELECT (SELECT 1) insert INTO TEMP t FROM x",
            "SELECT table_to_xml('events', true, false, '')::text",
            "SELECT database_to_xml_and_xmlschema(true, false, '')",
            // The price of that rule: an INSERT inside WITH is refused too.
            "WITH d AS (DELETE FROM t RETURNING *) INSERT INTO u SELECT * FROM d",
            // Second review of the revokes: names of roles and tables
            // through casts, settings, databases by a guessed name.
            "SELECT string_agg(g::oid::regrole::text, ',') FROM generate_series(16384, 2000000) g",
            "SELECT g::oid::REGCLASS::text FROM generate_series(1, 99999) g",
            "SELECT 'secrets'::\"regclass\"",
            "SELECT to_regclass('bh_app.secrets')",
            "SELECT current_setting('ssl_cert_file')",
            "SELECT has_database_privilege('postgres', 'CONNECT')",
            "SELECT has_table_privilege('bh_app.secrets', 'SELECT')",
            "SELECT shobj_description(10, 'pg_authid')",
            // Third review: the array types, privilege items, row types.
            "SELECT ARRAY[10::oid]::_regrole::text",
            "SELECT CAST('{postgres}' AS _REGROLE)",
            "SELECT ARRAY[g::oid]::\"_regclass\" FROM generate_series(16384, 45000) g",
            "SELECT regroleout(10::oid)",
            "SELECT acldefault('r', g::oid)::text FROM generate_series(1, 20000) g",
            "SELECT makeaclitem(10, 10, 'SELECT', false)",
            "SELECT format_type(g::oid, NULL) FROM generate_series(16384, 40000) g",
            "SELECT row_security_active('bh_x.y')",
            // Fifth review: privilege views, a partition check's error.
            "SELECT udt_schema, udt_name, grantor FROM information_schema.udt_privileges",
            "SELECT * FROM \"information_schema\".usage_privileges",
            "SELECT satisfies_hash_partition(47253, 2, 0, 1)",
            "SELECT regprocedurein('now()')",
            "SELECT ARRAY[1::oid]::__regtype",
        ] {
            assert!(refused_text(statement).is_some(), "{statement:?}");
        }
        for statement in [
            "SELECT body FROM events WHERE id = $1",
            "SELECT 'lo_from_bytea', \"into\" FROM t -- pg_notify",
            "INSERT INTO events (body) VALUES ($1)",
            "MERGE INTO t USING u ON t.a = u.a WHEN MATCHED THEN DELETE",
            "SELECT $$ into $$, 'it''s into' FROM t",
            "SELECT 1e5, 0x1F, a$b FROM t",
            // Names beside them stay a guest's own.
            "SELECT has_children, region, registry, regress, version(), description, 'regclass' FROM t",
            "SELECT id FROM t WHERE to_tsvector('english'::regconfig, body) @@ plainto_tsquery($1)",
            "SELECT regtype_id, _regclass_code, \"regtypes\", regprocessed FROM t",
        ] {
            assert_eq!(refused_text(statement), None, "{statement}");
        }
        // A `?` written as `$1` must not join a name: `x?$a$` would be the
        // identifier `x$1$a$` to PostgreSQL, and `$a$…$a$` no string.
        for joined in [
            "SELECT 1 AS x?$a$, lo_creat(-1) AS y, $a$ AS z --$a$",
            "SELECT a? FROM t",
            "SELECT ?a FROM t",
        ] {
            assert!(to_postgres_placeholders(joined).is_err(), "{joined}");
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
