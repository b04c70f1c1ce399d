//! `input.*`: the allowlist a request must satisfy before its function runs
//! (T10). Patterns and the body schema are compiled here, once, when the
//! manifest loads, so `bulkhead check` reports a bad one with its file and
//! line and the gateway never compiles anything per request.

use std::fmt;
use std::ops::Range;
use std::path::{Component as PathPart, Path, PathBuf};
use std::sync::{Arc, LazyLock};

use toml::Spanned;

use crate::problem::Collector;
use crate::raw::{RawInput, RawParam};
use crate::route::RoutePattern;

/// The pattern every parameter gets unless the manifest declares one.
pub const DEFAULT_PATTERN: &str = "[A-Za-z0-9]+";

/// The pattern a route's `{*wildcard}` gets unless the manifest declares
/// one. It matches the whole tail, its decoded segments joined by `/`:
/// one or more segments of unreserved characters (T10).
pub const DEFAULT_TAIL_PATTERN: &str = "[A-Za-z0-9._~-]+(?:/[A-Za-z0-9._~-]+)*";

/// Client headers every function sees; `input.headers` adds to these. All
/// other client headers are dropped before the call.
pub const DEFAULT_HEADERS: &[&str] = &["accept", "accept-language", "content-type", "user-agent"];

/// Headers that describe one hop's connection, not the request: never
/// forwarded to a function or back to a client, never let through.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// Besides [`HOP_BY_HOP`] and `bulkhead-*`: what the gateway itself sets.
const GATEWAY_HEADERS: &[&str] = &["host", "traceparent"];

/// Compiled size caps: a pattern or schema regex cannot grow without bound.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;
const SCHEMA_FILE_LIMIT: u64 = 1 << 20;
const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// A fully anchored regular expression (`^(?:…)$`), linear time (the `regex`
/// crate: no backtracking, no look-around).
#[derive(Clone)]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        let regex = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(PATTERN_SIZE_LIMIT)
            .dfa_size_limit(PATTERN_SIZE_LIMIT)
            .build()?;
        Ok(Self {
            source: source.to_string(),
            regex,
        })
    }

    /// True when the whole of `value` matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }

    /// The pattern as written (without the anchors added here).
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern(^(?:{})$)", self.source)
    }
}

/// A declared path or query parameter.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub pattern: Pattern,
}

/// A JSON Schema (draft 2020-12) compiled once at load.
#[derive(Clone)]
pub struct BodySchema {
    /// The schema file, inside the app directory.
    pub path: PathBuf,
    validator: Arc<jsonschema::Validator>,
}

impl BodySchema {
    pub fn validator(&self) -> &jsonschema::Validator {
        &self.validator
    }

    /// Compile `schema` (already parsed) exactly as the manifest does: draft
    /// 2020-12, offline (no `$ref` is ever fetched), linear-time `pattern`,
    /// `format` asserted.
    pub fn compile(path: PathBuf, schema: &serde_json::Value) -> Result<Self, String> {
        if let Some(declared) = schema.get("$schema")
            && declared.as_str().map(|s| s.trim_end_matches('#')) != Some(DRAFT_2020_12)
        {
            return Err(format!(
                "`$schema` must be `{DRAFT_2020_12}` (draft 2020-12) or left out"
            ));
        }
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .offline()
            .with_pattern_options(
                jsonschema::PatternOptions::regex()
                    .size_limit(PATTERN_SIZE_LIMIT)
                    .dfa_size_limit(PATTERN_SIZE_LIMIT),
            )
            .should_validate_formats(true)
            .build(schema)
            .map_err(|e| {
                let at = e.schema_path().as_str();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{e} (at `{at}`)")
                }
            })?;
        Ok(Self {
            path,
            validator: Arc::new(validator),
        })
    }
}

impl fmt::Debug for BodySchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodySchema")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What a well-formed request to one function looks like (T10).
#[derive(Debug, Clone)]
pub struct Input {
    /// One per `{param}` (and the `{*wildcard}`) of the route, in route
    /// order; the wildcard's matches its whole tail.
    pub path: Vec<Param>,
    /// Declared query parameters, sorted by name; each is optional.
    pub query: Vec<Param>,
    /// Undeclared query parameters are refused unless this is set.
    pub allow_unknown_query: bool,
    /// Client headers the function sees, lowercase: [`DEFAULT_HEADERS`]
    /// plus `input.headers`.
    pub headers: Vec<String>,
    /// Media types a body may have (lowercase `type/subtype`); `None`: any.
    pub content_types: Option<Vec<String>>,
    pub body_schema: Option<BodySchema>,
}

impl Input {
    /// What a function that declares nothing gets.
    pub fn for_route(route: &RoutePattern) -> Self {
        Self {
            path: route
                .params()
                .map(|name| default_param(name, route.wildcard() == Some(name)))
                .collect(),
            query: Vec::new(),
            allow_unknown_query: false,
            headers: DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect(),
            content_types: None,
            body_schema: None,
        }
    }
}

/// Compiled once; constants that compile (a unit test below proves it).
static DEFAULT: LazyLock<Pattern> =
    LazyLock::new(|| Pattern::new(DEFAULT_PATTERN).expect("the default pattern compiles"));
static DEFAULT_TAIL: LazyLock<Pattern> = LazyLock::new(|| {
    Pattern::new(DEFAULT_TAIL_PATTERN).expect("the default tail pattern compiles")
});

fn default_param(name: &str, wildcard: bool) -> Param {
    Param {
        name: name.to_string(),
        pattern: Pattern::clone(if wildcard { &DEFAULT_TAIL } else { &DEFAULT }),
    }
}

/// Validate `input.*` of function `function` against its route; every
/// problem goes to `out`.
pub(crate) fn resolve(
    out: &mut Collector<'_>,
    app_dir: &Path,
    function: &str,
    route: Option<&RoutePattern>,
    raw: &RawInput,
) -> Option<Input> {
    let before = out.problems.len();
    let route_params: Vec<&str> = route.map(|r| r.params().collect()).unwrap_or_default();
    let wildcard = route.and_then(RoutePattern::wildcard);

    for (name, param) in &raw.path {
        if route.is_some() && !route_params.contains(&name.as_str()) {
            out.at(
                Some(param.span()),
                format!(
                    "function `{function}`: `input.path.{name}` names no parameter of the route; the route has {}",
                    if route_params.is_empty() {
                        "none".to_string()
                    } else {
                        route_params
                            .iter()
                            .map(|p| if wildcard == Some(*p) {
                                format!("`{{*{p}}}`")
                            } else {
                                format!("`{{{p}}}`")
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            );
        }
    }
    let path = route_params
        .iter()
        .filter_map(|name| {
            let is_wildcard = wildcard == Some(*name);
            let default = if is_wildcard {
                DEFAULT_TAIL_PATTERN
            } else {
                DEFAULT_PATTERN
            };
            match raw.path.get(*name) {
                Some(param) => {
                    param_pattern(out, function, "path", name, param, default).map(|pattern| {
                        Param {
                            name: name.to_string(),
                            pattern,
                        }
                    })
                }
                None => Some(default_param(name, is_wildcard)),
            }
        })
        .collect();

    let mut query = Vec::new();
    for (name, param) in &raw.query {
        if !valid_query_name(name) {
            out.at(
                Some(param.span()),
                format!("function `{function}`: query parameter name `{name}` must be 1 to 64 letters, digits, `_`, `-` or `.`"),
            );
            continue;
        }
        if let Some(pattern) = param_pattern(out, function, "query", name, param, DEFAULT_PATTERN) {
            query.push(Param {
                name: name.clone(),
                pattern,
            });
        }
    }

    let headers = headers(out, function, &raw.headers);
    let body_schema = raw
        .body_schema
        .as_ref()
        .and_then(|file| body_schema(out, app_dir, function, file));
    let content_types = content_types(out, function, raw, raw.body_schema.is_some());

    (out.problems.len() == before).then(|| Input {
        path,
        query,
        allow_unknown_query: raw.allow_unknown_query.unwrap_or(false),
        headers,
        content_types,
        body_schema,
    })
}

fn param_pattern(
    out: &mut Collector<'_>,
    function: &str,
    kind: &str,
    name: &str,
    param: &Spanned<RawParam>,
    default: &str,
) -> Option<Pattern> {
    let source = match param.get_ref() {
        RawParam::Pattern(source) => source.as_str(),
        RawParam::Declared(true) => default,
        RawParam::Declared(false) => {
            out.at(
                Some(param.span()),
                format!("function `{function}`: `input.{kind}.{name}` takes a pattern, or `true` for the default `{default}`; to refuse the parameter, leave it out"),
            );
            return None;
        }
    };
    if source.is_empty() {
        out.at(
            Some(param.span()),
            format!("function `{function}`: `input.{kind}.{name}` is an empty pattern; write one like `[a-z0-9-]{{1,32}}`"),
        );
        return None;
    }
    Pattern::new(source)
        .map_err(|e| {
            let why = e.to_string();
            let why = why.lines().last().unwrap_or_default().trim();
            out.at(
                Some(param.span()),
                format!("function `{function}`: `input.{kind}.{name}` is not a valid pattern ({why}); patterns use the `regex` crate's syntax, are always fully anchored, and have no look-around or backreferences"),
            );
        })
        .ok()
}

fn valid_query_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn headers(out: &mut Collector<'_>, function: &str, raw: &[Spanned<String>]) -> Vec<String> {
    let mut headers: Vec<String> = DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect();
    for entry in raw {
        let name = entry.get_ref().to_ascii_lowercase();
        let token = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            out.at(
                Some(entry.span()),
                format!(
                    "function `{function}`: `{}` is not a header name",
                    entry.get_ref()
                ),
            );
        } else if HOP_BY_HOP.contains(&name.as_str())
            || GATEWAY_HEADERS.contains(&name.as_str())
            || name.starts_with("bulkhead-")
        {
            out.at(
                Some(entry.span()),
                format!("function `{function}`: header `{name}` is set by the gateway or describes the connection; it cannot be let through"),
            );
        } else if !headers.contains(&name) {
            headers.push(name);
        }
    }
    headers
}

/// A JSON media type: any type whose subtype is `json` or `x-json`
/// (`application/json`, `text/json`, `application/x-json`…) or ends in
/// `+json`. Every spelling a guest's parser may read as JSON counts, so
/// none of them skips strict JSON (T10).
pub fn is_json_media_type(media_type: &str) -> bool {
    media_type
        .split_once('/')
        .is_some_and(|(_, sub)| sub == "json" || sub == "x-json" || sub.ends_with("+json"))
}

/// `type/subtype`, lowercase tokens, no parameters or wildcards.
fn valid_media_type(text: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$&-^_.+".contains(&b))
    };
    text.split_once('/')
        .is_some_and(|(t, s)| token(t) && token(s))
}

fn content_types(
    out: &mut Collector<'_>,
    function: &str,
    raw: &RawInput,
    has_schema: bool,
) -> Option<Vec<String>> {
    let Some(list) = &raw.content_types else {
        return has_schema.then(|| vec!["application/json".to_string()]);
    };
    if list.get_ref().is_empty() {
        out.at(
            Some(list.span()),
            format!("function `{function}`: `input.content_types` is empty; list the media types bodies may have, like [\"application/json\"]"),
        );
    }
    let mut types = Vec::new();
    for entry in list.get_ref() {
        let text = entry.get_ref();
        if !valid_media_type(text) {
            out.at(
                Some(entry.span()),
                format!("function `{function}`: `{text}` is not a media type; write `type/subtype` in lowercase without parameters, like `application/json`"),
            );
        } else if has_schema && !is_json_media_type(text) {
            out.at(
                Some(entry.span()),
                format!("function `{function}`: `{text}` is not JSON, but `input.body_schema` makes every body JSON; use `application/json` or a `+json` type"),
            );
        } else if !types.contains(text) {
            types.push(text.clone());
        }
    }
    Some(types)
}

fn body_schema(
    out: &mut Collector<'_>,
    app_dir: &Path,
    function: &str,
    file: &Spanned<String>,
) -> Option<BodySchema> {
    let relative = Path::new(file.get_ref());
    if relative.is_absolute()
        || relative
            .components()
            .any(|p| matches!(p, PathPart::ParentDir))
    {
        out.at(
            Some(file.span()),
            format!("function `{function}`: `input.body_schema` must be a path inside the app directory, without `..`"),
        );
        return None;
    }
    let path = app_dir.join(relative);
    let text = match read_schema(&path) {
        Ok(text) => text,
        Err(why) => {
            out.at(
                Some(file.span()),
                format!("function `{function}`: `input.body_schema` {why}"),
            );
            return None;
        }
    };
    let schema: serde_json::Value = match serde_json::from_str(&text) {
        Ok(schema) => schema,
        Err(e) => {
            out.in_file(
                &path,
                Some((e.line(), e.column())),
                format!("function `{function}`: the body schema is not valid JSON ({e})"),
            );
            return None;
        }
    };
    BodySchema::compile(path.clone(), &schema)
        .map_err(|why| {
            out.in_file(
                &path,
                None,
                format!("function `{function}`: the body schema does not compile: {why}; it is read as JSON Schema draft 2020-12, and no `$ref` outside the file is ever fetched"),
            );
        })
        .ok()
}

fn read_schema(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("file `{}` cannot be read ({e})", path.display()))?;
    if !meta.is_file() || meta.len() > SCHEMA_FILE_LIMIT {
        return Err(format!(
            "file `{}` must be a regular file of at most {SCHEMA_FILE_LIMIT} bytes",
            path.display()
        ));
    }
    // Bounded (T18, T05): the file checked above is the one read.
    crate::files::read_bounded_text(path, SCHEMA_FILE_LIMIT).map_err(|e| {
        format!(
            "file `{}` cannot be read as UTF-8 text ({e})",
            path.display()
        )
    })
}

/// The byte span of `input.max_body` or `max_request_body`, whichever is
/// set; both at once is a problem.
pub(crate) fn max_body<T: Copy>(
    out: &mut Collector<'_>,
    function: &str,
    input: &Option<Spanned<T>>,
    alias: &Option<Spanned<T>>,
) -> Option<(T, Range<usize>)> {
    match (input, alias) {
        (Some(a), Some(_)) => {
            out.at(
                Some(a.span()),
                format!("function `{function}`: `input.max_body` and `max_request_body` are the same limit; set only `input.max_body`"),
            );
            None
        }
        (Some(v), None) | (None, Some(v)) => Some((*v.get_ref(), v.span())),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_fully_anchored() {
        let p = Pattern::new("[a-z]+").unwrap();
        assert!(p.is_match("abc"));
        assert!(!p.is_match("abc1") && !p.is_match("1abc") && !p.is_match(""));
        let alt = Pattern::new("a|b").unwrap();
        assert!(alt.is_match("a") && !alt.is_match("ab") && !alt.is_match("xb"));
        let multiline = Pattern::new("(?m)a$").unwrap();
        assert!(!multiline.is_match("a\nb"));
        assert!(Pattern::new(DEFAULT_PATTERN).is_ok());
        let tail = Pattern::new(DEFAULT_TAIL_PATTERN).unwrap();
        for ok in ["a", "users/42", "v1.2/a_b/c~d-e", "..x/.y"] {
            assert!(tail.is_match(ok), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", "a b", "a/%2e", "caf\u{e9}", "a/b?c"] {
            assert!(!tail.is_match(bad), "{bad}");
        }
        assert!(Pattern::new("(?=a)").is_err(), "no look-around");
        assert!(Pattern::new("a{1000}{1000}").is_err(), "size limit");
    }

    #[test]
    fn media_types() {
        assert!(is_json_media_type("application/json"));
        assert!(is_json_media_type("application/problem+json"));
        assert!(!is_json_media_type("text/plain"));
        assert!(is_json_media_type("text/json"));
        assert!(is_json_media_type("application/x-json"));
        assert!(!is_json_media_type("application/jsonx"));
        assert!(valid_media_type("text/plain"));
        for bad in [
            "text",
            "*/*",
            "Text/Plain",
            "text/plain; charset=utf-8",
            "/x",
        ] {
            assert!(!valid_media_type(bad), "{bad}");
        }
    }
}
