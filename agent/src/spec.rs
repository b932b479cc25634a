//! OCI spec handling: id validation and the rewrites the agent applies before handing a
//! spec (or an exec's process) to crun.
//!
//! The spec stays a JSON value so every field the host sends reaches crun unchanged,
//! except for these rewrites:
//! - `root.path` becomes the guest rootfs;
//! - `linux.cgroupsPath` becomes `/lazyvm/<cid>` (stats, OOM and pids read it);
//! - namespaces that name a `path` are dropped: such paths are the host's and mean nothing
//!   in the guest (the container then shares the VM's namespace of that type);
//! - `hooks` are dropped (they name host binaries);
//! - AppArmor/SELinux labels are dropped (the guest kernel has neither).

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
pub fn check_id(what: &'static str, id: &str) -> Result<(), SpecError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b));
    if ok {
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

/// A rewritten container spec, ready to be written as the bundle's config.json.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// The rewritten spec.
    pub json: Value,
    /// Whether the init process has a terminal.
    pub terminal: bool,
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
    if let Some(ns) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
        ns.retain(|n| {
            n.get("path")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
        });
    }
    Ok(ContainerSpec { json, terminal })
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
