//! Validation stage (T10, and T06/T07 in depth): a request that is not
//! perfectly formed is refused before any function is instantiated.
//!
//! `Host` and the target's authority are checked first ([`check_host`]), the
//! path is decoded once and checked before routing ([`decode_path`]);
//! then, per function, [`Rules`] (compiled once from the manifest's `input`)
//! checks path parameters, the query string, framing headers and the
//! content type before the body is read ([`Rules::check_head`]), and the
//! body after ([`Rules::check_body`]): strict JSON first, then the schema.
//! Refusals name the field and the rule that failed, never the value.

mod host;
mod json;
mod uri;

#[cfg(test)]
mod tests;

use std::fmt;

use bulkhead_manifest::input::is_json_media_type;
use bulkhead_manifest::{BodySchema, Input, Param};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, StatusCode, header};

use crate::problem::Problem;

pub use host::check_host;
pub use json::{MAX_DEPTH, MAX_NUMBER, MAX_VALUES};
pub use uri::{MAX_QUERY_PAIRS, decode_path};

/// Why a request was refused: a stable name, shown as the problem's `rule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    // Encoding of a path segment or query component.
    NotOriginForm,
    RawCharacter,
    BadEscape,
    InvalidUtf8,
    ControlCharacter,
    InvisibleCharacter,
    // Path structure.
    EmptySegment,
    DotSegment,
    EncodedSlash,
    DoubleEncoding,
    // Parameters.
    Pattern,
    Repeated,
    EmptyParameter,
    TooMany,
    Undeclared,
    // Host (RFC 9112 §3.2).
    MissingHost,
    InvalidHost,
    HostMismatch,
    HostNotAllowed,
    // Framing headers.
    BothFramings,
    OnlyChunked,
    // Content type.
    MissingMediaType,
    MalformedMediaType,
    MediaTypeNotAllowed,
    Charset,
    // Body.
    MissingBody,
    JsonSyntax,
    Depth,
    TooManyValues,
    NumberMagnitude,
    DuplicateKey,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::NotOriginForm => "origin-form",
            Rule::RawCharacter => "raw-character",
            Rule::BadEscape => "bad-escape",
            Rule::InvalidUtf8 => "invalid-utf8",
            Rule::ControlCharacter => "control-character",
            Rule::InvisibleCharacter => "invisible-character",
            Rule::EmptySegment => "empty-segment",
            Rule::DotSegment => "dot-segment",
            Rule::EncodedSlash => "encoded-slash",
            Rule::DoubleEncoding => "double-encoding",
            Rule::Pattern => "pattern",
            Rule::Repeated => "repeated",
            Rule::EmptyParameter => "empty-parameter",
            Rule::TooMany => "too-many",
            Rule::Undeclared => "undeclared",
            Rule::MissingHost => "missing",
            Rule::InvalidHost => "invalid",
            Rule::HostMismatch => "mismatch",
            Rule::HostNotAllowed => "not-allowed",
            Rule::BothFramings => "both-framings",
            Rule::OnlyChunked => "only-chunked",
            Rule::MissingMediaType => "missing",
            Rule::MalformedMediaType => "malformed",
            Rule::MediaTypeNotAllowed => "not-allowed",
            Rule::Charset => "charset",
            Rule::MissingBody => "missing",
            Rule::JsonSyntax => "json-syntax",
            Rule::Depth => "depth",
            Rule::TooManyValues => "too-many-values",
            Rule::NumberMagnitude => "number-magnitude",
            Rule::DuplicateKey => "duplicate-key",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which part of the request failed; decides status and problem type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Host,
    Path,
    Parameter,
    UnknownParameter,
    Header,
    MediaType,
    Body,
}

/// A refusal: the part, the field (a name from the manifest or the schema,
/// or a fixed word: never request data) and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct Refusal {
    pub part: Part,
    pub field: String,
    /// A [`Rule`] name, or a JSON Schema keyword for schema failures.
    pub rule: String,
}

impl Refusal {
    fn new(part: Part, field: impl Into<String>, rule: Rule) -> Self {
        Self {
            part,
            field: field.into(),
            rule: rule.as_str().to_string(),
        }
    }

    /// A refusal of the request path itself, before routing.
    pub fn path(rule: Rule) -> Self {
        Self::new(Part::Path, "path", rule)
    }

    /// The RFC 9457 problem for this refusal.
    pub fn to_problem(&self) -> Problem {
        use StatusCode as S;
        let (field, rule) = (&self.field, &self.rule);
        let breaks = format!("`{field}` breaks the `{rule}` rule.");
        let (status, slug, title, detail) = match self.part {
            Part::Host => (
                S::BAD_REQUEST,
                "invalid-host",
                "Invalid host",
                format!(
                    "The request's host breaks the `{rule}` rule; an HTTP/1.1 request names one valid host this service answers to, in one `Host` header that agrees with the request target."
                ),
            ),
            Part::Path => (
                S::BAD_REQUEST,
                "invalid-path",
                "Malformed path",
                format!(
                    "The request path breaks the `{rule}` rule; paths are decoded once and refused, never rewritten."
                ),
            ),
            Part::Parameter => (
                S::BAD_REQUEST,
                "invalid-parameter",
                "Invalid parameter",
                breaks,
            ),
            Part::UnknownParameter => (
                S::BAD_REQUEST,
                "unknown-parameter",
                "Unknown parameter",
                "The query string has a parameter this function does not declare.".to_string(),
            ),
            Part::Header => (S::BAD_REQUEST, "invalid-header", "Invalid header", breaks),
            Part::MediaType => (
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                format!(
                    "The body's media type breaks the `{rule}` rule; this function accepts only the media types it declares."
                ),
            ),
            Part::Body => (S::BAD_REQUEST, "invalid-body", "Invalid body", breaks),
        };
        // The body may be unread and the framing may be the attack: no
        // byte after a refused request is ever read as another one.
        Problem::new(status, slug, title, detail)
            .field(field, rule)
            .close_connection()
    }
}

/// One function's input rules, compiled once when the gateway starts.
pub struct Rules {
    path: Vec<Param>,
    query: Vec<Param>,
    allow_unknown_query: bool,
    headers: Vec<HeaderName>,
    content_types: Option<Vec<String>>,
    schema: Option<BodySchema>,
}

impl Rules {
    pub fn new(input: &Input) -> Self {
        let mut query = input.query.clone();
        query.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            path: input.path.clone(),
            query,
            allow_unknown_query: input.allow_unknown_query,
            headers: input
                .headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            content_types: input.content_types.clone(),
            schema: input.body_schema.clone(),
        }
    }

    /// Whether the function sees this client header.
    pub fn lets_through(&self, name: &HeaderName) -> bool {
        self.headers.contains(name)
    }

    /// Everything that can be checked before the body is read: route
    /// parameters (already decoded, in route order; a wildcard's tail
    /// joined by `/`), the raw query string, framing and the content type.
    pub fn check_head(
        &self,
        params: &[(&str, impl AsRef<str>)],
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        for (name, value) in params {
            if let Some(param) = self.path.iter().find(|p| p.name == *name)
                && !param.pattern.is_match(value.as_ref())
            {
                return Err(Refusal::new(
                    Part::Parameter,
                    format!("path.{}", param.name),
                    Rule::Pattern,
                ));
            }
        }
        self.check_query(query.unwrap_or(""))?;
        let has_body = check_framing(headers)?;
        // A `Content-Type` is exactly one well-formed media type, body or
        // not: one that parsers read differently is refused, not guessed at.
        let media = media_type(headers)?;
        if has_body {
            if let Some(allowed) = &self.content_types {
                check_media_type(media.as_ref(), allowed)?;
            }
            check_json_charset(media.as_ref())?;
        }
        Ok(())
    }

    fn check_query(&self, raw: &str) -> Result<(), Refusal> {
        let pairs =
            uri::query_pairs(raw).map_err(|rule| Refusal::new(Part::Parameter, "query", rule))?;
        let mut seen: Vec<&str> = Vec::new();
        for pair in pairs {
            let name = pair
                .name
                .map_err(|rule| Refusal::new(Part::Parameter, "query", rule))?;
            let declared = self
                .query
                .binary_search_by(|p| p.name.as_str().cmp(&name))
                .ok()
                .and_then(|i| self.query.get(i));
            let Some(param) = declared else {
                if self.allow_unknown_query {
                    pair.value
                        .map_err(|rule| Refusal::new(Part::Parameter, "query", rule))?;
                    continue;
                }
                return Err(Refusal::new(
                    Part::UnknownParameter,
                    "query",
                    Rule::Undeclared,
                ));
            };
            // From here on the field is named by the manifest's spelling.
            let field = || format!("query.{}", param.name);
            let value = pair
                .value
                .map_err(|rule| Refusal::new(Part::Parameter, field(), rule))?;
            // One value per name: `a=1&a=2` means different things to
            // different frameworks (parameter pollution).
            if seen.contains(&param.name.as_str()) {
                return Err(Refusal::new(Part::Parameter, field(), Rule::Repeated));
            }
            seen.push(&param.name);
            if !param.pattern.is_match(&value) {
                return Err(Refusal::new(Part::Parameter, field(), Rule::Pattern));
            }
        }
        Ok(())
    }

    /// The body, once read: a JSON body must be strict JSON; with a schema,
    /// every body must be and must match it.
    pub fn check_body(
        &self,
        method: &Method,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<(), Refusal> {
        if body.is_empty() {
            let needs_body = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
            if self.schema.is_some() && needs_body {
                return Err(Refusal::new(Part::Body, "body", Rule::MissingBody));
            }
            return Ok(());
        }
        // JSON or not is decided by type and subtype alone (T10).
        let media = media_type(headers)?;
        check_json_charset(media.as_ref())?;
        let says_json = media.is_some_and(|m| is_json_media_type(&m.essence));
        if !says_json && self.schema.is_none() {
            return Ok(());
        }
        let value = json::parse(body).map_err(|rule| Refusal::new(Part::Body, "body", rule))?;
        if let Some(schema) = &self.schema
            && let Err(error) = schema.validator().validate(&value)
        {
            return Err(Refusal {
                part: Part::Body,
                field: schema_field(&error),
                rule: error.kind().keyword().to_string(),
            });
        }
        Ok(())
    }
}

/// Framing must be unambiguous (request smuggling, T10). A body comes with
/// one `Content-Length`, or with `Transfer-Encoding: chunked` and nothing
/// else (issue 12): one header line, the one coding, so a coding the
/// gateway would pass on undecoded (`gzip, chunked`) or one applied twice
/// is refused. Both framings at once are refused when seen, but hyper reads
/// such a request as chunked and drops the `Content-Length` before the
/// gateway sees it (RFC 9112 §6.1 allows this); it then closes the
/// connection after answering, so nothing after the body is ever read as a
/// request. HTTP/1.0 with `Transfer-Encoding` never gets here: hyper refuses
/// it (400). Returns whether a body is announced.
fn check_framing(headers: &HeaderMap) -> Result<bool, Refusal> {
    for name in [
        header::CONTENT_LENGTH,
        header::CONTENT_TYPE,
        header::TRANSFER_ENCODING,
    ] {
        if headers.get_all(&name).iter().count() > 1 {
            return Err(Refusal::new(
                Part::Header,
                format!("header.{name}"),
                Rule::Repeated,
            ));
        }
    }
    if let Some(coding) = headers.get(header::TRANSFER_ENCODING) {
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err(Refusal::new(
                Part::Header,
                "header.transfer-encoding",
                Rule::BothFramings,
            ));
        }
        if !coding.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(Refusal::new(
                Part::Header,
                "header.transfer-encoding",
                Rule::OnlyChunked,
            ));
        }
        return Ok(true);
    }
    Ok(declared_length(headers).is_some_and(|n| n > 0))
}

/// The body length a request declares, if it declares a readable one.
pub(crate) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A parsed `Content-Type`: the lowercase `type/subtype` and its charset.
#[derive(Debug, PartialEq, Eq)]
struct MediaType {
    essence: String,
    charset: Option<String>,
}

fn malformed_media_type() -> Refusal {
    Refusal::new(
        Part::MediaType,
        "header.content-type",
        Rule::MalformedMediaType,
    )
}

/// The request's media type: `None` without a `Content-Type`, a refusal
/// when it is not exactly one media type ([`parse_media_type`]).
fn media_type(headers: &HeaderMap) -> Result<Option<MediaType>, Refusal> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| malformed_media_type())?;
    parse_media_type(text)
        .map(Some)
        .ok_or_else(malformed_media_type)
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// One media type by RFC 9110 §8.3.1, strictly:
/// `token "/" token *( OWS ";" OWS token "=" ( token / quoted-string ) )`.
/// RFC 9110 §5.6.6 also lets a parameter be left out (`type/sub;`); that,
/// a parameter without a value, a list (`a/b, c/d`) and a repeated
/// parameter name are refused here: each is read differently by different
/// parsers, and one that gives up on the header may skip strict JSON.
fn parse_media_type(text: &str) -> Option<MediaType> {
    let bytes = text.trim_matches([' ', '\t']).as_bytes();
    let mut at = 0;
    let token = |at: &mut usize| -> Option<String> {
        let start = *at;
        while bytes.get(*at).copied().is_some_and(is_token_byte) {
            *at += 1;
        }
        let token = bytes.get(start..*at).filter(|t| !t.is_empty())?;
        Some(String::from_utf8_lossy(token).to_ascii_lowercase())
    };
    let ows = |at: &mut usize| {
        while matches!(bytes.get(*at), Some(b' ' | b'\t')) {
            *at += 1;
        }
    };
    let kind = token(&mut at)?;
    (bytes.get(at) == Some(&b'/')).then_some(())?;
    at += 1;
    let subtype = token(&mut at)?;
    // A body has one type, never a range (`*/*`, `application/*`).
    if kind.contains('*') || subtype.contains('*') {
        return None;
    }
    let mut names: Vec<String> = Vec::new();
    let mut charset = None;
    loop {
        ows(&mut at);
        match bytes.get(at) {
            None => break,
            Some(b';') => at += 1,
            Some(_) => return None,
        }
        ows(&mut at);
        let name = token(&mut at)?;
        (bytes.get(at) == Some(&b'=')).then_some(())?;
        at += 1;
        let value = if bytes.get(at) == Some(&b'"') {
            at += 1;
            let mut value = Vec::new();
            loop {
                match *bytes.get(at)? {
                    b'"' => break,
                    b'\\' => {
                        at += 1;
                        let escaped = *bytes.get(at)?;
                        (escaped == b'\t' || (b' '..=b'~').contains(&escaped)).then_some(())?;
                        value.push(escaped);
                    }
                    b if b == b'\t' || (b' '..=b'~').contains(&b) => value.push(b),
                    _ => return None,
                }
                at += 1;
            }
            at += 1;
            String::from_utf8_lossy(&value).into_owned()
        } else {
            token(&mut at)?
        };
        if names.contains(&name) {
            return None;
        }
        if name == "charset" {
            charset = Some(value.to_ascii_lowercase());
        }
        names.push(name);
    }
    Some(MediaType {
        essence: format!("{kind}/{subtype}"),
        charset,
    })
}

fn check_media_type(media: Option<&MediaType>, allowed: &[String]) -> Result<(), Refusal> {
    let refuse = |rule| Refusal::new(Part::MediaType, "header.content-type", rule);
    let media = media.ok_or_else(|| refuse(Rule::MissingMediaType))?;
    if !allowed.contains(&media.essence) {
        return Err(refuse(Rule::MediaTypeNotAllowed));
    }
    Ok(())
}

/// JSON is UTF-8 (RFC 8259 §8.1); any other declared charset is a lie or a
/// trap: a guest decoding the body by it reads other text than the gateway
/// checked (T10). Refused for every JSON body, whatever the function
/// declares.
fn check_json_charset(media: Option<&MediaType>) -> Result<(), Refusal> {
    if let Some(media) = media
        && is_json_media_type(&media.essence)
        && media.charset.as_deref().is_some_and(|c| c != "utf-8")
    {
        return Err(Refusal::new(
            Part::MediaType,
            "header.content-type",
            Rule::Charset,
        ));
    }
    Ok(())
}

/// The field a schema failure is about, named only from the schema:
/// `body`, then each `properties` name and `[]` for array items along the
/// evaluation path, then the missing name for `required`.
fn schema_field(error: &jsonschema::ValidationError<'_>) -> String {
    let mut field = String::from("body");
    let path = error.evaluation_path().as_str();
    let mut tokens = path.split('/').skip(1);
    while let Some(token) = tokens.next() {
        match token {
            "properties" => {
                if let Some(name) = tokens.next() {
                    field.push('.');
                    field.push_str(&name.replace("~1", "/").replace("~0", "~"));
                }
            }
            "items" => field.push_str("[]"),
            "prefixItems" => {
                if let Some(index) = tokens.next() {
                    field.push_str(&format!("[{index}]"));
                }
            }
            _ => {}
        }
    }
    if let jsonschema::error::ValidationErrorKind::Required { property } = error.kind()
        && let Some(name) = property.as_str()
    {
        field.push('.');
        field.push_str(name);
    }
    field
}
