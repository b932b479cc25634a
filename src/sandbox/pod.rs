//! What a container's spec says about its pod: its role (the CRI sandbox, an app
//! container, or a lone container), the pod's network namespace, the VM size, and what a
//! VM cannot give (the node's namespaces, mount propagation back to the host).

use std::collections::HashMap;
use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::config::HypervisorConfig;

/// The CRI annotation naming a container's role.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// Pod annotation: the VM's vCPUs (within the configuration's `max_vcpus`).
pub const VCPUS_ANNOTATION: &str = "io.lazyvm.vm.vcpus";
/// Pod annotation: the VM's memory in MiB (within the configuration's `max_memory_mib`).
pub const MEMORY_ANNOTATION: &str = "io.lazyvm.vm.memory-mib";
/// containerd 1.7+'s sandbox sizing annotations (the pod's summed limits).
pub const CRI_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
/// See [`CRI_CPU_PERIOD`].
pub const CRI_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// See [`CRI_CPU_PERIOD`] (bytes).
pub const CRI_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
/// The smallest VM that boots.
pub const MIN_MEMORY_MIB: u32 = 128;

/// What a spec asks that lazyvm cannot give, or a bad pod annotation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodError {
    /// The spec has no namespace of this type: it wants the node's.
    #[error("lazyvm runs every pod in its own VM and cannot give a container the node's {what} namespace ({field}): remove it from the pod spec or use another runtime class")]
    HostNamespace {
        /// "network", "PID" or "IPC".
        what: &'static str,
        /// The Kubernetes field that asks for it.
        field: &'static str,
    },
    /// A mount asks for propagation back to the host.
    #[error("mount {destination}: propagation {option} (Bidirectional) back to the host is not possible from a VM")]
    Propagation {
        /// The mount's destination.
        destination: String,
        /// The option.
        option: String,
    },
    /// A pod annotation is not a number in range.
    #[error("annotation {key}={value:?}: {why}")]
    Annotation {
        /// The annotation.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// The VM the pod asks for is bigger than the configuration allows.
    #[error("the pod asks for {asked} {what} ({by}), more than the maximum of {max} set in lazyvm's configuration")]
    TooBig {
        /// "vCPUs" or "MiB of memory".
        what: &'static str,
        /// How much was asked.
        asked: u64,
        /// The maximum.
        max: u64,
        /// Which setting asked for it.
        by: String,
    },
}

/// A container's role in its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The CRI sandbox (pause) container: it boots the VM and owns the pod's namespaces.
    Sandbox,
    /// A CRI app container: it joins the sandbox's namespaces.
    Container,
    /// A container outside the CRI (`ctr run`): its own namespaces.
    Standalone,
}

fn annotations(spec: &Spec) -> Option<&HashMap<String, String>> {
    spec.annotations().as_ref()
}

/// The container's role, from the CRI's `container-type` annotation.
pub fn role(spec: &Spec) -> Role {
    match annotations(spec)
        .and_then(|a| a.get(CONTAINER_TYPE))
        .map(String::as_str)
    {
        Some("sandbox") => Role::Sandbox,
        Some("container") => Role::Container,
        _ => Role::Standalone,
    }
}

/// The network namespace path the spec names (the pod's, made by the CRI), if any.
pub fn netns_path(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Network)
        .and_then(|n| n.path().clone())
        .filter(|p| !p.as_os_str().is_empty())
}

/// Refuses what a VM cannot give: a spec without its own network, PID or IPC namespace
/// (hostNetwork, hostPID, hostIPC), or a mount with shared propagation.
pub fn check(spec: &Spec) -> Result<(), PodError> {
    let has = |t: LinuxNamespaceType| {
        spec.linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| ns.iter().any(|n| n.typ() == t))
    };
    for (t, what, field) in [
        (LinuxNamespaceType::Network, "network", "hostNetwork"),
        (LinuxNamespaceType::Pid, "PID", "hostPID"),
        (LinuxNamespaceType::Ipc, "IPC", "hostIPC"),
    ] {
        if !has(t) {
            return Err(PodError::HostNamespace { what, field });
        }
    }
    for m in spec.mounts().iter().flatten() {
        for o in m.options().iter().flatten() {
            if o == "shared" || o == "rshared" {
                return Err(PodError::Propagation {
                    destination: m.destination().display().to_string(),
                    option: o.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The VM's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    /// vCPUs.
    pub vcpus: u32,
    /// Memory, MiB.
    pub memory_mib: u32,
}

fn number(a: &HashMap<String, String>, key: &'static str) -> Result<Option<u64>, PodError> {
    let Some(value) = a.get(key) else {
        return Ok(None);
    };
    let v = value.trim();
    // containerd writes quota -1 for "no limit".
    if v.starts_with('-') && v[1..].bytes().all(|b| b.is_ascii_digit()) && v.len() > 1 {
        return Ok(Some(0));
    }
    v.parse::<u64>()
        .map(Some)
        .map_err(|e| PodError::Annotation {
            key,
            value: value.clone(),
            why: e.to_string(),
        })
}

/// The VM size for a pod: the configuration's defaults, plus the pod's summed limits when
/// containerd (1.7+) passes them (as Kata does), overridden by lazyvm's own annotations;
/// bounded by the configuration's maximums (0 there means this host's CPUs or memory).
pub fn vm_size(spec: &Spec, cfg: &HypervisorConfig) -> Result<VmSize, PodError> {
    let empty = HashMap::new();
    let a = annotations(spec).unwrap_or(&empty);
    let mut vcpus = (u64::from(cfg.vcpus.max(1)), "the default".to_string());
    let mut memory = (
        u64::from(cfg.memory_mib.max(MIN_MEMORY_MIB)),
        "the default".to_string(),
    );
    if let (Some(period), Some(quota)) = (number(a, CRI_CPU_PERIOD)?, number(a, CRI_CPU_QUOTA)?) {
        if period > 0 && quota > 0 {
            vcpus.0 += quota.div_ceil(period);
            vcpus.1 = format!("the default plus the pod's CPU limit {CRI_CPU_QUOTA}");
        }
    }
    if let Some(bytes) = number(a, CRI_MEMORY)? {
        if bytes > 0 {
            memory.0 += bytes.div_ceil(1 << 20);
            memory.1 = format!("the default plus the pod's memory limit {CRI_MEMORY}");
        }
    }
    if let Some(v) = number(a, VCPUS_ANNOTATION)? {
        if v == 0 {
            return Err(PodError::Annotation {
                key: VCPUS_ANNOTATION,
                value: a[VCPUS_ANNOTATION].clone(),
                why: "a VM needs at least 1 vCPU".into(),
            });
        }
        vcpus = (v, format!("annotation {VCPUS_ANNOTATION}"));
    }
    if let Some(m) = number(a, MEMORY_ANNOTATION)? {
        if m < u64::from(MIN_MEMORY_MIB) {
            return Err(PodError::Annotation {
                key: MEMORY_ANNOTATION,
                value: a[MEMORY_ANNOTATION].clone(),
                why: format!("a VM needs at least {MIN_MEMORY_MIB} MiB"),
            });
        }
        memory = (m, format!("annotation {MEMORY_ANNOTATION}"));
    }
    for (what, (asked, by), max) in [
        ("vCPUs", &vcpus, cfg.max_vcpus()),
        ("MiB of memory", &memory, cfg.max_memory_mib()),
    ] {
        if *asked > u64::from(max) {
            return Err(PodError::TooBig {
                what,
                asked: *asked,
                max: u64::from(max),
                by: by.clone(),
            });
        }
    }
    Ok(VmSize {
        vcpus: vcpus.0 as u32,
        memory_mib: memory.0 as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    fn with_annotations(pairs: &[(&str, &str)]) -> Spec {
        let a: HashMap<&str, &str> = pairs.iter().copied().collect();
        spec(serde_json::json!({"ociVersion": "1.0.2", "annotations": a}))
    }

    fn cfg() -> HypervisorConfig {
        HypervisorConfig {
            vcpus: 1,
            memory_mib: 512,
            max_vcpus: 4,
            max_memory_mib: 4096,
            ..Default::default()
        }
    }

    #[test]
    fn roles_and_netns() {
        assert_eq!(
            role(&with_annotations(&[(CONTAINER_TYPE, "sandbox")])),
            Role::Sandbox
        );
        assert_eq!(
            role(&with_annotations(&[(CONTAINER_TYPE, "container")])),
            Role::Container
        );
        assert_eq!(role(&with_annotations(&[])), Role::Standalone);
        let s = spec(
            serde_json::json!({"ociVersion": "1.0.2", "linux": {"namespaces": [
            {"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1"}]}}),
        );
        assert_eq!(netns_path(&s), Some(PathBuf::from("/var/run/netns/cni-1")));
        let s = spec(
            serde_json::json!({"ociVersion": "1.0.2", "linux": {"namespaces": [
            {"type": "network"}]}}),
        );
        assert_eq!(netns_path(&s), None);
    }

    #[test]
    fn host_namespaces_and_shared_propagation_are_refused() {
        let ns = |types: &[&str]| {
            let list: Vec<_> = types
                .iter()
                .map(|t| serde_json::json!({"type": t}))
                .collect();
            spec(serde_json::json!({"ociVersion": "1.0.2", "linux": {"namespaces": list}}))
        };
        assert_eq!(
            check(&ns(&["pid", "network", "ipc", "uts", "mount"])),
            Ok(())
        );
        let e = check(&ns(&["pid", "ipc", "uts", "mount"])).unwrap_err();
        assert!(e.to_string().contains("hostNetwork"), "{e}");
        let e = check(&ns(&["network", "ipc"])).unwrap_err();
        assert!(e.to_string().contains("hostPID"), "{e}");
        let e = check(&ns(&["network", "pid"])).unwrap_err();
        assert!(e.to_string().contains("hostIPC"), "{e}");
        let s = spec(serde_json::json!({"ociVersion": "1.0.2",
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}]},
            "mounts": [{"destination": "/data", "source": "/srv", "type": "bind",
                        "options": ["rbind", "rshared"]}]}));
        let e = check(&s).unwrap_err();
        assert!(e.to_string().contains("/data") && e.to_string().contains("rshared"));
    }

    #[test]
    fn vm_size_from_defaults_cri_limits_and_annotations() {
        let c = cfg();
        let size = |pairs: &[(&str, &str)]| vm_size(&with_annotations(pairs), &c);
        assert_eq!(
            size(&[]),
            Ok(VmSize {
                vcpus: 1,
                memory_mib: 512
            })
        );
        // containerd 1.7+: 1.5 CPUs and 256 MiB of limits on top of the defaults.
        assert_eq!(
            size(&[
                (CRI_CPU_PERIOD, "100000"),
                (CRI_CPU_QUOTA, "150000"),
                (CRI_MEMORY, "268435456")
            ]),
            Ok(VmSize {
                vcpus: 3,
                memory_mib: 768
            })
        );
        // No limit (-1) changes nothing.
        assert_eq!(
            size(&[(CRI_CPU_PERIOD, "100000"), (CRI_CPU_QUOTA, "-1")]),
            Ok(VmSize {
                vcpus: 1,
                memory_mib: 512
            })
        );
        assert_eq!(
            size(&[(VCPUS_ANNOTATION, "2"), (MEMORY_ANNOTATION, "1024")]),
            Ok(VmSize {
                vcpus: 2,
                memory_mib: 1024
            })
        );
        let e = size(&[(VCPUS_ANNOTATION, "8")]).unwrap_err();
        assert!(
            matches!(
                e,
                PodError::TooBig {
                    asked: 8,
                    max: 4,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains(VCPUS_ANNOTATION), "{e}");
        let e = size(&[(MEMORY_ANNOTATION, "8192")]).unwrap_err();
        assert!(e.to_string().contains("4096"), "{e}");
        assert!(size(&[(MEMORY_ANNOTATION, "64")]).is_err());
        assert!(size(&[(VCPUS_ANNOTATION, "0")]).is_err());
        let e = size(&[(VCPUS_ANNOTATION, "two")]).unwrap_err();
        assert!(e.to_string().contains("io.lazyvm.vm.vcpus=\"two\""), "{e}");
        let e = size(&[(CRI_MEMORY, "99999999999999")]).unwrap_err();
        assert!(e.to_string().contains(CRI_MEMORY), "{e}");
    }
}
