//! Matches `METHOD /path` against all HTTP rules at once.
//!
//! Templates are merged into a trie of segments: literal children are found
//! by hash lookup, then the single-segment wildcard, then `**`. Matching walks
//! the request path once (backtracking only between those three kinds at a
//! node), so its cost depends on the path's depth, not on how many routes
//! exist.

use std::collections::HashMap;

use crate::template::{PathTemplate, SegmentPattern, TemplateError};

#[derive(Default, Debug)]
struct Node {
    literal: HashMap<Box<str>, usize>,
    single: Option<usize>,
    /// Routes ending in `**` (matching the rest, even nothing) at this node.
    rest: Vec<Leaf>,
    /// Routes ending exactly at this node.
    leaves: Vec<Leaf>,
}

#[derive(Debug, Clone)]
struct Leaf {
    method: http::Method,
    verb: Option<Box<str>>,
    route: usize,
}

/// The outcome of matching one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Match {
    /// A route takes this method and path; `params` are its variables'
    /// values, percent-decoded, in template order.
    Found {
        /// Index of the route as it was added.
        route: usize,
        /// The variables' values, in template order.
        params: Vec<String>,
    },
    /// A route takes this method and path, but the value of its variable at
    /// index `variable` is not UTF-8 once percent-decoded.
    Undecodable {
        /// Index of the route as it was added.
        route: usize,
        /// Index of the variable in the route's template.
        variable: usize,
    },
    /// Some route has this path, none this method; these methods would do.
    MethodNotAllowed(Vec<http::Method>),
    /// No route has this path.
    NotFound,
}

/// A set of path templates with their methods, indexed for matching.
#[derive(Default, Debug)]
pub struct Router {
    nodes: Vec<Node>,
    templates: Vec<PathTemplate>,
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self { nodes: vec![Node::default()], templates: Vec::new() }
    }

    /// The route already added that would take every request `template`
    /// takes with `method` (same segments, wildcards and verb), if any.
    pub fn conflict(&self, method: &http::Method, template: &PathTemplate) -> Option<usize> {
        let mut node = 0;
        let mut ends_in_rest = false;
        for segment in &template.segments {
            node = match segment {
                SegmentPattern::Literal(text) => *self.nodes[node].literal.get(text.as_str())?,
                SegmentPattern::Single => self.nodes[node].single?,
                SegmentPattern::Rest => {
                    ends_in_rest = true;
                    break;
                }
            };
        }
        let leaves = if ends_in_rest { &self.nodes[node].rest } else { &self.nodes[node].leaves };
        leaves.iter().find(|l| l.method == method && l.verb.as_deref() == template.verb.as_deref()).map(|l| l.route)
    }

    /// Adds a route; its index is the number of routes added before it.
    /// Fails on a malformed template or one that conflicts with an earlier
    /// route (it could never be reached).
    pub fn add(&mut self, method: http::Method, template: &str) -> Result<usize, TemplateError> {
        let parsed = PathTemplate::parse(template)?;
        if self.conflict(&method, &parsed).is_some() {
            return Err(TemplateError {
                template: template.to_owned(),
                reason: "an earlier rule with the same method matches the same paths",
            });
        }
        let route = self.templates.len();
        let mut node = 0;
        let mut ends_in_rest = false;
        for segment in &parsed.segments {
            node = match segment {
                SegmentPattern::Literal(text) => match self.nodes[node].literal.get(text.as_str()) {
                    Some(&next) => next,
                    None => {
                        let next = self.push_node();
                        self.nodes[node].literal.insert(text.as_str().into(), next);
                        next
                    }
                },
                SegmentPattern::Single => match self.nodes[node].single {
                    Some(next) => next,
                    None => {
                        let next = self.push_node();
                        self.nodes[node].single = Some(next);
                        next
                    }
                },
                SegmentPattern::Rest => {
                    ends_in_rest = true;
                    break;
                }
            };
        }
        let leaf = Leaf { method, verb: parsed.verb.as_deref().map(Into::into), route };
        if ends_in_rest {
            self.nodes[node].rest.push(leaf);
        } else {
            self.nodes[node].leaves.push(leaf);
        }
        self.templates.push(parsed);
        Ok(route)
    }

    fn push_node(&mut self) -> usize {
        self.nodes.push(Node::default());
        self.nodes.len() - 1
    }

    /// The parsed template of a route.
    pub fn template(&self, route: usize) -> &PathTemplate {
        &self.templates[route]
    }

    /// Finds the route for `method` and `path` (without the query string).
    pub fn find(&self, method: &http::Method, path: &str) -> Match {
        let Some(rest) = path.strip_prefix('/') else { return Match::NotFound };
        let raw: Vec<&str> = rest.split('/').collect();
        let mut allowed = Vec::new();
        // A custom verb is the text after the last ':' of the last segment.
        let last = raw.len() - 1;
        // A rule with the verb wins over one whose last variable would
        // take `id:verb` whole.
        let mut attempts = Vec::with_capacity(2);
        if let Some((head, verb)) = raw[last].rsplit_once(':') {
            let mut segments = raw.clone();
            segments[last] = head;
            attempts.push((segments, Some(verb)));
        }
        attempts.push((raw, None));
        for (segments, verb) in attempts {
            if let Some(route) = self.walk(0, &segments, 0, method, verb, &mut allowed) {
                return match self.params(route, &segments) {
                    Ok(params) => Match::Found { route, params },
                    Err(variable) => Match::Undecodable { route, variable },
                };
            }
        }
        if allowed.is_empty() {
            Match::NotFound
        } else {
            allowed.dedup();
            Match::MethodNotAllowed(allowed)
        }
    }

    fn walk(
        &self,
        node: usize,
        segments: &[&str],
        at: usize,
        method: &http::Method,
        verb: Option<&str>,
        allowed: &mut Vec<http::Method>,
    ) -> Option<usize> {
        let n = &self.nodes[node];
        let pick = |leaves: &[Leaf], allowed: &mut Vec<http::Method>| {
            let (mut found, mut any) = (None, None);
            for leaf in leaves.iter().filter(|l| l.verb.as_deref() == verb) {
                if leaf.method == method {
                    found = found.or(Some(leaf.route));
                } else if leaf.method.as_str() == "*" {
                    // `custom: {kind: "*"}` takes every method a rule of its own does not.
                    any = any.or(Some(leaf.route));
                } else {
                    allowed.push(leaf.method.clone());
                }
            }
            found.or(any)
        };
        if at == segments.len() {
            if let Some(route) = pick(&n.leaves, allowed) {
                return Some(route);
            }
        } else {
            let segment = segments[at];
            if let Some(&next) = n.literal.get(segment)
                && let Some(route) = self.walk(next, segments, at + 1, method, verb, allowed)
            {
                return Some(route);
            }
            if let Some(next) = n.single.filter(|_| !segment.is_empty())
                && let Some(route) = self.walk(next, segments, at + 1, method, verb, allowed)
            {
                return Some(route);
            }
        }
        pick(&n.rest, allowed)
    }

    /// The variables' decoded values, or the index of the first one that is
    /// not UTF-8.
    fn params(&self, route: usize, segments: &[&str]) -> Result<Vec<String>, usize> {
        self.templates[route]
            .variables
            .iter()
            .enumerate()
            .map(|(index, v)| {
                let end = v.end.unwrap_or(segments.len()).min(segments.len());
                // google/api/http.proto: a multi-segment variable keeps
                // `%2F` as sent, so an encoded slash stays distinct from a
                // separator; a single segment is decoded whole.
                let multi = v.end.is_none_or(|e| e - v.start > 1);
                let decode = if multi { decode_keeping_slashes } else { decode };
                let decoded: Option<Vec<String>> = segments[v.start.min(end)..end].iter().map(|s| decode(s)).collect();
                decoded.map(|d| d.join("/")).ok_or(index)
            })
            .collect()
    }
}

/// Percent-decodes a segment; `None` when the result is not UTF-8 (which a
/// string field cannot hold, so it is refused rather than replaced).
fn decode(segment: &str) -> Option<String> {
    percent_encoding::percent_decode_str(segment).decode_utf8().ok().map(std::borrow::Cow::into_owned)
}

/// Decodes all but `%2F`/`%2f`, which stay as they are.
fn decode_keeping_slashes(segment: &str) -> Option<String> {
    let mut out = String::with_capacity(segment.len());
    let mut rest = segment;
    while let Some(at) = rest.as_bytes().windows(3).position(|w| w[0] == b'%' && w[1] == b'2' && (w[2] | 0x20) == b'f')
    {
        out.push_str(&decode(&rest[..at])?);
        out.push_str(&rest[at..at + 3]);
        rest = &rest[at + 3..];
    }
    out.push_str(&decode(rest)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn router() -> Router {
        let mut r = Router::new();
        for (m, t) in [
            (Method::GET, "/api/articles"),
            (Method::GET, "/api/articles/feed"),
            (Method::GET, "/api/articles/{slug}"),
            (Method::PUT, "/api/articles/{slug}"),
            (Method::DELETE, "/api/articles/{slug}/comments/{id}"),
            (Method::GET, "/v1/{name=shelves/*/books/*}"),
            (Method::POST, "/v1/{name=shelves/*}:publish"),
            (Method::GET, "/files/{path=**}"),
            (Method::GET, "/v1/{a.b}/x"),
            (Method::from_bytes(b"*").unwrap(), "/any/{id}"),
            (Method::GET, "/any/{id}"),
        ] {
            r.add(m, t).unwrap();
        }
        r
    }

    fn found(route: usize, params: &[&str]) -> Match {
        Match::Found { route, params: params.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn matches_methods_paths_and_variables() {
        let r = router();
        let cases = [
            (Method::GET, "/api/articles", found(0, &[])),
            (Method::GET, "/api/articles/feed", found(1, &[])),
            (Method::GET, "/api/articles/how-to", found(2, &["how-to"])),
            // A literal sibling does not hide the variable route for other methods.
            (Method::PUT, "/api/articles/feed", found(3, &["feed"])),
            (Method::DELETE, "/api/articles/s/comments/42", found(4, &["s", "42"])),
            (Method::GET, "/api/articles/a%20b%2Fc", found(2, &["a b/c"])),
            (Method::GET, "/api/articles/%C3%A9", found(2, &["é"])),
            // Invalid UTF-8 once decoded (a lone continuation byte, a cut sequence).
            (Method::GET, "/api/articles/%80", Match::Undecodable { route: 2, variable: 0 }),
            (Method::DELETE, "/api/articles/s/comments/%E2%82", Match::Undecodable { route: 4, variable: 1 }),
            (Method::GET, "/files/a/%FF/b", Match::Undecodable { route: 7, variable: 0 }),
            (Method::GET, "/v1/shelves/1/books/2", found(5, &["shelves/1/books/2"])),
            (Method::POST, "/v1/shelves/7:publish", found(6, &["shelves/7"])),
            (Method::GET, "/files/a/b/c.txt", found(7, &["a/b/c.txt"])),
            (Method::GET, "/files/a%2Fb/c%20d%2f", found(7, &["a%2Fb/c d%2f"])),
            (Method::GET, "/files", found(7, &[""])),
            (Method::GET, "/v1/q/x", found(8, &["q"])),
            (Method::GET, "/api/nothing", Match::NotFound),
            (Method::GET, "/api/articles/", Match::NotFound),
            (Method::GET, "api/articles", Match::NotFound),
            (Method::POST, "/api/articles/s", Match::MethodNotAllowed(vec![Method::GET, Method::PUT])),
            // A rule for every method takes those no rule of their own takes.
            (Method::POST, "/any/1", found(9, &["1"])),
            (Method::PATCH, "/any/1", found(9, &["1"])),
            (Method::GET, "/any/1", found(10, &["1"])),
        ];
        for (method, path, expected) in cases {
            assert_eq!(r.find(&method, path), expected, "{method} {path}");
        }
    }

    #[test]
    fn refuses_rules_that_match_the_same_requests() {
        let mut r = router();
        for (m, t) in [
            (Method::GET, "/api/articles/{other}"),
            (Method::GET, "/v1/{x=shelves/*/books/*}"),
            (Method::POST, "/v1/{n=shelves/*}:publish"),
            (Method::GET, "/files/**"),
        ] {
            assert!(r.add(m.clone(), t).is_err(), "{m} {t} conflicts");
        }
        for (m, t) in [(Method::POST, "/api/articles/{slug}"), (Method::POST, "/v1/{n=shelves/*}:cancel")] {
            assert!(r.add(m.clone(), t).is_ok(), "{m} {t} does not conflict");
        }
    }
}
