//! Moving PID 1 off the initramfs: the kernel's initial rootfs cannot be pivot_root'ed
//! away from, so crun would need `--no-pivot` (MS_MOVE + chroot, which a process with
//! CAP_SYS_CHROOT can leave). At boot the agent copies the initramfs into a fresh tmpfs,
//! moves that over `/`, chroots into it and executes itself again; containers then get
//! a real pivot_root.

use std::ffi::CString;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};

use crate::remove;

/// Set in the environment of the re-executed agent.
pub const SWITCHED_ENV: &str = "LAZYVM_AGENT_SWITCHED";
const NEW_ROOT: &str = "/.lazyvm-root";

/// Errors of the switch.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A step failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The step.
        what: &'static str,
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError {
    let path = path.display().to_string();
    move |source| RootfsError::Io { what, path, source }
}

fn nix_io(e: nix::Error) -> std::io::Error {
    e.into()
}

/// Copies `src` into `dst` (directories, files, symlinks, device nodes, modes).
fn copy_tree(src: &Path, dst: &Path) -> Result<(), RootfsError> {
    for entry in std::fs::read_dir(src).map_err(io("reading", src))? {
        let entry = entry.map_err(io("reading", src))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&from).map_err(io("stat", &from))?;
        let ft = meta.file_type();
        let mode = meta.permissions().mode() & 0o7777;
        if ft.is_dir() {
            std::fs::create_dir(&to).map_err(io("mkdir", &to))?;
            copy_tree(&from, &to)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))
                .map_err(io("chmod", &to))?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&from).map_err(io("readlink", &from))?;
            std::os::unix::fs::symlink(&target, &to).map_err(io("symlink", &to))?;
        } else if ft.is_file() {
            std::fs::copy(&from, &to).map_err(io("copying", &from))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))
                .map_err(io("chmod", &to))?;
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            mknod(&to, kind, Mode::from_bits_truncate(mode), meta.rdev())
                .map_err(|e| io("mknod", &to)(nix_io(e)))?;
        }
        // Sockets and fifos are not expected in an initramfs: skipped.
    }
    Ok(())
}

/// Opens a directory for reading, close-on-exec.
fn open_dir(path: &Path) -> Result<OwnedFd, RootfsError> {
    let fd = open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io("opening", path)(nix_io(e)))?;
    // SAFETY: open just returned this descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Frees the initramfs's memory, as switch_root does, once the new root is in place:
/// removes the old root's contents through `old_root` (the new root's mount point kept),
/// never crossing a mount (one left there, /proc say, keeps its directory). Best effort:
/// a failure is logged.
fn free_old_root(old_root: OwnedFd) {
    let keep = Path::new(NEW_ROOT).file_name();
    if let Err(e) = remove::remove_contents_at(old_root.as_fd(), Path::new("(initramfs)"), keep) {
        log::warn!("freeing the initramfs (best effort): {e}");
    }
}

/// Copies `/` into a tmpfs, makes it the root and re-executes `/init` with the same
/// arguments. Returns only on failure (the caller then carries on from the initramfs).
pub fn switch_to_tmpfs() -> RootfsError {
    let new_root = Path::new(NEW_ROOT);
    let res = (|| {
        std::fs::create_dir_all(new_root).map_err(io("mkdir", new_root))?;
        mount(
            Some("tmpfs"),
            new_root,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=0755"),
        )
        .map_err(|e| io("mounting tmpfs on", new_root)(nix_io(e)))?;
        for entry in std::fs::read_dir("/").map_err(io("reading", Path::new("/")))? {
            let entry = entry.map_err(io("reading", Path::new("/")))?;
            let from = entry.path();
            if from == new_root {
                continue;
            }
            let to = new_root.join(entry.file_name());
            let meta = std::fs::symlink_metadata(&from).map_err(io("stat", &from))?;
            if meta.is_dir() {
                std::fs::create_dir(&to).map_err(io("mkdir", &to))?;
                copy_tree(&from, &to)?;
                let mode = meta.permissions().mode() & 0o7777;
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))
                    .map_err(io("chmod", &to))?;
            } else {
                let parent = Path::new("/");
                copy_one(parent, new_root, &entry.file_name())?;
            }
        }
        // The old root stays reachable through this descriptor once the new one is
        // moved over it: its contents are freed through it after the switch.
        let old_root = open_dir(Path::new("/"))?;
        std::env::set_current_dir(new_root).map_err(io("chdir", new_root))?;
        if let Err(e) = mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>) {
            // Staying on the initramfs: give back the copy's memory (best effort).
            let _ = std::env::set_current_dir("/");
            let _ = umount2(new_root, MntFlags::MNT_DETACH);
            return Err(io("moving the new root onto", Path::new("/"))(nix_io(e)));
        }
        nix::unistd::chroot(".").map_err(|e| io("chroot", Path::new("."))(nix_io(e)))?;
        std::env::set_current_dir("/").map_err(io("chdir", Path::new("/")))?;
        Ok::<OwnedFd, RootfsError>(old_root)
    })();
    let old_root = match res {
        Ok(fd) => fd,
        Err(e) => return e,
    };
    free_old_root(old_root);
    std::env::set_var(SWITCHED_ENV, "1");
    let args: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.into_encoded_bytes()).ok())
        .collect();
    let init = CString::new("/init").unwrap_or_default();
    let err = nix::unistd::execv(&init, &args).unwrap_err();
    RootfsError::Io {
        what: "executing",
        path: "/init".to_owned(),
        source: err.into(),
    }
}

/// Copies one non-directory entry `name` from `src` to `dst` (via a one-entry tree copy).
fn copy_one(src: &Path, dst: &Path, name: &std::ffi::OsStr) -> Result<(), RootfsError> {
    let from = src.join(name);
    let to = dst.join(name);
    let meta = std::fs::symlink_metadata(&from).map_err(io("stat", &from))?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(&from).map_err(io("readlink", &from))?;
        std::os::unix::fs::symlink(&target, &to).map_err(io("symlink", &to))?;
    } else if ft.is_file() {
        std::fs::copy(&from, &to).map_err(io("copying", &from))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_files_dirs_and_symlinks() {
        let base = std::env::temp_dir().join(format!("lazyvm-rootfs-{}", std::process::id()));
        let (src, dst) = (base.join("src"), base.join("dst"));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::write(src.join("a/b/f"), "x").unwrap();
        std::fs::set_permissions(src.join("a/b/f"), std::fs::Permissions::from_mode(0o751))
            .unwrap();
        std::os::unix::fs::symlink("b/f", src.join("a/l")).unwrap();
        copy_tree(&src, &dst).unwrap();
        assert_eq!(std::fs::read_to_string(dst.join("a/b/f")).unwrap(), "x");
        let mode = std::fs::metadata(dst.join("a/b/f"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o751);
        assert_eq!(
            std::fs::read_link(dst.join("a/l")).unwrap(),
            Path::new("b/f")
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
