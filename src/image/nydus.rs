//! Nydus images: `nydus-image create` makes a RAFS v6 bootstrap and data blob of a
//! directory; [`nydus_layers`] turns them into the two layers nydus-snapshotter expects:
//!
//! 1. the data blob, `application/vnd.oci.image.layer.nydus.blob.v1`, digest (and
//!    diff_id) `sha256:<blob id>` (the blob file's name, the sha256 of its bytes),
//!    annotation `containerd.io/snapshot/nydus-blob: "true"`;
//! 2. the bootstrap, a gzip tar of `image/image.boot`,
//!    `application/vnd.oci.image.layer.v1.tar+gzip`, annotations
//!    `containerd.io/snapshot/nydus-bootstrap: "true"` and
//!    `containerd.io/snapshot/nydus-fs-version: "6"`.
//!
//! An empty directory gives no blob: the image is then the bootstrap layer alone.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::layer::{sha256_file, GzipTarWriter, Layer, LayerError, MEDIA_TYPE_TAR_GZIP};
use super::Progress;

/// The data blob's media type.
pub const MEDIA_TYPE_NYDUS_BLOB: &str = "application/vnd.oci.image.layer.nydus.blob.v1";
// The layer annotations are the labels lazyvm-snapshotter reads (containerd hands a
// layer's annotations to the snapshotter as labels): one definition for both sides.
/// Marks the data blob layer.
pub const ANNOTATION_NYDUS_BLOB: &str = lazyvm_snapshotter::nydus::BLOB_LABEL;
/// Marks the bootstrap layer.
pub const ANNOTATION_NYDUS_BOOTSTRAP: &str = lazyvm_snapshotter::nydus::BOOTSTRAP_LABEL;
/// The RAFS version of the bootstrap layer.
pub const ANNOTATION_NYDUS_FS_VERSION: &str = lazyvm_snapshotter::nydus::FS_VERSION_LABEL;
/// The RAFS version built.
pub const FS_VERSION: &str = "6";
/// The bootstrap's path in its layer tar.
pub use lazyvm_snapshotter::nydus::BOOTSTRAP_PATH;
/// The environment variable naming the nydus-image binary.
pub const NYDUS_IMAGE_ENV: &str = "LAZYVM_NYDUS_IMAGE";

/// Why the nydus image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NydusError {
    /// No nydus-image binary was found.
    #[error("nydus-image not found (${NYDUS_IMAGE_ENV}, beside nydusd at {beside}, or on PATH): run `make deps`")]
    NotFound {
        /// Where it was looked for beside nydusd.
        beside: String,
    },
    /// nydus-image could not be started.
    #[error("running {path}: {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// nydus-image exited with an error.
    #[error("nydus-image failed ({status}): {stderr}")]
    Failed {
        /// Its exit status.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// nydus-image's output is not what a nydus image is made of.
    #[error("unexpected nydus-image output: {0}")]
    Output(String),
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The bootstrap layer could not be written.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// The conversion was cancelled.
    #[error("interrupted")]
    Cancelled,
}

/// The nydus-image to run: `$LAZYVM_NYDUS_IMAGE`, else `nydus-image` beside `nydusd`
/// (the configured nydusd), else the first `nydus-image` on PATH.
pub fn find_nydus_image(nydusd: &Path) -> Result<PathBuf, NydusError> {
    if let Some(p) = std::env::var_os(NYDUS_IMAGE_ENV) {
        return Ok(PathBuf::from(p));
    }
    let beside = nydusd.with_file_name("nydus-image");
    if beside.is_file() {
        return Ok(beside);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nydus-image");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(NydusError::NotFound {
        beside: beside.display().to_string(),
    })
}

/// What `nydus-image create` made.
#[derive(Clone, Debug)]
pub struct RafsBuild {
    /// The bootstrap (metadata) file.
    pub bootstrap: PathBuf,
    /// The data blob, if the tree had any data: file, `sha256:<blob id>`, size.
    pub blob: Option<(PathBuf, String, u64)>,
}

/// The command line of `nydus-image create` for `rootfs`, writing into `out`.
pub fn create_args(rootfs: &Path, bootstrap: &Path, blob_dir: &Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = [
        "create",
        "--type",
        "dir-rafs",
        "--fs-version",
        FS_VERSION,
        "--log-level",
        "warn",
        "--bootstrap",
    ]
    .iter()
    .map(Into::into)
    .collect();
    args.push(bootstrap.into());
    args.push("--blob-dir".into());
    args.push(blob_dir.into());
    args.push(rootfs.into());
    args
}

/// Runs `nydus-image create` on `rootfs`, its outputs in `out` (created): `image.boot`
/// and `blobs/<blob id>`. Checks that the blob's name is the sha256 of its bytes.
pub async fn build_rafs(
    nydus_image: &Path,
    rootfs: &Path,
    out: &Path,
    progress: &Progress,
) -> Result<RafsBuild, NydusError> {
    let io_err = |what: String| move |source| NydusError::Io { what, source };
    let blob_dir = out.join("blobs");
    std::fs::create_dir_all(&blob_dir)
        .map_err(io_err(format!("creating {}", blob_dir.display())))?;
    let bootstrap = out.join("image.boot");
    let spinner = progress.spinner("building the RAFS image (nydus-image)");
    let mut child = tokio::process::Command::new(nydus_image)
        .args(create_args(rootfs, &bootstrap, &blob_dir))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| NydusError::Spawn {
            path: nydus_image.to_path_buf(),
            source,
        })?;
    let stdout = tokio::spawn(read_all(child.stdout.take()));
    let stderr = tokio::spawn(read_all(child.stderr.take()));
    let status = {
        let mut wait = Box::pin(child.wait());
        tokio::select! {
            s = &mut wait => Some(s),
            _ = progress.cancelled() => None,
        }
    };
    let Some(status) = status else {
        // Killed and reaped before our caller removes the directory it writes in.
        let _ = child.kill().await;
        return Err(NydusError::Cancelled);
    };
    let status = status.map_err(|source| NydusError::Spawn {
        path: nydus_image.to_path_buf(),
        source,
    })?;
    let output = std::process::Output {
        status,
        stdout: stdout.await.unwrap_or_default(),
        stderr: stderr.await.unwrap_or_default(),
    };
    spinner.finish_and_clear();
    if !output.status.success() {
        let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if stderr.is_empty() {
            stderr = String::from_utf8_lossy(&output.stdout).trim().to_string();
        }
        return Err(NydusError::Failed {
            status: output.status.to_string(),
            stderr,
        });
    }
    if !bootstrap.is_file() {
        return Err(NydusError::Output(format!(
            "no bootstrap at {}",
            bootstrap.display()
        )));
    }
    let blobs: Vec<PathBuf> = std::fs::read_dir(&blob_dir)
        .map_err(io_err(format!("reading {}", blob_dir.display())))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io_err(format!("reading {}", blob_dir.display())))?;
    let blob = match blobs.as_slice() {
        [] => None,
        [one] => {
            let name = one
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let bar = progress.bytes(
                "checking the data blob",
                std::fs::metadata(one).map(|m| m.len()).unwrap_or(0),
            );
            let path = one.clone();
            let (digest, size) =
                tokio::task::spawn_blocking(move || sha256_file(&path, &bar).map(|r| (r, bar)))
                    .await
                    .map_err(|e| NydusError::Output(e.to_string()))?
                    .map(|(r, bar)| {
                        bar.finish_and_clear();
                        r
                    })
                    .map_err(io_err(format!("reading {}", one.display())))?;
            if digest != format!("sha256:{name}") {
                return Err(NydusError::Output(format!(
                    "the blob {name} has sha256 {digest}: its name is not its digest"
                )));
            }
            Some((one.clone(), digest, size))
        }
        more => {
            return Err(NydusError::Output(format!(
                "{} blobs in {} (expected one)",
                more.len(),
                blob_dir.display()
            )))
        }
    };
    Ok(RafsBuild { bootstrap, blob })
}

/// Everything a pipe gives until it closes.
async fn read_all(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut out).await;
    }
    out
}

/// The image's layers: the data blob (if any) as is, then the bootstrap as a gzip tar
/// written to `out/bootstrap.tar.gz`.
pub fn nydus_layers(
    build: &RafsBuild,
    out: &Path,
    progress: &Progress,
) -> Result<Vec<Layer>, NydusError> {
    let mut layers = Vec::new();
    if let Some((path, digest, size)) = &build.blob {
        layers.push(Layer {
            path: path.clone(),
            media_type: MEDIA_TYPE_NYDUS_BLOB.to_string(),
            digest: digest.clone(),
            size: *size,
            diff_id: digest.clone(),
            annotations: BTreeMap::from([(ANNOTATION_NYDUS_BLOB.to_string(), "true".to_string())]),
        });
    }
    if progress.is_cancelled() {
        return Err(NydusError::Cancelled);
    }
    layers.push(bootstrap_layer(
        &build.bootstrap,
        &out.join("bootstrap.tar.gz"),
    )?);
    Ok(layers)
}

/// The bootstrap layer: a gzip tar of `image/` and `image/image.boot` (root-owned,
/// 0755 / 0644, mtime 0, so that the same bootstrap gives the same layer).
pub fn bootstrap_layer(bootstrap: &Path, out: &Path) -> Result<Layer, NydusError> {
    let io_err = |what: String| move |source| NydusError::Io { what, source };
    let mut file = std::fs::File::open(bootstrap)
        .map_err(io_err(format!("opening {}", bootstrap.display())))?;
    let size = file
        .metadata()
        .map_err(io_err(format!("reading {}", bootstrap.display())))?
        .len();
    let mut w = GzipTarWriter::create(out)?;
    let write_err = io_err(format!("writing {}", out.display()));
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_uid(0);
    dir.set_gid(0);
    dir.set_mtime(0);
    dir.set_size(0);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    let r = w
        .tar()
        .append_data(&mut dir, "image/", io::empty())
        .and_then(|()| w.tar().append_data(&mut h, BOOTSTRAP_PATH, &mut file));
    r.map_err(write_err)?;
    let mut layer = w.finish(MEDIA_TYPE_TAR_GZIP)?;
    layer.annotations = BTreeMap::from([
        (ANNOTATION_NYDUS_BOOTSTRAP.to_string(), "true".to_string()),
        (
            ANNOTATION_NYDUS_FS_VERSION.to_string(),
            FS_VERSION.to_string(),
        ),
    ]);
    Ok(layer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn create_command_line() {
        let args = create_args(
            Path::new("/r"),
            Path::new("/o/image.boot"),
            Path::new("/o/b"),
        );
        let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "create",
                "--type",
                "dir-rafs",
                "--fs-version",
                "6",
                "--log-level",
                "warn",
                "--bootstrap",
                "/o/image.boot",
                "--blob-dir",
                "/o/b",
                "/r"
            ]
        );
    }

    #[test]
    fn bootstrap_layer_holds_image_boot() {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("image.boot");
        std::fs::write(&boot, vec![5u8; 10000]).unwrap();
        let out = dir.path().join("b.tar.gz");
        let layer = bootstrap_layer(&boot, &out).unwrap();
        assert_eq!(layer.media_type, MEDIA_TYPE_TAR_GZIP);
        assert_eq!(
            layer.annotations,
            BTreeMap::from([
                (ANNOTATION_NYDUS_BOOTSTRAP.into(), "true".into()),
                (ANNOTATION_NYDUS_FS_VERSION.into(), "6".into()),
            ])
        );
        let gz = std::fs::read(&out).unwrap();
        assert_eq!(layer.digest, super::super::layer::sha256_bytes(&gz));
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(layer.diff_id, super::super::layer::sha256_bytes(&tar));
        let mut a = tar::Archive::new(tar.as_slice());
        let mut names = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            if name == BOOTSTRAP_PATH {
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                assert_eq!(data, vec![5u8; 10000]);
            }
            names.push(name);
        }
        assert_eq!(names, ["image/", BOOTSTRAP_PATH]);
        // Reproducible.
        let again = bootstrap_layer(&boot, &dir.path().join("c.tar.gz")).unwrap();
        assert_eq!(again.digest, layer.digest);
    }

    #[test]
    fn layers_without_a_blob() {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("image.boot");
        std::fs::write(&boot, b"boot").unwrap();
        let layers = nydus_layers(
            &RafsBuild {
                bootstrap: boot.clone(),
                blob: None,
            },
            dir.path(),
            &Progress::hidden(),
        )
        .unwrap();
        assert_eq!(layers.len(), 1);
        let blob = dir.path().join("ab");
        std::fs::write(&blob, b"data").unwrap();
        let layers = nydus_layers(
            &RafsBuild {
                bootstrap: boot,
                blob: Some((blob, format!("sha256:{}", "a".repeat(64)), 4)),
            },
            dir.path(),
            &Progress::hidden(),
        )
        .unwrap();
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[0].media_type, MEDIA_TYPE_NYDUS_BLOB);
        assert_eq!(layers[0].diff_id, layers[0].digest);
        assert_eq!(layers[0].annotations[ANNOTATION_NYDUS_BLOB], "true");
    }

    #[tokio::test]
    async fn nydus_image_failure_carries_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        // sh takes `create` for a script to run, fails and says so on stderr.
        let e = build_rafs(
            Path::new("/bin/sh"),
            dir.path(),
            &dir.path().join("out"),
            &Progress::hidden(),
        )
        .await
        .unwrap_err();
        let s = e.to_string();
        assert!(matches!(e, NydusError::Failed { .. }), "{s}");
        assert!(
            s.contains("nydus-image failed (exit status: ") && s.contains("create"),
            "{s}"
        );
        let e = build_rafs(
            &dir.path().join("missing"),
            dir.path(),
            &dir.path().join("out2"),
            &Progress::hidden(),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, NydusError::Spawn { .. }), "{e}");
    }
}
