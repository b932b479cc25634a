//! `lazyvm image convert`: turns a root filesystem or an OCI image archive into a nydus
//! (RAFS v6) image, or a plain OCI image of the same files, and pushes it to a registry.
//!
//! One module per concept:
//! - [`reference`](mod@reference) parses the target `HOST[:PORT]/REPO[:TAG]`;
//! - [`archive`] reads an OCI image layout tar (`ctr images export`, `docker save`), picks
//!   its linux/amd64 image and unpacks the layers safely (whiteouts, no escape);
//! - [`layer`] writes layer files (gzip tars) and hashes them;
//! - [`nydus`] runs `nydus-image` and makes the data blob and bootstrap layers;
//! - [`manifest`] is the image config and the manifest JSON;
//! - [`push`] uploads the blobs and the manifest with `oci-client`.
//!
//! [`convert`] does all of it in a temporary directory that is removed afterwards.

pub mod archive;
pub mod layer;
pub mod manifest;
pub mod nydus;
pub mod push;
pub mod reference;

use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use archive::{ArchiveError, ArchiveImage, OciArchive};
pub use layer::{Layer, LayerError};
pub use manifest::{BuiltImage, ConfigOverrides, ImageConfig, ManifestError};
pub use nydus::NydusError;
pub use push::{Credentials, PushError, PushOptions, PushReport, Pusher};
pub use reference::{ImageRef, RefError};

/// Where the image's files come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// An OCI image layout tar (`oci-archive:PATH`).
    OciArchive(PathBuf),
    /// A root filesystem directory (`dir:ROOTFS`).
    Dir(PathBuf),
}

impl FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, path) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected oci-archive:PATH or dir:ROOTFS"))?;
        if path.is_empty() {
            return Err(format!("{s:?}: the path is empty"));
        }
        match kind {
            "oci-archive" => Ok(Source::OciArchive(path.into())),
            "dir" => Ok(Source::Dir(path.into())),
            _ => Err(format!(
                "{s:?}: unknown source kind {kind:?} (expected oci-archive:PATH or dir:ROOTFS)"
            )),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::OciArchive(p) => write!(f, "oci-archive:{}", p.display()),
            Source::Dir(p) => write!(f, "dir:{}", p.display()),
        }
    }
}

/// The kind of image to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// A nydus image: RAFS v6 data blob + bootstrap layer (lazily pulled).
    #[default]
    Nydus,
    /// A plain OCI image: one gzip tar layer of the whole root filesystem.
    Oci,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nydus" => Ok(Format::Nydus),
            "oci" => Ok(Format::Oci),
            _ => Err(format!("unknown format {s:?} (expected nydus or oci)")),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Nydus => "nydus",
            Format::Oci => "oci",
        })
    }
}

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The OCI archive could not be read or unpacked.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// nydus-image failed, or its output was not as expected.
    #[error(transparent)]
    Nydus(#[from] NydusError),
    /// A layer file could not be written.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// The image config or manifest could not be made.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The registry could not be reached or refused the image.
    #[error(transparent)]
    Push(#[from] PushError),
    /// The source directory is not usable.
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
    /// The temporary work directory could not be made.
    #[error("creating a temporary directory: {0}")]
    TempDir(std::io::Error),
    /// A blocking step panicked or was lost.
    #[error("internal error: {0}")]
    Internal(String),
    /// The conversion was interrupted (Ctrl-C).
    #[error("interrupted")]
    Cancelled,
}

/// Progress bars (on stderr when it is a terminal, hidden otherwise) and the
/// cancellation flag of one conversion. Clones share both.
#[derive(Clone)]
pub struct Progress {
    multi: MultiProgress,
    cancel: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Progress {
    /// Bars drawn on stderr when stderr is a terminal, hidden otherwise.
    pub fn stderr() -> Progress {
        if std::io::stderr().is_terminal() {
            Self::with_target(ProgressDrawTarget::stderr())
        } else {
            Self::hidden()
        }
    }

    /// No bars at all (tests, scripts).
    pub fn hidden() -> Progress {
        Self::with_target(ProgressDrawTarget::hidden())
    }

    fn with_target(target: ProgressDrawTarget) -> Progress {
        Progress {
            multi: MultiProgress::with_draw_target(target),
            cancel: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    /// Asks the conversion to stop: its loops and waits notice, it cleans up and
    /// returns [`ConvertError::Cancelled`].
    pub fn cancel(&self) {
        self.cancel.send_replace(true);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Completes when [`cancel`](Self::cancel) is called.
    pub async fn cancelled(&self) {
        let mut rx = self.cancel.subscribe();
        // The sender lives in self: wait_for cannot fail while we are borrowed.
        let _ = rx.wait_for(|c| *c).await;
    }

    /// A bar counting `total` bytes.
    pub(crate) fn bytes(&self, message: impl Into<String>, total: u64) -> Bar {
        let bar = self.multi.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:40!} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {eta:>4}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(message.into());
        Bar(bar)
    }

    /// A spinner for a step of unknown length.
    pub(crate) fn spinner(&self, message: impl Into<String>) -> Bar {
        self.spinner_with(message, "{spinner} {msg} {elapsed}")
    }

    /// A spinner that also shows the bytes it was told of.
    pub(crate) fn byte_spinner(&self, message: impl Into<String>) -> Bar {
        self.spinner_with(message, "{spinner} {msg} {bytes} {elapsed}")
    }

    fn spinner_with(&self, message: impl Into<String>, template: &str) -> Bar {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(message.into());
        bar.enable_steady_tick(Duration::from_millis(120));
        Bar(bar)
    }

    /// Removes every bar from the terminal (before an error message).
    pub fn clear(&self) {
        let _ = self.multi.clear();
    }

    /// Prints a line above the bars (nothing when they are hidden).
    pub(crate) fn note(&self, line: impl AsRef<str>) {
        let _ = self.multi.println(line.as_ref());
    }

    fn check(&self) -> Result<(), ConvertError> {
        if self.is_cancelled() {
            Err(ConvertError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// A progress bar that leaves the terminal when dropped, on error paths too.
pub(crate) struct Bar(ProgressBar);

impl std::ops::Deref for Bar {
    type Target = ProgressBar;

    fn deref(&self) -> &ProgressBar {
        &self.0
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Everything a conversion needs.
#[derive(Clone, Debug)]
pub struct ConvertRequest {
    /// Where the files come from.
    pub source: Source,
    /// Where the image goes.
    pub target: ImageRef,
    /// Nydus or plain OCI.
    pub format: Format,
    /// `--cmd` / `--env`.
    pub overrides: ConfigOverrides,
    /// The nydus-image binary (see [`nydus::find_nydus_image`]); unused for [`Format::Oci`].
    pub nydus_image: PathBuf,
    /// How to reach the registry.
    pub push: PushOptions,
}

/// What a conversion made and pushed.
#[derive(Clone, Debug)]
pub struct ConvertReport {
    /// The reference pushed to.
    pub target: ImageRef,
    /// The image's format.
    pub format: Format,
    /// The number of layers in the manifest.
    pub layers: usize,
    /// The nydus data blob's size in bytes (0 without one, or for OCI).
    pub blob_bytes: u64,
    /// The nydus bootstrap layer's (gzip tar) size in bytes (0 for OCI).
    pub bootstrap_bytes: u64,
    /// All layers' sizes in bytes.
    pub total_bytes: u64,
    /// `sha256:…` of the manifest.
    pub manifest_digest: String,
    /// Blobs uploaded (layers and config).
    pub uploaded: usize,
    /// Blobs the registry already had.
    pub skipped: usize,
}

impl fmt::Display for ConvertReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.layers == 1 { "" } else { "s" };
        write!(
            f,
            "converted {}: {} layer{plural}, ",
            self.target, self.layers
        )?;
        match self.format {
            Format::Nydus => write!(
                f,
                "blob {:.1} MiB, bootstrap {:.1} KiB",
                self.blob_bytes as f64 / (1 << 20) as f64,
                self.bootstrap_bytes as f64 / 1024.0
            )?,
            Format::Oci => write!(f, "{:.1} MiB", self.total_bytes as f64 / (1 << 20) as f64)?,
        }
        write!(f, ", digest {}", self.manifest_digest)
    }
}

/// Builds the image from `source` in `work` (an empty directory the caller removes) and
/// returns its layer files, config and manifest. For an OCI archive the layers are
/// unpacked into `work/rootfs` first.
pub async fn build(
    source: &Source,
    format: Format,
    overrides: &ConfigOverrides,
    nydus_image: &Path,
    work: &Path,
    progress: &Progress,
) -> Result<BuiltImage, ConvertError> {
    let (rootfs, mut config) = match source {
        Source::Dir(dir) => {
            if !dir.is_dir() {
                return Err(ConvertError::NotADirectory(dir.clone()));
            }
            (dir.clone(), ImageConfig::for_rootfs())
        }
        Source::OciArchive(path) => {
            let (path, work_owned, progress_owned) =
                (path.clone(), work.to_path_buf(), progress.clone());
            blocking(move || unpack_archive(&path, &work_owned, &progress_owned)).await??
        }
    };
    config.apply(overrides)?;
    progress.check()?;
    let layers = match format {
        Format::Nydus => {
            let out = work.join("nydus");
            let rafs = nydus::build_rafs(nydus_image, &rootfs, &out, progress).await?;
            progress.check()?;
            let progress = progress.clone();
            blocking(move || nydus::nydus_layers(&rafs, &out, &progress)).await??
        }
        Format::Oci => {
            let out = work.join("layer.tar.gz");
            let progress = progress.clone();
            vec![blocking(move || layer::rootfs_layer(&rootfs, &out, &progress)).await??]
        }
    };
    progress.check()?;
    Ok(manifest::assemble(config, layers)?)
}

fn unpack_archive(
    path: &Path,
    work: &Path,
    progress: &Progress,
) -> Result<(PathBuf, ImageConfig), ConvertError> {
    let archive = OciArchive::open(path, work)?;
    let image = archive.image()?;
    let config = ImageConfig::from_json(&image.config)?;
    let rootfs = work.join("rootfs");
    archive::make_root(&rootfs).map_err(|e| ArchiveError::Io {
        what: format!("creating {}", rootfs.display()),
        source: e,
    })?;
    archive.unpack(&image, &rootfs, progress)?;
    Ok((rootfs, config))
}

/// Runs `f` on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ConvertError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ConvertError::Internal(e.to_string()))
}

/// Converts `req.source` and pushes the image to `req.target`. The registry is
/// contacted first (so that an unreachable one fails before a long build); all the
/// intermediate files live in a temporary directory removed before this returns.
pub async fn convert(
    req: &ConvertRequest,
    progress: &Progress,
) -> Result<ConvertReport, ConvertError> {
    // A bad --env fails before anything is contacted or built.
    ImageConfig::for_rootfs().apply(&req.overrides)?;
    let pusher = tokio::select! {
        p = Pusher::connect(&req.target, &req.push) => p?,
        _ = progress.cancelled() => return Err(ConvertError::Cancelled),
    };
    let work = tempfile::Builder::new()
        .prefix("lazyvm-image-")
        .tempdir()
        .map_err(ConvertError::TempDir)?;
    // Whatever happens below, `work` is removed when it goes out of scope; the blocking
    // steps poll the cancel flag, and build() only returns once they have stopped.
    let built = build(
        &req.source,
        req.format,
        &req.overrides,
        &req.nydus_image,
        work.path(),
        progress,
    )
    .await?;
    let pushed = tokio::select! {
        r = pusher.push(&built, progress) => r?,
        _ = progress.cancelled() => return Err(ConvertError::Cancelled),
    };
    let size_of = |annotation: &str| {
        built
            .layers
            .iter()
            .filter(|l| l.annotations.contains_key(annotation))
            .map(|l| l.size)
            .sum()
    };
    Ok(ConvertReport {
        target: req.target.clone(),
        format: req.format,
        layers: built.layers.len(),
        blob_bytes: size_of(nydus::ANNOTATION_NYDUS_BLOB),
        bootstrap_bytes: size_of(nydus::ANNOTATION_NYDUS_BOOTSTRAP),
        total_bytes: built.layers.iter().map(|l| l.size).sum(),
        manifest_digest: built.manifest_digest.clone(),
        uploaded: pushed.uploaded,
        skipped: pushed.skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_parses() {
        assert_eq!(
            "oci-archive:/tmp/a.tar".parse::<Source>().unwrap(),
            Source::OciArchive("/tmp/a.tar".into())
        );
        assert_eq!(
            "dir:rootfs".parse::<Source>().unwrap(),
            Source::Dir("rootfs".into())
        );
        assert_eq!(
            "dir:/a:b".parse::<Source>().unwrap(),
            Source::Dir("/a:b".into())
        );
        for bad in ["", "rootfs", "dir:", "docker:x", "oci-archive:"] {
            assert!(bad.parse::<Source>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn format_parses() {
        assert_eq!("nydus".parse::<Format>().unwrap(), Format::Nydus);
        assert_eq!("oci".parse::<Format>().unwrap(), Format::Oci);
        assert!("rafs".parse::<Format>().is_err());
    }

    #[test]
    fn report_line() {
        let mut r = ConvertReport {
            target: "127.0.0.1:5000/a/b:v1".parse().unwrap(),
            format: Format::Nydus,
            layers: 2,
            blob_bytes: 3 << 20,
            bootstrap_bytes: 2048,
            total_bytes: (3 << 20) + 2048,
            manifest_digest: "sha256:ab".into(),
            uploaded: 3,
            skipped: 0,
        };
        assert_eq!(
            r.to_string(),
            "converted 127.0.0.1:5000/a/b:v1: 2 layers, blob 3.0 MiB, bootstrap 2.0 KiB, digest sha256:ab"
        );
        r.format = Format::Oci;
        r.layers = 1;
        assert_eq!(
            r.to_string(),
            "converted 127.0.0.1:5000/a/b:v1: 1 layer, 3.0 MiB, digest sha256:ab"
        );
    }

    #[tokio::test]
    async fn cancel_wakes_waiters() {
        let p = Progress::hidden();
        assert!(!p.is_cancelled());
        let q = p.clone();
        let waiter = tokio::spawn(async move { q.cancelled().await });
        p.cancel();
        waiter.await.unwrap();
        assert!(p.is_cancelled());
        assert!(matches!(p.check(), Err(ConvertError::Cancelled)));
    }
}
