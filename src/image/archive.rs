//! OCI image archives: the image layout tar that `ctr images export` and
//! `docker save` write (`oci-layout`, `index.json`, `blobs/sha256/…`), possibly gzipped.
//!
//! [`OciArchive::image`] follows `index.json` (through nested indexes) to the linux/amd64
//! manifest and reads its config; [`OciArchive::unpack`] applies its layers in order to
//! a directory with [`apply_layer`]: OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) are
//! honoured, modes, owners, symlinks and hard links kept, and an entry that would land
//! outside the directory (`..`, an absolute path, a path through a symlink that leads
//! out) is refused with an error.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{File, FileTimes};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use oci_spec::image::{Arch, Descriptor, ImageIndex, ImageManifest, Os};

use super::layer::{sha256_bytes, HashingReader};
use super::Progress;

/// An OCI or Docker index (manifest list).
const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
/// An OCI or Docker image manifest.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
/// How deep indexes may nest.
const MAX_INDEX_DEPTH: usize = 4;
/// The largest JSON document (index, manifest, config) read into memory.
const MAX_JSON: u64 = 16 << 20;

/// Why an archive could not be read or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The archive is not an OCI image layout.
    #[error("{path}: not an OCI image archive: {why}")]
    NotOciLayout {
        /// The archive.
        path: PathBuf,
        /// What is missing or wrong.
        why: String,
    },
    /// A JSON document of the layout could not be parsed.
    #[error("{what}: {why}")]
    BadJson {
        /// Which document.
        what: String,
        /// The parser's message.
        why: String,
    },
    /// No manifest for linux/amd64.
    #[error("{path}: no linux/amd64 image in the archive (found: {found})")]
    NoLinuxAmd64 {
        /// The archive.
        path: PathBuf,
        /// The platforms seen, or "nothing".
        found: String,
    },
    /// A blob the image needs is not in the archive.
    #[error("{digest} ({what}) is not in the archive{hint}")]
    MissingBlob {
        /// Its digest.
        digest: String,
        /// What it is.
        what: String,
        /// How to export it completely.
        hint: &'static str,
    },
    /// A blob's content does not match its digest or size.
    #[error("{what} {digest}: the archive holds {found} ({size} bytes): corrupt archive")]
    DigestMismatch {
        /// What it is.
        what: String,
        /// The digest expected.
        digest: String,
        /// The digest found.
        found: String,
        /// The size found.
        size: u64,
    },
    /// A layer type that cannot be unpacked here.
    #[error("layer {index} ({digest}): unsupported media type {media_type}")]
    UnsupportedLayer {
        /// 1-based position in the manifest.
        index: usize,
        /// Its digest.
        digest: String,
        /// Its media type.
        media_type: String,
    },
    /// A layer entry that would land outside the root.
    #[error("layer entry {entry:?} {why}: refused")]
    Escape {
        /// The entry's path (or link target).
        entry: String,
        /// Why it escapes.
        why: &'static str,
    },
    /// A layer entry could not be applied.
    #[error("layer entry {entry:?}: {source}")]
    Entry {
        /// The entry's path.
        entry: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A layer failed (with its position), for errors inside [`apply_layer`].
    #[error("layer {index} ({digest}): {source}")]
    Layer {
        /// 1-based position in the manifest.
        index: usize,
        /// Its digest.
        digest: String,
        /// The error.
        #[source]
        source: Box<ArchiveError>,
    },
    /// The conversion was cancelled.
    #[error("interrupted")]
    Cancelled,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ArchiveError {
    let what = what.into();
    move |source| ArchiveError::Io { what, source }
}

/// An OCI image archive, indexed: where each blob sits in the tar.
pub struct OciArchive {
    path: PathBuf,
    /// The (uncompressed) tar file the offsets are in.
    tar_path: PathBuf,
    /// Keeps a decompressed copy of a gzipped archive alive.
    _decompressed: Option<tempfile::TempPath>,
    /// Regular files of the tar by normalized path: (data offset, size).
    files: HashMap<String, (u64, u64)>,
}

/// The image picked from an archive.
#[derive(Clone, Debug)]
pub struct ArchiveImage {
    /// `sha256:…` of its manifest.
    pub manifest_digest: String,
    /// The image config JSON, as in the archive.
    pub config: Vec<u8>,
    /// Its layers, bottom first.
    pub layers: Vec<Descriptor>,
}

/// Creates `root` as an empty directory with mode 0755 (the root of an image).
pub fn make_root(root: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().mode(0o755).create(root)?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))
}

/// `s` cut to 100 characters, with anything but printable ASCII (a tar error quotes raw
/// header bytes) as `?`.
fn printable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if s.chars().count() > 100 {
        out.push('…');
    }
    out
}

/// A path of the archive's tar, without `./` and trailing `/`.
fn normalize_member(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(p) => parts.push(p.to_str()?),
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

impl OciArchive {
    /// Opens and indexes the archive at `path`. A gzipped archive is decompressed into
    /// `work` first.
    pub fn open(path: &Path, work: &Path) -> Result<OciArchive, ArchiveError> {
        let mut file = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
        let mut magic = [0u8; 2];
        let n = file
            .read(&mut magic)
            .map_err(io_err(format!("reading {}", path.display())))?;
        let (tar_path, decompressed) = if n == 2 && magic == [0x1f, 0x8b] {
            let tmp = tempfile::Builder::new()
                .prefix("archive-")
                .suffix(".tar")
                .tempfile_in(work)
                .map_err(io_err(format!("creating a file in {}", work.display())))?;
            let gz = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
            let mut out = tmp.as_file();
            io::copy(
                &mut flate2::read::MultiGzDecoder::new(BufReader::new(gz)),
                &mut out,
            )
            .map_err(io_err(format!("decompressing {}", path.display())))?;
            let tmp = tmp.into_temp_path();
            (tmp.to_path_buf(), Some(tmp))
        } else {
            (path.to_path_buf(), None)
        };
        let file =
            File::open(&tar_path).map_err(io_err(format!("opening {}", tar_path.display())))?;
        let mut tar = tar::Archive::new(file);
        let mut files = HashMap::new();
        let not_tar = |e: io::Error| ArchiveError::NotOciLayout {
            path: path.to_path_buf(),
            why: format!("not a readable tar ({})", printable(&e.to_string())),
        };
        for entry in tar.entries_with_seek().map_err(not_tar)? {
            let entry = entry.map_err(not_tar)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry.path().map_err(not_tar)?;
            if let Some(name) = normalize_member(&name) {
                files.insert(name, (entry.raw_file_position(), entry.size()));
            }
        }
        if !files.contains_key("index.json") {
            return Err(ArchiveError::NotOciLayout {
                path: path.to_path_buf(),
                why: if files.contains_key("manifest.json") {
                    "no index.json (a `docker save` archive of Docker before 25 has only \
                     manifest.json: save with a newer Docker or export with `ctr images export`)"
                        .into()
                } else {
                    "no index.json".into()
                },
            });
        }
        Ok(OciArchive {
            path: path.to_path_buf(),
            tar_path,
            _decompressed: decompressed,
            files,
        })
    }

    /// A reader of the member `name`, if the archive has it.
    fn member(&self, name: &str) -> Result<Option<(io::Take<File>, u64)>, ArchiveError> {
        let Some(&(offset, size)) = self.files.get(name) else {
            return Ok(None);
        };
        let what = || format!("reading {} in {}", name, self.path.display());
        let mut f = File::open(&self.tar_path).map_err(io_err(what()))?;
        f.seek(SeekFrom::Start(offset)).map_err(io_err(what()))?;
        Ok(Some((f.take(size), size)))
    }

    fn blob_name(digest: &oci_spec::image::Digest) -> String {
        // Digest's parser admits only [a-z0-9+._-] in the algorithm and [a-zA-Z0-9=_-]
        // in the value: no '/' nor "..".
        format!("blobs/{}/{}", digest.algorithm(), digest.digest())
    }

    /// Whether the archive holds the blob `digest`.
    fn has_blob(&self, digest: &oci_spec::image::Digest) -> bool {
        self.files.contains_key(&Self::blob_name(digest))
    }

    /// Reads a small blob and checks it against its descriptor.
    fn read_blob(&self, desc: &Descriptor, what: &str) -> Result<Vec<u8>, ArchiveError> {
        let digest = desc.digest().to_string();
        let missing = || ArchiveError::MissingBlob {
            digest: digest.clone(),
            what: what.to_string(),
            hint: "",
        };
        let (reader, size) = self
            .member(&Self::blob_name(desc.digest()))?
            .ok_or_else(missing)?;
        if size > MAX_JSON {
            return Err(ArchiveError::BadJson {
                what: format!("{what} {digest}"),
                why: format!("{size} bytes is too big for a JSON document"),
            });
        }
        let mut data = Vec::with_capacity(size as usize);
        BufReader::new(reader)
            .read_to_end(&mut data)
            .map_err(io_err(format!("reading {what} {digest}")))?;
        let found = sha256_bytes(&data);
        if desc.digest().algorithm().as_ref() != "sha256"
            || found != digest
            || data.len() as u64 != desc.size()
        {
            return Err(ArchiveError::DigestMismatch {
                what: what.to_string(),
                digest,
                found,
                size: data.len() as u64,
            });
        }
        Ok(data)
    }

    /// Finds the linux/amd64 image: `index.json`'s entries in order, nested indexes
    /// followed, the first manifest whose platform (or, without one, whose config) says
    /// linux/amd64.
    pub fn image(&self) -> Result<ArchiveImage, ArchiveError> {
        let (reader, _) = self
            .member("index.json")?
            .ok_or_else(|| ArchiveError::NotOciLayout {
                path: self.path.clone(),
                why: "no index.json".into(),
            })?;
        let mut data = Vec::new();
        reader
            .take(MAX_JSON)
            .read_to_end(&mut data)
            .map_err(io_err("reading index.json"))?;
        let index: ImageIndex =
            serde_json::from_slice(&data).map_err(|e| ArchiveError::BadJson {
                what: "index.json".into(),
                why: e.to_string(),
            })?;
        let mut found = Vec::new();
        match self.find_in(index.manifests(), 0, &mut found)? {
            Some(image) => Ok(image),
            None => Err(ArchiveError::NoLinuxAmd64 {
                path: self.path.clone(),
                found: if found.is_empty() {
                    "nothing".into()
                } else {
                    found.join(", ")
                },
            }),
        }
    }

    fn find_in(
        &self,
        descs: &[Descriptor],
        depth: usize,
        found: &mut Vec<String>,
    ) -> Result<Option<ArchiveImage>, ArchiveError> {
        for desc in descs {
            let media_type = desc.media_type().to_string();
            let platform = desc
                .platform()
                .as_ref()
                .map(|p| (p.os().clone(), p.architecture().clone()));
            if let Some((os, arch)) = &platform {
                if *os != Os::Linux || *arch != Arch::Amd64 {
                    found.push(format!("{os}/{arch}"));
                    continue;
                }
            }
            if INDEX_TYPES.contains(&media_type.as_str()) {
                if depth >= MAX_INDEX_DEPTH || !self.has_blob(desc.digest()) {
                    continue;
                }
                let data = self.read_blob(desc, "index")?;
                let index: ImageIndex =
                    serde_json::from_slice(&data).map_err(|e| ArchiveError::BadJson {
                        what: format!("index {}", desc.digest()),
                        why: e.to_string(),
                    })?;
                if let Some(image) = self.find_in(index.manifests(), depth + 1, found)? {
                    return Ok(Some(image));
                }
            } else if MANIFEST_TYPES.contains(&media_type.as_str()) {
                if !self.has_blob(desc.digest()) {
                    if platform.is_some() {
                        return Err(ArchiveError::MissingBlob {
                            digest: desc.digest().to_string(),
                            what: "the linux/amd64 manifest".into(),
                            hint: " (export with `ctr images export --platform linux/amd64`)",
                        });
                    }
                    continue;
                }
                let image = self.read_manifest(desc)?;
                let (os, arch) = config_platform(&image.config);
                if platform.is_none() && (os != "linux" || arch != "amd64") {
                    found.push(format!("{os}/{arch}"));
                    continue;
                }
                return Ok(Some(image));
            }
            // Anything else (attestations, signatures, unknown types) is not an image.
        }
        Ok(None)
    }

    fn read_manifest(&self, desc: &Descriptor) -> Result<ArchiveImage, ArchiveError> {
        let data = self.read_blob(desc, "manifest")?;
        let manifest: ImageManifest =
            serde_json::from_slice(&data).map_err(|e| ArchiveError::BadJson {
                what: format!("manifest {}", desc.digest()),
                why: e.to_string(),
            })?;
        let config = self.read_blob(manifest.config(), "image config")?;
        for l in manifest.layers() {
            if !self.has_blob(l.digest()) {
                return Err(ArchiveError::MissingBlob {
                    digest: l.digest().to_string(),
                    what: "a layer".into(),
                    hint: " (ctr exports layers it has not pulled as nothing: pull the \
                           image fully, e.g. `ctr images pull --all-platforms` or \
                           `ctr content fetch`, then export again)",
                });
            }
        }
        Ok(ArchiveImage {
            manifest_digest: desc.digest().to_string(),
            config,
            layers: manifest.layers().clone(),
        })
    }

    /// Applies the image's layers, bottom first, to `root` (an existing directory),
    /// checking each layer's digest and size as it is read.
    pub fn unpack(
        &self,
        image: &ArchiveImage,
        root: &Path,
        progress: &Progress,
    ) -> Result<(), ArchiveError> {
        if !rustix::process::geteuid().is_root() {
            log::warn!(
                "not running as root: the archive's file owners are not kept (the image's \
                 files will belong to uid {})",
                rustix::process::geteuid().as_raw()
            );
        }
        let total = image.layers.iter().map(|l| l.size()).sum();
        let bar = progress.bytes(format!("unpacking {} layer(s)", image.layers.len()), total);
        for (i, desc) in image.layers.iter().enumerate() {
            let index = i + 1;
            let digest = desc.digest().to_string();
            let media_type = desc.media_type().to_string();
            if !(media_type.contains(".tar") || media_type.contains("rootfs.diff.tar"))
                || media_type.ends_with("+zstd")
                || media_type.contains("nydus")
            {
                return Err(ArchiveError::UnsupportedLayer {
                    index,
                    digest,
                    media_type,
                });
            }
            let wrap = |e: ArchiveError| ArchiveError::Layer {
                index,
                digest: digest.clone(),
                source: Box::new(e),
            };
            let (reader, size) =
                self.member(&Self::blob_name(desc.digest()))?
                    .ok_or_else(|| ArchiveError::MissingBlob {
                        digest: digest.clone(),
                        what: "a layer".into(),
                        hint: "",
                    })?;
            let mut hashing = HashingReader::new(reader, bar.clone());
            apply_compressed(&mut hashing, root, progress, &media_type).map_err(wrap)?;
            // Whatever the decompressor left (tar padding, gzip trailer) is hashed too.
            io::copy(&mut hashing, &mut io::sink())
                .map_err(io_err(format!("reading layer {digest}")))?;
            let (found, read) = hashing.finish();
            if found != digest || read != desc.size() || size != desc.size() {
                return Err(ArchiveError::DigestMismatch {
                    what: format!("layer {index}"),
                    digest,
                    found,
                    size: read,
                });
            }
        }
        bar.finish_and_clear();
        Ok(())
    }
}

/// The os and architecture an image config declares ("?" when it does not).
fn config_platform(config: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(config).unwrap_or_default();
    let get = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_string();
    (get("os"), get("architecture"))
}

/// Applies one layer read from `reader`: gzip (by its magic bytes) or plain tar.
fn apply_compressed(
    reader: &mut impl Read,
    root: &Path,
    progress: &Progress,
    media_type: &str,
) -> Result<(), ArchiveError> {
    let mut buffered = BufReader::with_capacity(1 << 20, reader);
    let head = buffered
        .fill_buf()
        .map_err(io_err("reading a layer"))?
        .to_vec();
    if head.starts_with(&[0x1f, 0x8b]) {
        apply_layer_cancellable(flate2::read::MultiGzDecoder::new(buffered), root, progress)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(ArchiveError::Entry {
            entry: String::new(),
            source: io::Error::other(format!(
                "zstd-compressed layers are not supported ({media_type})"
            )),
        })
    } else {
        apply_layer_cancellable(buffered, root, progress)
    }
}

/// Applies one uncompressed layer tar to `root` (an existing directory):
///
/// - `.wh.NAME` removes NAME and `.wh..wh..opq` empties its directory, both only of what
///   earlier layers made (not what this layer made before them), as the OCI spec says;
/// - an entry replaces what is at its path, except a directory onto a directory, which
///   merges;
/// - modes (set-id bits too), owners (when running as root), mtimes, xattrs, symlinks,
///   hard links, devices and FIFOs are kept;
/// - an entry whose path or hard-link target has `..` or is absolute, or whose parent
///   resolves outside `root` through a symlink, fails the layer with
///   [`ArchiveError::Escape`].
pub fn apply_layer<R: Read>(layer: R, root: &Path) -> Result<(), ArchiveError> {
    apply_layer_cancellable(layer, root, &Progress::hidden())
}

fn apply_layer_cancellable<R: Read>(
    layer: R,
    root: &Path,
    progress: &Progress,
) -> Result<(), ArchiveError> {
    let root = root
        .canonicalize()
        .map_err(io_err(format!("resolving {}", root.display())))?;
    let as_root = rustix::process::geteuid().is_root();
    let mut tar = tar::Archive::new(layer);
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(as_root);
    tar.set_preserve_mtime(true);
    tar.set_unpack_xattrs(true);
    tar.set_overwrite(true);
    // What this layer made so far: whiteouts leave those alone.
    let mut made: HashSet<PathBuf> = HashSet::new();
    // Directory mtimes, set once their contents are in.
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    let bad_tar = |e: io::Error| ArchiveError::Entry {
        entry: String::new(),
        source: io::Error::new(e.kind(), format!("reading the layer tar: {e}")),
    };
    for entry in tar.entries().map_err(bad_tar)? {
        if progress.is_cancelled() {
            return Err(ArchiveError::Cancelled);
        }
        let mut entry = entry.map_err(bad_tar)?;
        let raw = entry.path().map_err(bad_tar)?.into_owned();
        let shown = raw.display().to_string();
        let rel = clean(&raw, &shown)?;
        let entry_err = |source: io::Error| ArchiveError::Entry {
            entry: shown.clone(),
            source,
        };
        let kind = entry.header().entry_type();
        let Some(name) = rel.file_name().map(OsStr::to_owned) else {
            // The root itself: its mode and owner.
            if kind.is_dir() {
                set_meta(&root, entry.header(), as_root).map_err(entry_err)?;
            }
            continue;
        };
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let name_bytes = name.as_bytes();
        if let Some(hidden) = name_bytes.strip_prefix(b".wh.") {
            let Some(parent) = resolve_dir(&root, &parent_rel, false, &shown)? else {
                continue; // nothing below to hide
            };
            if hidden == b".wh..opq" {
                let children = std::fs::read_dir(&parent).map_err(entry_err)?;
                for child in children {
                    let child = child.map_err(entry_err)?;
                    if !made.contains(&parent_rel.join(child.file_name())) {
                        remove_any(&child.path()).map_err(entry_err)?;
                    }
                }
            } else if !hidden.starts_with(b".wh.") && !hidden.is_empty() {
                let hidden = OsStr::from_bytes(hidden);
                if !made.contains(&parent_rel.join(hidden)) {
                    remove_any(&parent.join(hidden)).map_err(entry_err)?;
                }
            }
            // Other `.wh..wh.*` names are aufs bookkeeping: nothing to apply.
            continue;
        }
        if kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(entry_err)?
                .ok_or_else(|| entry_err(io::Error::other("hard link without a target")))?
                .into_owned();
            let target = clean(&target, &shown)?;
            // Its directory must stay inside the root (the link itself is not followed).
            resolve_dir(
                &root,
                target.parent().unwrap_or(Path::new("")),
                false,
                &shown,
            )?;
        }
        let parent = resolve_dir(&root, &parent_rel, true, &shown)?
            .ok_or_else(|| entry_err(io::Error::other("parent directory missing")))?;
        let dst = parent.join(&name);
        // Replace what is there, unless a directory lands on a directory.
        if let Ok(old) = std::fs::symlink_metadata(&dst) {
            if !(kind.is_dir() && old.is_dir()) {
                remove_any(&dst).map_err(entry_err)?;
            }
        }
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            if !as_root && !kind.is_fifo() {
                log::warn!("{shown}: device node skipped (needs root)");
                continue;
            }
            make_node(&dst, entry.header()).map_err(entry_err)?;
        } else {
            match entry.unpack_in(&root) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(ArchiveError::Escape {
                        entry: shown,
                        why: "leaves the root",
                    })
                }
                Err(e) if format!("{e:?}").contains("outside of destination") => {
                    return Err(ArchiveError::Escape {
                        entry: shown,
                        why: "resolves outside the root through a symlink",
                    })
                }
                Err(e) => return Err(entry_err(e)),
            }
            if kind.is_dir() {
                if let Ok(mtime) = entry.header().mtime() {
                    dir_times.push((dst.clone(), mtime));
                }
            }
        }
        made.insert(rel);
    }
    // Deepest first, so that setting a child's time does not touch its parent's.
    for (dir, mtime) in dir_times.iter().rev() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(*mtime);
        if let Ok(f) = File::open(dir) {
            let _ = f.set_times(FileTimes::new().set_modified(t).set_accessed(t));
        }
    }
    Ok(())
}

/// The entry path as a relative path of plain components; `..`, absolute paths and
/// other prefixes are refused.
fn clean(path: &Path, shown: &str) -> Result<PathBuf, ArchiveError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                return Err(ArchiveError::Escape {
                    entry: shown.to_string(),
                    why: "has a '..' component",
                })
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::Escape {
                    entry: shown.to_string(),
                    why: "is an absolute path",
                })
            }
        }
    }
    Ok(out)
}

/// The real directory `rel` names under `root` (symlinks on the way followed but required
/// to stay inside `root`); missing directories are made when `create`, else `None`.
fn resolve_dir(
    root: &Path,
    rel: &Path,
    create: bool,
    shown: &str,
) -> Result<Option<PathBuf>, ArchiveError> {
    let err = |source: io::Error| ArchiveError::Entry {
        entry: shown.to_string(),
        source,
    };
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        let next = cur.join(c);
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.is_dir() => cur = next,
            Ok(m) if m.file_type().is_symlink() => {
                let real = match next.canonicalize() {
                    Ok(r) => r,
                    // A dangling link: nothing there to write through.
                    Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
                    Err(e) => return Err(err(e)),
                };
                if !real.starts_with(root) {
                    return Err(ArchiveError::Escape {
                        entry: shown.to_string(),
                        why: "resolves outside the root through a symlink",
                    });
                }
                if !real.is_dir() {
                    return Err(err(io::Error::other(format!(
                        "{} is not a directory",
                        next.strip_prefix(root).unwrap_or(&next).display()
                    ))));
                }
                cur = real;
            }
            Ok(_) => {
                if !create {
                    return Ok(None);
                }
                return Err(err(io::Error::other(format!(
                    "{} is not a directory",
                    next.strip_prefix(root).unwrap_or(&next).display()
                ))));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                std::fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&next)
                    .map_err(err)?;
                cur = next;
            }
            Err(e) => return Err(err(e)),
        }
    }
    Ok(Some(cur))
}

/// Removes a file, symlink or whole directory tree (never following a symlink).
fn remove_any(path: &Path) -> io::Result<()> {
    let r = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Mode, owner (as root) and mtime of `path` from a tar header.
fn set_meta(path: &Path, h: &tar::Header, as_root: bool) -> io::Result<()> {
    if as_root {
        std::os::unix::fs::lchown(path, Some(h.uid()? as u32), Some(h.gid()? as u32))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(h.mode()? & 0o7777))?;
    if let Ok(mtime) = h.mtime() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime);
        File::open(path)?.set_times(FileTimes::new().set_modified(t).set_accessed(t))?;
    }
    Ok(())
}

/// Makes a device node or FIFO at `dst` as the header says.
fn make_node(dst: &Path, h: &tar::Header) -> io::Result<()> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let kind = h.entry_type();
    let (flag, dev) = if kind.is_fifo() {
        (SFlag::S_IFIFO, 0)
    } else {
        let major = h.device_major()?.unwrap_or(0);
        let minor = h.device_minor()?.unwrap_or(0);
        let flag = if kind.is_character_special() {
            SFlag::S_IFCHR
        } else {
            SFlag::S_IFBLK
        };
        (flag, makedev(major.into(), minor.into()))
    };
    mknod(dst, flag, Mode::from_bits_truncate(0o600), dev).map_err(io::Error::from)?;
    let as_root = rustix::process::geteuid().is_root();
    if as_root {
        std::os::unix::fs::lchown(dst, Some(h.uid()? as u32), Some(h.gid()? as u32))?;
    }
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(h.mode()? & 0o7777))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A layer tar from (path, kind) entries; kind: "dir", "file:CONTENT",
    /// "link:TARGET" (symlink), "hard:TARGET".
    fn layer(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1_000_000);
            h.set_uid(0);
            h.set_gid(0);
            if *kind == "dir" {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, io::empty()).unwrap();
            } else if let Some(content) = kind.strip_prefix("file:") {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o640);
                h.set_size(content.len() as u64);
                b.append_data(&mut h, path, content.as_bytes()).unwrap();
            } else if let Some(target) = kind.strip_prefix("link:") {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            } else if let Some(target) = kind.strip_prefix("hard:") {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o640);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            } else {
                panic!("{kind}");
            }
        }
        b.into_inner().unwrap()
    }

    /// Writes a raw header whose path the tar crate's builder would refuse ("..",
    /// absolute).
    fn raw_layer(path: &str, link: Option<(&str, tar::EntryType)>) -> Vec<u8> {
        let mut h = tar::Header::new_old();
        {
            let bytes = h.as_old_mut();
            bytes.name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some((target, _)) = link {
                bytes.linkname[..target.len()].copy_from_slice(target.as_bytes());
            }
        }
        h.set_mode(0o644);
        h.set_size(if link.is_some() { 0 } else { 1 });
        h.set_entry_type(link.map(|l| l.1).unwrap_or(tar::EntryType::Regular));
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        if link.is_none() {
            let mut block = [0u8; 512];
            block[0] = b'x';
            out.extend_from_slice(&block);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn tree(root: &Path) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            let mut names: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            for p in names {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                let m = std::fs::symlink_metadata(&p).unwrap();
                if m.file_type().is_symlink() {
                    out.push(format!(
                        "{rel} -> {}",
                        std::fs::read_link(&p).unwrap().display()
                    ));
                } else if m.is_dir() {
                    out.push(format!("{rel}/"));
                    walk(root, &p, out);
                } else {
                    out.push(format!("{rel} = {}", std::fs::read_to_string(&p).unwrap()));
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        out
    }

    fn new_root() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        make_root(&root).unwrap();
        (dir, root)
    }

    #[test]
    fn layers_stack_with_whiteouts() {
        let (_dir, root) = new_root();
        apply_layer(
            layer(&[
                ("etc", "dir"),
                ("etc/a", "file:a1"),
                ("etc/b", "file:b1"),
                ("var", "dir"),
                ("var/cache", "dir"),
                ("var/cache/x", "file:x"),
                ("var/cache/sub", "dir"),
                ("var/cache/sub/y", "file:y"),
                ("bin", "dir"),
                ("bin/busybox", "file:bb"),
                ("bin/sh", "link:busybox"),
                ("bin/ash", "hard:bin/busybox"),
            ])
            .as_slice(),
            &root,
        )
        .unwrap();
        apply_layer(
            layer(&[
                ("etc/.wh.a", "file:"),
                ("etc/b", "file:b2"),
                // Made in this layer before its whiteout: kept.
                ("etc/c", "file:c2"),
                ("etc/.wh.c", "file:"),
                // Opaque: what earlier layers made goes, this layer's new entry stays.
                ("var/cache/new", "file:n"),
                ("var/cache/.wh..wh..opq", "file:"),
                // Whiteout of something that never was: fine.
                ("nothing/.wh.here", "file:"),
                ("etc/.wh.nothing", "file:"),
                // aufs bookkeeping: ignored.
                (".wh..wh.plnk", "dir"),
            ])
            .as_slice(),
            &root,
        )
        .unwrap();
        assert_eq!(
            tree(&root),
            [
                "bin/",
                "bin/ash = bb",
                "bin/busybox = bb",
                "bin/sh -> busybox",
                "etc/",
                "etc/b = b2",
                "etc/c = c2",
                "var/",
                "var/cache/",
                "var/cache/new = n",
            ]
        );
        let ash = std::fs::metadata(root.join("bin/ash")).unwrap();
        let bb = std::fs::metadata(root.join("bin/busybox")).unwrap();
        assert_eq!(ash.ino(), bb.ino(), "hard link kept");
        assert_eq!(bb.mode() & 0o7777, 0o640);
        assert_eq!(bb.mtime(), 1_000_000);
        // bin/ was left alone by the second layer: its mtime is the tar's, set after
        // its contents were written.
        let bin = std::fs::metadata(root.join("bin")).unwrap();
        assert_eq!(bin.mtime(), 1_000_000, "directory mtime restored last");
    }

    #[test]
    fn entries_replace_what_is_there() {
        let (_dir, root) = new_root();
        apply_layer(
            layer(&[
                ("a", "dir"),
                ("a/x", "file:x"),
                ("b", "file:b"),
                ("c", "link:a"),
            ])
            .as_slice(),
            &root,
        )
        .unwrap();
        apply_layer(
            layer(&[
                ("a", "file:now a file"),
                ("b", "dir"),
                ("c", "dir"),
                ("c/z", "file:z"),
            ])
            .as_slice(),
            &root,
        )
        .unwrap();
        assert_eq!(tree(&root), ["a = now a file", "b/", "c/", "c/z = z"]);
    }

    #[test]
    fn symlinked_directories_inside_the_root_are_followed() {
        let (_dir, root) = new_root();
        apply_layer(
            layer(&[("usr", "dir"), ("usr/lib", "dir"), ("lib", "link:usr/lib")]).as_slice(),
            &root,
        )
        .unwrap();
        apply_layer(
            layer(&[("lib/libc.so", "file:c"), ("lib/.wh.gone", "file:")]).as_slice(),
            &root,
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("usr/lib/libc.so")).unwrap(),
            "c"
        );
    }

    #[test]
    fn escapes_are_refused() {
        let (dir, root) = new_root();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), "keep").unwrap();

        // "..", absolute paths, hard links out.
        for (path, link) in [
            ("../evil", None),
            ("a/../../evil", None),
            ("/etc/evil", None),
            ("ok", Some(("../outside/victim", tar::EntryType::Link))),
            ("ok2", Some(("/etc/passwd", tar::EntryType::Link))),
        ] {
            let e = apply_layer(raw_layer(path, link).as_slice(), &root).unwrap_err();
            assert!(matches!(e, ArchiveError::Escape { .. }), "{path}: {e}");
        }

        // Through a symlink: writing, whiting out, hard-linking.
        apply_layer(
            layer(&[
                ("out", &format!("link:{}", outside.display())),
                ("rel", "link:../outside"),
            ])
            .as_slice(),
            &root,
        )
        .unwrap();
        for l in [
            layer(&[("out/evil", "file:x")]),
            layer(&[("rel/evil", "file:x")]),
            layer(&[("out/.wh.victim", "file:")]),
            layer(&[("rel/.wh..wh..opq", "file:")]),
            layer(&[("h", "hard:out/victim")]),
        ] {
            let e = apply_layer(l.as_slice(), &root).unwrap_err();
            assert!(matches!(e, ArchiveError::Escape { .. }), "{e}");
        }
        assert_eq!(tree(&outside), ["victim = keep"]);
        assert!(!root.join("h").exists());
    }

    /// An OCI archive as `ctr images export` writes it, with an index of two platforms.
    fn archive(path: &Path, layers: &[Vec<u8>], gzip_layers: bool) {
        use std::io::Write;
        let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for l in layers {
            diff_ids.push(sha256_bytes(l));
            let (data, mt) = if gzip_layers {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(l).unwrap();
                (
                    gz.finish().unwrap(),
                    "application/vnd.docker.image.rootfs.diff.tar.gzip",
                )
            } else {
                (l.clone(), "application/vnd.oci.image.layer.v1.tar")
            };
            let d = sha256_bytes(&data);
            descs.push(serde_json::json!({"mediaType": mt, "digest": d, "size": data.len()}));
            blobs.push((d, data));
        }
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["A=1"], "Cmd": ["sh"], "WorkingDir": "/w"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}
        }))
        .unwrap();
        let cd = sha256_bytes(&config);
        blobs.push((cd.clone(), config.clone()));
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": cd, "size": config.len()},
            "layers": descs
        }))
        .unwrap();
        let md = sha256_bytes(&manifest);
        blobs.push((md.clone(), manifest.clone()));
        let nested = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                 "digest": format!("sha256:{}", "1".repeat(64)), "size": 10,
                 "platform": {"architecture": "arm64", "os": "linux"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                 "digest": md, "size": manifest.len(),
                 "platform": {"architecture": "amd64", "os": "linux"}}
            ]
        }))
        .unwrap();
        let nd = sha256_bytes(&nested);
        blobs.push((nd.clone(), nested.clone()));
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
                           "digest": nd, "size": nested.len(),
                           "annotations": {"io.containerd.image.name": "x"}}]
        }))
        .unwrap();
        let mut entries = vec![
            (
                "oci-layout".to_string(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("./index.json".to_string(), index),
        ];
        for (d, data) in blobs {
            entries.push((format!("blobs/sha256/{}", &d[7..]), data));
        }
        write_tar(path, &entries);
    }

    #[test]
    fn reads_and_unpacks_an_archive() {
        for gzip in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("image.tar");
            archive(
                &path,
                &[
                    layer(&[("etc", "dir"), ("etc/a", "file:1"), ("etc/b", "file:2")]),
                    layer(&[("etc/.wh.a", "file:")]),
                ],
                gzip,
            );
            let a = OciArchive::open(&path, dir.path()).unwrap();
            let image = a.image().unwrap();
            assert_eq!(image.layers.len(), 2);
            let config: serde_json::Value = serde_json::from_slice(&image.config).unwrap();
            assert_eq!(config["config"]["WorkingDir"], "/w");
            let root = dir.path().join("rootfs");
            make_root(&root).unwrap();
            a.unpack(&image, &root, &Progress::hidden()).unwrap();
            assert_eq!(tree(&root), ["etc/", "etc/b = 2"]);
        }
    }

    /// index.json listing manifests directly (as `oci_image_archive` in the tests and
    /// `docker save` write it), without platforms: the config decides.
    fn flat_archive(path: &Path, arch: &str, list_type: Option<&str>, drop_layer: bool) {
        let l = layer(&[("f", "file:x")]);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256_bytes(&l)]}
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "digest": sha256_bytes(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": sha256_bytes(&l), "size": l.len()}]
        }))
        .unwrap();
        let entry = serde_json::json!({
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "digest": sha256_bytes(&manifest), "size": manifest.len()});
        let mut blobs = vec![config, manifest];
        if !drop_layer {
            blobs.push(l);
        }
        let index = match list_type {
            None => serde_json::json!({"schemaVersion": 2, "manifests": [entry]}),
            Some(t) => {
                let list = serde_json::to_vec(&serde_json::json!({
                    "schemaVersion": 2, "mediaType": t, "manifests": [entry]}))
                .unwrap();
                let e = serde_json::json!({"mediaType": t, "digest": sha256_bytes(&list),
                                           "size": list.len()});
                blobs.push(list);
                serde_json::json!({"schemaVersion": 2, "manifests": [e]})
            }
        };
        let index = serde_json::to_vec(&index).unwrap();
        let mut entries = vec![("index.json".to_string(), index)];
        for data in blobs {
            entries.push((format!("blobs/sha256/{}", &sha256_bytes(&data)[7..]), data));
        }
        write_tar(path, &entries);
    }

    /// Writes a tar of `(name, content)` entries, each a 0644 file.
    fn write_tar(path: &Path, entries: &[(String, Vec<u8>)]) {
        let mut b = tar::Builder::new(File::create(path).unwrap());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data.as_slice()).unwrap();
        }
        b.finish().unwrap();
    }

    #[test]
    fn manifests_without_platform_are_picked_by_their_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        for list in [
            None,
            Some("application/vnd.docker.distribution.manifest.list.v2+json"),
        ] {
            flat_archive(&path, "amd64", list, false);
            let image = OciArchive::open(&path, dir.path())
                .unwrap()
                .image()
                .unwrap();
            assert_eq!(image.layers.len(), 1);
            flat_archive(&path, "arm64", list, false);
            let e = OciArchive::open(&path, dir.path())
                .unwrap()
                .image()
                .unwrap_err();
            assert!(e.to_string().contains("no linux/amd64 image"), "{e}");
            assert!(e.to_string().contains("linux/arm64"), "{e}");
        }
        flat_archive(&path, "amd64", None, true);
        let e = OciArchive::open(&path, dir.path())
            .unwrap()
            .image()
            .unwrap_err();
        assert!(matches!(e, ArchiveError::MissingBlob { .. }), "{e}");
    }

    #[test]
    fn a_gzipped_archive_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("image.tar");
        archive(&plain, &[layer(&[("f", "file:x")])], true);
        let gz = dir.path().join("image.tar.gz");
        let mut enc =
            flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        io::copy(&mut File::open(&plain).unwrap(), &mut enc).unwrap();
        enc.finish().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let a = OciArchive::open(&gz, &work).unwrap();
        assert_eq!(a.image().unwrap().layers.len(), 1);
        drop(a);
        assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0, "temp removed");
    }

    #[test]
    fn archive_errors_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        // Not a tar at all.
        let junk = dir.path().join("junk");
        std::fs::write(&junk, vec![7u8; 2000]).unwrap();
        let e = OciArchive::open(&junk, dir.path()).err().unwrap();
        assert!(e.to_string().contains("not an OCI image archive"), "{e}");
        assert!(
            e.to_string().chars().all(|c| c.is_ascii() || c == '…'),
            "{e}"
        );
        // Missing file.
        let e = OciArchive::open(&dir.path().join("none"), dir.path())
            .err()
            .unwrap();
        assert!(e.to_string().contains("opening"), "{e}");
        // A tar without index.json.
        let t = dir.path().join("t.tar");
        let mut b = tar::Builder::new(File::create(&t).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_cksum();
        b.append_data(&mut h, "manifest.json", &b"[]"[..]).unwrap();
        b.finish().unwrap();
        drop(b);
        let e = OciArchive::open(&t, dir.path()).err().unwrap();
        assert!(e.to_string().contains("no index.json"), "{e}");

        // Only arm64.
        let t = dir.path().join("arm.tar");
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": format!("sha256:{}", "2".repeat(64)), "size": 3,
                           "platform": {"architecture": "arm64", "os": "linux"}}]
        }))
        .unwrap();
        let mut b = tar::Builder::new(File::create(&t).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(index.len() as u64);
        h.set_cksum();
        b.append_data(&mut h, "index.json", index.as_slice())
            .unwrap();
        b.finish().unwrap();
        drop(b);
        let e = OciArchive::open(&t, dir.path())
            .unwrap()
            .image()
            .unwrap_err();
        assert!(matches!(e, ArchiveError::NoLinuxAmd64 { .. }), "{e}");
        assert!(e.to_string().contains("linux/arm64"), "{e}");
    }

    #[test]
    fn a_corrupt_layer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.tar");
        archive(&path, &[layer(&[("f", "file:original")])], false);
        // Flip the file content inside the archive's layer blob.
        let mut data = std::fs::read(&path).unwrap();
        let at = data.windows(8).position(|w| w == b"original").unwrap();
        data[at] = b'O';
        std::fs::write(&path, &data).unwrap();
        let a = OciArchive::open(&path, dir.path()).unwrap();
        let image = a.image().unwrap();
        let root = dir.path().join("rootfs");
        make_root(&root).unwrap();
        let e = a.unpack(&image, &root, &Progress::hidden()).unwrap_err();
        assert!(matches!(e, ArchiveError::DigestMismatch { .. }), "{e}");
    }
}
