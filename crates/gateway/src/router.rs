//! Route stage: which function serves a path and method. The most specific
//! route wins: compared segment by segment from the left, a literal beats a
//! `{param}`, which beats a trailing `{*wildcard}` (`/users/me` before
//! `/users/{id}` before `/users/{*rest}`; `/api/v2/{*rest}` before
//! `/api/{*rest}`). The manifest refuses two routes that would tie.

use std::borrow::Cow;

use bulkhead_manifest::RoutePattern;

pub struct Router {
    /// (route, methods, function index), most literal first.
    routes: Vec<(RoutePattern, Vec<String>, usize)>,
}

pub enum RouteMatch<'r, 'p> {
    Found {
        function: usize,
        /// Route parameter names and their decoded values, in route order;
        /// a wildcard's value is its decoded segments joined by `/`.
        params: Vec<(&'r str, Cow<'p, str>)>,
    },
    /// The path exists but not for this method; `allow` lists the methods.
    MethodNotAllowed {
        allow: String,
    },
    NotFound,
}

impl Router {
    pub fn new(routes: impl IntoIterator<Item = (RoutePattern, Vec<String>)>) -> Self {
        let mut routes: Vec<_> = routes
            .into_iter()
            .enumerate()
            .map(|(i, (route, mut methods))| {
                // A route that allows GET answers HEAD too (RFC 9110
                // §9.3.2): the function sees HEAD, hyper sends no body.
                if methods.iter().any(|m| m == "GET") && !methods.iter().any(|m| m == "HEAD") {
                    methods.push("HEAD".to_string());
                }
                (route, methods, i)
            })
            .collect();
        // Routes that tie here match the same paths only with different
        // methods: the manifest refuses the rest.
        routes.sort_by_key(|(route, _, _)| std::cmp::Reverse(route.specificity()));
        Self { routes }
    }

    /// `segments` are the request path's segments, each decoded exactly
    /// once by the validation stage (T10): a literal route segment matches
    /// the decoded segment.
    pub fn find<'r, 'p>(&'r self, method: &str, segments: &[&'p str]) -> RouteMatch<'r, 'p> {
        let mut allowed: Vec<&str> = Vec::new();
        // The most specific route that matches the path owns it: another
        // route of the same shape may serve other methods, but a less
        // specific one never does, so a public wildcard cannot answer the
        // other methods of an authenticated route (outside attack, issue 12).
        let mut owner: Option<&RoutePattern> = None;
        for (route, methods, function) in &self.routes {
            if owner.is_some_and(|owner| !owner.same_shape(route)) {
                continue;
            }
            if let Some(params) = route.matches(segments) {
                owner.get_or_insert(route);
                if methods.iter().any(|m| m == method) {
                    return RouteMatch::Found {
                        function: *function,
                        params,
                    };
                }
                allowed.extend(methods.iter().map(String::as_str));
            }
        }
        if allowed.is_empty() {
            RouteMatch::NotFound
        } else {
            allowed.sort_unstable();
            allowed.dedup();
            RouteMatch::MethodNotAllowed {
                allow: allowed.join(", "),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a lookup found, owned, so a test can compare it.
    #[derive(Debug, PartialEq)]
    enum Lookup {
        Function(usize, Vec<(String, String)>),
        NotAllowed(String),
        NotFound,
    }

    fn find(r: &Router, method: &str, path: &str) -> Lookup {
        let decoded = crate::validate::decode_path(path).expect("a well-formed path");
        let segments: Vec<&str> = decoded.iter().map(|s| s.as_ref()).collect();
        match r.find(method, &segments) {
            RouteMatch::Found { function, params } => Lookup::Function(
                function,
                params
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            RouteMatch::MethodNotAllowed { allow } => Lookup::NotAllowed(allow),
            RouteMatch::NotFound => Lookup::NotFound,
        }
    }

    fn router() -> Router {
        Router::new([
            (
                RoutePattern::parse("/users/{id}").unwrap(),
                vec!["GET".to_string()],
            ),
            (
                RoutePattern::parse("/users/me").unwrap(),
                vec!["GET".to_string()],
            ),
            (
                RoutePattern::parse("/").unwrap(),
                vec!["GET".to_string(), "POST".to_string()],
            ),
        ])
    }

    #[test]
    fn the_most_literal_route_wins() {
        let r = router();
        assert_eq!(find(&r, "GET", "/users/me"), Lookup::Function(1, vec![]));
        assert_eq!(
            find(&r, "GET", "/users/ada"),
            Lookup::Function(0, vec![("id".into(), "ada".into())])
        );
        assert_eq!(find(&r, "GET", "/"), Lookup::Function(2, vec![]));
        // Literal segments match the decoded segment; parameters get it decoded.
        assert_eq!(find(&r, "GET", "/users/%6De"), Lookup::Function(1, vec![]));
        assert_eq!(
            find(&r, "GET", "/users/a%20b"),
            Lookup::Function(0, vec![("id".into(), "a b".into())])
        );
    }

    fn wildcard_router() -> Router {
        let get = || vec!["GET".to_string()];
        Router::new([
            (RoutePattern::parse("/{*all}").unwrap(), get()),
            (RoutePattern::parse("/api/{*rest}").unwrap(), get()),
            (RoutePattern::parse("/api/health").unwrap(), get()),
            (RoutePattern::parse("/api/{section}").unwrap(), get()),
            (RoutePattern::parse("/api/v2/{*rest}").unwrap(), get()),
            (RoutePattern::parse("/{any}/docs/{*page}").unwrap(), get()),
            (
                RoutePattern::parse("/api/users/{id}").unwrap(),
                vec!["POST".to_string()],
            ),
        ])
    }

    #[test]
    fn literal_beats_param_beats_wildcard_longest_literal_prefix_first() {
        let r = wildcard_router();
        let p = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        // A literal route beats a wildcard that also matches.
        assert_eq!(find(&r, "GET", "/api/health"), Lookup::Function(2, vec![]));
        // A `{param}` beats `{*rest}` for a single segment...
        assert_eq!(
            find(&r, "GET", "/api/users"),
            Lookup::Function(3, p(&[("section", "users")]))
        );
        // ...and the wildcard takes more than one.
        assert_eq!(
            find(&r, "GET", "/api/users/42/avatar.png"),
            Lookup::Function(1, p(&[("rest", "users/42/avatar.png")]))
        );
        // The longer literal prefix wins between wildcards.
        assert_eq!(
            find(&r, "GET", "/api/v2/things"),
            Lookup::Function(4, p(&[("rest", "things")]))
        );
        // Compared from the left: `/api/…` (a literal first) beats `/{any}/docs/…`.
        assert_eq!(
            find(&r, "GET", "/api/docs/intro"),
            Lookup::Function(1, p(&[("rest", "docs/intro")]))
        );
        assert_eq!(
            find(&r, "GET", "/guide/docs/intro/part-1"),
            Lookup::Function(5, p(&[("any", "guide"), ("page", "intro/part-1")]))
        );
        // Everything else falls to `/{*all}`, but `/` has no tail to match.
        assert_eq!(
            find(&r, "GET", "/other/a%20b/c"),
            Lookup::Function(0, p(&[("all", "other/a b/c")]))
        );
        assert_eq!(
            find(&r, "GET", "/api"),
            Lookup::Function(0, p(&[("all", "api")]))
        );
        assert_eq!(find(&r, "GET", "/"), Lookup::NotFound);
    }

    #[test]
    fn a_more_specific_route_owns_its_path_for_every_method() {
        let r = wildcard_router();
        // POST /api/users/7 is `/api/users/{id}`'s, and so is the path: a
        // GET of it is refused with 405, never served by the wildcard, which
        // may have other (or no) authentication.
        assert_eq!(
            find(&r, "POST", "/api/users/7"),
            Lookup::Function(6, vec![("id".into(), "7".into())])
        );
        assert_eq!(
            find(&r, "GET", "/api/users/7"),
            Lookup::NotAllowed("POST".into())
        );
        assert_eq!(
            find(&r, "DELETE", "/api/users/7"),
            Lookup::NotAllowed("POST".into())
        );
        // Without a wildcard, zero tail segments is simply not found.
        let only = Router::new([(
            RoutePattern::parse("/api/{*rest}").unwrap(),
            vec!["GET".to_string()],
        )]);
        assert_eq!(find(&only, "GET", "/api"), Lookup::NotFound);
    }

    #[test]
    fn wrong_method_and_unknown_paths() {
        let r = router();
        assert_eq!(
            find(&r, "DELETE", "/users/me"),
            Lookup::NotAllowed("GET, HEAD".into())
        );
        for path in ["/nope", "/users", "/users/a/b", "/Users/me"] {
            assert_eq!(find(&r, "GET", path), Lookup::NotFound, "{path}");
        }
    }
}
