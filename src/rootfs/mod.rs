//! containerd's rootfs mounts, and what lazyvm makes of them.
//!
//! - [`extraoption`] decodes the `extraoption=` of a `fuse.nydus-overlayfs` mount.

pub mod extraoption;

pub use extraoption::{redact_options, ExtraOption, ExtraOptionError, FsVersion};

/// The mount type containerd's nydus snapshotter gives a nydus container's rootfs.
pub const NYDUS_MOUNT_TYPE: &str = "fuse.nydus-overlayfs";
