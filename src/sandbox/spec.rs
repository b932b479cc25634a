//! Turning a host OCI spec into one the guest can run.
//!
//! Paths of the host mean nothing in the VM: host hooks are dropped; namespace paths stay
//! for the agent, which reads them as "the pod's" (the VM's network namespace, the
//! sandbox container's IPC, UTS and PID namespaces: see `CreateContainerRequest` in
//! `proto/agent.proto`); the pod's `/dev/shm` becomes the pod's tmpfs inside the guest
//! ([`GUEST_POD_SHM`]), never a host tmpfs shared through virtio-fs; other bind mounts of
//! host files or directories are shared through virtio-fs: each is bound into the
//! container's shared directory and its source rewritten to the guest path.

use std::path::PathBuf;

use oci_spec::runtime::Spec;

/// A host path the guest needs: bind `host` at `shared_name` in the container's shared
/// directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBind {
    /// The host file or directory.
    pub host: PathBuf,
    /// Its name under `<shared>/<cid>/mounts/`.
    pub shared_name: String,
    /// Read-only (`ro` in the mount's options): the host bind is read-only too.
    pub readonly: bool,
    /// Recursive (`rbind`): the source's submounts are shared with it.
    pub recursive: bool,
}

/// The pod's shared memory in the guest: a tmpfs the agent mounts at CreateSandbox.
pub const GUEST_POD_SHM: &str = "/run/lazyvm/pod/shm";

fn is_bind(typ: Option<&str>, options: &[String]) -> bool {
    typ == Some("bind") || options.iter().any(|o| o == "bind" || o == "rbind")
}

/// Rewrites `spec` for the guest; `guest_mounts_dir` is where the container's shared
/// `mounts/` directory appears in the guest. Returns the host binds to share.
pub fn adapt(spec: &mut Spec, guest_mounts_dir: &str) -> Vec<HostBind> {
    spec.set_hooks(None);
    let mut binds = Vec::new();
    if let Some(mounts) = spec.mounts().clone() {
        let mut out = Vec::with_capacity(mounts.len());
        for mut m in mounts {
            let options = m.options().clone().unwrap_or_default();
            let source = m.source().clone();
            match source {
                Some(_)
                    if is_bind(m.typ().as_deref(), &options)
                        && m.destination() == std::path::Path::new("/dev/shm") =>
                {
                    m.set_source(Some(PathBuf::from(GUEST_POD_SHM)));
                }
                Some(src) if is_bind(m.typ().as_deref(), &options) && src.is_absolute() => {
                    let base = src
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "root".into());
                    let shared_name = format!("{}-{base}", binds.len());
                    m.set_source(Some(PathBuf::from(format!(
                        "{guest_mounts_dir}/{shared_name}"
                    ))));
                    // The last of `ro`/`rw` wins, as in mount(8).
                    let readonly = options
                        .iter()
                        .rev()
                        .find(|o| *o == "ro" || *o == "rw")
                        .is_some_and(|o| o == "ro");
                    binds.push(HostBind {
                        host: src,
                        shared_name,
                        readonly,
                        recursive: options.iter().any(|o| o == "rbind"),
                    });
                }
                _ => {}
            }
            out.push(m);
        }
        spec.set_mounts(Some(out));
    }
    binds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_are_removed_or_shared() {
        let mut spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "hooks": {"prestart": [{"path": "/usr/bin/hook"}]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev/shm", "type": "bind", "source": "/run/containerd/s/shm", "options": ["rbind", "ro"]},
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/x/hosts", "options": ["rbind", "ro"]},
                {"destination": "/data", "source": "/srv/data", "options": ["bind"]}
            ],
            "linux": {"namespaces": [
                {"type": "pid"},
                {"type": "network", "path": "/var/run/netns/cni-1"}
            ]}
        }))
        .unwrap();
        let binds = adapt(&mut spec, "/run/lazyvm/shared/containers/c1/mounts");
        assert!(spec.hooks().is_none());
        let ns = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap();
        // Namespace paths are the agent's to read as the pod's.
        assert_eq!(
            ns[1].path().as_deref(),
            Some(std::path::Path::new("/var/run/netns/cni-1"))
        );
        assert_eq!(
            binds,
            [
                HostBind {
                    host: "/var/lib/x/hosts".into(),
                    shared_name: "0-hosts".into(),
                    readonly: true,
                    recursive: true,
                },
                HostBind {
                    host: "/srv/data".into(),
                    shared_name: "1-data".into(),
                    readonly: false,
                    recursive: false,
                }
            ]
        );
        let mounts = spec.mounts().as_ref().unwrap();
        assert_eq!(
            mounts[0].source().as_deref(),
            Some(std::path::Path::new("proc"))
        );
        assert_eq!(
            mounts[1].source().as_deref(),
            Some(std::path::Path::new(GUEST_POD_SHM))
        );
        assert_eq!(
            mounts[2].source().as_deref(),
            Some(std::path::Path::new(
                "/run/lazyvm/shared/containers/c1/mounts/0-hosts"
            ))
        );
    }
}
