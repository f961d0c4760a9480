//! Path templates of `google.api.http` rules:
//!
//! ```text
//! Template = "/" Segments [ ":" Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! ```
//!
//! A template compiles to a flat list of segment patterns plus the variables
//! that capture runs of them, which is what the router indexes.

use std::fmt;

/// How one path segment is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentPattern {
    /// Exactly this text.
    Literal(String),
    /// Any one segment (`*`).
    Single,
    /// The rest of the path, zero or more segments (`**`); always last.
    Rest,
}

/// A variable of a template: the request field it sets and the segments it spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// Dotted field path in the request message (`a.b`).
    pub field_path: String,
    /// Index of the first segment captured.
    pub start: usize,
    /// Index one past the last segment captured; `None` when the variable
    /// ends with `**` and takes the rest of the path.
    pub end: Option<usize>,
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    /// Segment patterns in order.
    pub segments: Vec<SegmentPattern>,
    /// Variables in order of appearance.
    pub variables: Vec<Variable>,
    /// Custom verb after the last `:`, if any.
    pub verb: Option<String>,
}

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// The template text.
    pub template: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid path template {:?}: {}", self.template, self.reason)
    }
}

impl std::error::Error for TemplateError {}

impl PathTemplate {
    /// Parses a template such as `/v1/{name=shelves/*/books/*}:publish`.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let err = |reason| TemplateError { template: template.to_owned(), reason };
        let rest = template.strip_prefix('/').ok_or_else(|| err("must start with '/'"))?;
        // The verb is after the last ':' that is not inside a variable.
        let mut depth = 0usize;
        let mut verb_at = None;
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth = depth.checked_sub(1).ok_or_else(|| err("unbalanced '}'"))?,
                ':' if depth == 0 => verb_at = Some(i),
                _ => {}
            }
        }
        if depth != 0 {
            return Err(err("unbalanced '{'"));
        }
        let (path, verb) = match verb_at {
            Some(i) if i + 1 < rest.len() => (&rest[..i], Some(rest[i + 1..].to_owned())),
            Some(_) => return Err(err("empty verb")),
            None => (rest, None),
        };

        let mut parsed = PathTemplate { segments: Vec::new(), variables: Vec::new(), verb };
        // Split on '/' outside braces.
        let mut parts = Vec::new();
        let mut start = 0;
        let mut depth = 0;
        for (i, c) in path.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                '/' if depth == 0 => {
                    parts.push(&path[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&path[start..]);

        for part in parts {
            if let Some(inner) = part.strip_prefix('{') {
                let inner = inner.strip_suffix('}').ok_or_else(|| err("a variable must be a whole segment"))?;
                let (field_path, sub) = match inner.split_once('=') {
                    Some((f, s)) => (f, s),
                    None => (inner, "*"),
                };
                let valid_ident = |s: &str| {
                    !s.is_empty()
                        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        && !s.starts_with(|c: char| c.is_ascii_digit())
                };
                if !field_path.split('.').all(valid_ident) {
                    return Err(err("a variable needs a field path"));
                }
                if parsed.variables.iter().any(|v| v.field_path == field_path) {
                    return Err(err("a field is bound twice"));
                }
                let start = parsed.segments.len();
                for s in sub.split('/') {
                    parsed.segments.push(Self::segment(s).ok_or_else(|| err("nested variables are not allowed"))?);
                }
                let end = (parsed.segments.last() != Some(&SegmentPattern::Rest)).then_some(parsed.segments.len());
                parsed.variables.push(Variable { field_path: field_path.to_owned(), start, end });
            } else {
                parsed.segments.push(Self::segment(part).ok_or_else(|| err("'{' or '}' inside a literal"))?);
            }
        }
        if parsed.segments.iter().any(|s| matches!(s, SegmentPattern::Literal(l) if l.is_empty())) {
            return Err(err("empty segment"));
        }
        if let Some(i) = parsed.segments.iter().position(|s| *s == SegmentPattern::Rest)
            && i + 1 != parsed.segments.len()
        {
            return Err(err("'**' must be the last segment"));
        }
        Ok(parsed)
    }

    fn segment(text: &str) -> Option<SegmentPattern> {
        match text {
            "*" => Some(SegmentPattern::Single),
            "**" => Some(SegmentPattern::Rest),
            t if t.contains(['{', '}', '=']) => None,
            t => Some(SegmentPattern::Literal(t.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SegmentPattern::*;
    use super::*;

    fn lit(s: &str) -> SegmentPattern {
        Literal(s.to_owned())
    }

    #[test]
    fn parses_the_grammar() {
        type Case<'a> = (&'a str, Vec<SegmentPattern>, Vec<(&'a str, usize, Option<usize>)>, Option<&'a str>);
        let cases: &[Case<'_>] = &[
            ("/api/tags", vec![lit("api"), lit("tags")], vec![], None),
            ("/api/articles/{slug}", vec![lit("api"), lit("articles"), Single], vec![("slug", 2, Some(3))], None),
            (
                "/api/articles/{slug}/comments/{id}",
                vec![lit("api"), lit("articles"), Single, lit("comments"), Single],
                vec![("slug", 2, Some(3)), ("id", 4, Some(5))],
                None,
            ),
            ("/v1/{a.b.c}", vec![lit("v1"), Single], vec![("a.b.c", 1, Some(2))], None),
            (
                "/v1/{name=shelves/*/books/*}:publish",
                vec![lit("v1"), lit("shelves"), Single, lit("books"), Single],
                vec![("name", 1, Some(5))],
                Some("publish"),
            ),
            ("/v1/{path=**}", vec![lit("v1"), Rest], vec![("path", 1, None)], None),
            ("/v1/*/x/**", vec![lit("v1"), Single, lit("x"), Rest], vec![], None),
        ];
        for (text, segments, vars, verb) in cases {
            let t = PathTemplate::parse(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&t.segments, segments, "{text}");
            let got: Vec<_> = t.variables.iter().map(|v| (v.field_path.as_str(), v.start, v.end)).collect();
            assert_eq!(&got, vars, "{text}");
            assert_eq!(t.verb.as_deref(), *verb, "{text}");
        }
    }

    #[test]
    fn rejects_malformed_templates() {
        for bad in ["api", "/a/{b", "/a/b}", "/a/{}", "/a/{b=**}/c", "/a/{b}/{b}", "/a//b", "/a/x{b}", "/a:", "/a/{1x}"]
        {
            assert!(PathTemplate::parse(bad).is_err(), "{bad} should not parse");
        }
    }
}
