//! The `nydus-overlayfs` mount helper's options.
//!
//! containerd mounts a `fuse.nydus-overlayfs` rootfs on the host for a moment (the CRI
//! reads the image's `/etc/passwd` and `/etc/group` through it) by running
//! `mount.fuse overlay TARGET -o OPTIONS -t nydus-overlayfs`, which runs
//! `nydus-overlayfs overlay TARGET -o OPTIONS`. The helper drops `extraoption=` (it is
//! for lazyvm's shim, and would make the kernel refuse the mount) and mounts a
//! **read-only** overlay whose layers are the upper directory above the lower ones:
//! the host never writes into the snapshot's `fs` and `work`, which belong to the guest
//! (a host overlay mount with that workdir leaves `work/work` behind, which breaks the
//! guest's own overlay on the same directories), and needs nothing but to read the
//! account files.

use rustix::mount::MountFlags;

/// Why the helper's arguments were refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OverlayfsError {
    /// Wrong command line.
    #[error("usage: nydus-overlayfs SOURCE TARGET [-o OPTIONS]... ({0})")]
    Usage(String),
    /// The options hold a NUL byte.
    #[error("the mount options hold a NUL byte")]
    Nul,
    /// The kernel refused the overlay mount. The options name host paths only: the
    /// extraoption, which may hold credentials, was dropped before.
    #[error("mounting overlay on {target}: {source}")]
    Mount {
        /// The mount point.
        target: String,
        /// The kernel's error.
        source: rustix::io::Errno,
    },
}

/// Parses the helper's command line and mounts the plain overlay.
pub fn mount(args: &[String]) -> Result<(), OverlayfsError> {
    let m = parse_args(args)?;
    let failed = |source| OverlayfsError::Mount {
        target: m.target.clone(),
        source,
    };
    if let Some(layer) = &m.single {
        use rustix::mount::{mount_bind, mount_remount};
        mount_bind(layer.as_str(), m.target.as_str()).map_err(failed)?;
        return mount_remount(m.target.as_str(), m.flags | MountFlags::BIND, "").map_err(failed);
    }
    let data = std::ffi::CString::new(m.data.as_str()).map_err(|_| OverlayfsError::Nul)?;
    rustix::mount::mount(
        m.source.as_str(),
        m.target.as_str(),
        "overlay",
        m.flags,
        Some(data.as_c_str()),
    )
    .map_err(failed)
}

/// A mount the helper makes.
#[derive(Debug, PartialEq)]
pub struct OverlayMount {
    /// The mount's source (`overlay`).
    pub source: String,
    /// Where to mount.
    pub target: String,
    /// Flags from the options (`nosuid`, …), always with `ro`.
    pub flags: MountFlags,
    /// The overlay's own options: `lowerdir=UPPER:LOWERS` and any others given.
    pub data: String,
    /// The only layer, when there is one: overlayfs needs two without an upper
    /// directory, so that one is bind-mounted read-only instead.
    pub single: Option<String>,
}

/// Parses `SOURCE TARGET [-o OPTIONS]...` (also `-oOPTIONS`).
pub fn parse_args(args: &[String]) -> Result<OverlayMount, OverlayfsError> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-o" {
            let o = it
                .next()
                .ok_or_else(|| OverlayfsError::Usage("-o needs a value".into()))?;
            options.push(o.clone());
        } else if let Some(o) = a.strip_prefix("-o") {
            options.push(o.to_string());
        } else if a.starts_with('-') {
            // mount(8)-style flags (-n, -v, …) change nothing here.
            continue;
        } else {
            positional.push(a.clone());
        }
    }
    let [source, target] = <[String; 2]>::try_from(positional)
        .map_err(|p| OverlayfsError::Usage(format!("{} arguments", p.len())))?;
    let mut flags = MountFlags::RDONLY;
    let mut data = Vec::new();
    let mut upper = None;
    let mut lower = None;
    for o in options.iter().flat_map(|o| o.split(',')) {
        match o {
            "" | "rw" | "suid" | "dev" | "exec" | "async" | "auto" | "noauto" | "defaults" => {}
            "ro" => flags |= MountFlags::RDONLY,
            "nosuid" => flags |= MountFlags::NOSUID,
            "nodev" => flags |= MountFlags::NODEV,
            "noexec" => flags |= MountFlags::NOEXEC,
            "sync" => flags |= MountFlags::SYNCHRONOUS,
            "noatime" => flags |= MountFlags::NOATIME,
            "nodiratime" => flags |= MountFlags::NODIRATIME,
            "relatime" => flags |= MountFlags::RELATIME,
            o if o.starts_with("extraoption=") || o.starts_with("workdir=") => {}
            o if o.starts_with("upperdir=") => upper = Some(&o["upperdir=".len()..]),
            o if o.starts_with("lowerdir=") => lower = Some(&o["lowerdir=".len()..]),
            o => data.push(o),
        }
    }
    let layers: Vec<&str> = upper
        .into_iter()
        .chain(lower)
        .filter(|l| !l.is_empty())
        .collect();
    if layers.is_empty() {
        return Err(OverlayfsError::Usage(
            "no lowerdir= or upperdir= option".into(),
        ));
    }
    let single = (layers.len() == 1).then(|| layers[0].to_string());
    let lowerdir = format!("lowerdir={}", layers.join(":"));
    data.insert(0, &lowerdir);
    Ok(OverlayMount {
        source,
        target,
        flags,
        data: data.join(","),
        single,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn drops_extraoption_and_splits_flags() {
        let m = parse_args(&args(&[
            "overlay",
            "/tmp/m",
            "-o",
            "workdir=/w,upperdir=/u,lowerdir=/l1:/l2,extraoption=eyJ9,ro,nosuid",
            "-odev",
        ]))
        .unwrap();
        assert_eq!(m.source, "overlay");
        assert_eq!(m.target, "/tmp/m");
        assert_eq!(m.data, "lowerdir=/u:/l1:/l2");
        assert_eq!(m.single, None);
        assert_eq!(m.flags, MountFlags::RDONLY | MountFlags::NOSUID);
        let m = parse_args(&args(&["overlay", "/m", "-o", "lowerdir=/l,index=off"])).unwrap();
        assert_eq!(m.data, "lowerdir=/l,index=off");
        assert_eq!(m.single.as_deref(), Some("/l"));
        assert_eq!(m.flags, MountFlags::RDONLY);
    }

    #[test]
    fn usage_errors() {
        assert!(parse_args(&args(&["overlay"])).is_err());
        assert!(parse_args(&args(&["a", "b", "c"])).is_err());
        assert!(parse_args(&args(&["a", "b", "-o"])).is_err());
        assert!(parse_args(&args(&["a", "b", "-o", "workdir=/w"])).is_err());
    }
}
