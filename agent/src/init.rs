//! PID 1 duties at boot: the pseudo filesystems, kernel modules, cgroup2, hostname.

use std::path::Path;

use nix::mount::MsFlags;

use crate::cgroup::{self, CgroupError};
use crate::modules::{self, ModuleError};
use crate::mount::{self, MountError};

/// Errors of the boot setup.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A mount failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// Module loading failed.
    #[error(transparent)]
    Module(#[from] ModuleError),
    /// cgroup setup failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Another step failed.
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

/// Mounts /proc, /sys, /dev (+ /dev/pts, /dev/shm), /run, /sys/fs/cgroup; loads modules;
/// enables cgroup controllers; sets a default hostname.
pub fn setup() -> Result<(), InitError> {
    let nsnd = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount::mount_pseudo("proc", "/proc", nsnd, None)?;
    mount::mount_pseudo("sysfs", "/sys", nsnd, None)?;
    mount::mount_pseudo("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755"))?;
    mount::mount_pseudo(
        "devpts",
        "/dev/pts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    // /dev/ptmx must be this devpts instance's.
    let _ = std::fs::remove_file("/dev/ptmx");
    std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx").map_err(|source| InitError::Io {
        what: "linking /dev/ptmx",
        source,
    })?;
    mount::mount_pseudo(
        "tmpfs",
        "/dev/shm",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mount::mount_pseudo(
        "tmpfs",
        "/run",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    mount::mount_pseudo(
        "tmpfs",
        "/tmp",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;

    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .map_err(|e| InitError::Io {
            what: "uname",
            source: e.into(),
        })?;
    let loaded = modules::load_all(&Path::new("/lib/modules").join(&release))?;
    if !loaded.is_empty() {
        log::info!("loaded modules: {}", loaded.join(" "));
    }

    mount::mount_pseudo("cgroup2", cgroup::ROOT, nsnd, Some("nsdelegate"))?;
    cgroup::enable_controllers()?;
    nix::unistd::sethostname("lazyvm").map_err(|e| InitError::Io {
        what: "sethostname",
        source: e.into(),
    })?;
    for dir in ["/run/lazyvm/containers", "/run/lazyvm/work", "/run/crun"] {
        std::fs::create_dir_all(dir).map_err(|source| InitError::Io {
            what: "creating /run/lazyvm",
            source,
        })?;
    }
    Ok(())
}
