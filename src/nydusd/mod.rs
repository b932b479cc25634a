//! nydusd: the VM's virtio-fs daemon, and the lazy RAFS image service.
//!
//! - [`daemon`] starts nydusd in the shim's network namespace, watches it and stops it;
//! - [`client`] talks to its HTTP API over the API socket (daemon info, mount, umount,
//!   metrics);
//! - [`mountpoint`] validates the mountpoints lazyvm asks nydusd for.

pub mod client;
pub mod daemon;
pub mod mountpoint;

pub use client::{
    BackendMetrics, ClientError, DaemonInfo, FsType, GlobalMetrics, MountRequest, NydusClient,
};
pub use daemon::{DaemonConfig, DaemonError, LogLevel, Mode, Nydusd};
pub use mountpoint::{rafs_mountpoint, MountpointError, PASSTHROUGH_MOUNTPOINT};
