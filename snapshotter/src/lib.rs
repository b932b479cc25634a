//! lazyvm's containerd snapshotter (a proxy plugin on a unix socket). The
//! binaries `lazyvm-snapshotter` and `nydus-overlayfs` are in the `lazyvm` package.
//!
//! Ordinary layers get containerd's overlayfs semantics, so the pause image and plain
//! OCI images work. Nydus images are pulled lazily: a data layer is committed without
//! being fetched, the bootstrap layer is unpacked like any layer, and a container above
//! it gets a `fuse.nydus-overlayfs` mount whose `extraoption` tells lazyvm's shim how
//! nydusd reads the image from its registry.
//!
//! One module per concern:
//! - [`config`]: the configuration file (socket, root, registries and credentials);
//! - [`store`]: the crash-safe metadata (redb);
//! - [`storage`]: the snapshots' directories;
//! - [`filter`]: containerd's List filters;
//! - [`nydus`]: nydus labels, image references, nydusd's configuration, the mount;
//! - [`snapshots`]: the operations; [`service`]: the gRPC service over them; [`server`]:
//!   serving it on a unix socket;
//! - [`overlayfs`]: the `nydus-overlayfs` mount helper's option handling.

pub mod config;
pub mod filter;
pub mod nydus;
pub mod overlayfs;
pub mod server;
pub mod service;
pub mod snapshots;
pub mod storage;
pub mod store;
