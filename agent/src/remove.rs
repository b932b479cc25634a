//! Removing directory trees without ever crossing a mount.
//!
//! The agent's directories under `/run/lazyvm/containers/<cid>/` can hold mounts whose
//! sources are host data shared through virtio-fs (a container's rootfs, its volumes): a
//! removal that descended into a surviving mount would delete the user's host files. The
//! walk here goes through directory file descriptors, opens every directory with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)` (EXDEV: a mount
//! point), never follows a symlink (the link itself is unlinked) and stops at the first
//! mount point it meets, naming it, with that mount point and every directory above it
//! left in place.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// How often an `openat2` that reports a racing rename or mount (EAGAIN) is retried.
const OPEN_RETRIES: usize = 8;

/// Errors of removing a tree.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// A mount point is in the way: nothing under it was touched, and it and every
    /// directory above it were kept.
    #[error("{path} is still mounted: it and the directories above it were kept")]
    Mounted {
        /// The mount point.
        path: String,
    },
    /// The path does not name a directory entry (`/`, or ending in `..`).
    #[error("refusing to remove {path}: it does not name a directory entry")]
    BadPath {
        /// The path.
        path: String,
    },
    /// A system call failed.
    #[error("removing {path}: {what}: {errno}")]
    Sys {
        /// The step that failed.
        what: &'static str,
        /// The path it failed on.
        path: String,
        /// The error.
        errno: Errno,
    },
}

fn sys(what: &'static str, path: &Path) -> impl FnOnce(Errno) -> RemoveError {
    let path = path.display().to_string();
    move |errno| RemoveError::Sys { what, path, errno }
}

fn mounted(path: &Path) -> RemoveError {
    RemoveError::Mounted {
        path: path.display().to_string(),
    }
}

/// Removes `path` and, for a directory, everything under it, without crossing a mount:
/// a symlink is unlinked (never followed), and a mount point met on the way (`path`
/// itself included) stops the removal with [`RemoveError::Mounted`] naming it, leaving
/// it and the directories above it in place. A `path` that does not exist is not an
/// error. The directories leading to `path` are resolved normally: they must be
/// trusted.
pub fn remove_tree(path: &Path) -> Result<(), RemoveError> {
    let bad = || RemoveError::BadPath {
        path: path.display().to_string(),
    };
    let name = match path.components().next_back() {
        Some(Component::Normal(name)) => name,
        _ => return Err(bad()),
    };
    let parent = match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => return Err(bad()),
    };
    let parent_fd = match open_dir(None, parent) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(sys("opening", parent)(e)),
    };
    remove_entry(parent_fd.as_fd(), name, path)
}

/// One directory being emptied: its descriptor, its path (for errors), the entries
/// still to remove, and its name in the directory below it on the stack.
struct Level {
    fd: OwnedFd,
    path: PathBuf,
    names: Vec<CString>,
    name: CString,
}

/// Removes the entry `name` of `dir` (`path` in errors). Iterative, so that a deep tree
/// costs descriptors (EMFILE at worst), not stack.
fn remove_entry(dir: BorrowedFd<'_>, name: &OsStr, path: &Path) -> Result<(), RemoveError> {
    let name = CString::new(name.as_bytes()).map_err(|_| RemoveError::BadPath {
        path: path.display().to_string(),
    })?;
    let fd = match open_entry(dir, &name, path)? {
        Entry::Gone => return Ok(()),
        Entry::Other => return unlink(dir, &name, path, UnlinkatFlags::NoRemoveDir),
        Entry::Dir(fd) => fd,
    };
    let mut stack = vec![Level {
        names: list(fd.as_fd(), path)?,
        fd,
        path: path.to_path_buf(),
        name,
    }];
    while let Some(top) = stack.last_mut() {
        let Some(child) = top.names.pop() else {
            let Some(done) = stack.pop() else { break };
            drop(done.fd);
            let parent = stack.last().map_or(dir, |l| l.fd.as_fd());
            unlink(parent, &done.name, &done.path, UnlinkatFlags::RemoveDir)?;
            continue;
        };
        let child_path = top.path.join(OsStr::from_bytes(child.as_bytes()));
        match open_entry(top.fd.as_fd(), &child, &child_path)? {
            Entry::Gone => {}
            Entry::Other => unlink(
                top.fd.as_fd(),
                &child,
                &child_path,
                UnlinkatFlags::NoRemoveDir,
            )?,
            Entry::Dir(fd) => {
                let names = list(fd.as_fd(), &child_path)?;
                stack.push(Level {
                    fd,
                    path: child_path,
                    names,
                    name: child,
                });
            }
        }
    }
    Ok(())
}

/// What a directory entry turned out to be.
enum Entry {
    /// It vanished meanwhile.
    Gone,
    /// A directory on the same mount, opened.
    Dir(OwnedFd),
    /// Not a directory (a symlink among them): to unlink.
    Other,
}

/// Looks at the entry `name` of `dir` without following it; opens it when it is a
/// directory, refusing a mount point.
fn open_entry(dir: BorrowedFd<'_>, name: &CStr, path: &Path) -> Result<Entry, RemoveError> {
    let st = match fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(Entry::Gone),
        Err(e) => return Err(sys("stat", path)(e)),
    };
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
        return Ok(Entry::Other);
    }
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let mut tries = 0;
    loop {
        match openat2(dir.as_raw_fd(), name, how) {
            // SAFETY: openat2 just returned this descriptor, owned by nobody else.
            Ok(fd) => return Ok(Entry::Dir(unsafe { OwnedFd::from_raw_fd(fd) })),
            Err(Errno::EXDEV) => return Err(mounted(path)),
            Err(Errno::ENOENT) => return Ok(Entry::Gone),
            Err(Errno::EAGAIN) if tries < OPEN_RETRIES => tries += 1,
            Err(e) => return Err(sys("opening", path)(e)),
        }
    }
}

/// Unlinks `name` from `dir`; EBUSY (a mount point) is reported as such, ENOENT is fine.
fn unlink(
    dir: BorrowedFd<'_>,
    name: &CStr,
    path: &Path,
    flags: UnlinkatFlags,
) -> Result<(), RemoveError> {
    match unlinkat(Some(dir.as_raw_fd()), name, flags) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EBUSY) => Err(mounted(path)),
        Err(e) => Err(sys("unlinking", path)(e)),
    }
}

/// Opens a directory (`at` relative, else the cwd) for reading, close-on-exec.
fn open_dir(at: Option<BorrowedFd<'_>>, path: &Path) -> Result<OwnedFd, Errno> {
    let fd = openat(
        at.map(|d| d.as_raw_fd()),
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: openat just returned this descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A `DIR` stream, closed on drop.
struct DirStream(std::ptr::NonNull<libc::DIR>);

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: the stream came from fdopendir and is closed only here.
        unsafe { libc::closedir(self.0.as_ptr()) };
    }
}

/// The names in `dir` (without `.` and `..`), read through a descriptor of its own so
/// that `dir`'s offset is untouched.
fn list(dir: BorrowedFd<'_>, path: &Path) -> Result<Vec<CString>, RemoveError> {
    let fd = open_dir(Some(dir), Path::new("."))
        .map_err(sys("opening", path))?
        .into_raw_fd();
    // SAFETY: fd is an open directory descriptor of ours; fdopendir takes it over on
    // success.
    let stream = match std::ptr::NonNull::new(unsafe { libc::fdopendir(fd) }) {
        Some(p) => DirStream(p),
        None => {
            let e = Errno::last();
            // SAFETY: fdopendir failed, so the descriptor is still ours alone.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            return Err(sys("reading", path)(e));
        }
    };
    let mut names = Vec::new();
    loop {
        Errno::clear();
        // SAFETY: the stream is open; the entry is read before the next readdir call.
        let ent = unsafe { libc::readdir(stream.0.as_ptr()) };
        if ent.is_null() {
            return match Errno::last_raw() {
                0 => Ok(names),
                _ => Err(sys("reading", path)(Errno::last())),
            };
        }
        // SAFETY: d_name of a returned entry is a NUL-terminated string.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the temp dir, removed (without crossing mounts) on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(what: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let base = std::env::temp_dir()
                .canonicalize()
                .unwrap_or_else(|_| std::env::temp_dir());
            let dir = base.join(format!(
                "lazyvm-remove-{what}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = remove_tree(&self.0);
        }
    }

    /// A tmpfs mounted for a test, lazily unmounted on drop (test failure included).
    struct MountGuard(PathBuf);

    impl Drop for MountGuard {
        fn drop(&mut self) {
            let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }

    fn is_mount_point(path: &Path) -> bool {
        let want = path.display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
    }

    #[test]
    fn stops_at_a_mount_point_and_keeps_it() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping the mount test: not root");
            return;
        }
        let tmp = TempDir::new("mount");
        let tree = tmp.0.join("tree");
        let mnt = tree.join("sub/mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::write(tree.join("a"), "a").unwrap();
        std::fs::write(tree.join("sub/b"), "b").unwrap();
        mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let guard = MountGuard(mnt.clone());
        std::fs::write(mnt.join("host-data"), "precious").unwrap();

        let e = remove_tree(&tree).unwrap_err();
        assert!(
            matches!(&e, RemoveError::Mounted { path } if Path::new(path) == mnt),
            "{e}"
        );
        assert!(e.to_string().contains(&mnt.display().to_string()), "{e}");
        assert_eq!(
            std::fs::read_to_string(mnt.join("host-data")).unwrap(),
            "precious"
        );
        assert!(
            is_mount_point(&mnt),
            "{} is not mounted any more",
            mnt.display()
        );
        assert!(tree.join("sub").is_dir());

        // The top directory being a mount point is refused as well.
        let e = remove_tree(&mnt).unwrap_err();
        assert!(
            matches!(&e, RemoveError::Mounted { path } if Path::new(path) == mnt),
            "{e}"
        );
        assert!(mnt.join("host-data").exists());

        drop(guard);
        assert!(!is_mount_point(&mnt));
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
    }

    #[test]
    fn unlinks_symlinks_without_following_them() {
        let tmp = TempDir::new("symlink");
        let outside = tmp.0.join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("marker"), "m").unwrap();
        let tree = tmp.0.join("tree");
        std::fs::create_dir_all(tree.join("d")).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("d/link")).unwrap();

        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(
            std::fs::read_to_string(outside.join("marker")).unwrap(),
            "m"
        );

        // A symlink given as the tree itself is unlinked, not followed.
        let link = tmp.0.join("top-link");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        remove_tree(&link).unwrap();
        assert!(std::fs::symlink_metadata(&link).is_err());
        assert!(outside.join("marker").exists());
    }

    #[test]
    fn removes_a_plain_tree() {
        let tmp = TempDir::new("plain");
        let tree = tmp.0.join("tree");
        std::fs::create_dir_all(tree.join("a/b/c")).unwrap();
        std::fs::create_dir_all(tree.join("empty")).unwrap();
        std::fs::write(tree.join("f"), "f").unwrap();
        std::fs::write(tree.join("a/b/c/g"), "g").unwrap();
        std::fs::write(tree.join("a/h"), "h").unwrap();
        nix::unistd::mkfifo(&tree.join("a/fifo"), Mode::from_bits_truncate(0o600)).unwrap();

        remove_tree(&tree).unwrap();
        assert!(std::fs::symlink_metadata(&tree).is_err());
        assert!(tmp.0.is_dir());
        // Gone already: fine.
        remove_tree(&tree).unwrap();
        assert!(matches!(
            remove_tree(Path::new("/")),
            Err(RemoveError::BadPath { .. })
        ));
    }
}
