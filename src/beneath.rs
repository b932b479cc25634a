//! File operations under a directory that cannot be led out of it.
//!
//! Every host-side operation in the tree a sandbox shares with its guest goes through
//! [`Beneath`]: a directory held open by descriptor, under which paths are resolved with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`. A symlink, a `..`
//! that climbs out, or a mount point met on the way is refused with an error naming the
//! path, never followed (Kata's CVE-2020-2026 was a host bind mount redirected by a
//! symlink the guest planted). Binds are made with the new mount API (`open_tree`,
//! `mount_setattr`, `move_mount`) onto the descriptor of the target, so no path is
//! resolved twice, and a read-only bind is read-only before it is attached: the copies
//! that mount propagation makes of it are read-only too.
//!
//! Removal ([`Beneath::remove_all`]) never crosses a mount point: it stops there and says
//! which path is still mounted, so that no removal reaches into data a mount shows.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, CWD};
use rustix::io::Errno;
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

/// Why an operation under a directory was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    /// A path component is a symlink: refused, never followed.
    #[error("{0:?} is a symlink: refused (nothing is followed out of a shared directory)")]
    Symlink(PathBuf),
    /// A path component is a mount point where none is expected, or a removal met one.
    #[error("{0:?} is a mount point: refused (nothing is removed or created across a mount)")]
    Mounted(PathBuf),
    /// The relative path is empty, absolute or climbs with `..`.
    #[error("{0:?} is not a plain relative path")]
    BadPath(PathBuf),
    /// An existing entry has the wrong type (a file where a directory is needed, ...).
    #[error("{0:?} exists and is not a {1}")]
    WrongType(PathBuf, &'static str),
    /// A read-only bind needs `mount_setattr` (Linux 5.12).
    #[error(
        "read-only bind of {0:?}: this kernel has no mount_setattr (Linux 5.12 or later is needed)"
    )]
    NoMountSetattr(PathBuf),
    /// A system call failed.
    #[error("{op} {path:?}: {source}")]
    Sys {
        /// What was done.
        op: &'static str,
        /// On which path (for messages only: the operation used descriptors).
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, BeneathError>;

fn sys(op: &'static str, path: &Path) -> impl FnOnce(Errno) -> BeneathError {
    let path = path.to_path_buf();
    move |e| match e {
        Errno::LOOP => BeneathError::Symlink(path),
        Errno::XDEV => BeneathError::Mounted(path),
        e => BeneathError::Sys {
            op,
            path,
            source: e.into(),
        },
    }
}

/// Resolution for every lookup under a [`Beneath`]: no symlinks, no mount crossings, no
/// escape.
const STRICT: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_XDEV);

/// What a bind mount takes its tree from.
#[derive(Debug, Clone, Copy)]
pub enum BindSource<'a> {
    /// A host path the caller trusts (from containerd or the spec; resolved as runc does).
    Path(&'a Path),
    /// A file or directory already open (for instance found under another [`Beneath`]).
    Fd(BorrowedFd<'a>),
}

/// How to bind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindOptions {
    /// Read-only (the whole tree, submounts included).
    pub readonly: bool,
    /// Recursive (`rbind`): the source's submounts come along.
    pub recursive: bool,
}

/// A directory held open; every path given to it is relative and resolved beneath it.
#[derive(Debug)]
pub struct Beneath {
    fd: OwnedFd,
    path: PathBuf,
}

impl Beneath {
    /// Opens directory `path` (a path the host owns, e.g. a sandbox's private directory:
    /// its last component must not be a symlink).
    pub fn open(path: &Path) -> Result<Beneath> {
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys("opening", path))?;
        Ok(Beneath {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The open directory.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The directory's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn full(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// Opens `rel` beneath this directory (a directory, read-only) as a new [`Beneath`].
    pub fn open_dir(&self, rel: &Path) -> Result<Beneath> {
        let rel = plain(rel)?;
        let fd = rustix::fs::openat2(
            &self.fd,
            rel,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            STRICT,
        )
        .map_err(sys("opening", &self.full(rel)))?;
        Ok(Beneath {
            fd,
            path: self.full(rel),
        })
    }

    /// Creates directory `rel` and its missing parents with `mode` (an existing directory
    /// is fine; a symlink or mount point on the way is refused), and opens it.
    pub fn create_dir_all(&self, rel: &Path, mode: u32) -> Result<Beneath> {
        let rel = plain(rel)?;
        let mut dir = Beneath {
            fd: self.fd.try_clone().map_err(|source| BeneathError::Sys {
                op: "duplicating",
                path: self.path.clone(),
                source,
            })?,
            path: self.path.clone(),
        };
        for part in rel.components() {
            let name = part.as_os_str();
            match rustix::fs::mkdirat(&dir.fd, name, Mode::from_raw_mode(mode)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(sys("creating", &dir.path.join(name))(e)),
            }
            let next = dir.open_dir(Path::new(name)).map_err(|e| match e {
                BeneathError::Sys { source, path, .. }
                    if source.raw_os_error() == Some(Errno::NOTDIR.raw_os_error()) =>
                {
                    BeneathError::WrongType(path, "directory")
                }
                e => e,
            })?;
            dir = next;
        }
        Ok(dir)
    }

    /// Creates an empty file `rel` (mode 0600) if it does not exist, its parents too;
    /// refuses a symlink or a non-file at that name.
    pub fn create_file(&self, rel: &Path) -> Result<OwnedFd> {
        let rel = plain(rel)?;
        let parent = match rel.parent() {
            Some(p) if !p.as_os_str().is_empty() => self.create_dir_all(p, 0o755)?,
            _ => self.open_dir(Path::new("."))?,
        };
        let name = rel
            .file_name()
            .ok_or_else(|| BeneathError::BadPath(rel.into()))?;
        let fd = rustix::fs::openat2(
            &parent.fd,
            name,
            OFlags::CREATE | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
            STRICT,
        )
        .map_err(sys("creating", &self.full(rel)))?;
        let st = rustix::fs::fstat(&fd).map_err(sys("stat", &self.full(rel)))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(BeneathError::WrongType(self.full(rel), "regular file"));
        }
        Ok(fd)
    }

    /// Bind-mounts `source` on `rel` beneath this directory, creating `rel` (a directory,
    /// or an empty file for a file source) and its parents. Nothing on the target side is
    /// resolved by path after it was checked.
    pub fn bind(&self, source: BindSource<'_>, rel: &Path, opts: BindOptions) -> Result<()> {
        let rel = plain(rel)?;
        let target_path = self.full(rel);
        let source_name = match source {
            BindSource::Path(p) => p.to_path_buf(),
            BindSource::Fd(_) => target_path.clone(),
        };
        let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
        if opts.recursive {
            flags |= OpenTreeFlags::AT_RECURSIVE;
        }
        let tree = match source {
            BindSource::Path(p) => rustix::mount::open_tree(CWD, p, flags),
            BindSource::Fd(fd) => {
                rustix::mount::open_tree(fd, "", flags | OpenTreeFlags::AT_EMPTY_PATH)
            }
        }
        .map_err(|e| BeneathError::Sys {
            op: "opening the tree of",
            path: source_name.clone(),
            source: e.into(),
        })?;
        let st = rustix::fs::fstat(&tree).map_err(sys("stat", &source_name))?;
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if opts.readonly {
            set_readonly(tree.as_fd(), &source_name)?;
        }
        let target = if is_dir {
            self.create_dir_all(rel, 0o755)?.fd
        } else {
            // move_mount takes the location of any descriptor of the target.
            self.create_file(rel)?
        };
        rustix::mount::move_mount(
            &tree,
            "",
            &target,
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
        .map_err(|e| BeneathError::Sys {
            op: "bind-mounting onto",
            path: target_path,
            source: e.into(),
        })
    }

    /// Removes `rel` and everything under it without following a symlink (a link is
    /// removed, not its target) and without crossing a mount point: on meeting one it
    /// stops with [`BeneathError::Mounted`] naming it, leaving it and the directories above
    /// it in place. A missing `rel` is fine.
    pub fn remove_all(&self, rel: &Path) -> Result<()> {
        let rel = plain(rel)?;
        let (parent, name) = match rel.parent() {
            Some(p) if !p.as_os_str().is_empty() => match self.open_dir(p) {
                Ok(d) => (d, rel.file_name().unwrap_or_default()),
                Err(BeneathError::Sys { source, .. })
                    if source.kind() == io::ErrorKind::NotFound =>
                {
                    return Ok(())
                }
                Err(e) => return Err(e),
            },
            _ => (self.open_dir(Path::new("."))?, rel.as_os_str()),
        };
        parent.remove_entry(name)
    }

    /// Removes entry `name` of this directory (recursively, see [`Beneath::remove_all`]).
    fn remove_entry(&self, name: &OsStr) -> Result<()> {
        let path = self.path.join(name);
        let st = match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(sys("stat", &path)(e)),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            let dir = self.open_dir(Path::new(name))?;
            for entry in list(&dir)? {
                dir.remove_entry(&entry)?;
            }
            rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR).map_err(|e| match e {
                Errno::BUSY => BeneathError::Mounted(path.clone()),
                e => sys("removing", &path)(e),
            })
        } else {
            rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()).map_err(|e| match e {
                // A file bind target: the kernel refuses to unlink a mount point.
                Errno::BUSY => BeneathError::Mounted(path.clone()),
                e => sys("removing", &path)(e),
            })
        }
    }
}

/// Removes directory `path` and what is under it, never following a symlink nor crossing
/// a mount point (see [`Beneath::remove_all`]). `path` itself must not be a mount point.
pub fn remove_tree(path: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(BeneathError::BadPath(path.to_path_buf()));
    };
    match Beneath::open(parent) {
        Ok(dir) => dir.remove_all(Path::new(name)),
        Err(BeneathError::Sys { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The names in a directory, `.` and `..` left out.
fn list(dir: &Beneath) -> Result<Vec<std::ffi::OsString>> {
    let mut names = Vec::new();
    let entries = rustix::fs::Dir::read_from(&dir.fd).map_err(sys("reading", &dir.path))?;
    for entry in entries {
        let entry = entry.map_err(sys("reading", &dir.path))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

/// `rel` if it is a plain relative path: not empty, not absolute, no `..`.
fn plain(rel: &Path) -> Result<&Path> {
    let ok = !rel.as_os_str().is_empty()
        && rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if ok {
        Ok(rel)
    } else {
        Err(BeneathError::BadPath(rel.to_path_buf()))
    }
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// Makes the (detached) tree `tree` read-only, submounts included.
fn set_readonly(tree: BorrowedFd<'_>, what: &Path) -> Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads `attr` (size given) and an empty NUL-terminated path;
    // both outlive the call.
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            nix::libc::AT_EMPTY_PATH | nix::libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(nix::libc::ENOSYS) {
        return Err(BeneathError::NoMountSetattr(what.to_path_buf()));
    }
    Err(BeneathError::Sys {
        op: "making read-only",
        path: what.to_path_buf(),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mounts::is_mounted;
    use nix::mount::{umount2, MntFlags};

    /// Unmounts `0` (lazily) when dropped, so a failing test leaves no mount behind.
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }

    fn tree() -> (tempfile::TempDir, Beneath) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Beneath::open(tmp.path()).unwrap();
        (tmp, dir)
    }

    #[test]
    fn a_planted_symlink_is_refused_not_followed() {
        let (tmp, dir) = tree();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, tmp.path().join("c1")).unwrap();
        let err = dir
            .create_dir_all(Path::new("c1/rootfs"), 0o755)
            .unwrap_err();
        assert!(matches!(err, BeneathError::Symlink(_)), "{err}");
        assert!(err.to_string().contains("c1"), "{err}");
        let err = dir.create_file(Path::new("c1/hosts")).unwrap_err();
        assert!(matches!(err, BeneathError::Symlink(_)), "{err}");
        // A link as the last component is refused too (file and directory targets).
        std::fs::write(outside.join("f"), "x").unwrap();
        std::os::unix::fs::symlink(outside.join("f"), tmp.path().join("file-link")).unwrap();
        assert!(dir.create_file(Path::new("file-link")).is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
        assert!(dir.create_dir_all(Path::new("../x"), 0o755).is_err());
        assert!(dir.create_dir_all(Path::new("/etc"), 0o755).is_err());
    }

    #[test]
    fn binds_are_read_only_when_asked() {
        let (tmp, dir) = tree();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("secret"), "s").unwrap();
        let ro = BindOptions {
            readonly: true,
            recursive: true,
        };
        dir.bind(BindSource::Path(&src), Path::new("c1/mounts/0-src"), ro)
            .unwrap();
        let target = tmp.path().join("c1/mounts/0-src");
        let _guard = Unmount(target.clone());
        assert!(is_mounted(&target, |_| true));
        assert_eq!(std::fs::read_to_string(target.join("secret")).unwrap(), "s");
        let err = std::fs::write(target.join("secret"), "changed").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS));
        // A file source gets an empty file as its mount point.
        let file = tmp.path().join("hosts");
        std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();
        dir.bind(BindSource::Path(&file), Path::new("c1/mounts/1-hosts"), ro)
            .unwrap();
        let _guard2 = Unmount(tmp.path().join("c1/mounts/1-hosts"));
        assert!(std::fs::write(tmp.path().join("c1/mounts/1-hosts"), "x").is_err());
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "127.0.0.1 localhost\n"
        );
    }

    #[test]
    fn removal_stops_at_a_live_mount_and_keeps_its_data() {
        let (tmp, dir) = tree();
        let src = tmp.path().join("data");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("precious"), "data").unwrap();
        dir.bind(
            BindSource::Path(&src),
            Path::new("c1/rootfs"),
            BindOptions::default(),
        )
        .unwrap();
        let target = tmp.path().join("c1/rootfs");
        let guard = Unmount(target.clone());
        std::fs::write(tmp.path().join("c1/other"), "").unwrap();
        let err = dir.remove_all(Path::new("c1")).unwrap_err();
        assert!(
            matches!(&err, BeneathError::Mounted(p) if *p == target),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(src.join("precious")).unwrap(),
            "data"
        );
        assert!(is_mounted(&target, |_| true));
        drop(guard);
        dir.remove_all(Path::new("c1")).unwrap();
        assert!(!tmp.path().join("c1").exists());
        assert!(src.join("precious").exists());
        // Missing is fine.
        dir.remove_all(Path::new("c1")).unwrap();
    }

    #[test]
    fn removal_unlinks_symlinks_without_following_them() {
        let (tmp, dir) = tree();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("marker"), "m").unwrap();
        std::fs::create_dir_all(tmp.path().join("c1/a")).unwrap();
        std::os::unix::fs::symlink(&outside, tmp.path().join("c1/a/link")).unwrap();
        std::os::unix::fs::symlink(&outside, tmp.path().join("c2")).unwrap();
        dir.remove_all(Path::new("c1")).unwrap();
        dir.remove_all(Path::new("c2")).unwrap();
        assert!(!tmp.path().join("c1").exists());
        assert!(std::fs::symlink_metadata(tmp.path().join("c2")).is_err());
        assert!(outside.join("marker").exists());
        remove_tree(&outside).unwrap();
        assert!(!outside.exists());
    }
}
