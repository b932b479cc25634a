//! lazyvm: a containerd shim v2 runtime that runs each pod in a QEMU micro-VM and starts
//! containers lazily from nydus (RAFS) images.
//!
//! One module per hop of the data flow (see `DESIGN.md` in the shared folder):
//! - [`rootfs`] classifies containerd's rootfs mounts and decodes the nydus `extraoption`;
//! - [`process`] supervises the helper processes (nydusd, QEMU, vhost-device-vsock);
//! - [`nydusd`] runs nydusd (the VM's virtio-fs daemon) and talks to its HTTP API.

pub mod nydusd;
pub mod process;
pub mod rootfs;
