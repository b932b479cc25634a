//! The snapshotter's configuration file (TOML): where it listens, where it keeps its
//! snapshots, and how nydusd reaches each registry.
//!
//! ```toml
//! socket = "/run/lazyvm-snapshotter/snapshotter.sock"
//! root = "/var/lib/lazyvm-snapshotter"
//!
//! [registries."registry.example:5000"]
//! plain_http = true          # as containerd's registry mirrors with an http:// endpoint
//! username = "puller"        # optional credentials, handed to nydusd, never logged
//! password = "secret"
//! ```
//!
//! Credentials are never shown: `Debug` of a [`Registry`] prints `<redacted>` in their
//! place.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The default socket containerd's `proxy_plugins` entry points at.
pub const DEFAULT_SOCKET: &str = "/run/lazyvm-snapshotter/snapshotter.sock";
/// The default root of the snapshots and their metadata.
pub const DEFAULT_ROOT: &str = "/var/lib/lazyvm-snapshotter";

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said (never a value: the file may hold credentials).
        message: String,
    },
    /// A value is not acceptable.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The unix socket of the gRPC snapshots service.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Snapshots (`snapshots/<id>/{fs,work}`), metadata (`metadata.redb`) and nydusd's
    /// blob cache (`cache/`).
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// How to reach each registry, by `host[:port]` as image references name it.
    #[serde(default)]
    pub registries: BTreeMap<String, Registry>,
}

/// How nydusd reaches one registry.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Plain HTTP instead of HTTPS.
    #[serde(default)]
    pub plain_http: bool,
    /// The `host[:port]` to contact instead of the one in the image reference (a mirror).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Skip TLS certificate verification.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Basic-auth user name.
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password.
    #[serde(default)]
    pub password: Option<String>,
    /// A bearer token, instead of user name and password.
    #[serde(default)]
    pub token: Option<String>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("Registry")
            .field("plain_http", &self.plain_http)
            .field("endpoint", &self.endpoint)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("token", &hidden(&self.token))
            .finish()
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

fn default_root() -> PathBuf {
    PathBuf::from(DEFAULT_ROOT)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: default_socket(),
            root: default_root(),
            registries: BTreeMap::new(),
        }
    }
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and checks `text` (read from `path`, named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            // The message alone: toml's Display quotes the offending line, which may be a
            // password.
            message: e.message().to_string(),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        for (what, p) in [("socket", &config.socket), ("root", &config.root)] {
            if !p.is_absolute() {
                return Err(invalid(format!("{what} must be an absolute path")));
            }
        }
        for (host, r) in &config.registries {
            if host.is_empty() || host.contains('/') {
                return Err(invalid(format!(
                    "registries.{host:?}: a registry is named by host[:port]"
                )));
            }
            if r.password.is_some() && r.username.is_none() {
                return Err(invalid(format!(
                    "registries.{host:?}: a password needs a username"
                )));
            }
            if r.token.is_some() && r.username.is_some() {
                return Err(invalid(format!(
                    "registries.{host:?}: give a token or a username, not both"
                )));
            }
        }
        Ok(config)
    }

    /// The settings for registry `host` (defaults when the file names none).
    pub fn registry(&self, host: &str) -> Registry {
        self.registries.get(host).cloned().unwrap_or_default()
    }

    /// nydusd's blob cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/x.toml"))
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(
            c.cache_dir(),
            Path::new("/var/lib/lazyvm-snapshotter/cache")
        );
        assert!(!c.registry("docker.io").plain_http);
    }

    #[test]
    fn registries() {
        let c = parse(
            r#"
root = "/srv/snap"
[registries."127.0.0.1:5000"]
plain_http = true
username = "u"
password = "hunter2"
"#,
        )
        .unwrap();
        let r = c.registry("127.0.0.1:5000");
        assert!(r.plain_http);
        assert_eq!(r.password.as_deref(), Some("hunter2"));
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn refusals_name_the_problem_and_never_a_secret() {
        for (text, want) in [
            ("socket = \"rel.sock\"", "socket must be an absolute path"),
            ("[registries.\"a/b\"]", "host[:port]"),
            ("[registries.x]\npassword = \"p\"", "needs a username"),
            (
                "[registries.x]\nusername = \"u\"\ntoken = \"t\"",
                "a token or a username",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        let e = parse("[registries.x]\npasword = \"hunter2\"")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("pasword"), "{e}");
    }
}
