//! The image reference a conversion pushes to: `HOST[:PORT]/REPO[:TAG]`.
//!
//! The registry part is mandatory (there is no default registry); the repository may
//! have several path components (`library/busybox`); the tag defaults to `latest`.
//! Digest references (`@sha256:…`) name content and cannot be pushed to.

use std::fmt;
use std::str::FromStr;

/// The tag used when a reference has none.
pub const DEFAULT_TAG: &str = "latest";

/// A parsed `HOST[:PORT]/REPO[:TAG]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: String,
}

/// Why a reference was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    /// Nothing was given.
    #[error("the image reference is empty")]
    Empty,
    /// The reference has no `HOST[:PORT]/` part.
    #[error("{0:?}: expected HOST[:PORT]/REPO[:TAG] (the registry is required)")]
    NoRegistry(String),
    /// The registry part is not a host name or address with an optional port.
    #[error("{reference:?}: bad registry {registry:?}: {why}")]
    Registry {
        /// The whole reference.
        reference: String,
        /// Its registry part.
        registry: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The repository part breaks the distribution spec's grammar.
    #[error("{reference:?}: bad repository {repository:?}: {why}")]
    Repository {
        /// The whole reference.
        reference: String,
        /// Its repository part.
        repository: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The tag is empty, too long or has characters a tag cannot have.
    #[error("{reference:?}: bad tag {tag:?}: a tag is 1 to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'")]
    Tag {
        /// The whole reference.
        reference: String,
        /// Its tag part.
        tag: String,
    },
    /// A digest reference was given.
    #[error("{0:?}: a digest reference cannot be pushed to; give a tag")]
    Digest(String),
}

impl ImageRef {
    /// A reference from its parts, checked as [`FromStr`] checks them.
    pub fn new(registry: &str, repository: &str, tag: &str) -> Result<ImageRef, RefError> {
        format!("{registry}/{repository}:{tag}").parse()
    }

    /// `HOST[:PORT]`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag (`latest` when the reference had none).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The registry's host without the port (brackets of an IPv6 address kept).
    pub fn host(&self) -> &str {
        split_port(&self.registry).0
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.registry, self.repository, self.tag)
    }
}

/// Splits `host:port` (or `[v6]:port`) into the host and the port, if any.
fn split_port(registry: &str) -> (&str, Option<&str>) {
    if registry.starts_with('[') {
        return match registry.find(']') {
            Some(end) => match registry[end + 1..].strip_prefix(':') {
                Some(port) => (&registry[..=end], Some(port)),
                None => (registry, None),
            },
            None => (registry, None),
        };
    }
    match registry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    }
}

fn check_registry(registry: &str) -> Result<(), &'static str> {
    let (host, port) = split_port(registry);
    if host.is_empty() {
        return Err("the host is empty");
    }
    if let Some(v6) = host.strip_prefix('[') {
        let Some(v6) = v6.strip_suffix(']') else {
            return Err("an IPv6 address needs its closing ']'");
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("not an IPv6 address");
        }
    } else {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !host.split('.').all(label_ok) {
            return Err("the host must be a name or an IPv4 address");
        }
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return Err("the port must be a number from 1 to 65535"),
        }
    }
    Ok(())
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or one or more '-'.
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn check_repository(repository: &str) -> Result<(), &'static str> {
    if repository.is_empty() {
        return Err("the repository is empty");
    }
    if repository.len() > 255 {
        return Err("longer than 255 characters");
    }
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("a repository is lower case");
    }
    if !repository.split('/').all(component_ok) {
        return Err("each '/'-separated part is [a-z0-9] words joined by '.', '_', '__' or '-'");
    }
    Ok(())
}

fn tag_ok(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

impl FromStr for ImageRef {
    type Err = RefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(RefError::Empty);
        }
        if s.contains('@') {
            return Err(RefError::Digest(s.to_string()));
        }
        let Some((registry, rest)) = s.split_once('/') else {
            return Err(RefError::NoRegistry(s.to_string()));
        };
        check_registry(registry).map_err(|why| RefError::Registry {
            reference: s.to_string(),
            registry: registry.to_string(),
            why,
        })?;
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((repo, tag)) => {
                if !tag_ok(tag) {
                    return Err(RefError::Tag {
                        reference: s.to_string(),
                        tag: tag.to_string(),
                    });
                }
                (repo, tag)
            }
            None => (rest, DEFAULT_TAG),
        };
        check_repository(repository).map_err(|why| RefError::Repository {
            reference: s.to_string(),
            repository: repository.to_string(),
            why,
        })?;
        Ok(ImageRef {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: tag.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(s: &str) -> (String, String, String) {
        let r: ImageRef = s.parse().unwrap();
        (
            r.registry().to_string(),
            r.repository().to_string(),
            r.tag().to_string(),
        )
    }

    #[test]
    fn parses_registry_repo_tag() {
        assert_eq!(
            parts("127.0.0.1:5000/busybox:v1"),
            ("127.0.0.1:5000".into(), "busybox".into(), "v1".into())
        );
        assert_eq!(
            parts("localhost:5000/library/busy-box/x_y:1.0-rc.1"),
            (
                "localhost:5000".into(),
                "library/busy-box/x_y".into(),
                "1.0-rc.1".into()
            )
        );
        assert_eq!(
            parts("registry.example.com/a__b/c.d"),
            (
                "registry.example.com".into(),
                "a__b/c.d".into(),
                "latest".into()
            )
        );
        assert_eq!(
            parts("[::1]:5000/x:_t"),
            ("[::1]:5000".into(), "x".into(), "_t".into())
        );
        let r: ImageRef = "127.0.0.1:5000/a/b".parse().unwrap();
        assert_eq!(r.to_string(), "127.0.0.1:5000/a/b:latest");
        assert_eq!(r.host(), "127.0.0.1");
        let r: ImageRef = "[::1]:5000/a".parse().unwrap();
        assert_eq!(r.host(), "[::1]");
        assert_eq!(
            ImageRef::new("h:1", "r", "t").unwrap().to_string(),
            "h:1/r:t"
        );
    }

    #[test]
    fn refuses_bad_references() {
        assert_eq!("".parse::<ImageRef>(), Err(RefError::Empty));
        assert!(matches!(
            "busybox:latest".parse::<ImageRef>(),
            Err(RefError::NoRegistry(_))
        ));
        assert!(matches!(
            "h:5000/busybox@sha256:0123".parse::<ImageRef>(),
            Err(RefError::Digest(_))
        ));
        for bad in [
            "/busybox",
            "h:/x",
            "h:0/x",
            "h:70000/x",
            "h:5a/x",
            "h:+5/x",
            "-h/x",
            "h_1:5000/x",
            "[::1/x",
            "[zz]:1/x",
            "h..x/x",
        ] {
            assert!(
                matches!(bad.parse::<ImageRef>(), Err(RefError::Registry { .. })),
                "{bad:?}: {:?}",
                bad.parse::<ImageRef>()
            );
        }
        for bad in [
            "h:1/",
            "h:1/Busybox",
            "h:1/a//b",
            "h:1/a/",
            "h:1/-a",
            "h:1/a-",
            "h:1/a..b",
            "h:1/a___b",
            "h:1/a.-b",
            "h:1/a b",
        ] {
            assert!(
                matches!(bad.parse::<ImageRef>(), Err(RefError::Repository { .. })),
                "{bad:?}: {:?}",
                bad.parse::<ImageRef>()
            );
        }
        let long = format!("h:1/{}", "a".repeat(256));
        assert!(matches!(
            long.parse::<ImageRef>(),
            Err(RefError::Repository { .. })
        ));
        for bad in ["h:1/a:", "h:1/a:.x", "h:1/a:-x", "h:1/a:x/y", "h:1/a:x!"] {
            assert!(
                matches!(bad.parse::<ImageRef>(), Err(RefError::Tag { .. })),
                "{bad:?}: {:?}",
                bad.parse::<ImageRef>()
            );
        }
        let long_tag = format!("h:1/a:{}", "t".repeat(129));
        assert!(matches!(
            long_tag.parse::<ImageRef>(),
            Err(RefError::Tag { .. })
        ));
        // The messages say what is expected.
        let e = "busybox".parse::<ImageRef>().unwrap_err().to_string();
        assert!(e.contains("HOST[:PORT]/REPO[:TAG]"), "{e}");
    }
}
