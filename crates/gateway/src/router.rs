//! Route stage: which function serves a path and method. The most literal
//! route wins (`/users/me` before `/users/{id}`); the manifest refuses two
//! routes that would tie.

use bulkhead_manifest::RoutePattern;

pub struct Router {
    /// (route, methods, function index), most literal first.
    routes: Vec<(RoutePattern, Vec<String>, usize)>,
}

pub enum RouteMatch<'r, 'p> {
    Found {
        function: usize,
        #[cfg_attr(
            not(test),
            expect(dead_code, reason = "read by input validation (T10), which comes next")
        )]
        params: Vec<(&'r str, &'p str)>,
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
            .map(|(i, (route, methods))| (route, methods, i))
            .collect();
        routes.sort_by_key(|(route, _, _)| std::cmp::Reverse(route.specificity()));
        Self { routes }
    }

    /// `path` is the request path as sent (no query).
    pub fn find<'r, 'p>(&'r self, method: &str, path: &'p str) -> RouteMatch<'r, 'p> {
        let segments: Vec<&str> = match path.strip_prefix('/') {
            Some("") => Vec::new(),
            Some(rest) => rest.split('/').collect(),
            None => return RouteMatch::NotFound,
        };
        let mut allowed: Vec<&str> = Vec::new();
        for (route, methods, function) in &self.routes {
            if let Some(params) = route.matches(&segments) {
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
        assert!(matches!(
            r.find("GET", "/users/me"),
            RouteMatch::Found { function: 1, .. }
        ));
        match r.find("GET", "/users/ada") {
            RouteMatch::Found { function, params } => {
                assert_eq!(function, 0);
                assert_eq!(params, vec![("id", "ada")]);
            }
            _ => panic!("expected a match"),
        }
        assert!(matches!(
            r.find("GET", "/"),
            RouteMatch::Found { function: 2, .. }
        ));
    }

    #[test]
    fn wrong_method_and_unknown_paths() {
        let r = router();
        assert!(
            matches!(r.find("DELETE", "/users/me"), RouteMatch::MethodNotAllowed { allow } if allow == "GET")
        );
        for path in [
            "/nope",
            "/users",
            "/users/",
            "/users/a/b",
            "",
            "users",
            "//",
        ] {
            assert!(
                matches!(r.find("GET", path), RouteMatch::NotFound),
                "{path}"
            );
        }
    }
}
