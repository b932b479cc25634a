//! The image config and manifest JSON of a built image.
//!
//! The config is kept as the JSON object it came as (an archive's config keeps fields
//! lazyvm does not know, e.g. Docker's `Healthcheck`), checked against the OCI image
//! config schema (`oci-spec`); `rootfs` is replaced by the new layers' diff_ids and
//! `history` dropped (it described the old layers). The manifest is built with
//! `oci-spec`'s types. Both are written as canonical JSON (keys sorted, no spaces), so
//! that the same input gives the same digests.

use std::collections::HashMap;
use std::str::FromStr;

use oci_spec::image::{
    Descriptor, DescriptorBuilder, Digest, ImageConfiguration, ImageManifestBuilder, MediaType,
};
use serde_json::{Map, Value};

use super::layer::{sha256_bytes, Layer};

/// The manifest's media type.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The config's media type.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// `Env` of an image made from a directory, unless `--env PATH=…` says otherwise.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `Cmd` of an image made from a directory, unless `--cmd` says otherwise.
pub const DEFAULT_CMD: &[&str] = &["sh"];

/// Why a config or manifest could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The source image's config is not an OCI image config.
    #[error("the image config is not valid: {0}")]
    BadConfig(String),
    /// An `--env` value without `=`.
    #[error("--env {0:?}: expected KEY=VALUE")]
    BadEnv(String),
    /// A layer's digest or media type was refused by the manifest types.
    #[error("building the manifest: {0}")]
    Build(String),
}

/// What the command line changes in the config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigOverrides {
    /// `--cmd`: replaces `Cmd` when given.
    pub cmd: Option<Vec<String>>,
    /// `--env K=V`: sets K (replacing an entry with the same key), in order.
    pub env: Vec<String>,
}

/// An image config JSON object.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageConfig(Map<String, Value>);

impl ImageConfig {
    /// Parses a source image's config, refusing one that is not an OCI image config.
    pub fn from_json(data: &[u8]) -> Result<ImageConfig, ManifestError> {
        let value: Value =
            serde_json::from_slice(data).map_err(|e| ManifestError::BadConfig(e.to_string()))?;
        serde_json::from_value::<ImageConfiguration>(value.clone())
            .map_err(|e| ManifestError::BadConfig(e.to_string()))?;
        match value {
            Value::Object(map) => Ok(ImageConfig(map)),
            _ => Err(ManifestError::BadConfig("not a JSON object".into())),
        }
    }

    /// The config of an image made from a root filesystem directory: linux/amd64,
    /// [`DEFAULT_PATH`], [`DEFAULT_CMD`].
    pub fn for_rootfs() -> ImageConfig {
        let value = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": [DEFAULT_PATH], "Cmd": DEFAULT_CMD},
            "rootfs": {"type": "layers", "diff_ids": []},
        });
        match value {
            Value::Object(map) => ImageConfig(map),
            _ => unreachable!("a JSON object literal"),
        }
    }

    fn exec_config(&mut self) -> &mut Map<String, Value> {
        let slot = self
            .0
            .entry("config")
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        match slot {
            Value::Object(m) => m,
            _ => unreachable!("made an object above"),
        }
    }

    /// Applies `--cmd` and `--env`.
    pub fn apply(&mut self, overrides: &ConfigOverrides) -> Result<(), ManifestError> {
        for kv in &overrides.env {
            if !kv.contains('=') || kv.starts_with('=') {
                return Err(ManifestError::BadEnv(kv.clone()));
            }
        }
        let config = self.exec_config();
        if let Some(cmd) = &overrides.cmd {
            config.insert("Cmd".into(), serde_json::json!(cmd));
        }
        if !overrides.env.is_empty() {
            let mut env: Vec<String> = config
                .get("Env")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default();
            for kv in &overrides.env {
                let key = kv.split('=').next().unwrap_or_default();
                match env.iter_mut().find(|e| e.split('=').next() == Some(key)) {
                    Some(e) => *e = kv.clone(),
                    None => env.push(kv.clone()),
                }
            }
            config.insert("Env".into(), serde_json::json!(env));
        }
        Ok(())
    }

    fn strings(&self, key: &str) -> Option<Vec<String>> {
        self.0
            .get("config")?
            .get(key)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// `config.Cmd`.
    pub fn cmd(&self) -> Option<Vec<String>> {
        self.strings("Cmd")
    }

    /// `config.Env`.
    pub fn env(&self) -> Option<Vec<String>> {
        self.strings("Env")
    }

    /// The JSON object.
    pub fn as_json(&self) -> &Map<String, Value> {
        &self.0
    }

    /// The config for `diff_ids`, as canonical JSON.
    fn finish(mut self, diff_ids: &[String]) -> Vec<u8> {
        self.0.insert("architecture".into(), "amd64".into());
        self.0.insert("os".into(), "linux".into());
        self.0.insert(
            "rootfs".into(),
            serde_json::json!({"type": "layers", "diff_ids": diff_ids}),
        );
        self.0.remove("history");
        canonical_json(&Value::Object(self.0))
    }
}

/// A built image: its layers in files, its config and manifest.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    /// The layers, bottom first (for nydus: the data blob, then the bootstrap).
    pub layers: Vec<Layer>,
    /// The config JSON.
    pub config: Vec<u8>,
    /// `sha256:…` of `config`.
    pub config_digest: String,
    /// The manifest JSON.
    pub manifest: Vec<u8>,
    /// `sha256:…` of `manifest`: the image's digest.
    pub manifest_digest: String,
}

fn descriptor(
    media_type: &str,
    digest: &str,
    size: u64,
    annotations: Option<HashMap<String, String>>,
) -> Result<Descriptor, ManifestError> {
    let digest = Digest::from_str(digest).map_err(|e| ManifestError::Build(e.to_string()))?;
    let mut b = DescriptorBuilder::default()
        .media_type(MediaType::from(media_type))
        .digest(digest)
        .size(size);
    if let Some(a) = annotations {
        b = b.annotations(a);
    }
    b.build().map_err(|e| ManifestError::Build(e.to_string()))
}

/// Makes the config (with the layers' diff_ids) and the manifest of an image.
pub fn assemble(config: ImageConfig, layers: Vec<Layer>) -> Result<BuiltImage, ManifestError> {
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let config = config.finish(&diff_ids);
    let config_digest = sha256_bytes(&config);
    let layer_descs = layers
        .iter()
        .map(|l| {
            let annotations = (!l.annotations.is_empty()).then(|| {
                l.annotations
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            });
            descriptor(&l.media_type, &l.digest, l.size, annotations)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(
            MEDIA_TYPE_CONFIG,
            &config_digest,
            config.len() as u64,
            None,
        )?)
        .layers(layer_descs)
        .build()
        .map_err(|e| ManifestError::Build(e.to_string()))?;
    let manifest = canonical_json(
        &serde_json::to_value(&manifest).map_err(|e| ManifestError::Build(e.to_string()))?,
    );
    Ok(BuiltImage {
        manifest_digest: sha256_bytes(&manifest),
        manifest,
        config_digest,
        config,
        layers,
    })
}

/// JSON with object keys sorted at every level and no whitespace.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // A serde_json Map keeps insertion order (preserve_order) or sorts (BTreeMap):
    // inserting in sorted order gives sorted output either way.
    serde_json::to_vec(&sorted(value)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn layer(media_type: &str, digest: &str, diff_id: &str, ann: &[(&str, &str)]) -> Layer {
        Layer {
            path: "/nonexistent".into(),
            media_type: media_type.into(),
            digest: digest.into(),
            size: 42,
            diff_id: diff_id.into(),
            annotations: ann
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn manifest_and_config_shape() {
        let layers = vec![
            layer(
                "application/vnd.oci.image.layer.nydus.blob.v1",
                &d('a'),
                &d('a'),
                &[("containerd.io/snapshot/nydus-blob", "true")],
            ),
            layer(
                "application/vnd.oci.image.layer.v1.tar+gzip",
                &d('b'),
                &d('c'),
                &[
                    ("containerd.io/snapshot/nydus-bootstrap", "true"),
                    ("containerd.io/snapshot/nydus-fs-version", "6"),
                ],
            ),
        ];
        let mut config = ImageConfig::for_rootfs();
        config
            .apply(&ConfigOverrides {
                cmd: Some(vec!["echo".into(), "hi".into()]),
                env: vec!["A=1".into()],
            })
            .unwrap();
        let img = assemble(config, layers).unwrap();
        assert_eq!(img.config_digest, sha256_bytes(&img.config));
        assert_eq!(img.manifest_digest, sha256_bytes(&img.manifest));
        let m: Value = serde_json::from_slice(&img.manifest).unwrap();
        assert_eq!(
            m,
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": img.config_digest, "size": img.config.len()},
                "layers": [
                    {"mediaType": "application/vnd.oci.image.layer.nydus.blob.v1",
                     "digest": d('a'), "size": 42,
                     "annotations": {"containerd.io/snapshot/nydus-blob": "true"}},
                    {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                     "digest": d('b'), "size": 42,
                     "annotations": {"containerd.io/snapshot/nydus-bootstrap": "true",
                                     "containerd.io/snapshot/nydus-fs-version": "6"}}
                ]
            })
        );
        let c: Value = serde_json::from_slice(&img.config).unwrap();
        assert_eq!(
            c,
            serde_json::json!({
                "architecture": "amd64",
                "os": "linux",
                "config": {"Env": [DEFAULT_PATH, "A=1"], "Cmd": ["echo", "hi"]},
                "rootfs": {"type": "layers", "diff_ids": [d('a'), d('c')]}
            })
        );
        // Canonical: sorted keys, no spaces; the same input gives the same bytes.
        let text = String::from_utf8(img.manifest.clone()).unwrap();
        assert!(text.starts_with(r#"{"config":{"digest":"#), "{text}");
        assert!(!text.contains(' '));
        // Also parses as an OCI manifest and config.
        serde_json::from_slice::<oci_spec::image::ImageManifest>(&img.manifest).unwrap();
        serde_json::from_slice::<ImageConfiguration>(&img.config).unwrap();
    }

    #[test]
    fn archive_config_is_carried_over() {
        let src = serde_json::json!({
            "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/bin", "A=1"], "Entrypoint": ["/init"],
                       "Cmd": ["run"], "WorkingDir": "/app", "User": "1000:1000",
                       "Labels": {"l": "v"}, "ExposedPorts": {"80/tcp": {}},
                       "StopSignal": "SIGINT", "Healthcheck": {"Test": ["NONE"]}},
            "rootfs": {"type": "layers", "diff_ids": [d('1'), d('2')]},
            "history": [{"created_by": "x"}, {"created_by": "y"}]
        });
        let mut config = ImageConfig::from_json(&serde_json::to_vec(&src).unwrap()).unwrap();
        config
            .apply(&ConfigOverrides {
                cmd: None,
                env: vec!["A=2".into(), "B=3".into()],
            })
            .unwrap();
        assert_eq!(config.cmd().unwrap(), ["run"]);
        let img = assemble(config, vec![layer("x/y", &d('9'), &d('8'), &[])]).unwrap();
        let c: Value = serde_json::from_slice(&img.config).unwrap();
        let mut want = src.clone();
        want["config"]["Env"] = serde_json::json!(["PATH=/bin", "A=2", "B=3"]);
        want["rootfs"]["diff_ids"] = serde_json::json!([d('8')]);
        want.as_object_mut().unwrap().remove("history");
        assert_eq!(c, want);
        let m: Value = serde_json::from_slice(&img.manifest).unwrap();
        assert!(m["layers"][0].get("annotations").is_none());
    }

    #[test]
    fn bad_configs_and_env_are_refused() {
        for bad in [
            &b"not json"[..],
            br#"[1]"#,
            br#"{"architecture":"amd64","os":"linux","config":{"Env":"A=1"},"rootfs":{"type":"layers","diff_ids":[]}}"#,
        ] {
            assert!(
                matches!(ImageConfig::from_json(bad), Err(ManifestError::BadConfig(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut c = ImageConfig::for_rootfs();
        for bad in ["A", "=1", ""] {
            assert!(matches!(
                c.apply(&ConfigOverrides {
                    cmd: None,
                    env: vec![bad.into()]
                }),
                Err(ManifestError::BadEnv(_))
            ));
        }
        assert_eq!(c.env().unwrap(), [DEFAULT_PATH]);
        assert_eq!(c.cmd().unwrap(), ["sh"]);
        // A bad digest cannot reach a manifest.
        assert!(assemble(
            ImageConfig::for_rootfs(),
            vec![layer("x/y", "sha256:zz", "sha256:zz", &[])]
        )
        .is_err());
    }
}
