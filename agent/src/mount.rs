//! Mounting: turning mount(8)-style option lists into flags + data, validating the
//! storages the host asks for, and (un)mounting them.

use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Where container roots and storages live in the guest.
pub const CONTAINERS_DIR: &str = "/run/lazyvm/containers";

/// Errors of mounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mount point is not an absolute, normalised path under the container's dir.
    #[error("mount point {path:?} must be an absolute path under {allowed}")]
    BadMountPoint {
        /// The offending path.
        path: String,
        /// The directory it must be under.
        allowed: String,
    },
    /// A storage field is invalid.
    #[error("invalid storage: {0}")]
    Invalid(String),
    /// mount(2) failed.
    #[error("mounting {fstype} {device} on {target} (options {options:?}): {errno}")]
    Mount {
        /// Filesystem type.
        fstype: String,
        /// Mount source.
        device: String,
        /// Target.
        target: String,
        /// The data options passed.
        options: String,
        /// The error.
        errno: nix::Error,
    },
    /// umount(2) failed.
    #[error("unmounting {target}: {errno}")]
    Umount {
        /// Target.
        target: String,
        /// The error.
        errno: nix::Error,
    },
    /// Creating a directory failed.
    #[error("creating {path}: {source}")]
    Mkdir {
        /// The directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Mount options split into mount(2) flags and filesystem data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for mount(2).
    pub flags: MsFlags,
    /// Comma-separated filesystem data (`lowerdir=...,index=off`).
    pub data: String,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            data: String::new(),
        }
    }
}

/// Splits mount(8)-style options into flags and data. Unknown words are data.
pub fn parse_options<S: AsRef<str>>(options: &[S]) -> MountOptions {
    let mut flags = MsFlags::empty();
    let mut data: Vec<&str> = Vec::new();
    for o in options {
        let o = o.as_ref();
        let (set, clear) = match o {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "private" => (MsFlags::MS_PRIVATE, MsFlags::empty()),
            "rprivate" => (MsFlags::MS_PRIVATE | MsFlags::MS_REC, MsFlags::empty()),
            "slave" => (MsFlags::MS_SLAVE, MsFlags::empty()),
            "rslave" => (MsFlags::MS_SLAVE | MsFlags::MS_REC, MsFlags::empty()),
            "shared" => (MsFlags::MS_SHARED, MsFlags::empty()),
            "rshared" => (MsFlags::MS_SHARED | MsFlags::MS_REC, MsFlags::empty()),
            _ => {
                if !o.is_empty() {
                    data.push(o);
                }
                continue;
            }
        };
        flags.insert(set);
        flags.remove(clear);
    }
    MountOptions {
        flags,
        data: data.join(","),
    }
}

/// Checks that `path` is absolute, has no `.`/`..` parts and lies strictly under `dir`.
pub fn check_under(path: &str, dir: &Path) -> Result<PathBuf, MountError> {
    let bad = || MountError::BadMountPoint {
        path: path.to_owned(),
        allowed: dir.display().to_string(),
    };
    let p = Path::new(path);
    if !p.is_absolute()
        || p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(bad());
    }
    match p.strip_prefix(dir) {
        Ok(rest) if rest.components().next().is_some() => Ok(p.to_path_buf()),
        _ => Err(bad()),
    }
}

/// The value of `key=` in comma-separated overlay data, if present.
pub fn data_value<'a>(data: &'a str, key: &str) -> Option<&'a str> {
    data.split(',')
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

fn mkdir_p(path: &Path) -> Result<(), MountError> {
    std::fs::create_dir_all(path).map_err(|source| MountError::Mkdir {
        path: path.display().to_string(),
        source,
    })
}

/// Mounts one filesystem. `fstype` "bind" makes a bind mount of `source` (recursive with
/// `rbind`); read-only bind mounts are remounted read-only. For overlay, `upperdir` and
/// `workdir` are created when missing. The target directory is created.
pub fn mount_storage(
    fstype: &str,
    source: &str,
    options: &[String],
    target: &Path,
) -> Result<(), MountError> {
    let mut opts = parse_options(options);
    mkdir_p(target)?;
    let fail = |opts: &MountOptions, errno| MountError::Mount {
        fstype: fstype.to_owned(),
        device: source.to_owned(),
        target: target.display().to_string(),
        options: opts.data.clone(),
        errno,
    };
    if fstype == "bind" {
        if source.is_empty() || !Path::new(source).is_absolute() {
            return Err(MountError::Invalid(format!(
                "bind source {source:?} must be an absolute path"
            )));
        }
        opts.flags.insert(MsFlags::MS_BIND);
        let ro = opts.flags.contains(MsFlags::MS_RDONLY);
        mount(
            Some(source),
            target,
            None::<&str>,
            opts.flags & (MsFlags::MS_BIND | MsFlags::MS_REC),
            None::<&str>,
        )
        .map_err(|e| fail(&opts, e))?;
        if ro {
            mount(
                None::<&str>,
                target,
                None::<&str>,
                opts.flags | MsFlags::MS_REMOUNT,
                None::<&str>,
            )
            .map_err(|e| fail(&opts, e))?;
        }
        return Ok(());
    }
    if fstype.is_empty() {
        return Err(MountError::Invalid("empty fstype".to_owned()));
    }
    if fstype == "overlay" {
        for key in ["upperdir", "workdir"] {
            if let Some(dir) = data_value(&opts.data, key) {
                mkdir_p(Path::new(dir))?;
            }
        }
    }
    let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
    mount(
        Some(if source.is_empty() { fstype } else { source }),
        target,
        Some(fstype),
        opts.flags,
        data,
    )
    .map_err(|e| fail(&opts, e))
}

/// Unmounts `target` (lazily when busy). Not mounted is not an error.
pub fn umount(target: &Path) -> Result<(), MountError> {
    match umount2(target, MntFlags::empty()) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(nix::Error::EBUSY) => {
            umount2(target, MntFlags::MNT_DETACH).map_err(|errno| MountError::Umount {
                target: target.display().to_string(),
                errno,
            })
        }
        Err(errno) => Err(MountError::Umount {
            target: target.display().to_string(),
            errno,
        }),
    }
}

/// Lets the guest kernel forget the dentries and inodes nothing uses any more (of all
/// filesystems: `vm.drop_caches = 2`). The virtio-fs daemon on the host holds an open
/// handle for every inode the guest has looked up until the guest forgets it, and a
/// guest with memory to spare never does by itself: without this, each removed
/// container's files stay open on the host (measured: 15 fds and 1.5 MiB of nydusd per
/// container). Files in use, page cache and tmpfs are untouched. Blocking.
pub fn forget_unused_inodes() -> std::io::Result<()> {
    std::fs::write("/proc/sys/vm/drop_caches", b"2\n")
}

/// Mounts a pseudo filesystem, tolerating "already mounted" (EBUSY).
pub fn mount_pseudo(
    fstype: &str,
    target: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    mkdir_p(Path::new(target))?;
    match mount(Some(fstype), target, Some(fstype), flags, data) {
        Ok(()) | Err(nix::Error::EBUSY) => Ok(()),
        Err(errno) => Err(MountError::Mount {
            fstype: fstype.to_owned(),
            device: fstype.to_owned(),
            target: target.to_owned(),
            options: data.unwrap_or_default().to_owned(),
            errno,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_are_data() {
        let o = parse_options(&[
            "lowerdir=/a",
            "upperdir=/b",
            "workdir=/c",
            "index=off",
            "nosuid",
        ]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID);
        assert_eq!(o.data, "lowerdir=/a,upperdir=/b,workdir=/c,index=off");
        assert_eq!(data_value(&o.data, "workdir"), Some("/c"));
        assert_eq!(data_value(&o.data, "lowerdir"), Some("/a"));
        assert_eq!(data_value(&o.data, "nope"), None);
    }

    #[test]
    fn flags_set_and_clear() {
        let o = parse_options(&["ro", "rbind", "rw", "nodev"]);
        assert_eq!(
            o.flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_NODEV
        );
        assert!(o.data.is_empty());
        let o = parse_options::<&str>(&[]);
        assert_eq!(o, MountOptions::default());
    }

    #[test]
    fn mount_points_stay_under_the_container_dir() {
        let dir = Path::new("/run/lazyvm/containers/c1");
        assert!(check_under("/run/lazyvm/containers/c1/rootfs", dir).is_ok());
        assert!(check_under("/run/lazyvm/containers/c1", dir).is_err());
        assert!(check_under("/run/lazyvm/containers/c1/../c2/rootfs", dir).is_err());
        assert!(check_under("/run/lazyvm/containers/c12/rootfs", dir).is_err());
        assert!(check_under("rootfs", dir).is_err());
        assert!(check_under("/etc", dir).is_err());
    }
}
