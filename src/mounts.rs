//! Host mounts: the guest's read-only view of a sandbox's shared tree, the mount table,
//! and unmounting what lies under a directory before it is removed (binds into the tree
//! are made by [`crate::beneath`], which no symlink can redirect).

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::beneath::{self, BeneathError};

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
    /// A directory could not be removed (nothing is removed across a mount).
    #[error(transparent)]
    Remove(#[from] BeneathError),
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

fn set_propagation(target: &Path, flags: MsFlags, what: &'static str) -> Result<(), MountError> {
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(|e| MountError::Sys {
        op: what,
        path: target.to_path_buf(),
        source: e,
    })
}

/// Gives `shared` a read-only view of `private`, in which what is later mounted under
/// `private` appears too (with that mount's own flags): `private` becomes a mount of its
/// own in a peer group of its own (bound onto itself, made private then shared), and
/// `shared` a read-only bind of it that receives its mounts and sends none back (slave).
/// Both directories must exist and be created by the host; the guest is given `shared`.
pub fn share_read_only(private: &Path, shared: &Path) -> Result<(), MountError> {
    let bind = |src: &Path, dst: &Path| {
        mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| {
            MountError::Sys {
                op: "bind-mounting onto",
                path: dst.to_path_buf(),
                source: e,
            }
        })
    };
    bind(private, private)?;
    set_propagation(private, MsFlags::MS_PRIVATE, "making a private mount of")?;
    set_propagation(private, MsFlags::MS_SHARED, "making a shared mount of")?;
    bind(private, shared)?;
    set_propagation(shared, MsFlags::MS_SLAVE, "making a slave mount of")?;
    mount(
        None::<&str>,
        shared,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|e| MountError::Sys {
        op: "making read-only",
        path: shared.to_path_buf(),
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
            match umount2(&p, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
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

/// Unmounts whatever is mounted under `dir`, then removes `dir` and its contents without
/// following a symlink or crossing a mount point ([`beneath::remove_tree`]): a mount that
/// survived the unmount stops the removal with an error naming it.
pub fn remove_dir_unmounted(dir: &Path) -> Result<(), MountError> {
    if std::fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    unmount_all_under(dir)?;
    beneath::remove_tree(dir).map_err(MountError::Remove)
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
    fn the_shared_view_is_read_only_but_shows_what_is_bound_later() {
        use crate::beneath::{Beneath, BindOptions, BindSource};
        let tmp = tempfile::tempdir().unwrap();
        let sandbox = tmp.path().join("sandbox");
        let (private, shared) = (sandbox.join("private"), sandbox.join("shared"));
        std::fs::create_dir_all(&private).unwrap();
        std::fs::create_dir_all(&shared).unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("precious"), "data").unwrap();
        struct Cleanup(PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = unmount_all_under(&self.0);
            }
        }
        let _cleanup = Cleanup(sandbox.clone());
        share_read_only(&private, &shared).unwrap();
        // The structure is read-only to whoever is given `shared`.
        let err = std::fs::create_dir(shared.join("evil")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS));
        let host = Beneath::open(&private).unwrap();
        let rw = BindOptions {
            readonly: false,
            recursive: true,
        };
        host.bind(BindSource::Path(&data), Path::new("c1/rootfs"), rw)
            .unwrap();
        host.bind(
            BindSource::Path(&data),
            Path::new("c1/mounts/0-data"),
            BindOptions {
                readonly: true,
                ..rw
            },
        )
        .unwrap();
        // What is bound read-write appears read-write, the rest stays read-only.
        std::fs::write(shared.join("c1/rootfs/new"), "n").unwrap();
        assert!(data.join("new").exists());
        let err = std::fs::write(shared.join("c1/mounts/0-data/new"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS));
        assert!(std::fs::create_dir(shared.join("c1/evil")).is_err());
        // Teardown unmounts everything, then removes without touching the data.
        remove_dir_unmounted(&sandbox).unwrap();
        assert!(!sandbox.exists());
        assert_eq!(
            std::fs::read_to_string(data.join("precious")).unwrap(),
            "data"
        );
    }
}
