//! Moving PID 1 off the initramfs: the kernel's initial rootfs is the root of the mount
//! tree, and pivot_root refuses a root that is not attached to a parent mount, so crun
//! would need `--no-pivot` (MS_MOVE + chroot, which a process with CAP_SYS_CHROOT can
//! leave). At boot the agent binds the initramfs onto a directory of itself, moves that
//! bind over `/` and chroots into it, as switch_root does with a new root: the agent's
//! root is then a mount with a parent, and each container gets a real pivot_root (its
//! old root, the agent's, is detached in the container's mount namespace). Nothing is
//! copied: the bind shows the initramfs's own files.
//!
//! The bind is read-only: nothing in the guest can change the agent's or crun's files,
//! and crun, on a read-only mount of a file system that is not shmem (the shim boots the
//! kernel with `rootfstype=ramfs`), trusts its binary instead of copying itself into a
//! sealed memfd and executing that, twice per call (its CVE-2019-5736 guard: a process
//! in a container cannot write to crun's binary through a read-only mount either).

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Where the initramfs is bound before the bind is moved over `/`.
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

fn sys(what: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> RootfsError {
    let f = io(what, path);
    move |e| f(e.into())
}

/// Binds `/` (the initramfs) onto a directory of itself, moves the bind over `/` and
/// chroots into it. On failure the agent is left on the initramfs, as it was.
pub fn switch_to_bind() -> Result<(), RootfsError> {
    let new_root = Path::new(NEW_ROOT);
    std::fs::create_dir_all(new_root).map_err(io("mkdir", new_root))?;
    mount(
        Some("/"),
        new_root,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys("binding / onto", new_root))?;
    std::env::set_current_dir(new_root).map_err(io("chdir", new_root))?;
    if let Err(e) = mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>) {
        let _ = std::env::set_current_dir("/");
        let _ = umount2(new_root, MntFlags::MNT_DETACH);
        return Err(sys("moving the bind onto", Path::new("/"))(e));
    }
    nix::unistd::chroot(".").map_err(sys("chroot", Path::new(".")))?;
    std::env::set_current_dir("/").map_err(io("chdir", Path::new("/")))?;
    // The bind's mount point, now an empty directory of the new root: not needed.
    let _ = std::fs::remove_dir(new_root);
    let ro = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
    if let Err(e) = mount(None::<&str>, "/", None::<&str>, ro, None::<&str>) {
        log::warn!("the root stays writable (crun then copies itself at each call): {e}");
    }
    Ok(())
}
