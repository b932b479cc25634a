//! The guest as an attacker: a privileged container (CAP_SYS_ADMIN in the guest) mounts
//! the VM's virtio-fs tag itself and tries to change the host beyond what it was given.
//! Every attempt must fail, the host outside `/run/lazyvm` must be unchanged, and what
//! the container may write (its snapshot's upper directory, a read-write volume) stays
//! writable, as controls. Runs on a private containerd with `debug = true`, so that the
//! log searched for a planted credential holds nydusd's and the guest's output too.
//! Needs root and the guest image (`make guest`).

mod common;
#[path = "common/containerd.rs"]
mod containerd;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use containerd::*;

const CAPS: &[&str] = &[
    "CAP_SYS_ADMIN",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_SETGID",
    "CAP_SETUID",
];

/// Every file under `dir` with its content (symlinks as `-> target`).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let v = if meta.file_type().is_symlink() {
                format!("-> {:?}", std::fs::read_link(&p).unwrap())
            } else if meta.is_dir() {
                todo.push(p.clone());
                "dir".into()
            } else {
                std::fs::read_to_string(&p).unwrap_or_default()
            };
            out.insert(p, v);
        }
    }
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_guest_cannot_reach_the_host() {
    capture_logs();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("lazyvm.toml");
    write_config(&config, &guest_dir());
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("debug = true\n{text}")).unwrap();
    let containerd = Containerd::start(tmp.path(), &config, &shim_dir());
    let channel = containerd_client::connect(&containerd.socket)
        .await
        .unwrap();
    let pod = |name: &str| PodClient {
        channel: channel.clone(),
        id: format!("{}{name}", test_prefix()),
        out_dir: tmp.path().to_path_buf(),
    };
    let (a, b) = (pod("hostile-a"), pod("hostile-b"));
    let rootfs = busybox_rootfs(tmp.path());
    for applet in ["touch", "mkdir", "mv", "ln", "rmdir", "ls", "sed"] {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
    }
    let image = RafsImage::build(&rootfs, &tmp.path().join("image"));

    // What the host owns and the guest must not touch.
    let marker = tmp.path().join("marker");
    std::fs::create_dir(&marker).unwrap();
    std::fs::write(marker.join("keep"), "host data\n").unwrap();
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::write(ro.join("file"), "original\n").unwrap();
    let rw = tmp.path().join("rw");
    std::fs::create_dir(&rw).unwrap();

    // Another pod, whose directory the attacker aims at.
    let victim = b.id.clone();
    b.create(
        &victim,
        &["sleep", "1000"],
        vec![nydus_mount(&image, &snapshotdir(tmp.path(), "victim"))],
        &[],
    )
    .await
    .unwrap();
    b.start(&victim).await;
    let victim_dir = lazyvm::sandbox::sandbox_dir(Path::new(lazyvm::sandbox::RUN_DIR), &b.id);
    let victim_before = snapshot(&victim_dir.join("private"));
    let events = containerd.events();

    let attacker = a.id.clone();
    let next = format!("{}hostile-next", test_prefix());
    let script = format!(
        r#"try() {{ n=$1; shift; if err=$("$@" 2>&1); then echo "$n allowed"; else echo "$n refused: $err"; fi; }}
mkdir -p /m && mount -t virtiofs lazyvm /m && echo mounted
C=/m/containers
ls -la $C $C/{attacker} $C/{attacker}/mounts $C/{attacker}/snapshotdir 2>&1 | sed 's/^/  /'

try top-create touch $C/evil
try top-mkdir mkdir $C/evil-dir
try top-rename mv $C/{attacker} $C/moved
try top-delete rmdir $C/{attacker}/mounts/1-rw
try plant-next ln -s {marker} $C/{next}
try plant-inside ln -s {marker} $C/{attacker}/mounts/2-evil
try ro-source sh -c "echo pwned > $C/{attacker}/mounts/0-ro/file"
try ro-remount sh -c "mount -o remount,rw /ro && echo pwned > /ro/file"
try other-pod sh -c "mkdir -p $C/{victim} && echo pwned > $C/{victim}/x"
try rw-volume sh -c "echo ok > $C/{attacker}/mounts/1-rw/from-guest"
try upper sh -c "echo ok > $C/{attacker}/snapshotdir/fs/from-guest"
echo done"#,
        marker = marker.display()
    );
    let mut spec: serde_json::Value =
        serde_json::from_slice(&spec(&["sh", "-c", &script], &a.id, &[]).value).unwrap();
    let caps = serde_json::json!(CAPS);
    for set in [
        "bounding",
        "effective",
        "permitted",
        "inheritable",
        "ambient",
    ] {
        spec["process"]["capabilities"][set] = caps.clone();
    }
    let mounts = spec["mounts"].as_array_mut().unwrap();
    mounts.push(serde_json::json!({"destination": "/ro", "type": "bind",
        "source": ro, "options": ["rbind", "ro"]}));
    mounts.push(serde_json::json!({"destination": "/rw", "type": "bind",
        "source": rw, "options": ["rbind", "rw"]}));
    let any = prost_types::Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
        value: serde_json::to_vec(&spec).unwrap(),
    };
    let attack_mount = nydus_mount(&image, &snapshotdir(tmp.path(), "attacker"));
    let extraoption = attack_mount
        .options
        .iter()
        .find_map(|o| o.strip_prefix("extraoption="))
        .unwrap()
        .to_string();
    let stdout = a
        .create_with_spec(&attacker, any, vec![attack_mount])
        .await
        .unwrap();

    // Modes of what the host made for the pod: owner only.
    let dir = lazyvm::sandbox::sandbox_dir(Path::new(lazyvm::sandbox::RUN_DIR), &a.id);
    // QEMU runs as a user of its own: it may pass through the sandbox directory (group
    // search only) and owns nothing but its vm/ directory and the two sockets it uses.
    use std::os::unix::fs::MetadataExt;
    let base = lazyvm::sandbox::confine::VM_ID_BASE;
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!((mode(&dir), meta.uid()), (0o710, 0), "{}", dir.display());
    assert!(meta.gid() >= base);
    let vm = std::fs::metadata(dir.join("vm")).unwrap();
    assert_eq!((vm.mode() & 0o777, vm.uid()), (0o700, meta.gid()));
    assert_eq!(mode(&dir.join("private")), 0o700);
    let qemu_uids: Vec<String> = processes_mentioning(&dir.join("vm/qmp.sock"))
        .into_iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|st| {
            st.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(str::to_string)
        })
        .collect();
    let expected = format!("Uid:\t{0}\t{0}\t{0}\t{0}", meta.gid());
    assert_eq!(qemu_uids, [expected], "QEMU's ids");
    for name in lazyvm::sandbox::SANDBOX_FILES {
        let p = dir.join(name);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
    assert_eq!(
        mode(&dir.join("nydusd-api.sock")),
        0o600,
        "the sockets exist"
    );

    a.start(&attacker).await;
    assert_eq!(a.wait(&attacker).await, 0);
    let out = std::fs::read_to_string(&stdout).unwrap();
    eprintln!("{out}");
    let verdict = |name: &str| {
        out.lines()
            .find(|l| l.split(' ').next() == Some(name))
            .unwrap_or_else(|| panic!("no line for {name} in:\n{out}"))
            .to_string()
    };
    assert!(out.starts_with("mounted\n"), "{out}");
    for attempt in [
        "top-create",
        "top-mkdir",
        "top-rename",
        "top-delete",
        "plant-next",
        "plant-inside",
        "ro-source",
        "ro-remount",
        "other-pod",
    ] {
        let line = verdict(attempt);
        assert!(line.contains("refused"), "{line}");
    }
    // Controls: what the container is given stays writable.
    assert_eq!(verdict("rw-volume"), "rw-volume allowed");
    assert_eq!(verdict("upper"), "upper allowed");
    assert!(out.ends_with("done\n"), "{out}");
    assert_eq!(
        std::fs::read_to_string(rw.join("from-guest")).unwrap(),
        "ok\n"
    );

    // The host is unchanged.
    assert_eq!(
        std::fs::read_to_string(ro.join("file")).unwrap(),
        "original\n"
    );
    assert_eq!(std::fs::read_dir(&marker).unwrap().count(), 1);
    assert_eq!(
        std::fs::read_to_string(marker.join("keep")).unwrap(),
        "host data\n"
    );
    let top: Vec<String> = std::fs::read_dir(dir.join("private"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        top,
        std::slice::from_ref(&attacker),
        "the shared tree's top level"
    );
    assert_eq!(snapshot(&victim_dir.join("private")), victim_before);

    // The container the attacker aimed at is created normally.
    let next_out = a
        .create(
            &next,
            &["cat", "/etc/hello.txt"],
            vec![nydus_mount(&image, &snapshotdir(tmp.path(), "next"))],
            &[],
        )
        .await
        .unwrap();
    a.start(&next).await;
    assert_eq!(a.wait(&next).await, 0);
    assert_eq!(
        std::fs::read_to_string(next_out).unwrap(),
        "hello from rafs\n"
    );
    assert_eq!(std::fs::read_dir(&marker).unwrap().count(), 1);

    for (p, cid) in [(&a, &next), (&a, &attacker), (&b, &victim)] {
        if cid == &victim {
            p.kill(cid).await;
            p.wait(cid).await;
        }
        p.delete(cid).await;
    }
    // Secrets: no subscriber sees the extraoption, no log line the credential.
    let printed = stop_events(events);
    let create = printed
        .lines()
        .find(|l| l.contains("/tasks/create") && l.contains(&attacker))
        .unwrap_or_else(|| panic!("no TaskCreate for {attacker} in:\n{printed}"));
    assert!(!create.contains(&extraoption), "{create}");
    assert!(!printed.contains("secret-registry-token"));
    let log = std::fs::read_to_string(containerd.dir.join("containerd.log")).unwrap();
    let relayed = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    assert!(
        relayed("nydusd") > 0 && relayed("Linux version") > 0,
        "nydusd's output and the guest console are in the log:\n{}",
        log.lines().take(40).collect::<Vec<_>>().join("\n")
    );
    assert!(
        !log.contains("secret-registry-token"),
        "credentials in the log"
    );
    for d in [&dir, &victim_dir] {
        for _ in 0..50 {
            if !d.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(!d.exists(), "{} left behind", d.display());
    }
}
