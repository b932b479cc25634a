//! The `extraoption=` of a `fuse.nydus-overlayfs` rootfs mount.
//!
//! The nydus snapshotter passes `extraoption=<base64(JSON)>` among the mount's options;
//! the JSON holds `source` (the RAFS bootstrap), `config` (nydusd's configuration for the
//! image, which can hold registry credentials), `snapshotdir` (the snapshot's directory,
//! with `fs` and `work` for the overlay) and optionally `fs_version` (`v5` or `v6`).
//!
//! `config` is never printed: neither `Debug` nor `Display` shows it, and no error quotes
//! any part of the JSON.

use std::fmt;
use std::path::PathBuf;

use base64::Engine;
use serde_json::Value;

const KEY: &str = "extraoption=";

/// `options` with the value of any `extraoption=` replaced by `<redacted>`: what may be
/// shown of a nydus rootfs mount (events, logs) without its nydusd configuration, which
/// can hold registry credentials.
pub fn redact_options(options: &[String]) -> Vec<String> {
    options
        .iter()
        .map(|o| {
            if o.starts_with(KEY) {
                format!("{KEY}<redacted>")
            } else {
                o.clone()
            }
        })
        .collect()
}

/// The RAFS format version named by an extraoption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsVersion {
    /// RAFS v5.
    V5,
    /// RAFS v6 (EROFS-compatible).
    V6,
}

/// A decoded extraoption.
#[derive(Clone, PartialEq, Eq)]
pub struct ExtraOption {
    /// The RAFS bootstrap (metadata) file.
    pub source: String,
    config: String,
    /// The snapshot's directory on the host.
    pub snapshotdir: PathBuf,
    /// The RAFS version, when given.
    pub fs_version: Option<FsVersion>,
}

/// Why an extraoption was refused.
#[derive(Debug, thiserror::Error)]
pub enum ExtraOptionError {
    /// No `extraoption=` option.
    #[error("the nydus rootfs mount has no extraoption= option")]
    Missing,
    /// More than one `extraoption=` option.
    #[error("the nydus rootfs mount has {0} extraoption= options; exactly one is allowed")]
    Duplicate(usize),
    /// Not standard base64.
    #[error("the nydus extraoption is not valid base64: {0}")]
    Base64(#[source] base64::DecodeError),
    /// Not JSON.
    #[error("the nydus extraoption is not valid JSON (at line {line}, column {column})")]
    Json {
        /// Line of the error.
        line: usize,
        /// Column of the error.
        column: usize,
    },
    /// JSON, but not an object.
    #[error("the nydus extraoption is not a JSON object")]
    NotAnObject,
    /// A required field is missing or empty.
    #[error("the nydus extraoption has no {0:?} (or it is empty)")]
    MissingField(&'static str),
    /// A field is not a string.
    #[error("the nydus extraoption's {0:?} is not a string")]
    NotAString(&'static str),
    /// An `fs_version` other than `v5` or `v6`.
    #[error("the nydus extraoption's fs_version {0:?} is not supported: use \"v5\" or \"v6\"")]
    FsVersion(String),
}

impl ExtraOption {
    /// Finds and decodes the one `extraoption=` among a mount's options.
    pub fn from_mount_options<S: AsRef<str>>(options: &[S]) -> Result<Self, ExtraOptionError> {
        let mut found = options.iter().filter_map(|o| o.as_ref().strip_prefix(KEY));
        let encoded = found.next().ok_or(ExtraOptionError::Missing)?;
        let extra = found.count();
        if extra > 0 {
            return Err(ExtraOptionError::Duplicate(extra + 1));
        }
        Self::decode(encoded)
    }

    /// Decodes the value of an `extraoption=` option.
    pub fn decode(encoded: &str) -> Result<Self, ExtraOptionError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(ExtraOptionError::Base64)?;
        let json: Value = serde_json::from_slice(&raw).map_err(|e| ExtraOptionError::Json {
            line: e.line(),
            column: e.column(),
        })?;
        let obj = json.as_object().ok_or(ExtraOptionError::NotAnObject)?;
        let required = |field: &'static str| -> Result<String, ExtraOptionError> {
            match obj.get(field) {
                None | Some(Value::Null) => Err(ExtraOptionError::MissingField(field)),
                Some(Value::String(s)) if s.is_empty() => {
                    Err(ExtraOptionError::MissingField(field))
                }
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(ExtraOptionError::NotAString(field)),
            }
        };
        let source = required("source")?;
        let config = required("config")?;
        let snapshotdir = PathBuf::from(required("snapshotdir")?);
        let fs_version = match obj.get("fs_version") {
            None | Some(Value::Null) => None,
            Some(Value::String(v)) => Some(match v.as_str() {
                "v5" => FsVersion::V5,
                "v6" => FsVersion::V6,
                other => return Err(ExtraOptionError::FsVersion(other.to_string())),
            }),
            Some(_) => return Err(ExtraOptionError::NotAString("fs_version")),
        };
        Ok(ExtraOption {
            source,
            config,
            snapshotdir,
            fs_version,
        })
    }

    /// nydusd's configuration for the image. It can hold registry credentials: pass it to
    /// nydusd, never to a log.
    pub fn config(&self) -> &str {
        &self.config
    }
}

impl fmt::Debug for ExtraOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtraOption")
            .field("source", &self.source)
            .field(
                "config",
                &format_args!("<{} bytes, not shown>", self.config.len()),
            )
            .field("snapshotdir", &self.snapshotdir)
            .field("fs_version", &self.fs_version)
            .finish()
    }
}

impl fmt::Display for ExtraOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "source={} snapshotdir={}",
            self.source,
            self.snapshotdir.display()
        )?;
        if let Some(v) = self.fs_version {
            write!(
                f,
                " fs_version={}",
                if v == FsVersion::V5 { "v5" } else { "v6" }
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_options_keep_all_but_the_extraoption() {
        let opts = vec![
            "workdir=/w".to_string(),
            "extraoption=eyJjb25maWciOiJzZWNyZXQifQ==".to_string(),
            "lowerdir=/l".to_string(),
        ];
        assert_eq!(
            redact_options(&opts),
            ["workdir=/w", "extraoption=<redacted>", "lowerdir=/l"]
        );
    }

    const SECRET: &str = "dXNlcjpodW50ZXIy";

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn opt(json: &str) -> String {
        format!("{KEY}{}", b64(json))
    }

    fn good_json() -> String {
        format!(
            r#"{{"source":"/snap/1/fs/image.boot","config":"{{\"device\":{{\"backend\":{{\"type\":\"registry\",\"config\":{{\"auth\":\"{SECRET}\"}}}}}}}}","snapshotdir":"/snap/1","fs_version":"v6"}}"#
        )
    }

    #[test]
    fn decodes_the_one_extraoption() {
        let options = [
            "lowerdir=/a:/b".to_string(),
            opt(&good_json()),
            "upperdir=/u".into(),
        ];
        let e = ExtraOption::from_mount_options(&options).unwrap();
        assert_eq!(e.source, "/snap/1/fs/image.boot");
        assert_eq!(e.snapshotdir, PathBuf::from("/snap/1"));
        assert_eq!(e.fs_version, Some(FsVersion::V6));
        assert!(e.config().contains(SECRET));
    }

    #[test]
    fn never_prints_config() {
        let e = ExtraOption::decode(&b64(&good_json())).unwrap();
        for shown in [format!("{e:?}"), format!("{e}"), format!("{e:#?}")] {
            assert!(!shown.contains(SECRET), "{shown}");
            assert!(!shown.contains("registry"), "{shown}");
        }
        assert!(format!("{e}").contains("/snap/1/fs/image.boot"));
    }

    #[test]
    fn fs_version_is_optional() {
        let e =
            ExtraOption::decode(&b64(r#"{"source":"s","config":"c","snapshotdir":"d"}"#)).unwrap();
        assert_eq!(e.fs_version, None);
        let e = ExtraOption::decode(&b64(
            r#"{"source":"s","config":"c","snapshotdir":"d","fs_version":"v5"}"#,
        ))
        .unwrap();
        assert_eq!(e.fs_version, Some(FsVersion::V5));
    }

    #[test]
    fn each_malformation_has_its_own_error() {
        use ExtraOptionError as E;
        let check = |options: Vec<String>, want: fn(&E) -> bool| {
            let err = ExtraOption::from_mount_options(&options).unwrap_err();
            assert!(want(&err), "{options:?} gave {err:?}");
            assert!(!err.to_string().contains(SECRET), "{err}");
        };
        check(vec!["lowerdir=/a".into()], |e| matches!(e, E::Missing));
        check(vec![], |e| matches!(e, E::Missing));
        check(vec![opt(&good_json()), opt(&good_json())], |e| {
            matches!(e, E::Duplicate(2))
        });
        check(vec![format!("{KEY}not*base64!")], |e| {
            matches!(e, E::Base64(_))
        });
        check(vec![format!("{KEY}")], |e| matches!(e, E::Json { .. }));
        check(vec![opt(&format!("{{\"config\":\"{SECRET}\""))], |e| {
            matches!(e, E::Json { .. })
        });
        check(vec![opt("[1,2]")], |e| matches!(e, E::NotAnObject));
        for field in ["source", "config", "snapshotdir"] {
            let mut v: Value = serde_json::from_str(&good_json()).unwrap();
            v.as_object_mut().unwrap().remove(field);
            check(vec![opt(&v.to_string())], |e| {
                matches!(e, E::MissingField(_))
            });
            let err = ExtraOption::decode(&b64(&v.to_string())).unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
            v[field] = Value::String(String::new());
            check(vec![opt(&v.to_string())], |e| {
                matches!(e, E::MissingField(_))
            });
            v[field] = serde_json::json!({"auth": SECRET});
            check(vec![opt(&v.to_string())], |e| matches!(e, E::NotAString(_)));
        }
        check(
            vec![opt(
                r#"{"source":"s","config":"c","snapshotdir":"d","fs_version":"v7"}"#,
            )],
            |e| matches!(e, E::FsVersion(v) if v == "v7"),
        );
        check(
            vec![opt(
                r#"{"source":"s","config":"c","snapshotdir":"d","fs_version":6}"#,
            )],
            |e| matches!(e, E::NotAString("fs_version")),
        );
    }
}
