//! Route patterns: `/register/{handle}`, `/api/{*rest}`. A pattern is a
//! sequence of literal segments and named parameters, optionally ending in
//! one wildcard. Without a wildcard it matches a path with exactly as many
//! segments; a trailing `{*name}` takes one or more further segments (never
//! zero: `/api` is not under `/api/{*rest}`). Literal segments are
//! restricted to RFC 3986 unreserved characters so a route can never be
//! ambiguous once a path is decoded (T10).

use std::borrow::Cow;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    Literal(String),
    Param(String),
    /// `{*name}`: the rest of the path, one or more segments; always last.
    Wildcard(String),
}

/// A segment with its name blanked: two routes with the same shape match
/// exactly the same paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape<'a> {
    Literal(&'a str),
    Param,
    Wildcard,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    text: String,
    segments: Vec<Segment>,
}

impl RoutePattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text.strip_prefix('/').ok_or_else(|| {
            format!("route `{text}` must start with `/`, like `/hello` or `/users/{{id}}`")
        })?;
        let mut segments = Vec::new();
        if !rest.is_empty() {
            for raw in rest.split('/') {
                if let Some(Segment::Wildcard(name)) = segments.last() {
                    let before = text
                        .split_once(&format!("{{*{name}}}"))
                        .map_or("", |(b, _)| b);
                    return Err(format!(
                        "route `{text}`: the wildcard `{{*{name}}}` must be the last segment, since it takes the rest of the path; write `{before}{{*{name}}}` and let the function route what follows"
                    ));
                }
                segments.push(parse_segment(text, raw)?);
            }
        }
        let mut names: Vec<&str> = segments.iter().filter_map(Segment::name).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!(
                "route `{text}` names the parameter `{}` twice; give each one its own name",
                pair[0]
            ));
        }
        Ok(Self {
            text: text.to_string(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Names of the `{param}` segments and the wildcard, in order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(Segment::name)
    }

    /// The name of the trailing `{*name}`, if the route has one.
    pub fn wildcard(&self) -> Option<&str> {
        match self.segments.last() {
            Some(Segment::Wildcard(name)) => Some(name),
            _ => None,
        }
    }

    /// The pattern with every name blanked: two routes with the same shape
    /// match exactly the same paths.
    pub fn shape(&self) -> Vec<Shape<'_>> {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => Shape::Literal(l),
                Segment::Param(_) => Shape::Param,
                Segment::Wildcard(_) => Shape::Wildcard,
            })
            .collect()
    }

    /// Whether `other` has this route's shape (see [`Self::shape`]),
    /// without building either.
    pub fn same_shape(&self, other: &RoutePattern) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|pair| match pair {
                    (Segment::Literal(a), Segment::Literal(b)) => a == b,
                    (Segment::Param(_), Segment::Param(_))
                    | (Segment::Wildcard(_), Segment::Wildcard(_)) => true,
                    _ => false,
                })
    }

    /// Match already split (and decoded) path segments; returns the
    /// parameter values. A wildcard's value is its segments joined by `/`:
    /// unambiguous, since a decoded segment never holds a `/` (T10).
    pub fn matches<'p>(&self, path: &[&'p str]) -> Option<Vec<(&str, Cow<'p, str>)>> {
        let fixed = match self.wildcard() {
            Some(_) if path.len() < self.segments.len() => return None,
            Some(_) => self.segments.len() - 1,
            None if path.len() != self.segments.len() => return None,
            None => path.len(),
        };
        let (head, tail) = path.split_at(fixed);
        let mut params = Vec::new();
        for (segment, value) in self.segments.iter().zip(head) {
            match segment {
                Segment::Literal(l) if l == value => {}
                Segment::Literal(_) => return None,
                // An empty segment (`/users/`) is not a value.
                Segment::Param(_) if value.is_empty() => return None,
                Segment::Param(name) => params.push((name.as_str(), Cow::Borrowed(*value))),
                Segment::Wildcard(_) => return None,
            }
        }
        if let Some(name) = self.wildcard() {
            if tail.iter().any(|s| s.is_empty()) {
                return None;
            }
            let value = match tail {
                [one] => Cow::Borrowed(*one),
                _ => Cow::Owned(tail.join("/")),
            };
            params.push((name, value));
        }
        Some(params)
    }

    /// The order routes are tried in, highest first: compared segment by
    /// segment from the left, a literal beats a `{param}`, which beats a
    /// `{*wildcard}`; so the longer literal prefix wins.
    pub fn specificity(&self) -> Vec<u8> {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => 2,
                Segment::Param(_) => 1,
                Segment::Wildcard(_) => 0,
            })
            .collect()
    }
}

impl Segment {
    fn name(&self) -> Option<&str> {
        match self {
            Segment::Param(name) | Segment::Wildcard(name) => Some(name),
            Segment::Literal(_) => None,
        }
    }
}

impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A parameter name: lowercase ASCII letters, digits and `_`, not starting
/// with a digit.
fn valid_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn parse_segment(route: &str, raw: &str) -> Result<Segment, String> {
    if raw.is_empty() {
        return Err(format!(
            "route `{route}` has an empty segment (`//` or a trailing `/`); remove it"
        ));
    }
    if let Some(inner) = raw.strip_prefix('{') {
        let name = inner.strip_suffix('}').ok_or_else(|| {
            format!("route `{route}`: segment `{raw}` opens `{{` without closing it")
        })?;
        if let Some(name) = name.strip_prefix('*') {
            if name.is_empty() {
                return Err(format!(
                    "route `{route}`: the wildcard `{{*}}` needs a name, like `{{*rest}}`; its pattern is then `input.path.rest`"
                ));
            }
            if !valid_name(name) {
                return Err(format!(
                    "route `{route}`: wildcard `{{*{name}}}` must be a lowercase name like `{{*rest}}`"
                ));
            }
            return Ok(Segment::Wildcard(name.to_string()));
        }
        if !valid_name(name) {
            return Err(format!(
                "route `{route}`: parameter `{{{name}}}` must be a lowercase name like `{{user_id}}`"
            ));
        }
        return Ok(Segment::Param(name.to_string()));
    }
    let unreserved = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~');
    if !raw.chars().all(unreserved) || raw == "." || raw == ".." {
        let hint = if raw.contains('*') {
            "; for a wildcard that takes the rest of the path, write `{*rest}`"
        } else {
            ""
        };
        return Err(format!(
            "route `{route}`: segment `{raw}` may only use letters, digits, `-`, `.`, `_` and `~`{hint}"
        ));
    }
    Ok(Segment::Literal(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let route = RoutePattern::parse("/register/{handle}").unwrap();
        assert_eq!(
            route.matches(&["register", "ada"]),
            Some(vec![("handle", Cow::Borrowed("ada"))])
        );
        assert_eq!(route.matches(&["register"]), None);
        assert_eq!(route.matches(&["register", ""]), None);
        assert_eq!(route.matches(&["other", "ada"]), None);
        let root = RoutePattern::parse("/").unwrap();
        assert_eq!(root.matches(&[]), Some(vec![]));
    }

    fn tail(route: &str, path: &[&str]) -> Option<Vec<(String, String)>> {
        let route = RoutePattern::parse(route).unwrap();
        route.matches(path).map(|params| {
            params
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.into_owned()))
                .collect()
        })
    }

    #[test]
    fn a_wildcard_matches_one_or_more_trailing_segments() {
        let pair = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert_eq!(
            tail("/api/{*rest}", &["api", "users"]),
            Some(pair("rest", "users"))
        );
        assert_eq!(
            tail("/api/{*rest}", &["api", "users", "42", "x.json"]),
            Some(pair("rest", "users/42/x.json"))
        );
        // Zero segments is not a match: `/api` is not under `/api/{*rest}`.
        assert_eq!(tail("/api/{*rest}", &["api"]), None);
        assert_eq!(tail("/api/{*rest}", &["apix", "users"]), None);
        assert_eq!(tail("/api/{*rest}", &["api", ""]), None);
        assert_eq!(tail("/api/{*rest}", &["api", "a", ""]), None);
        assert_eq!(tail("/{*all}", &["a"]), Some(pair("all", "a")));
        assert_eq!(tail("/{*all}", &[]), None);
        // With a `{param}` before it, both are named.
        assert_eq!(
            tail("/t/{tenant}/{*path}", &["t", "acme", "a", "b"]),
            Some(vec![
                ("tenant".to_string(), "acme".to_string()),
                ("path".to_string(), "a/b".to_string())
            ])
        );
        let route = RoutePattern::parse("/t/{tenant}/{*path}").unwrap();
        assert_eq!(route.params().collect::<Vec<_>>(), ["tenant", "path"]);
        assert_eq!(route.wildcard(), Some("path"));
        assert_eq!(RoutePattern::parse("/t/{id}").unwrap().wildcard(), None);
    }

    #[test]
    fn a_wildcard_and_a_param_have_different_shapes() {
        let shape = |r: &str| {
            RoutePattern::parse(r)
                .unwrap()
                .shape()
                .into_iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
        };
        assert_ne!(shape("/api/{id}"), shape("/api/{*rest}"));
        assert_eq!(shape("/api/{*rest}"), shape("/api/{*tail}"));
    }

    #[test]
    fn refuses_misplaced_and_badly_named_wildcards() {
        for (bad, says) in [
            ("/api/{*rest}/more", "must be the last segment"),
            ("/{*a}/{*b}", "must be the last segment"),
            ("/api/{*}", "needs a name"),
            ("/api/{*Rest}", "lowercase name like `{*rest}`"),
            ("/api/{**rest}", "lowercase name like `{*rest}`"),
            ("/api/{*rest-x}", "lowercase name like `{*rest}`"),
            ("/api/{rest*}", "lowercase name like `{user_id}`"),
            ("/api/*", "write `{*rest}`"),
            ("/api/*rest", "write `{*rest}`"),
            ("/{id}/{*id}", "twice"),
        ] {
            let err = RoutePattern::parse(bad).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn refuses_bad_routes() {
        for bad in [
            "hello", "/a//b", "/a/", "/{x}/{x}", "/{X}", "/{x", "/a b", "/..", "/%2e",
        ] {
            assert!(RoutePattern::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
