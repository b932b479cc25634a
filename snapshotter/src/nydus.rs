//! What makes a layer a nydus layer, and the `fuse.nydus-overlayfs` mount a nydus
//! container gets (byte-compatible with nydus-snapshotter's Kata mode).
//!
//! containerd labels each layer's Prepare (with `disable_snapshot_annotations = false`):
//! a nydus data layer has [`BLOB_LABEL`] and [`TARGET_REF_LABEL`] (its chain id); the
//! bootstrap layer has [`BOOTSTRAP_LABEL`] and [`FS_VERSION_LABEL`]; every layer has
//! [`IMAGE_REF_LABEL`].

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use serde_json::json;

use crate::config::Registry;

/// A nydus data layer: never fetched, nydusd reads it from the registry on demand.
pub const BLOB_LABEL: &str = "containerd.io/snapshot/nydus-blob";
/// The nydus bootstrap (metadata) layer: unpacked like any layer, it holds
/// [`BOOTSTRAP_PATH`].
pub const BOOTSTRAP_LABEL: &str = "containerd.io/snapshot/nydus-bootstrap";
/// The RAFS version of a bootstrap layer (`5` or `6`).
pub const FS_VERSION_LABEL: &str = "containerd.io/snapshot/nydus-fs-version";
/// The snapshot a layer's unpack should end as (its chain id).
pub const TARGET_REF_LABEL: &str = "containerd.io/snapshot.ref";
/// The image the layer belongs to, as the CRI pulled it.
pub const IMAGE_REF_LABEL: &str = "containerd.io/snapshot/cri.image-ref";
/// The layer's digest.
pub const LAYER_DIGEST_LABEL: &str = "containerd.io/snapshot/cri.layer-digest";
/// The bootstrap's path inside the bootstrap layer.
pub const BOOTSTRAP_PATH: &str = "image/image.boot";
/// The mount type our shim (and Kata) take a nydus rootfs from.
pub const MOUNT_TYPE: &str = "fuse.nydus-overlayfs";

/// Why a nydus mount could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NydusError {
    /// The bootstrap layer has no image reference label.
    #[error("the nydus bootstrap layer {0:?} has no {IMAGE_REF_LABEL} label: pull the image through the CRI")]
    NoImageRef(String),
    /// The image reference does not parse.
    #[error("the image reference {0:?} is not host/repository[:tag][@digest]")]
    BadImageRef(String),
    /// The bootstrap layer does not hold a bootstrap.
    #[error("the nydus bootstrap layer {layer:?} of {image} has no {BOOTSTRAP_PATH}: the image is broken")]
    NoBootstrap {
        /// The layer's snapshot name.
        layer: String,
        /// The image.
        image: String,
    },
    /// The RAFS version label is neither 5 nor 6.
    #[error(
        "the nydus bootstrap layer {layer:?} names RAFS version {version:?}: 5 or 6 is supported"
    )]
    FsVersion {
        /// The layer's snapshot name.
        layer: String,
        /// The label's value.
        version: String,
    },
}

/// Whether `labels` mark a nydus data layer; its target snapshot name if so.
pub fn data_layer_target(labels: &HashMap<String, String>) -> Option<&str> {
    if labels.get(BLOB_LABEL).map(String::as_str) != Some("true") {
        return None;
    }
    labels
        .get(TARGET_REF_LABEL)
        .map(String::as_str)
        .filter(|t| !t.is_empty())
}

/// Whether `labels` mark a nydus bootstrap layer.
pub fn is_bootstrap_layer(labels: &HashMap<String, String>) -> bool {
    labels.get(BOOTSTRAP_LABEL).map(String::as_str) == Some("true")
}

/// A registry location parsed from an image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLocation {
    /// `host[:port]`.
    pub host: String,
    /// The repository, e.g. `library/busybox`.
    pub repo: String,
}

/// Splits `ref` (`host[:port]/repo[:tag][@digest]`, or a Docker Hub short name) into the
/// registry host and the repository.
pub fn parse_image_ref(r: &str) -> Result<ImageLocation, NydusError> {
    let bad = || NydusError::BadImageRef(r.to_string());
    let name = r.split('@').next().unwrap_or_default();
    // A tag follows the last ':' after the last '/'.
    let name = match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    };
    let (host, repo) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        Some(_) => ("docker.io".to_string(), name.to_string()),
        None => ("docker.io".to_string(), format!("library/{name}")),
    };
    let valid = |s: &str| {
        !s.is_empty()
            && s.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            })
    };
    if !valid(&repo) || host.is_empty() || host.contains(|c: char| c.is_whitespace()) {
        return Err(bad());
    }
    let repo = if host == "docker.io" && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo
    };
    Ok(ImageLocation { host, repo })
}

/// The host nydusd contacts for registry `host`: its configured endpoint, Docker Hub's
/// registry for `docker.io`, else `host` itself.
fn endpoint(host: &str, registry: &Registry) -> String {
    match &registry.endpoint {
        Some(e) => e.clone(),
        None if host == "docker.io" => "registry-1.docker.io".to_string(),
        None => host.to_string(),
    }
}

/// nydusd's configuration (v1) for an image at `location`, reading from the registry
/// and caching blobs in `cache_dir`. Holds the registry's credentials, if any: never log
/// it.
pub fn nydusd_config(location: &ImageLocation, registry: &Registry, cache_dir: &Path) -> String {
    let mut backend = json!({
        "scheme": if registry.plain_http { "http" } else { "https" },
        "host": endpoint(&location.host, registry),
        "repo": location.repo,
        "skip_verify": registry.insecure_skip_verify,
        "timeout": 30,
        "connect_timeout": 10,
        "retry_limit": 2,
    });
    if let Some(user) = &registry.username {
        let pair = format!("{user}:{}", registry.password.as_deref().unwrap_or(""));
        backend["auth"] = json!(base64::engine::general_purpose::STANDARD.encode(pair));
    }
    if let Some(token) = &registry.token {
        backend["registry_token"] = json!(token);
    }
    json!({
        "device": {
            "backend": {"type": "registry", "config": backend},
            "cache": {"type": "blobcache", "config": {"work_dir": cache_dir}},
        },
        "mode": "direct",
        "digest_validate": false,
        "enable_xattr": true,
        "iostats_files": false,
    })
    .to_string()
}

/// The RAFS version string of a bootstrap layer's labels (`v5`, `v6`; `v6` when absent).
pub fn fs_version(
    layer: &str,
    labels: &HashMap<String, String>,
) -> Result<&'static str, NydusError> {
    match labels.get(FS_VERSION_LABEL).map(String::as_str) {
        None | Some("6") | Some("v6") => Ok("v6"),
        Some("5") | Some("v5") => Ok("v5"),
        Some(other) => Err(NydusError::FsVersion {
            layer: layer.to_string(),
            version: other.to_string(),
        }),
    }
}

/// The `extraoption=` mount option: base64 of the JSON the shim decodes.
pub fn extraoption(bootstrap: &Path, config: &str, snapshotdir: &Path, fs_version: &str) -> String {
    let json = json!({
        "source": bootstrap,
        "config": config,
        "snapshotdir": snapshotdir,
        "fs_version": fs_version,
    });
    format!(
        "extraoption={}",
        base64::engine::general_purpose::STANDARD.encode(json.to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refs() {
        for (r, host, repo) in [
            (
                "127.0.0.1:5000/lazyvm/app:v1",
                "127.0.0.1:5000",
                "lazyvm/app",
            ),
            ("127.0.0.1:5000/app", "127.0.0.1:5000", "app"),
            ("reg.example/a/b/c@sha256:00", "reg.example", "a/b/c"),
            ("reg.example/a:t@sha256:00", "reg.example", "a"),
            ("localhost/x", "localhost", "x"),
            ("busybox", "docker.io", "library/busybox"),
            ("docker.io/busybox:1", "docker.io", "library/busybox"),
            ("user/app:1", "docker.io", "user/app"),
        ] {
            let l = parse_image_ref(r).unwrap();
            assert_eq!((l.host.as_str(), l.repo.as_str()), (host, repo), "{r}");
        }
        for bad in ["", "host.x/", "host.x/UPPER", "a//b", "host.x/a b"] {
            assert!(parse_image_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels() {
        let mut l = HashMap::from([(BLOB_LABEL.to_string(), "true".to_string())]);
        assert_eq!(data_layer_target(&l), None, "a blob layer needs its target");
        l.insert(TARGET_REF_LABEL.into(), "sha256:c".into());
        assert_eq!(data_layer_target(&l), Some("sha256:c"));
        l.insert(BLOB_LABEL.into(), "false".into());
        assert_eq!(data_layer_target(&l), None);
        assert!(!is_bootstrap_layer(&l));
        l.insert(BOOTSTRAP_LABEL.into(), "true".into());
        assert!(is_bootstrap_layer(&l));
        assert_eq!(fs_version("b", &l).unwrap(), "v6");
        l.insert(FS_VERSION_LABEL.into(), "5".into());
        assert_eq!(fs_version("b", &l).unwrap(), "v5");
        l.insert(FS_VERSION_LABEL.into(), "7".into());
        assert!(fs_version("b", &l)
            .unwrap_err()
            .to_string()
            .contains("\"7\""));
    }

    #[test]
    fn config_and_extraoption() {
        let loc = parse_image_ref("127.0.0.1:5000/lazyvm/app:v1").unwrap();
        let reg = Registry {
            plain_http: true,
            username: Some("u".into()),
            password: Some("p".into()),
            ..Default::default()
        };
        let c: serde_json::Value =
            serde_json::from_str(&nydusd_config(&loc, &reg, Path::new("/c"))).unwrap();
        let b = &c["device"]["backend"]["config"];
        assert_eq!(c["device"]["backend"]["type"], "registry");
        assert_eq!(b["scheme"], "http");
        assert_eq!(b["host"], "127.0.0.1:5000");
        assert_eq!(b["repo"], "lazyvm/app");
        assert_eq!(b["auth"], "dTpw");
        assert_eq!(c["device"]["cache"]["config"]["work_dir"], "/c");
        assert_eq!(c["mode"], "direct");

        let hub = parse_image_ref("busybox").unwrap();
        let c: serde_json::Value =
            serde_json::from_str(&nydusd_config(&hub, &Registry::default(), Path::new("/c")))
                .unwrap();
        assert_eq!(c["device"]["backend"]["config"]["scheme"], "https");
        assert_eq!(
            c["device"]["backend"]["config"]["host"],
            "registry-1.docker.io"
        );
        assert!(c["device"]["backend"]["config"].get("auth").is_none());

        let opt = extraoption(Path::new("/b/image.boot"), "{}", Path::new("/s/1"), "v6");
        let b64 = opt.strip_prefix("extraoption=").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let j: serde_json::Value = serde_json::from_slice(&decoded).unwrap();
        assert_eq!(j["source"], "/b/image.boot");
        assert_eq!(j["config"], "{}");
        assert_eq!(j["snapshotdir"], "/s/1");
        assert_eq!(j["fs_version"], "v6");
    }
}
