//! Lazy rootfs end to end: containers whose rootfs is a `fuse.nydus-overlayfs` mount,
//! created through containerd's own gRPC API (the `containerd-client` crate) on a private
//! containerd, with RAFS images built here by nydus-image (localfs backend).
//! Needs root and the guest image (`make guest`).

mod common;
#[path = "common/containerd.rs"]
mod containerd;

use std::path::{Path, PathBuf};

use common::*;
use containerd::*;
use containerd_client::types::Mount;
use lazyvm::nydusd::NydusClient;

struct Pod {
    tmp: tempfile::TempDir,
    containerd: Containerd,
    api: PodClient,
}

impl std::ops::Deref for Pod {
    type Target = PodClient;
    fn deref(&self) -> &PodClient {
        &self.api
    }
}

impl Pod {
    async fn new(name: &str) -> Pod {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("lazyvm.toml");
        write_config(&config, &guest_dir());
        let containerd = Containerd::start(tmp.path(), &config, &shim_dir());
        let channel = containerd_client::connect(&containerd.socket)
            .await
            .unwrap();
        Pod {
            api: PodClient {
                channel,
                id: format!("{}{name}", test_prefix()),
                out_dir: tmp.path().to_path_buf(),
            },
            tmp,
            containerd,
        }
    }

    fn cid(&self, name: &str) -> String {
        format!("{}{name}", test_prefix())
    }

    fn sandbox_dir(&self) -> PathBuf {
        lazyvm::sandbox::sandbox_dir(Path::new(lazyvm::sandbox::RUN_DIR), &self.id)
    }

    fn nydusd(&self) -> NydusClient {
        NydusClient::new(self.sandbox_dir().join("nydusd-api.sock"))
    }

    fn assert_container_gone(&self, cid: &str) {
        let shared = self.sandbox_dir().join("shared").join(cid);
        assert!(!shared.exists(), "{} left behind", shared.display());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.lines().any(|l| l.contains(&format!("/{cid}/"))),
            "a mount of {cid} is left"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nydus_containers_share_a_vm_and_clean_up() {
    capture_logs();
    let pod = Pod::new("np").await;
    let image = RafsImage::build(
        &busybox_rootfs(pod.tmp.path()),
        &pod.tmp.path().join("image"),
    );

    // Every event subscriber sees TaskCreate: it must not carry the nydusd configuration.
    let events = pod.containerd.events();

    // The pod's first container (the VM boots for it) runs from the image.
    let first = pod.id.clone();
    let first_mount = nydus_mount(&image, &snapshotdir(pod.tmp.path(), "first"));
    let first_extraoption = first_mount
        .options
        .iter()
        .find(|o| o.starts_with("extraoption="))
        .cloned()
        .unwrap();
    pod.create(&first, &["sleep", "1000"], vec![first_mount], &[])
        .await
        .unwrap();
    pod.start(&first).await;
    assert_eq!(pod.status(&first).await, RUNNING);

    // A second container in the same VM, from the same image.
    let second = pod.cid("second");
    let snap = snapshotdir(pod.tmp.path(), "second");
    let stdout = pod
        .create(
            &second,
            &[
                "sh",
                "-c",
                "cat /etc/hello.txt; echo written-in-the-guest > /newfile; ls /bin/busybox; \
                 (echo one > /etc/copied-up-1 && echo two > /etc/copied-up-2 && cat /etc/copied-up-2) 2>&1",
            ],
            vec![nydus_mount(&image, &snap)],
            &[("io.lazyvm.nydus.prefetch-files", r#"["/etc/hello.txt"]"#)],
        )
        .await
        .unwrap();
    let rafs_second = format!("/rafs/{second}/lowerdir");
    assert!(pod
        .nydusd()
        .daemon_info()
        .await
        .unwrap()
        .mountpoints()
        .contains(&rafs_second));
    pod.start(&second).await;
    let status = pod.wait(&second).await;
    let out = std::fs::read_to_string(&stdout).unwrap();
    assert_eq!(status, 0, "{out}");
    // Files created in a directory of the image (/etc: copied up from RAFS) too.
    assert_eq!(out, "hello from rafs\n/bin/busybox\ntwo\n");
    // The container's writes land in the snapshot's upper directory on the host.
    assert_eq!(
        std::fs::read_to_string(snap.join("fs/newfile")).unwrap(),
        "written-in-the-guest\n"
    );
    pod.delete(&second).await;
    let listed = pod.nydusd().daemon_info().await.unwrap().mountpoints();
    assert!(!listed.contains(&rafs_second), "{listed:?}");
    assert!(
        listed.contains(&format!("/rafs/{first}/lowerdir")),
        "{listed:?}"
    );
    pod.assert_container_gone(&second);
    assert_eq!(pod.status(&first).await, RUNNING, "the VM must stay up");

    // (Events are published asynchronously: read them well after the create.)
    let printed = containerd::stop_events(events);
    let create = printed
        .lines()
        .find(|l| l.contains("/tasks/create") && l.contains(&first))
        .unwrap_or_else(|| panic!("no TaskCreate for {first} in:\n{printed}"));
    let payload = &first_extraoption["extraoption=".len()..];
    assert!(
        !create.contains(payload),
        "TaskCreate carries the extraoption: {create}"
    );
    assert!(create.contains("redacted"), "{create}");

    let log = std::fs::read_to_string(pod.containerd.dir.join("containerd.log")).unwrap();
    let timings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("lazyvm timings"))
        .collect();
    eprintln!("{}", timings.join("\n"));
    assert!(timings
        .iter()
        .any(|l| l.contains(&first) && l.contains("vm_boot_ms")));
    assert!(timings
        .iter()
        .any(|l| l.contains(&second) && l.contains("rafs_mount_ms")));
    assert!(
        !log.contains("secret-registry-token"),
        "credentials in the log"
    );

    // Malformed nydus mounts: each error is named and nothing is left.
    let good = serde_json::json!({
        "source": image.bootstrap,
        "config": image.config(""),
        "snapshotdir": snapshotdir(pod.tmp.path(), "bad"),
    });
    let with = |k: &str, v: serde_json::Value| {
        let mut j = good.clone();
        j[k] = v;
        vec![mount_with(vec![extraoption(&j)])]
    };
    let without = |k: &str| {
        let mut j = good.clone();
        j.as_object_mut().unwrap().remove(k);
        vec![mount_with(vec![extraoption(&j)])]
    };
    let cases: Vec<(&str, Vec<Mount>, &str)> = vec![
        (
            "b1",
            vec![mount_with(vec!["lowerdir=/x".into()])],
            "no extraoption",
        ),
        (
            "b2",
            vec![mount_with(vec!["extraoption=***".into()])],
            "not valid base64",
        ),
        ("b3", without("config"), "has no \"config\""),
        ("b4", without("snapshotdir"), "has no \"snapshotdir\""),
        (
            "b5",
            with("source", "/nonexistent/image.boot".into()),
            "bootstrap",
        ),
        ("b6", with("fs_version", "v9".into()), "fs_version"),
        (
            "b7",
            with("config", "this is not json".into()),
            "mounting the nydus image",
        ),
    ];
    for (name, mounts, want) in cases {
        let cid = pod.cid(name);
        let err = pod
            .create(&cid, &["true"], mounts, &[])
            .await
            .expect_err(name);
        eprintln!("{name}: {}", err.message());
        assert!(err.message().contains(want), "{name}: {}", err.message());
        pod.assert_container_gone(&cid);
        let listed = pod.nydusd().daemon_info().await.unwrap().mountpoints();
        assert!(!listed.iter().any(|m| m.contains(&cid)), "{listed:?}");
    }

    pod.kill(&first).await;
    pod.wait(&first).await;
    pod.delete(&first).await;
    for _ in 0..50 {
        if !pod.sandbox_dir().exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!pod.sandbox_dir().exists(), "the sandbox was left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_image_is_read_lazily() {
    let pod = Pod::new("big").await;
    let src = busybox_rootfs(pod.tmp.path());
    // 200 MiB that no compressor can shrink, in 20 files, beside a small file.
    write_incompressible(&src.join("data"), 20, 10);
    let image = RafsImage::build(&src, &pod.tmp.path().join("image"));
    std::fs::remove_dir_all(&src).unwrap();
    assert!(image.blob_bytes > 200 << 20, "{}", image.blob_bytes);

    let cid = pod.id.clone();
    let stdout = pod
        .create(
            &cid,
            &["sh", "-c", "cat /etc/hello.txt; exec sleep 1000"],
            vec![nydus_mount(&image, &snapshotdir(pod.tmp.path(), "big"))],
            &[],
        )
        .await
        .unwrap();
    pod.start(&cid).await;
    for _ in 0..100 {
        if std::fs::read_to_string(&stdout).unwrap_or_default() == "hello from rafs\n" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        std::fs::read_to_string(&stdout).unwrap(),
        "hello from rafs\n"
    );
    let backend = pod.nydusd().backend_metrics(None).await.unwrap();
    let read = backend.read_amount_total;
    eprintln!(
        "read {read} of {} blob bytes ({:.2}%)",
        image.blob_bytes,
        read as f64 * 100.0 / image.blob_bytes as f64
    );
    assert!(read > 0);
    assert!(
        read * 20 < image.blob_bytes,
        "more than 5% of the blob was read"
    );
    pod.kill(&cid).await;
    pod.wait(&cid).await;
    pod.delete(&cid).await;
}

/// QEMU killed under a pod with a running task and a task created but never started:
/// both exit with 255 (Wait returns, Get says STOPPED), as runc's shim reports a killed
/// created container; both delete, and nothing of the pod is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_vm_ends_created_tasks_too() {
    let pod = Pod::new("dv").await;
    let image = RafsImage::build(
        &busybox_rootfs(pod.tmp.path()),
        &pod.tmp.path().join("image"),
    );
    let running = pod.id.clone();
    let mount = nydus_mount(&image, &snapshotdir(pod.tmp.path(), "running"));
    pod.create(&running, &["sleep", "1000"], vec![mount], &[])
        .await
        .unwrap();
    pod.start(&running).await;
    let created = pod.cid("created");
    let mount = nydus_mount(&image, &snapshotdir(pod.tmp.path(), "created"));
    pod.create(&created, &["sleep", "1000"], vec![mount], &[])
        .await
        .unwrap();
    let dir = pod.sandbox_dir();
    let qemu: Vec<u32> = processes_mentioning(&dir)
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.starts_with("qemu-system"))
        })
        .collect();
    assert_eq!(qemu.len(), 1, "the pod's QEMU: {qemu:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 of the pod's QEMU");
    assert_eq!(pod.wait(&running).await, 255);
    assert_eq!(pod.wait(&created).await, 255);
    const STOPPED: i32 = 3;
    assert_eq!(pod.status(&created).await, STOPPED);
    pod.delete(&created).await;
    pod.delete(&running).await;
    assert!(
        processes_mentioning(&dir).is_empty(),
        "processes of the pod left: {:?}",
        processes_mentioning(&dir)
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
}
