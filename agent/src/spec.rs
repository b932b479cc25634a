//! OCI spec handling: id validation and the rewrites the agent applies before handing a
//! spec (or an exec's process) to crun.
//!
//! The spec stays a JSON value so every field the host sends reaches crun unchanged,
//! except for these rewrites:
//! - `root.path` becomes the guest rootfs;
//! - `linux.cgroupsPath` becomes `/lazyvm/<cid>` (stats, OOM and pids read it);
//! - namespace paths are the host's and mean nothing in the guest: a `network` namespace
//!   with a path is dropped (the container shares the VM's network namespace, where the
//!   pod's NICs are); an `ipc`, `uts` or `pid` namespace with a path means the pod
//!   sandbox's, and [`ContainerSpec::join_sandbox`] points it at the sandbox container's
//!   init process; any other namespace with a path is refused. A spec that joins the
//!   sandbox's UTS namespace loses `hostname` and `domainname` (they belong to the
//!   sandbox, and crun sets them only in a UTS namespace of its own);
//! - `linux.sysctl` keeps what crun sets in the container's own namespaces: the IPC ones
//!   (`kernel.msg*`, `kernel.sem`, `kernel.shm*`, `fs.mqueue.*`), the UTS ones
//!   (`kernel.hostname`, `kernel.domainname`) and, when the spec makes a network
//!   namespace of its own, `net.*`. The others (`net.*` for the VM's network namespace,
//!   `vm.*`, ...) are removed and returned for the agent to write for the whole VM;
//! - `hooks` are dropped (they name host binaries);
//! - AppArmor/SELinux labels are dropped (the guest kernel has neither).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Errors of spec handling.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// An id is not usable as a file name.
    #[error("invalid {what} {id:?}: want [A-Za-z0-9][A-Za-z0-9_.+-]*, at most 128 bytes")]
    BadId {
        /// "container id" or "exec id".
        what: &'static str,
        /// The id.
        id: String,
    },
    /// The JSON does not parse or has the wrong shape.
    #[error("invalid {what}: {msg}")]
    Invalid {
        /// What was parsed.
        what: &'static str,
        /// Why it is invalid.
        msg: String,
    },
}

/// Checks a container or exec id: `[A-Za-z0-9][A-Za-z0-9_.+-]*`, at most 128 bytes.
/// This is lazyvm's one id rule ([`lazyvm_proto::valid_id`]), which the shim checks
/// where ids enter.
pub fn check_id(what: &'static str, id: &str) -> Result<(), SpecError> {
    if lazyvm_proto::valid_id(id) {
        Ok(())
    } else {
        Err(SpecError::BadId {
            what,
            id: id.to_owned(),
        })
    }
}

/// The cgroup (relative to /sys/fs/cgroup) the agent puts a container in.
pub fn cgroup_path(cid: &str) -> String {
    format!("/lazyvm/{cid}")
}

fn object<'a>(
    v: &'a mut Map<String, Value>,
    key: &str,
    what: &'static str,
) -> Result<&'a mut Map<String, Value>, SpecError> {
    v.entry(key)
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| SpecError::Invalid {
            what,
            msg: format!("{key} is not an object"),
        })
}

fn strip_process_labels(process: &mut Map<String, Value>) {
    process.remove("apparmorProfile");
    process.remove("selinuxLabel");
}

/// Whether a process object has a non-empty `args`.
fn has_args(process: &Map<String, Value>) -> bool {
    process
        .get("args")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

/// Whether a process object asks for a terminal.
fn wants_terminal(process: &Map<String, Value>) -> bool {
    process
        .get("terminal")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// A namespace of the pod's sandbox container that a spec joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxNamespace {
    /// IPC.
    Ipc,
    /// UTS (hostname).
    Uts,
    /// PID.
    Pid,
}

impl SandboxNamespace {
    /// Its OCI type, also its name under /proc/<pid>/ns/.
    pub fn name(self) -> &'static str {
        match self {
            SandboxNamespace::Ipc => "ipc",
            SandboxNamespace::Uts => "uts",
            SandboxNamespace::Pid => "pid",
        }
    }

    fn from_type(t: &str) -> Option<Self> {
        match t {
            "ipc" => Some(SandboxNamespace::Ipc),
            "uts" => Some(SandboxNamespace::Uts),
            "pid" => Some(SandboxNamespace::Pid),
            _ => None,
        }
    }
}

/// A sysctl the agent writes for the whole VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    /// Its dotted name (`net.ipv4.ip_forward`), checked by [`check_sysctl_name`].
    pub name: String,
    /// The value to write.
    pub value: String,
}

impl Sysctl {
    /// Its file: /proc/sys/ and the name with dots turned into slashes.
    pub fn path(&self) -> PathBuf {
        Path::new("/proc/sys").join(self.name.replace('.', "/"))
    }
}

/// Checks a sysctl name: `[A-Za-z0-9_.-]`, dot-separated components none of which is
/// empty (so no `..` and no leading or trailing dot: nothing leaves /proc/sys).
pub fn check_sysctl_name(name: &str) -> Result<(), SpecError> {
    let bad = |why: &str| SpecError::Invalid {
        what: "OCI spec",
        msg: format!("sysctl name {name:?} {why}"),
    };
    if name.is_empty() {
        return Err(bad("is empty"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err(bad("may only have the characters A-Z a-z 0-9 _ . -"));
    }
    if name.split('.').any(str::is_empty) {
        return Err(bad("has an empty component"));
    }
    Ok(())
}

/// Who sets a sysctl.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SysctlOwner {
    /// The container's IPC namespace (crun).
    Ipc,
    /// The container's UTS namespace (crun).
    Uts,
    /// A network namespace: the container's own (crun) or the VM's (the agent).
    Net,
    /// No namespace: the whole VM (the agent).
    Vm,
}

fn sysctl_owner(name: &str) -> SysctlOwner {
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if IPC.contains(&name) || name.starts_with("fs.mqueue.") {
        SysctlOwner::Ipc
    } else if name == "kernel.hostname" || name == "kernel.domainname" {
        SysctlOwner::Uts
    } else if name.starts_with("net.") {
        SysctlOwner::Net
    } else {
        SysctlOwner::Vm
    }
}

/// A rewritten container spec, ready to be written as the bundle's config.json.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// The rewritten spec.
    pub json: Value,
    /// Whether the init process has a terminal.
    pub terminal: bool,
    /// Sysctls removed from the spec that the agent writes for the whole VM, by name.
    pub vm_sysctls: Vec<Sysctl>,
    /// The sandbox's namespaces the spec joins, in spec order; until
    /// [`ContainerSpec::join_sandbox`] their paths are still the host's.
    pub sandbox_namespaces: Vec<SandboxNamespace>,
}

impl ContainerSpec {
    /// Points the joined sandbox namespaces at `/proc/<init_pid>/ns/<type>`.
    pub fn join_sandbox(&mut self, init_pid: i32) {
        let Some(list) = self
            .json
            .pointer_mut("/linux/namespaces")
            .and_then(Value::as_array_mut)
        else {
            return;
        };
        for n in list.iter_mut().filter_map(Value::as_object_mut) {
            let joined = n
                .get("type")
                .and_then(Value::as_str)
                .and_then(SandboxNamespace::from_type)
                .filter(|t| self.sandbox_namespaces.contains(t));
            let has_path = n
                .get("path")
                .and_then(Value::as_str)
                .is_some_and(|p| !p.is_empty());
            if let (Some(t), true) = (joined, has_path) {
                n.insert(
                    "path".to_owned(),
                    Value::String(format!("/proc/{init_pid}/ns/{}", t.name())),
                );
            }
        }
    }
}

/// The namespaces of a spec after the rewrite: what is joined, what is private.
#[derive(Debug, Default)]
struct Namespaces {
    joined: Vec<SandboxNamespace>,
    private_network: bool,
}

/// Applies the namespace rule (see the module doc) to `linux.namespaces`.
fn rewrite_namespaces(linux: &mut Map<String, Value>) -> Result<Namespaces, SpecError> {
    const W: &str = "OCI spec";
    let invalid = |msg: String| SpecError::Invalid { what: W, msg };
    let mut out = Namespaces::default();
    let list = match linux.get_mut("namespaces") {
        None | Some(Value::Null) => return Ok(out),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(invalid("linux.namespaces is not an array".to_owned())),
    };
    let mut kept = Vec::with_capacity(list.len());
    for (i, n) in std::mem::take(list).into_iter().enumerate() {
        let obj = n
            .as_object()
            .ok_or_else(|| invalid(format!("linux.namespaces[{i}] is not an object")))?;
        let ty = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("linux.namespaces[{i}] has no type")))?;
        let path = match obj.get("path") {
            None | Some(Value::Null) => "",
            Some(Value::String(p)) => p.as_str(),
            Some(_) => {
                return Err(invalid(format!(
                    "linux.namespaces[{i}] ({ty}): path is not a string"
                )))
            }
        };
        if path.is_empty() {
            if ty == "network" {
                out.private_network = true;
            }
            kept.push(n);
            continue;
        }
        if ty == "network" {
            continue;
        }
        match SandboxNamespace::from_type(ty) {
            Some(t) => {
                out.joined.push(t);
                kept.push(n);
            }
            None => {
                return Err(invalid(format!(
                    "the {ty} namespace has a path ({path}): only network, ipc, uts and pid \
                     namespaces can be joined in the VM"
                )))
            }
        }
    }
    *list = kept;
    Ok(out)
}

/// Splits `linux.sysctl` (see the module doc): what crun keeps stays, the rest is removed
/// and returned.
fn split_sysctls(
    linux: &mut Map<String, Value>,
    private_network: bool,
) -> Result<Vec<Sysctl>, SpecError> {
    const W: &str = "OCI spec";
    let map = match linux.get_mut("sysctl") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(SpecError::Invalid {
                what: W,
                msg: "linux.sysctl is not an object".to_owned(),
            })
        }
    };
    let mut vm = Vec::new();
    for (name, value) in std::mem::take(map) {
        check_sysctl_name(&name)?;
        let Value::String(text) = &value else {
            return Err(SpecError::Invalid {
                what: W,
                msg: format!("the value of sysctl {name} is not a string"),
            });
        };
        let for_crun = match sysctl_owner(&name) {
            SysctlOwner::Ipc | SysctlOwner::Uts => true,
            SysctlOwner::Net => private_network,
            SysctlOwner::Vm => false,
        };
        if for_crun {
            map.insert(name, value);
        } else {
            vm.push(Sysctl {
                name,
                value: text.clone(),
            });
        }
    }
    vm.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(vm)
}

/// Parses and rewrites a container's OCI spec (see the module doc).
pub fn rewrite_spec(raw: &[u8], cid: &str, rootfs: &str) -> Result<ContainerSpec, SpecError> {
    const W: &str = "OCI spec";
    let mut json: Value = serde_json::from_slice(raw).map_err(|e| SpecError::Invalid {
        what: W,
        msg: e.to_string(),
    })?;
    let spec = json.as_object_mut().ok_or_else(|| SpecError::Invalid {
        what: W,
        msg: "not a JSON object".to_owned(),
    })?;
    let terminal = {
        let process = spec
            .get_mut("process")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| SpecError::Invalid {
                what: W,
                msg: "process is missing".to_owned(),
            })?;
        if !has_args(process) {
            return Err(SpecError::Invalid {
                what: W,
                msg: "process.args is missing or empty".to_owned(),
            });
        }
        strip_process_labels(process);
        wants_terminal(process)
    };
    spec.remove("hooks");
    object(spec, "root", W)?.insert("path".to_owned(), Value::String(rootfs.to_owned()));
    let linux = object(spec, "linux", W)?;
    linux.insert("cgroupsPath".to_owned(), Value::String(cgroup_path(cid)));
    linux.remove("mountLabel");
    let ns = rewrite_namespaces(linux)?;
    let vm_sysctls = split_sysctls(linux, ns.private_network)?;
    if ns.joined.contains(&SandboxNamespace::Uts) {
        spec.remove("hostname");
        spec.remove("domainname");
    }
    Ok(ContainerSpec {
        json,
        terminal,
        vm_sysctls,
        sandbox_namespaces: ns.joined,
    })
}

/// Parses and rewrites an exec's OCI process; returns it and whether it has a terminal.
pub fn rewrite_process(raw: &[u8]) -> Result<(Value, bool), SpecError> {
    const W: &str = "OCI process";
    let mut json: Value = serde_json::from_slice(raw).map_err(|e| SpecError::Invalid {
        what: W,
        msg: e.to_string(),
    })?;
    let process = json.as_object_mut().ok_or_else(|| SpecError::Invalid {
        what: W,
        msg: "not a JSON object".to_owned(),
    })?;
    if !has_args(process) {
        return Err(SpecError::Invalid {
            what: W,
            msg: "args is missing or empty".to_owned(),
        });
    }
    strip_process_labels(process);
    let terminal = wants_terminal(process);
    Ok((json, terminal))
}

/// Parses OCI LinuxResources JSON (for `crun update --resources`), checking its shape.
pub fn parse_resources(raw: &[u8]) -> Result<Value, SpecError> {
    let v: Value = serde_json::from_slice(raw).map_err(|e| SpecError::Invalid {
        what: "resources",
        msg: e.to_string(),
    })?;
    if !v.is_object() {
        return Err(SpecError::Invalid {
            what: "resources",
            msg: "not a JSON object".to_owned(),
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids() {
        assert!(check_id("container id", "abc-1_2.3+4").is_ok());
        assert!(check_id("container id", "").is_err());
        assert!(check_id("container id", "..").is_err());
        assert!(check_id("container id", ".hidden").is_err());
        assert!(check_id("container id", "a/b").is_err());
        assert!(check_id("container id", &"a".repeat(129)).is_err());
    }

    #[test]
    fn rewrites_root_cgroup_namespaces_hooks() {
        let spec = json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "terminal": true, "apparmorProfile": "x",
                        "env": ["A=1"], "cwd": "/"},
            "root": {"path": "rootfs", "readonly": true},
            "hooks": {"prestart": [{"path": "/usr/bin/x"}]},
            "linux": {
                "cgroupsPath": "/kubepods/x",
                "namespaces": [
                    {"type": "pid"},
                    {"type": "network", "path": "/var/run/netns/cni-1"},
                    {"type": "mount"}
                ]
            }
        });
        let out = rewrite_spec(spec.to_string().as_bytes(), "c1", "/r/c1/rootfs").unwrap();
        assert!(out.terminal);
        let j = out.json;
        assert_eq!(j["root"]["path"], "/r/c1/rootfs");
        assert_eq!(j["root"]["readonly"], true);
        assert_eq!(j["linux"]["cgroupsPath"], "/lazyvm/c1");
        assert_eq!(j["linux"]["namespaces"].as_array().unwrap().len(), 2);
        assert!(j.get("hooks").is_none());
        assert!(j["process"].get("apparmorProfile").is_none());
        assert_eq!(j["process"]["env"][0], "A=1");
    }

    #[test]
    fn adds_missing_sections_and_rejects_bad_specs() {
        let out = rewrite_spec(br#"{"process":{"args":["true"]}}"#, "c", "/x").unwrap();
        assert!(!out.terminal);
        assert_eq!(out.json["linux"]["cgroupsPath"], "/lazyvm/c");
        assert!(rewrite_spec(b"{}", "c", "/x").is_err());
        assert!(rewrite_spec(br#"{"process":{"args":[]}}"#, "c", "/x").is_err());
        assert!(rewrite_spec(b"[1]", "c", "/x").is_err());
        assert!(rewrite_spec(b"not json", "c", "/x").is_err());
        assert!(rewrite_spec(br#"{"process":{"args":["a"]},"root":3}"#, "c", "/x").is_err());
    }

    fn spec_with(linux: Value) -> Vec<u8> {
        json!({
            "process": {"args": ["sh"]},
            "hostname": "app",
            "domainname": "example",
            "linux": linux
        })
        .to_string()
        .into_bytes()
    }

    fn rewrite(linux: Value) -> Result<ContainerSpec, SpecError> {
        rewrite_spec(&spec_with(linux), "c", "/r")
    }

    #[test]
    fn joins_the_sandbox_namespaces() {
        let mut out = rewrite(json!({"namespaces": [
            {"type": "pid", "path": "/proc/4242/ns/pid"},
            {"type": "network", "path": "/var/run/netns/cni-1"},
            {"type": "ipc", "path": "/proc/4242/ns/ipc"},
            {"type": "uts", "path": "/proc/4242/ns/uts"},
            {"type": "mount"},
            {"type": "cgroup", "path": ""}
        ]}))
        .unwrap();
        use SandboxNamespace::*;
        assert_eq!(out.sandbox_namespaces, vec![Pid, Ipc, Uts]);
        // The UTS namespace is the sandbox's: its hostname stays.
        assert!(out.json.get("hostname").is_none());
        assert!(out.json.get("domainname").is_none());
        out.join_sandbox(17);
        let ns = &out.json["linux"]["namespaces"];
        assert_eq!(
            *ns,
            json!([
                {"type": "pid", "path": "/proc/17/ns/pid"},
                {"type": "ipc", "path": "/proc/17/ns/ipc"},
                {"type": "uts", "path": "/proc/17/ns/uts"},
                {"type": "mount"},
                {"type": "cgroup", "path": ""}
            ])
        );
    }

    #[test]
    fn private_namespaces_are_kept_as_they_are() {
        let mut out = rewrite(json!({"namespaces": [
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}
        ]}))
        .unwrap();
        assert!(out.sandbox_namespaces.is_empty());
        assert_eq!(out.json["hostname"], "app");
        assert_eq!(out.json["domainname"], "example");
        let before = out.json.clone();
        out.join_sandbox(17);
        assert_eq!(out.json, before);
        // Only the UTS namespace decides about the hostname.
        let out = rewrite(json!({"namespaces": [
            {"type": "ipc", "path": "/proc/1/ns/ipc"}, {"type": "uts"}
        ]}))
        .unwrap();
        assert_eq!(out.sandbox_namespaces, vec![SandboxNamespace::Ipc]);
        assert_eq!(out.json["hostname"], "app");
    }

    #[test]
    fn refuses_other_namespace_paths() {
        for ty in ["mount", "user", "cgroup", "time"] {
            let err = rewrite(json!({"namespaces": [
                {"type": ty, "path": "/proc/1/ns/x"}
            ]}))
            .unwrap_err()
            .to_string();
            assert!(
                err.contains(&format!("the {ty} namespace has a path")),
                "{err}"
            );
        }
        for bad in [
            json!({"namespaces": 3}),
            json!({"namespaces": [3]}),
            json!({"namespaces": [{"path": "/x"}]}),
            json!({"namespaces": [{"type": "ipc", "path": 1}]}),
        ] {
            assert!(rewrite(bad.clone()).is_err(), "{bad}");
        }
        assert!(rewrite(json!({"namespaces": null})).is_ok());
    }

    #[test]
    fn splits_sysctls() {
        let out = rewrite(json!({
            "namespaces": [{"type": "ipc"}, {"type": "uts"},
                           {"type": "network", "path": "/var/run/netns/cni-1"}],
            "sysctl": {
                "kernel.shmmax": "1000",
                "kernel.msgmax": "8192",
                "kernel.msgmnb": "1",
                "kernel.msgmni": "2",
                "kernel.sem": "250 32000 32 128",
                "kernel.shmall": "3",
                "kernel.shmmni": "4",
                "kernel.shm_rmid_forced": "1",
                "fs.mqueue.msg_max": "10",
                "kernel.hostname": "h",
                "kernel.domainname": "d",
                "net.ipv4.ip_unprivileged_port_start": "0",
                "net.ipv4.ping_group_range": "0 2147483647",
                "vm.overcommit_memory": "1",
                "kernel.pid_max": "65536",
                "fs.inotify.max_user_watches": "100000"
            }
        }))
        .unwrap();
        let kept = out.json["linux"]["sysctl"].as_object().unwrap();
        let mut kept: Vec<&str> = kept.keys().map(String::as_str).collect();
        kept.sort_unstable();
        assert_eq!(
            kept,
            [
                "fs.mqueue.msg_max",
                "kernel.domainname",
                "kernel.hostname",
                "kernel.msgmax",
                "kernel.msgmnb",
                "kernel.msgmni",
                "kernel.sem",
                "kernel.shm_rmid_forced",
                "kernel.shmall",
                "kernel.shmmax",
                "kernel.shmmni"
            ]
        );
        let vm: Vec<(&str, &str)> = out
            .vm_sysctls
            .iter()
            .map(|s| (s.name.as_str(), s.value.as_str()))
            .collect();
        assert_eq!(
            vm,
            [
                ("fs.inotify.max_user_watches", "100000"),
                ("kernel.pid_max", "65536"),
                ("net.ipv4.ip_unprivileged_port_start", "0"),
                ("net.ipv4.ping_group_range", "0 2147483647"),
                ("vm.overcommit_memory", "1")
            ]
        );
        assert_eq!(
            out.vm_sysctls[2].path(),
            Path::new("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        );
        // No network namespace at all: the VM's, so net.* is the agent's too.
        let out = rewrite(json!({"sysctl": {"net.core.somaxconn": "1024"}})).unwrap();
        assert_eq!(out.vm_sysctls.len(), 1);
        assert_eq!(out.json["linux"]["sysctl"], json!({}));
        // A network namespace of the container's own: crun sets net.* in it.
        let out = rewrite(json!({
            "namespaces": [{"type": "network"}],
            "sysctl": {"net.core.somaxconn": "1024", "vm.swappiness": "10"}
        }))
        .unwrap();
        assert_eq!(
            out.json["linux"]["sysctl"],
            json!({"net.core.somaxconn": "1024"})
        );
        assert_eq!(out.vm_sysctls[0].name, "vm.swappiness");
    }

    #[test]
    fn checks_sysctls() {
        for good in [
            "net.ipv4.conf.all.forwarding",
            "a",
            "kernel.shm_rmid_forced",
            "net.ipv4.conf.eth-0.rp_filter",
        ] {
            assert!(check_sysctl_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "net/ipv4",
            "a b",
            "a.*",
            "ké",
            "../../etc",
        ] {
            assert!(check_sysctl_name(bad).is_err(), "{bad:?}");
        }
        let err = rewrite(json!({"sysctl": {"net..x": "1"}})).unwrap_err();
        assert!(err.to_string().contains("sysctl name \"net..x\""), "{err}");
        assert!(rewrite(json!({"sysctl": {"vm.x": 1}})).is_err());
        assert!(rewrite(json!({"sysctl": ["vm.x"]})).is_err());
        assert!(rewrite(json!({"sysctl": null})).is_ok());
    }

    #[test]
    fn processes() {
        let (p, tty) =
            rewrite_process(br#"{"args":["ls"],"terminal":true,"selinuxLabel":"l"}"#).unwrap();
        assert!(tty);
        assert!(p.get("selinuxLabel").is_none());
        assert!(rewrite_process(br#"{"terminal":true}"#).is_err());
        assert!(parse_resources(br#"{"memory":{"limit":1}}"#).is_ok());
        assert!(parse_resources(b"3").is_err());
    }
}
