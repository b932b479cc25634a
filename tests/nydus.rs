//! Lazy rootfs end to end: containers whose rootfs is a `fuse.nydus-overlayfs` mount,
//! created through containerd's own gRPC API (the `containerd-client` crate) on a private
//! containerd, with RAFS images built here by nydus-image (localfs backend).
//! Needs root and the guest image (`make guest`).

mod common;
#[path = "common/containerd.rs"]
mod containerd;

use std::path::{Path, PathBuf};

use base64::Engine;
use common::*;
use containerd::Containerd;
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetRequest, KillRequest, StartRequest, WaitRequest,
};
use containerd_client::types::Mount;
use containerd_client::with_namespace;
use lazyvm::nydusd::NydusClient;
use tonic::transport::Channel;
use tonic::Request;

const NS: &str = "lazyvm-test";
const RUNTIME: &str = "io.containerd.lazyvm.v2";

struct Pod {
    tmp: tempfile::TempDir,
    containerd: Containerd,
    channel: Channel,
    /// The pod's id: its first container's.
    id: String,
}

/// A snapshot directory as the nydus snapshotter makes one: `fs` (upper) and `work`.
fn snapshotdir(base: &Path, name: &str) -> PathBuf {
    let dir = base.join("snapshots").join(name);
    std::fs::create_dir_all(dir.join("fs")).unwrap();
    std::fs::create_dir_all(dir.join("work")).unwrap();
    dir
}

fn extraoption(json: &serde_json::Value) -> String {
    format!(
        "extraoption={}",
        base64::engine::general_purpose::STANDARD.encode(json.to_string())
    )
}

fn nydus_mount(image: &RafsImage, snapshotdir: &Path) -> Mount {
    let extra = serde_json::json!({
        "source": image.bootstrap,
        "config": image.config("secret-registry-token"),
        "snapshotdir": snapshotdir,
        "fs_version": "v6",
    });
    mount_with(vec![
        format!("lowerdir={}", image.bootstrap.display()),
        format!("upperdir={}", snapshotdir.join("fs").display()),
        format!("workdir={}", snapshotdir.join("work").display()),
        extraoption(&extra),
    ])
}

fn mount_with(options: Vec<String>) -> Mount {
    Mount {
        r#type: "fuse.nydus-overlayfs".into(),
        source: "overlay".into(),
        target: String::new(),
        options,
    }
}

fn spec(args: &[&str], sandbox: &str, annotations: &[(&str, &str)]) -> prost_types::Any {
    let mut spec = oci_spec::runtime::Spec::default();
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    spec.set_process(Some(process));
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    let mut a: std::collections::HashMap<String, String> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    a.insert("io.kubernetes.cri.sandbox-id".into(), sandbox.into());
    spec.set_annotations(Some(a));
    prost_types::Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
        value: serde_json::to_vec(&spec).unwrap(),
    }
}

impl Pod {
    async fn new(name: &str) -> Pod {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("lazyvm.toml");
        write_config(&config, &guest_dir());
        let containerd = Containerd::start(tmp.path(), &config);
        let channel = containerd_client::connect(&containerd.socket)
            .await
            .unwrap();
        Pod {
            tmp,
            containerd,
            channel,
            id: format!("{}{name}", test_prefix()),
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

    /// Creates container `cid` and its task with `rootfs`; returns the stdout file.
    async fn create(
        &self,
        cid: &str,
        args: &[&str],
        rootfs: Vec<Mount>,
        annotations: &[(&str, &str)],
    ) -> Result<PathBuf, tonic::Status> {
        let container = Container {
            id: cid.to_string(),
            image: "lazyvm-test/nydus".into(),
            runtime: Some(Runtime {
                name: RUNTIME.into(),
                options: None,
            }),
            spec: Some(spec(args, &self.id, annotations)),
            ..Default::default()
        };
        ContainersClient::new(self.channel.clone())
            .create(with_namespace!(
                CreateContainerRequest {
                    container: Some(container)
                },
                NS
            ))
            .await?;
        let stdout = self.tmp.path().join(format!("{cid}.out"));
        let created = TasksClient::new(self.channel.clone())
            .create(with_namespace!(
                CreateTaskRequest {
                    container_id: cid.to_string(),
                    rootfs,
                    stdout: stdout.display().to_string(),
                    ..Default::default()
                },
                NS
            ))
            .await;
        if let Err(e) = created {
            self.delete_container(cid).await;
            return Err(e);
        }
        Ok(stdout)
    }

    async fn start(&self, cid: &str) {
        TasksClient::new(self.channel.clone())
            .start(with_namespace!(
                StartRequest {
                    container_id: cid.to_string(),
                    ..Default::default()
                },
                NS
            ))
            .await
            .unwrap();
    }

    async fn wait(&self, cid: &str) -> u32 {
        TasksClient::new(self.channel.clone())
            .wait(with_namespace!(
                WaitRequest {
                    container_id: cid.to_string(),
                    ..Default::default()
                },
                NS
            ))
            .await
            .unwrap()
            .into_inner()
            .exit_status
    }

    async fn status(&self, cid: &str) -> i32 {
        TasksClient::new(self.channel.clone())
            .get(with_namespace!(
                GetRequest {
                    container_id: cid.to_string(),
                    ..Default::default()
                },
                NS
            ))
            .await
            .unwrap()
            .into_inner()
            .process
            .map(|p| p.status)
            .unwrap_or_default()
    }

    async fn kill(&self, cid: &str) {
        TasksClient::new(self.channel.clone())
            .kill(with_namespace!(
                KillRequest {
                    container_id: cid.to_string(),
                    signal: 9,
                    ..Default::default()
                },
                NS
            ))
            .await
            .unwrap();
    }

    async fn delete(&self, cid: &str) {
        TasksClient::new(self.channel.clone())
            .delete(with_namespace!(
                DeleteTaskRequest {
                    container_id: cid.to_string(),
                },
                NS
            ))
            .await
            .unwrap();
        self.delete_container(cid).await;
    }

    async fn delete_container(&self, cid: &str) {
        let _ = ContainersClient::new(self.channel.clone())
            .delete(with_namespace!(
                DeleteContainerRequest {
                    id: cid.to_string()
                },
                NS
            ))
            .await;
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

const RUNNING: i32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nydus_containers_share_a_vm_and_clean_up() {
    capture_logs();
    let pod = Pod::new("np").await;
    let image = RafsImage::build(
        &busybox_rootfs(pod.tmp.path()),
        &pod.tmp.path().join("image"),
    );

    // The pod's first container (the VM boots for it) runs from the image.
    let first = pod.id.clone();
    pod.create(
        &first,
        &["sleep", "1000"],
        vec![nydus_mount(&image, &snapshotdir(pod.tmp.path(), "first"))],
        &[],
    )
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
                "cat /etc/hello.txt; echo written-in-the-guest > /newfile; ls /bin/busybox",
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
    assert_eq!(pod.wait(&second).await, 0);
    assert_eq!(
        std::fs::read_to_string(&stdout).unwrap(),
        "hello from rafs\n/bin/busybox\n"
    );
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
    std::fs::create_dir_all(src.join("data")).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut chunk = vec![0u8; 10 << 20];
    for i in 0..20 {
        for b in chunk.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            b.copy_from_slice(&seed.to_le_bytes()[..b.len()]);
        }
        std::fs::write(src.join(format!("data/blob{i}")), &chunk).unwrap();
    }
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
