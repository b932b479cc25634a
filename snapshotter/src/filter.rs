//! containerd's filter syntax for List (Walk): `field[==|!=|~=value]` selectors joined by
//! `,` (all must hold); several filters match when any of them does.
//!
//! Fields: `name`, `parent`, `kind` (`active`, `view`, `committed`) and `labels.<key>`
//! (a key with dots or slashes is quoted: `labels."containerd.io/snapshot.ref"`). A field
//! alone means it is present and not empty.

use regex::Regex;

use crate::store::{Kind, Record};

/// Why a filter was refused.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The filter does not parse.
    #[error("filter {filter:?}: {message}")]
    Syntax {
        /// The filter.
        filter: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Field {
    Name,
    Parent,
    Kind,
    Label(String),
}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

#[derive(Debug, Clone)]
struct Selector {
    field: Field,
    op: Op,
}

/// A parsed set of filters.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Any of these conjunctions; none means everything matches.
    any: Vec<Vec<Selector>>,
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(|c| c == b' ' || c == b'\t') {
            self.i += 1;
        }
    }

    fn quoted(&mut self) -> Result<String, String> {
        // At the opening quote.
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err("unterminated quoted string".into()),
                Some(b'"') => {
                    self.i += 1;
                    return String::from_utf8(out).map_err(|_| "not UTF-8".to_string());
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = self.peek().ok_or("unterminated escape")?;
                    out.push(match c {
                        b'n' => b'\n',
                        b't' => b'\t',
                        other => other,
                    });
                    self.i += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }

    fn field_part(&mut self) -> Result<String, String> {
        self.skip_spaces();
        if self.peek() == Some(b'"') {
            return self.quoted();
        }
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            self.i += 1;
        }
        if start == self.i {
            return Err(format!("a field name was expected at offset {start}"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn value(&mut self) -> Result<String, String> {
        self.skip_spaces();
        if self.peek() == Some(b'"') {
            return self.quoted();
        }
        let start = self.i;
        while self.peek().is_some_and(|c| c != b',') {
            self.i += 1;
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i])
            .trim_end()
            .to_string())
    }
}

fn parse_one(filter: &str) -> Result<Vec<Selector>, String> {
    let mut lx = Lexer {
        s: filter.as_bytes(),
        i: 0,
    };
    let mut selectors = Vec::new();
    loop {
        let mut path = vec![lx.field_part()?];
        while lx.peek() == Some(b'.') {
            lx.i += 1;
            path.push(lx.field_part()?);
        }
        let field = match path.as_slice() {
            [f] if f == "name" => Field::Name,
            [f] if f == "parent" => Field::Parent,
            [f] if f == "kind" => Field::Kind,
            [f, rest @ ..] if f == "labels" && !rest.is_empty() => Field::Label(rest.join(".")),
            _ => return Err(format!("unknown field {:?}", path.join("."))),
        };
        lx.skip_spaces();
        let rest = &lx.s[lx.i..];
        let op = if rest.starts_with(b"==") {
            lx.i += 2;
            Op::Equal(lx.value()?)
        } else if rest.starts_with(b"!=") {
            lx.i += 2;
            Op::NotEqual(lx.value()?)
        } else if rest.starts_with(b"~=") {
            lx.i += 2;
            let v = lx.value()?;
            Op::Matches(Regex::new(&v).map_err(|e| format!("bad regular expression: {e}"))?)
        } else {
            Op::Present
        };
        selectors.push(Selector { field, op });
        lx.skip_spaces();
        match lx.peek() {
            None => return Ok(selectors),
            Some(b',') => lx.i += 1,
            Some(c) => return Err(format!("unexpected {:?} at offset {}", c as char, lx.i)),
        }
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::View => "view",
        Kind::Active => "active",
        Kind::Committed => "committed",
    }
}

impl Filter {
    /// Parses containerd's filters (empty strings are ignored).
    pub fn parse(filters: &[String]) -> Result<Filter, FilterError> {
        let mut any = Vec::new();
        for f in filters.iter().filter(|f| !f.trim().is_empty()) {
            any.push(parse_one(f).map_err(|message| FilterError::Syntax {
                filter: f.clone(),
                message,
            })?);
        }
        Ok(Filter { any })
    }

    /// Whether snapshot `name` with `record` matches.
    pub fn matches(&self, name: &str, record: &Record) -> bool {
        if self.any.is_empty() {
            return true;
        }
        self.any.iter().any(|all| {
            all.iter().all(|s| {
                let value = match &s.field {
                    Field::Name => Some(name),
                    Field::Parent => Some(record.parent.as_str()),
                    Field::Kind => Some(kind_name(record.kind)),
                    Field::Label(k) => record.labels.get(k).map(String::as_str),
                };
                match &s.op {
                    Op::Present => value.is_some_and(|v| !v.is_empty()),
                    Op::Equal(want) => value == Some(want.as_str()),
                    Op::NotEqual(want) => value != Some(want.as_str()),
                    Op::Matches(re) => value.is_some_and(|v| re.is_match(v)),
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::SystemTime;

    use super::*;

    fn rec(parent: &str, labels: &[(&str, &str)]) -> Record {
        Record {
            id: 1,
            kind: Kind::Committed,
            parent: parent.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            created: SystemTime::now(),
            updated: SystemTime::now(),
            usage: None,
        }
    }

    fn f(filters: &[&str]) -> Filter {
        Filter::parse(&filters.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn selectors() {
        let r = rec(
            "sha256:p",
            &[("containerd.io/snapshot.ref", "sha256:abc"), ("x", "")],
        );
        assert!(f(&[]).matches("n", &r));
        assert!(f(&[r#"labels."containerd.io/snapshot.ref"==sha256:abc"#]).matches("n", &r));
        assert!(!f(&[r#"labels."containerd.io/snapshot.ref"==sha256:abd"#]).matches("n", &r));
        assert!(f(&[r#"labels."containerd.io/snapshot.ref""#]).matches("n", &r));
        assert!(
            !f(&["labels.x"]).matches("n", &r),
            "present means non-empty"
        );
        assert!(f(&["kind==committed,parent==\"sha256:p\""]).matches("n", &r));
        assert!(!f(&["kind==active,parent==sha256:p"]).matches("n", &r));
        assert!(
            f(&["kind==active", "name==n"]).matches("n", &r),
            "any of them"
        );
        assert!(f(&["name~=^n$", "name!=m"]).matches("n", &r));
    }

    #[test]
    fn errors_name_the_filter() {
        for bad in [
            "size==1",
            "labels",
            "name==\"open",
            "name~=(",
            "name==a b\"c",
        ] {
            let e = Filter::parse(&[bad.to_string()]);
            if bad == "name==a b\"c" {
                // An unquoted value runs to the next comma.
                assert!(e.is_ok());
                continue;
            }
            let e = e.unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
