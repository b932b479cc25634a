//! The snapshots on disk: `<root>/snapshots/<id>/{fs,work}`.
//!
//! A snapshot's directory is made under a temporary name (`new-…`) and renamed to its id
//! just before its metadata commits; a removed one is renamed to `rm-<id>` before its
//! metadata commits and deleted after. A crash at any point leaves either a consistent
//! snapshot or a directory that no record names, which [`Storage::remove_orphans`]
//! (containerd's Cleanup) deletes.

use std::collections::HashSet;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What failed on disk.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct StorageError {
    what: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The snapshots directory.
pub struct Storage {
    dir: PathBuf,
}

/// A snapshot directory not yet named by an id: removed on drop unless published.
pub struct NewDir {
    path: Option<PathBuf>,
}

impl NewDir {
    /// Its `fs` directory.
    pub fn fs(&self) -> PathBuf {
        self.path.as_deref().unwrap_or(Path::new("/")).join("fs")
    }
}

impl Drop for NewDir {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            if let Err(e) = std::fs::remove_dir_all(&p) {
                log::warn!("removing {}: {e}", p.display());
            }
        }
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl Storage {
    /// The snapshots under `root` (`<root>/snapshots`, made when missing).
    pub fn open(root: &Path) -> Result<Storage, StorageError> {
        let dir = root.join("snapshots");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io("creating", &dir))?;
        Ok(Storage { dir })
    }

    /// The directory of snapshot `id`.
    pub fn dir(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// The `fs` directory (the layer's content, or an overlay's upper directory).
    pub fn fs(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    /// The overlay's `work` directory.
    pub fn work(&self, id: u64) -> PathBuf {
        self.dir(id).join("work")
    }

    /// A new snapshot directory with empty `fs` and `work`, under a temporary name.
    pub fn create(&self) -> Result<NewDir, StorageError> {
        let path = self.dir.join(format!(
            "new-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::DirBuilder::new()
            .mode(0o711)
            .create(&path)
            .map_err(io("creating", &path))?;
        let new = NewDir {
            path: Some(path.clone()),
        };
        for (sub, mode) in [("fs", 0o755), ("work", 0o711)] {
            let p = path.join(sub);
            std::fs::DirBuilder::new()
                .mode(mode)
                .create(&p)
                .map_err(io("creating", &p))?;
        }
        Ok(new)
    }

    /// Names `new` as snapshot `id`. On error `new` is removed.
    pub fn publish(&self, mut new: NewDir, id: u64) -> Result<(), StorageError> {
        let to = self.dir(id);
        let from = new.path.clone().unwrap_or_default();
        std::fs::rename(&from, &to).map_err(io("renaming to", &to))?;
        new.path = None;
        Ok(())
    }

    /// Undoes [`Self::publish`] when the metadata that names `id` failed to commit.
    pub fn unpublish(&self, id: u64) {
        let p = self.dir(id);
        if let Err(e) = std::fs::remove_dir_all(&p) {
            log::warn!("removing {}: {e}", p.display());
        }
    }

    /// Takes snapshot `id`'s directory out of its name (`rm-<id>`), to delete with
    /// [`Self::delete_retired`] once its metadata is gone.
    pub fn retire(&self, id: u64) -> Result<PathBuf, StorageError> {
        let from = self.dir(id);
        let to = self.dir.join(format!("rm-{id}"));
        match std::fs::rename(&from, &to) {
            Ok(()) => Ok(to),
            // Already gone (a crash after an earlier attempt): nothing to delete.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(to),
            Err(e) => Err(io("renaming", &from)(e)),
        }
    }

    /// Gives `retired` its name back (the metadata change failed).
    pub fn unretire(&self, retired: &Path, id: u64) {
        if let Err(e) = std::fs::rename(retired, self.dir(id)) {
            log::warn!("renaming {} back: {e}", retired.display());
        }
    }

    /// Deletes a retired directory.
    pub fn delete_retired(&self, retired: &Path) -> Result<(), StorageError> {
        match std::fs::remove_dir_all(retired) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing", retired)(e)),
        }
    }

    /// Removes every entry of the snapshots directory that is not one of `known` ids:
    /// leftovers of crashes and of removals that failed. Returns what it removed.
    pub fn remove_orphans(&self, known: &HashSet<u64>) -> Result<Vec<PathBuf>, StorageError> {
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io("reading", &self.dir))? {
            let entry = entry.map_err(io("reading", &self.dir))?;
            let name = entry.file_name();
            let id = name.to_str().and_then(|n| n.parse::<u64>().ok());
            if id.is_some_and(|id| known.contains(&id)) {
                continue;
            }
            let p = entry.path();
            let r = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.map_err(io("removing", &p))?;
            removed.push(p);
        }
        Ok(removed)
    }
}

/// Disk usage of the tree at `path`: (bytes, inodes), each hard-linked inode once,
/// symlinks not followed.
pub fn usage(path: &Path) -> Result<(i64, i64), StorageError> {
    let mut seen = HashSet::new();
    let mut bytes = 0i64;
    let mut inodes = 0i64;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).map_err(io("reading", &p))?;
        if !seen.insert((md.dev(), md.ino())) {
            continue;
        }
        inodes += 1;
        bytes += (md.blocks() * 512) as i64;
        if md.is_dir() {
            for entry in std::fs::read_dir(&p).map_err(io("reading", &p))? {
                stack.push(entry.map_err(io("reading", &p))?.path());
            }
        }
    }
    Ok((bytes, inodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_publish_retire_and_orphans() {
        let root = tempfile::tempdir().unwrap();
        let s = Storage::open(root.path()).unwrap();
        // Dropped before publishing: nothing stays.
        let n = s.create().unwrap();
        assert!(n.fs().is_dir());
        drop(n);
        assert_eq!(
            std::fs::read_dir(root.path().join("snapshots"))
                .unwrap()
                .count(),
            0
        );

        let n = s.create().unwrap();
        std::fs::write(n.fs().join("f"), vec![1u8; 10_000]).unwrap();
        s.publish(n, 7).unwrap();
        assert!(s.fs(7).join("f").is_file());
        assert!(s.work(7).is_dir());
        let (bytes, inodes) = usage(&s.fs(7)).unwrap();
        assert!(bytes >= 10_000, "{bytes}");
        assert_eq!(inodes, 2);

        // A crash's leftovers: a half-made dir, a retired one, an unknown id.
        let left = s.create().unwrap();
        std::mem::forget(left);
        std::fs::create_dir_all(root.path().join("snapshots/rm-3/fs")).unwrap();
        std::fs::create_dir_all(root.path().join("snapshots/9/fs")).unwrap();
        let removed = s.remove_orphans(&HashSet::from([7])).unwrap();
        assert_eq!(removed.len(), 3, "{removed:?}");
        assert!(s.dir(7).is_dir());

        let r = s.retire(7).unwrap();
        assert!(!s.dir(7).exists());
        s.unretire(&r, 7);
        assert!(s.dir(7).is_dir());
        let r = s.retire(7).unwrap();
        s.delete_retired(&r).unwrap();
        assert!(!r.exists());
    }
}
