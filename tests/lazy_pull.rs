//! Lazy pull from a registry through the CRI: `lazyvm image convert` pushes images to
//! Debian's docker-registry in the test's network namespace, containerd 1.6's CRI pulls
//! them through lazyvm-snapshotter, and lazyvm pods run them. The registry's access log
//! is the proof of what was fetched, and when.
//!
//! Needs root, the guest image (`make guest`) and `make deps` (docker-registry, nydusd).

mod common;
#[path = "common/cri.rs"]
mod cri;

use std::path::{Path, PathBuf};

use base64::Engine;
use k8s_cri::v1::{ImageSpec, NamespaceMode};
use sha2::Digest;

use common::registry::{Request, REGISTRY};
use cri::{CriEnv, Pod, LAZYVM};

/// A planted credential: the snapshotter hands it to nydusd, and no log may show it.
const USER: &str = "lazyvm-planted-user";
const PASSWORD: &str = "planted-Secret-5b1f0c";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn registry(env: &CriEnv) -> &common::registry::Registry {
    &env.lazy.as_ref().unwrap().registry
}

/// A gzip tar of `entries` (path, content).
fn gzip_tar(entries: &[(&str, &[u8])]) -> (Vec<u8>, Vec<u8>) {
    let mut t = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, path, *data).unwrap();
    }
    let raw = t.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    (gz.finish().unwrap(), raw)
}

/// Republishes nydus image `repo:good` as `repo:tag` with its bootstrap layer replaced by
/// a layer of `entries`.
fn push_with_bootstrap(env: &CriEnv, repo: &str, tag: &str, entries: &[(&str, &[u8])], dir: &Path) {
    let mut m = registry(env).manifest(repo, "good");
    let config_digest = m["config"]["digest"].as_str().unwrap().to_string();
    let mut config: serde_json::Value =
        serde_json::from_slice(&registry(env).blob(repo, &config_digest)).unwrap();
    let (gz, raw) = gzip_tar(entries);
    let layer = registry(env).push_blob(repo, &gz, dir);
    let last = m["layers"].as_array().unwrap().len() - 1;
    m["layers"][last]["digest"] = layer.clone().into();
    m["layers"][last]["size"] = gz.len().into();
    let diff_ids = config["rootfs"]["diff_ids"].as_array_mut().unwrap();
    let last_diff = diff_ids.len() - 1;
    diff_ids[last_diff] = format!("sha256:{:x}", sha2::Sha256::digest(&raw)).into();
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = registry(env).push_blob(repo, &config, dir);
    m["config"]["digest"] = config_digest.into();
    m["config"]["size"] = config.len().into();
    registry(env).push_manifest(repo, tag, &m, dir);
}

/// The container config for `image`, running `command`.
fn container(
    env: &CriEnv,
    name: &str,
    image: &str,
    command: &[&str],
) -> k8s_cri::v1::ContainerConfig {
    let mut c = env.container_config(name, command, NamespaceMode::Container);
    c.image = Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    });
    c
}

/// Runs `command` from `image` in `pod` to its exit; its CRI log's stdout lines.
async fn run_to_exit(
    env: &CriEnv,
    pod: &Pod,
    name: &str,
    image: &str,
    command: &[&str],
) -> Vec<String> {
    let cid = env
        .create_container_with(pod, container(env, name, image, command))
        .await
        .unwrap_or_else(|e| panic!("CreateContainer {name} from {image}: {e}"));
    env.start_container(&cid).await;
    let st = env.wait_exited(&cid, 120).await;
    let lines = cri::cri_log_lines(&pod.log_dir.join(format!("{name}.log")), "stdout");
    assert_eq!(st.exit_code, 0, "{name}: {st:?} {lines:?}");
    env.remove_container(&cid).await;
    lines
}

/// Mounts whose source or target lies under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&d))
        .map(str::to_string)
        .collect()
}

fn snapshotter(env: &CriEnv) -> &common::registry::Snapshotter {
    &env.lazy.as_ref().unwrap().snapshotter
}

/// A busybox rootfs with /etc/hello.txt and `mib` MiB of incompressible data in /data.
fn image_rootfs(dir: &Path, mib: usize) -> PathBuf {
    let root = cri::app_rootfs(dir);
    if mib > 0 {
        common::write_incompressible(&root.join("data"), mib / 50, 50);
    }
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nydus_image_is_pulled_lazily_and_runs() {
    let mut env = CriEnv::start_lazy(Some((USER, PASSWORD))).await;
    let before = snapshotter(&env).snapshot_dirs();
    let work = env.dir.join("work");
    let rootfs = image_rootfs(&work, 200);
    let image = format!("{REGISTRY}/lazyvm/big:v1");
    let summary = registry(&env).convert(&format!("dir:{}", rootfs.display()), &image, "nydus");
    eprintln!("{summary}");
    let m = registry(&env).manifest("lazyvm/big", "v1");
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{m}");
    let data_blob = layers[0]["digest"].as_str().unwrap().to_string();
    let blob_size = layers[0]["size"].as_u64().unwrap();
    assert!(blob_size > 200 << 20, "the data blob is {blob_size} bytes");

    // Pull: manifest, config and bootstrap only.
    let mark = registry(&env).log_mark();
    env.pull_image(&image).await.unwrap();
    let pulled = registry(&env).requests_since(mark);
    eprintln!("pull: {pulled:?}");
    assert!(
        !pulled
            .iter()
            .any(|r| r.method == "GET" && r.path.ends_with(&data_blob)),
        "the data blob was fetched at pull: {pulled:?}"
    );
    for what in [
        m["config"]["digest"].as_str().unwrap(),
        layers[1]["digest"].as_str().unwrap(),
    ] {
        assert!(
            pulled
                .iter()
                .any(|r| r.method == "GET" && r.path.ends_with(what) && r.status == 200),
            "{what} was not fetched at pull: {pulled:?}"
        );
    }
    let pull_bytes: u64 = pulled.iter().map(|r| r.bytes).sum();
    assert!(pull_bytes < 1 << 20, "the pull fetched {pull_bytes} bytes");

    // The snapshotter's metadata survives a restart between pull and run.
    env.lazy.as_mut().unwrap().snapshotter.restart();
    // containerd's gRPC connection to it backs off after the refused dials of the restart
    // and fails fast until it reconnects: wait for that, as a kubelet's retry would.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = env.ctr(&["snapshots", "--snapshotter", cri::SNAPSHOTTER, "ls"]);
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "containerd did not reconnect to the restarted snapshotter: {}",
            text(&out.stderr)
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }

    let mark = registry(&env).log_mark();
    let pod = env.run_pod("lazy", LAZYVM).await;
    let lines = run_to_exit(&env, &pod, "hello", &image, &["cat", "/etc/hello.txt"]).await;
    assert_eq!(lines, ["hello from rafs"]);
    let run = registry(&env).requests_since(mark);
    let blob_reads: Vec<&Request> = run
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&data_blob))
        .collect();
    assert!(
        blob_reads.iter().any(|r| r.status == 206),
        "no ranged read of the blob: {run:?}"
    );
    let read: u64 = blob_reads.iter().map(|r| r.bytes).sum();
    eprintln!(
        "run: {} blob reads, {read} of {blob_size} bytes ({:.2}%)",
        blob_reads.len(),
        read as f64 * 100.0 / blob_size as f64
    );
    assert!(
        read * 20 < blob_size,
        "read {read} of {blob_size} bytes of the blob"
    );

    env.stop_pod(&pod).await;
    env.remove_pod(&pod).await;
    env.remove_image(&image).await;
    assert_eq!(
        snapshotter(&env).snapshot_dirs(),
        before,
        "snapshots left behind"
    );
    assert!(
        mounts_under(&snapshotter(&env).root).is_empty(),
        "{:?}",
        mounts_under(&snapshotter(&env).root)
    );

    // The credential went to nydusd, and into no log.
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    for (what, log) in [
        (
            "containerd (and the shims)",
            std::fs::read_to_string(env.log_path()).unwrap(),
        ),
        ("the snapshotter", snapshotter(&env).log_text()),
    ] {
        assert!(
            !log.contains(PASSWORD) && !log.contains(&auth),
            "{what}'s log shows the credential"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_oci_image_through_the_snapshotter() {
    let env = CriEnv::start_lazy(None).await;
    let before = snapshotter(&env).snapshot_dirs();
    let rootfs = image_rootfs(&env.dir.join("work"), 0);
    let image = format!("{REGISTRY}/lazyvm/plain:v1");
    registry(&env).convert(&format!("dir:{}", rootfs.display()), &image, "oci");
    let mark = registry(&env).log_mark();
    env.pull_image(&image).await.unwrap();
    let m = registry(&env).manifest("lazyvm/plain", "v1");
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    assert!(
        registry(&env)
            .requests_since(mark)
            .iter()
            .any(|r| r.method == "GET" && r.path.ends_with(&layer)),
        "a plain layer is fetched at pull"
    );
    let pod = env.run_pod("plain", LAZYVM).await;
    let lines = run_to_exit(&env, &pod, "hello", &image, &["cat", "/etc/hello.txt"]).await;
    assert_eq!(lines, ["hello from rafs"]);
    env.stop_pod(&pod).await;
    env.remove_pod(&pod).await;
    env.remove_image(&image).await;
    assert_eq!(
        snapshotter(&env).snapshot_dirs(),
        before,
        "snapshots left behind"
    );
    assert!(mounts_under(&snapshotter(&env).root).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_nydus_images_and_a_registry_down_fail_cleanly() {
    let mut env = CriEnv::start_lazy(None).await;
    let work = env.dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let rootfs = image_rootfs(&work, 0);
    let repo = "lazyvm/small";
    let good = format!("{REGISTRY}/{repo}:good");
    registry(&env).convert(&format!("dir:{}", rootfs.display()), &good, "nydus");
    push_with_bootstrap(&env, repo, "nobootstrap", &[("image/other", b"x")], &work);
    push_with_bootstrap(
        &env,
        repo,
        "corrupt",
        &[("image/image.boot", b"not a bootstrap")],
        &work,
    );
    let pod = env.run_pod("broken", LAZYVM).await;
    let sandbox = pod.sandbox_dir();
    let containers_in_sandbox = || {
        std::fs::read_dir(sandbox.join("private"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name() != pod.id.as_str())
                    .count()
            })
            .unwrap_or(0)
    };
    let baseline = containers_in_sandbox();

    for (tag, want) in [("nobootstrap", "image/image.boot"), ("corrupt", "")] {
        let image = format!("{REGISTRY}/{repo}:{tag}");
        env.pull_image(&image).await.unwrap();
        let created = env
            .create_container_with(&pod, container(&env, tag, &image, &["true"]))
            .await;
        let err = match created {
            Err(e) => e.message().to_string(),
            Ok(cid) => {
                // The bootstrap is read when nydusd mounts it: at create or at start.
                let r = env.try_start_container(&cid).await;
                env.remove_container(&cid).await;
                match r {
                    Err(e) => e.message().to_string(),
                    Ok(_) => panic!("a container from {tag} started"),
                }
            }
        };
        eprintln!("{tag}: {err}");
        assert!(err.contains(want), "{tag}: {err}");
        assert_eq!(
            containers_in_sandbox(),
            baseline,
            "{tag} left a container directory"
        );
    }

    // The registry goes away after the pull: the container fails, the pod stays usable.
    env.pull_image(&good).await.unwrap();
    env.lazy.as_mut().unwrap().registry.stop();
    let created = env
        .create_container_with(
            &pod,
            container(&env, "offline", &good, &["cat", "/etc/hello.txt"]),
        )
        .await;
    match created {
        Err(e) => eprintln!("offline create: {}", e.message()),
        Ok(cid) => {
            let r = env.try_start_container(&cid).await;
            match r {
                Err(e) => eprintln!("offline start: {}", e.message()),
                Ok(_) => {
                    let st = env.wait_exited(&cid, 120).await;
                    let log = pod.log_dir.join("offline.log");
                    let stderr = cri::cri_log_lines(&log, "stderr");
                    eprintln!("offline run: exit {}, stderr {stderr:?}", st.exit_code);
                    assert_ne!(st.exit_code, 0, "a container ran with its registry down");
                    assert!(
                        !stderr.is_empty(),
                        "the container said nothing of the failure"
                    );
                }
            }
            env.remove_container(&cid).await;
        }
    }
    assert_eq!(
        containers_in_sandbox(),
        baseline,
        "the offline container left a directory"
    );
    // The pod still runs what is local: an exec in a container from the pause image's
    // layers is not needed; stopping and removing it cleanly is.
    env.stop_pod(&pod).await;
    env.remove_pod(&pod).await;
    assert!(!sandbox.exists(), "{} left behind", sandbox.display());
}
