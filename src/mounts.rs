//! Host mounts: bind mounts into the shared directory, and unmounting what lies under a
//! directory before it is removed (so a removal never reaches into a user's data).

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// One line of /proc/self/mountinfo, the parts lazyvm needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The filesystem type (`fuse.nydus-overlayfs`, `overlay`, ...).
    pub fstype: String,
}

/// Why a mount operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// mount(2) or umount(2) failed.
    #[error("{op} {path:?}: {source}")]
    Sys {
        /// What was done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: nix::Error,
    },
    /// Reading the mount table failed.
    #[error("reading /proc/self/mountinfo: {0}")]
    Table(#[source] io::Error),
    /// A directory could not be prepared or removed.
    #[error("{op} {path:?}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// The current mount table.
pub fn mount_table() -> Result<Vec<MountEntry>, MountError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(MountError::Table)?;
    Ok(parse_mountinfo(&text))
}

fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                fstype: fields.get(sep + 1)?.to_string(),
            })
        })
        .collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` is a mount point of a filesystem whose type satisfies `fstype`.
pub fn is_mounted(path: &Path, fstype: impl Fn(&str) -> bool) -> bool {
    mount_table()
        .map(|t| t.iter().any(|m| m.mount_point == path && fstype(&m.fstype)))
        .unwrap_or(false)
}

/// Bind-mounts `source` (recursively) on `target`, creating `target`.
pub fn bind(source: &Path, target: &Path) -> Result<(), MountError> {
    std::fs::create_dir_all(target).map_err(|source| MountError::Io {
        op: "creating",
        path: target.to_path_buf(),
        source,
    })?;
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| MountError::Sys {
        op: "bind-mounting onto",
        path: target.to_path_buf(),
        source: e,
    })
}

/// Bind-mounts a file or directory `source` on `target`, creating `target` (an empty file
/// for a file source) and its parents.
pub fn bind_any(source: &Path, target: &Path) -> Result<(), MountError> {
    let meta = std::fs::metadata(source).map_err(|e| MountError::Io {
        op: "sharing",
        path: source.to_path_buf(),
        source: e,
    })?;
    if meta.is_dir() {
        return bind(source, target);
    }
    let io_err = |op: &'static str| {
        let path = target.to_path_buf();
        move |source| MountError::Io { op, path, source }
    };
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(io_err("creating the parent of"))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(target)
        .map_err(io_err("creating"))?;
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| MountError::Sys {
        op: "bind-mounting onto",
        path: target.to_path_buf(),
        source: e,
    })
}

/// Makes the mount at `target` a slave: mounts and unmounts under its source propagate in,
/// nothing propagates back.
pub fn make_slave(target: &Path) -> Result<(), MountError> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| MountError::Sys {
        op: "making a slave mount of",
        path: target.to_path_buf(),
        source: e,
    })
}

/// Unmounts (lazily) every mount at or under `dir`, deepest first.
pub fn unmount_all_under(dir: &Path) -> Result<(), MountError> {
    let mut under: Vec<PathBuf> = mount_table()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    under.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    under.dedup();
    for p in under {
        // A stacked mount point appears once per mount: repeat until none is left.
        loop {
            match umount2(&p, MntFlags::MNT_DETACH) {
                Ok(()) => continue,
                Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => break,
                Err(e) => {
                    return Err(MountError::Sys {
                        op: "unmounting",
                        path: p,
                        source: e,
                    })
                }
            }
        }
    }
    Ok(())
}

/// Unmounts whatever is mounted under `dir`, then removes `dir` and its contents. Refuses
/// to remove anything while a mount remains under it.
pub fn remove_dir_unmounted(dir: &Path) -> Result<(), MountError> {
    if !dir.exists() {
        return Ok(());
    }
    unmount_all_under(dir)?;
    if let Some(m) = mount_table()?
        .into_iter()
        .find(|m| m.mount_point.starts_with(dir))
    {
        return Err(MountError::Io {
            op: "removing",
            path: dir.to_path_buf(),
            source: io::Error::other(format!("{} is still mounted", m.mount_point.display())),
        });
    }
    std::fs::remove_dir_all(dir).map_err(|source| MountError::Io {
        op: "removing",
        path: dir.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes() {
        let t = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n\
                 40 36 0:50 / /run/x rw - fuse.nydus-overlayfs overlay rw,extraoption=abc\n";
        let m = parse_mountinfo(t);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/a b"));
        assert_eq!(m[0].fstype, "ext3");
        assert_eq!(m[1].fstype, "fuse.nydus-overlayfs");
    }

    #[test]
    fn bind_then_remove_leaves_the_source_intact() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("precious"), "data").unwrap();
        let dir = tmp.path().join("sandbox");
        let target = dir.join("shared/c1/rootfs");
        bind(&src, &target).unwrap();
        assert!(target.join("precious").exists());
        assert!(is_mounted(&target, |_| true));
        remove_dir_unmounted(&dir).unwrap();
        assert!(!dir.exists());
        assert_eq!(
            std::fs::read_to_string(src.join("precious")).unwrap(),
            "data"
        );
    }
}
