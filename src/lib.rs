//! lazyvm: a containerd shim v2 runtime that runs each pod in a QEMU micro-VM and starts
//! containers lazily from nydus (RAFS) images.
//!
//! One module per hop of the data flow (see `DESIGN.md` in the shared folder):
//! - [`shim`] is the containerd shim: task service, events, stdio;
//! - [`sandbox`] is one pod: the VM, nydusd, the agent client, and the containers in it;
//! - [`rootfs`] classifies containerd's rootfs mounts and decodes the nydus `extraoption`;
//! - [`nydusd`] runs nydusd (the VM's virtio-fs daemon) and talks to its HTTP API;
//! - [`hypervisor`] runs the VM: QEMU and vhost-device-vsock;
//! - [`agent`] is the host side of the guest agent protocol (ttrpc over hybrid vsock);
//! - [`config`] is the runtime configuration (TOML with defaults);
//! - [`network`] connects a pod's network namespace to the VM (taps, tc redirects);
//! - [`process`] supervises the helper processes; [`mounts`] handles host mounts;
//! - [`beneath`] is every file operation in a directory the guest can see: no symlink
//!   is followed and no mount crossed;
//! - [`image`] is `lazyvm image convert`: a rootfs or OCI archive to a nydus (or plain
//!   OCI) image pushed to a registry.

pub mod agent;
pub mod beneath;
pub mod config;
pub mod hypervisor;
pub mod image;
pub mod mounts;
pub mod network;
pub mod nydusd;
pub mod process;
pub mod rootfs;
pub mod sandbox;
pub mod shim;
pub mod vmcache;
