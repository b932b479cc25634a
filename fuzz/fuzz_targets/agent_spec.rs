//! The guest agent's spec handling (`agent/src/spec.rs`, the `lazyvm_agent` library):
//! ids, sysctl names, and the rewrites of a container's spec and an exec's process.
//!
//! Input: an id, a newline, then the JSON (no newline: the id is `c1`).
//!
//! Invariants: no panic; an accepted id joined to a root stays one plain component under
//! it (the container directory, the cgroup), and so does an accepted sysctl name under
//! /proc/sys; an accepted spec has `root.path` set to the container's rootfs, the cgroup
//! `/lazyvm/<id>`, no hooks, labels or host network namespace, only ipc/uts/pid namespaces
//! with a path (all listed as joined, and all pointing at the sandbox's init after
//! `join_sandbox`), checked sysctls with the VM's ones removed and sorted, no hostname
//! when the UTS namespace is joined; an accepted process has args and no labels.

#![no_main]

use std::path::{Component, Path};

use lazyvm_agent::spec::{
    cgroup_path, check_id, check_sysctl_name, parse_resources, rewrite_process, rewrite_spec,
    SandboxNamespace, Sysctl,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Where the agent puts container directories (`CONTAINERS_DIR` in service.rs).
const CONTAINERS_DIR: &str = "/run/lazyvm/containers";

/// `path` is `root` and then exactly the components `parts`, all plain names.
fn exactly_under(path: &Path, root: &str, parts: &[&str]) {
    let rest = path
        .strip_prefix(root)
        .unwrap_or_else(|_| panic!("{path:?} is not under {root}"));
    let comps: Vec<Component> = rest.components().collect();
    let want: Vec<Component> = parts
        .iter()
        .map(|p| Component::Normal(p.as_ref()))
        .collect();
    assert_eq!(comps, want, "{path:?}");
    assert!(
        path.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
        "{path:?}"
    );
}

fn check_sysctl(s: &Sysctl) {
    assert!(check_sysctl_name(&s.name).is_ok(), "{:?}", s.name);
    let parts: Vec<&str> = s.name.split('.').collect();
    exactly_under(&s.path(), "/proc/sys", &parts);
}

fn namespace_type(n: &Value) -> &str {
    n["type"].as_str().expect("a kept namespace has a type")
}

fn namespace_path(n: &Value) -> &str {
    n.get("path").and_then(Value::as_str).unwrap_or("")
}

fn check_spec(raw: &[u8], cid: &str) {
    let rootfs = format!("{CONTAINERS_DIR}/{cid}/rootfs");
    let Ok(mut out) = rewrite_spec(raw, cid, &rootfs) else {
        return;
    };
    let j = &out.json;
    assert_eq!(j["root"]["path"], rootfs.as_str());
    assert_eq!(j["linux"]["cgroupsPath"], cgroup_path(cid).as_str());
    assert!(j.get("hooks").is_none());
    assert!(j["linux"].get("mountLabel").is_none());
    let process = j["process"].as_object().expect("process");
    assert!(process
        .get("args")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty()));
    assert!(process.get("apparmorProfile").is_none());
    assert!(process.get("selinuxLabel").is_none());
    assert_eq!(
        out.terminal,
        process.get("terminal") == Some(&Value::Bool(true))
    );

    let namespaces: Vec<Value> = match j["linux"].get("namespaces") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => v.as_array().expect("namespaces stay an array").clone(),
    };
    let mut joined = Vec::new();
    for n in &namespaces {
        let (ty, path) = (namespace_type(n), namespace_path(n));
        if path.is_empty() {
            continue;
        }
        let t = match ty {
            "ipc" => SandboxNamespace::Ipc,
            "uts" => SandboxNamespace::Uts,
            "pid" => SandboxNamespace::Pid,
            other => panic!("the {other} namespace kept its host path {path:?}"),
        };
        joined.push(t);
    }
    assert_eq!(joined, out.sandbox_namespaces);
    if joined.contains(&SandboxNamespace::Uts) {
        assert!(j.get("hostname").is_none() && j.get("domainname").is_none());
    }

    if let Some(kept) = j["linux"].get("sysctl").and_then(Value::as_object) {
        for name in kept.keys() {
            assert!(check_sysctl_name(name).is_ok(), "{name:?}");
            assert!(kept[name].is_string());
            assert!(out.vm_sysctls.iter().all(|s| &s.name != name));
        }
    }
    for s in &out.vm_sysctls {
        check_sysctl(s);
    }
    assert!(out.vm_sysctls.windows(2).all(|w| w[0].name <= w[1].name));

    // Joining points every namespace path at the sandbox's init process.
    out.join_sandbox(4242);
    let after = out.json["linux"]
        .get("namespaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    assert_eq!(after.len(), namespaces.len());
    for n in &after {
        let (ty, path) = (namespace_type(n), namespace_path(n));
        if !path.is_empty() {
            assert_eq!(path, format!("/proc/4242/ns/{ty}"));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (id, raw) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"c1"[..], data),
    };
    let Ok(id) = std::str::from_utf8(id) else {
        return;
    };

    let accepted = check_id("container id", id).is_ok();
    assert_eq!(accepted, id_rule(id), "{id:?}");
    if accepted {
        exactly_under(&Path::new(CONTAINERS_DIR).join(id), CONTAINERS_DIR, &[id]);
        exactly_under(
            &Path::new(CONTAINERS_DIR).join(id).join("rootfs"),
            CONTAINERS_DIR,
            &[id, "rootfs"],
        );
        exactly_under(Path::new(&cgroup_path(id)), "/", &["lazyvm", id]);
        check_spec(raw, id);
    }
    if check_sysctl_name(id).is_ok() {
        check_sysctl(&Sysctl {
            name: id.to_owned(),
            value: String::new(),
        });
    }

    if let Ok((process, _terminal)) = rewrite_process(raw) {
        let p = process.as_object().expect("a process is an object");
        assert!(p
            .get("args")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty()));
        assert!(p.get("apparmorProfile").is_none() && p.get("selinuxLabel").is_none());
    }
    if let Ok(resources) = parse_resources(raw) {
        assert!(resources.is_object());
    }
});

/// The id rule, restated: `[A-Za-z0-9][A-Za-z0-9_.+-]*`, at most 128 bytes.
fn id_rule(id: &str) -> bool {
    id.len() <= 128
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'))
}
