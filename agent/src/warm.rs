//! Warming crun in a VM booted ahead of time. The host's VM cache boots its VMs with
//! `lazyvm.warm` on the kernel command line: such a VM waits idle until a sandbox claims
//! it, and under TCG a VM's first `crun create` costs 100-150 ms more than the later ones
//! (crun's code is translated the first time it runs). So the agent creates and deletes
//! one throwaway container as soon as it listens: the claimer's first create finds crun's
//! code translated.
//!
//! The throwaway container has crun state, work files and a cgroup of its own (its state
//! root is not the real containers', its cgroup `/lazyvm/.warm` is no container id), its
//! root is an empty read-only directory with the agent's binary bound in, and its process
//! never starts.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::runtime::{ChildStdio, Crun, ProcessIo, RuntimeError};

/// Where the warm-up keeps its bundle, crun state and work files.
const DIR: &str = "/run/lazyvm/warm";
/// The throwaway container's id (in its own crun state root).
const CID: &str = "warm";

/// Errors of the warm-up (logged; a failed warm-up changes nothing else).
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    /// The bundle could not be written.
    #[error("writing the warm-up bundle in {path}: {source}")]
    Bundle {
        /// What was being written.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// crun failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// The throwaway container's OCI spec: what a container's create does most of
/// (namespaces, the usual mounts, masked and read-only paths, a cgroup), its root the
/// bundle's empty `rootfs` with the agent's binary bound in as its executable.
fn spec() -> serde_json::Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/init", "--version"],
            "env": ["PATH=/usr/bin:/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "warm",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/init", "type": "bind", "source": "/init",
             "options": ["rbind", "ro", "nosuid", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "cgroupsPath": "/lazyvm/.warm",
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
            ],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

fn null_stdio() -> std::io::Result<ChildStdio> {
    let null = || {
        File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
    };
    Ok(ChildStdio {
        stdin: null()?,
        stdout: null()?,
        stderr: null()?,
    })
}

/// Creates and deletes the throwaway container with `crun`'s binary and reaper, then
/// removes its files. Returns how long the create took.
pub async fn crun(crun: &Crun) -> Result<std::time::Duration, WarmError> {
    let dir = Path::new(DIR);
    let bundle = dir.join("bundle");
    let bundle_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WarmError::Bundle { path, source }
    };
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(bundle_err(&rootfs))?;
    let config = bundle.join("config.json");
    std::fs::write(&config, spec().to_string()).map_err(bundle_err(&config))?;
    let warm = crun.with_state(dir.join("state"), dir.to_path_buf());
    let io = null_stdio().map_err(bundle_err(Path::new("/dev/null")))?;
    let t = std::time::Instant::now();
    let created = warm.create(CID, &bundle, ProcessIo::Pipes(io)).await;
    let took = t.elapsed();
    // A create that failed half-way may have left state: delete whatever there is.
    let deleted = warm.delete(CID, true).await;
    let _ = std::fs::remove_dir_all(dir);
    created?;
    deleted?;
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_never_names_a_container_cgroup() {
        let s = spec();
        let cg = s["linux"]["cgroupsPath"].as_str().unwrap();
        // Container ids (containerd's identifiers) never start with a dot.
        assert!(cg.starts_with("/lazyvm/."), "{cg}");
        assert_eq!(s["root"]["readonly"], true);
    }
}
