//! Layer files: what a manifest lists (media type, digest, size, annotations) and what
//! the config lists (diff_id), with the file that holds the bytes; and the writers that
//! make gzip tar layers while hashing both their compressed and uncompressed bytes.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, Metadata};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use super::Progress;

/// The media type of a gzip-compressed tar layer.
pub const MEDIA_TYPE_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One layer of a built image, in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The file holding the layer's bytes, as pushed.
    pub path: PathBuf,
    /// The manifest's `mediaType` for it.
    pub media_type: String,
    /// `sha256:…` of the file.
    pub digest: String,
    /// The file's size in bytes.
    pub size: u64,
    /// The config's `rootfs.diff_ids` entry: `sha256:…` of the uncompressed tar (the
    /// digest itself for a nydus data blob).
    pub diff_id: String,
    /// The manifest's `annotations` for it.
    pub annotations: BTreeMap<String, String>,
}

/// Why a layer file could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Reading the source or writing the layer failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The conversion was cancelled.
    #[error("interrupted")]
    Cancelled,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LayerError {
    let what = what.into();
    move |source| LayerError::Io { what, source }
}

/// `sha256:` and the hex digest of what a hasher saw.
pub fn sha256_string(hasher: Sha256) -> String {
    let digest = hasher.finalize();
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `sha256:…` of `data`.
pub fn sha256_bytes(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    sha256_string(h)
}

/// `sha256:…` and the size of a file, counted on `bar` as it is read.
pub fn sha256_file(path: &Path, bar: &ProgressBar) -> io::Result<(String, u64)> {
    let mut reader = HashingReader::new(File::open(path)?, bar.clone());
    io::copy(&mut reader, &mut io::sink())?;
    Ok(reader.finish())
}

/// A reader that hashes and counts what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    bar: ProgressBar,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`; `bar` advances by the bytes read.
    pub fn new(inner: R, bar: ProgressBar) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
            bar,
        }
    }

    /// `sha256:…` and the number of bytes read.
    pub fn finish(self) -> (String, u64) {
        (sha256_string(self.hasher), self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The inner writer, `sha256:…` and the number of bytes written.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, sha256_string(self.hasher), self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type GzTarInner = HashingWriter<GzEncoder<HashingWriter<BufWriter<File>>>>;

/// A gzip tar layer being written to a file: the tar stream is hashed (diff_id) and so
/// is the gzip stream (digest).
pub struct GzipTarWriter {
    builder: tar::Builder<GzTarInner>,
    path: PathBuf,
}

impl GzipTarWriter {
    /// Starts a layer at `path` (created, or truncated).
    pub fn create(path: &Path) -> Result<Self, LayerError> {
        let file = File::create(path).map_err(io_err(format!("creating {}", path.display())))?;
        let gz = GzEncoder::new(
            HashingWriter::new(BufWriter::with_capacity(1 << 20, file)),
            Compression::default(),
        );
        Ok(GzipTarWriter {
            builder: tar::Builder::new(HashingWriter::new(gz)),
            path: path.to_path_buf(),
        })
    }

    /// The tar builder, to append entries.
    pub fn tar(&mut self) -> &mut tar::Builder<impl Write> {
        &mut self.builder
    }

    /// Ends the tar and the gzip stream and returns the layer (annotations empty).
    pub fn finish(self, media_type: &str) -> Result<Layer, LayerError> {
        let what = format!("writing {}", self.path.display());
        let inner = self.builder.into_inner().map_err(io_err(&what))?;
        let (gz, diff_id, _) = inner.finish();
        let hashed = gz.finish().map_err(io_err(&what))?;
        let (file, digest, size) = hashed.finish();
        let file = file.into_inner().map_err(|e| LayerError::Io {
            what: what.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_err(&what))?;
        Ok(Layer {
            path: self.path,
            media_type: media_type.to_string(),
            digest,
            size,
            diff_id,
            annotations: BTreeMap::new(),
        })
    }
}

/// A tar header for `meta` with the path set by the builder: type, permission bits,
/// owner, mtime, size (files), device numbers (devices).
fn header_for(meta: &Metadata) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
    h.set_mode(meta.mode() & 0o7777);
    let ft = meta.file_type();
    if ft.is_char_device() || ft.is_block_device() {
        let rdev = meta.rdev();
        // Linux's dev_t encoding (glibc's gnu_dev_major/minor).
        let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0000_0fff);
        let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0x0000_00ff);
        let _ = h.set_device_major(major as u32);
        let _ = h.set_device_minor(minor as u32);
    }
    if !ft.is_file() {
        h.set_size(0);
    }
    h
}

/// Writes the tree under `root` (not following symlinks; hard links kept as links;
/// devices and FIFOs as such; sockets skipped) as a gzip tar layer at `out`, entries
/// named relative to `root` in sorted order, directories with a trailing `/`.
pub fn rootfs_layer(root: &Path, out: &Path, progress: &Progress) -> Result<Layer, LayerError> {
    let bar = progress.byte_spinner("writing the OCI layer");
    let mut w = GzipTarWriter::create(out)?;
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let root_meta =
        std::fs::symlink_metadata(root).map_err(io_err(format!("reading {}", root.display())))?;
    // The root directory itself, as `./`, so that its mode and owner survive.
    let mut h = header_for(&root_meta);
    w.tar()
        .append_data(&mut h, "./", io::empty())
        .map_err(io_err("writing the layer"))?;
    walk(root, Path::new(""), &mut w, &mut links, &bar, progress)?;
    bar.finish_and_clear();
    w.finish(MEDIA_TYPE_TAR_GZIP)
}

fn walk(
    root: &Path,
    rel: &Path,
    w: &mut GzipTarWriter,
    links: &mut HashMap<(u64, u64), PathBuf>,
    bar: &ProgressBar,
    progress: &Progress,
) -> Result<(), LayerError> {
    let dir = root.join(rel);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .map_err(io_err(format!("reading {}", dir.display())))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err(format!("reading {}", dir.display())))?;
    names.sort();
    for name in names {
        if progress.is_cancelled() {
            return Err(LayerError::Cancelled);
        }
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let meta = std::fs::symlink_metadata(&path)
            .map_err(io_err(format!("reading {}", path.display())))?;
        let ft = meta.file_type();
        let what = || format!("adding {} to the layer", path.display());
        let mut h = header_for(&meta);
        if ft.is_dir() {
            let mut name = rel.clone().into_os_string();
            name.push("/");
            w.tar()
                .append_data(&mut h, &name, io::empty())
                .map_err(io_err(what()))?;
            walk(root, &rel, w, links, bar, progress)?;
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(&path).map_err(io_err(format!("reading {}", path.display())))?;
            w.tar()
                .append_link(&mut h, &rel, &target)
                .map_err(io_err(what()))?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = links.get(&key) {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    w.tar()
                        .append_link(&mut h, &rel, first)
                        .map_err(io_err(what()))?;
                    continue;
                }
                links.insert(key, rel.clone());
            }
            let file = File::open(&path).map_err(io_err(format!("opening {}", path.display())))?;
            let mut reader = HashingReader::new(file, bar.clone());
            w.tar()
                .append_data(&mut h, &rel, &mut reader)
                .map_err(io_err(what()))?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            w.tar()
                .append_data(&mut h, &rel, io::empty())
                .map_err(io_err(what()))?;
        }
        // Sockets have no place in an image.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn hashes_are_sha256() {
        assert_eq!(
            sha256_bytes(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"abc").unwrap();
        let (data, digest, n) = w.finish();
        assert_eq!((data.as_slice(), n), (&b"abc"[..], 3));
        assert_eq!(digest, sha256_bytes(b"abc"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(
            sha256_file(&f, &ProgressBar::hidden()).unwrap(),
            (sha256_bytes(b"abc"), 3)
        );
    }

    #[test]
    fn rootfs_layer_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("bin/busybox"), b"#!binary").unwrap();
        symlink("busybox", root.join("bin/sh")).unwrap();
        std::fs::hard_link(root.join("bin/busybox"), root.join("bin/bb")).unwrap();
        std::fs::write(root.join("etc/motd"), b"hi\n").unwrap();
        let out = dir.path().join("layer.tar.gz");
        let layer = rootfs_layer(&root, &out, &Progress::hidden()).unwrap();
        assert_eq!(layer.media_type, MEDIA_TYPE_TAR_GZIP);
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(layer.size, bytes.len() as u64);
        assert_eq!(layer.digest, sha256_bytes(&bytes));
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(layer.diff_id, sha256_bytes(&tar));
        let mut entries = Vec::new();
        for e in tar::Archive::new(tar.as_slice()).entries().unwrap() {
            let e = e.unwrap();
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            entries.push((
                e.path().unwrap().display().to_string(),
                e.header().entry_type(),
                link,
            ));
        }
        use tar::EntryType as T;
        assert_eq!(
            entries,
            [
                ("./".to_string(), T::Directory, None),
                ("bin/".into(), T::Directory, None),
                ("bin/bb".into(), T::Regular, None),
                ("bin/busybox".into(), T::Link, Some("bin/bb".into())),
                ("bin/sh".into(), T::Symlink, Some("busybox".into())),
                ("etc/".into(), T::Directory, None),
                ("etc/motd".into(), T::Regular, None),
            ]
        );
    }
}
