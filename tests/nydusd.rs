//! nydusd integration, against the real nydusd built by `make deps`: the daemon's
//! lifecycle in FUSE and virtio-fs modes, the API client, mountpoint checks, and cleanup.
//! Needs root (FUSE mounts, network namespaces).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use lazyvm::nydusd::daemon::PathKind;
use lazyvm::nydusd::{
    rafs_mountpoint, ClientError, DaemonConfig, DaemonError, Mode, MountRequest, Nydusd,
    PASSTHROUGH_MOUNTPOINT,
};

const SECRET: &str = "c2VjcmV0LXJlZ2lzdHJ5LXRva2Vu";

fn fuse_config(dir: &Path) -> DaemonConfig {
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    DaemonConfig::new(
        nydusd_path(),
        dir.join("api.sock"),
        Mode::Fuse { mountpoint: mnt },
    )
}

fn virtiofs_config(dir: &Path) -> DaemonConfig {
    DaemonConfig::new(
        nydusd_path(),
        dir.join("api.sock"),
        Mode::Virtiofs {
            sock: dir.join("vhost-fs.sock"),
        },
    )
}

fn assert_gone(pid: u32, dir: &Path) {
    assert!(
        !process_exists(pid),
        "nydusd {pid} is still there (or a zombie)"
    );
    for sock in ["api.sock", "vhost-fs.sock"] {
        assert!(!dir.join(sock).exists(), "{sock} was left behind");
    }
}

#[tokio::test]
async fn fuse_mode_serves_rafs_and_passthrough() {
    capture_logs();
    let tmp = tempfile::tempdir().unwrap();
    let image = RafsImage::build(&busybox_rootfs(tmp.path()), &tmp.path().join("image"));
    let host_dir = tmp.path().join("host");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("marker"), "from the host\n").unwrap();

    let config = fuse_config(tmp.path());
    let mnt = tmp.path().join("mnt");
    let daemon = Nydusd::start(config, None)
        .await
        .expect("start nydusd fuse");
    let pid = daemon.pid();
    eprintln!("nydusd spawn -> RUNNING: {:?}", daemon.ready_after());
    let client = daemon.client();

    let info = client.daemon_info().await.unwrap();
    assert!(info.is_running(), "{info:?}");

    let rafs = rafs_mountpoint("c1").unwrap();
    let req = MountRequest::rafs(image.bootstrap.to_string_lossy(), image.config(SECRET));
    client.mount(&rafs, &req).await.expect("rafs mount");
    let lower = mnt.join("rafs/c1/lowerdir");
    assert_eq!(
        std::fs::read_to_string(lower.join("etc/hello.txt")).unwrap(),
        "hello from rafs\n"
    );
    let out = std::process::Command::new(lower.join("bin/busybox"))
        .args(["echo", "busybox ran from rafs"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "busybox ran from rafs\n"
    );

    client
        .mount(
            PASSTHROUGH_MOUNTPOINT,
            &MountRequest::passthrough(&host_dir),
        )
        .await
        .expect("passthrough mount");
    assert_eq!(
        std::fs::read_to_string(mnt.join("containers/marker")).unwrap(),
        "from the host\n"
    );

    let mut listed = client.daemon_info().await.unwrap().mountpoints();
    listed.sort();
    assert_eq!(listed, [PASSTHROUGH_MOUNTPOINT, rafs.as_str()]);

    // Mounting the same point twice: nydusd's own message comes back with the status.
    let err = client.mount(&rafs, &req).await.unwrap_err();
    match &err {
        ClientError::Api {
            status, message, ..
        } => {
            assert!(*status >= 400, "{err}");
            assert!(!message.is_empty(), "{err}");
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    eprintln!("duplicate mount: {err}");

    let fs = client
        .global_metrics(Some(&rafs))
        .await
        .expect("fs metrics");
    assert!(fs.data_read > 0, "{fs:?}");
    let backend = client.backend_metrics(None).await.expect("backend metrics");
    assert_eq!(backend.backend_type, "localfs");
    assert!(backend.read_amount_total > 0, "{backend:?}");
    eprintln!(
        "read {} bytes through the fs, {} from the backend, blob is {} bytes",
        fs.data_read, backend.read_amount_total, image.blob_bytes
    );

    client.umount(&rafs).await.expect("rafs umount");
    client
        .umount(PASSTHROUGH_MOUNTPOINT)
        .await
        .expect("passthrough umount");
    assert!(!lower.join("etc/hello.txt").exists());
    assert!(!mnt.join("containers/marker").exists());
    assert!(client.daemon_info().await.unwrap().mountpoints().is_empty());
    let err = client.umount(&rafs).await.unwrap_err();
    assert!(err.status().is_some(), "{err}");

    daemon.stop().await.expect("stop");
    assert_gone(pid, tmp.path());
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&mnt.to_string_lossy().to_string()),
        "the FUSE mount was left behind"
    );
    let leaked: Vec<String> = logged()
        .into_iter()
        .filter(|l| l.contains(SECRET))
        .collect();
    assert!(leaked.is_empty(), "credentials reached the log: {leaked:?}");
}

#[tokio::test]
async fn virtiofs_mode_accepts_mounts_and_stops_clean() {
    capture_logs();
    let tmp = tempfile::tempdir().unwrap();
    let image = RafsImage::build(&busybox_rootfs(tmp.path()), &tmp.path().join("image"));
    let shared = tmp.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();

    let mut config = virtiofs_config(tmp.path());
    config.shared_dir = Some(shared.clone());
    let started = Instant::now();
    let daemon = Nydusd::start(config, None)
        .await
        .expect("start nydusd virtiofs");
    eprintln!(
        "virtiofs: spawn -> RUNNING {:?}, with the passthrough mount {:?}",
        daemon.ready_after(),
        started.elapsed()
    );
    let pid = daemon.pid();
    assert!(tmp.path().join("vhost-fs.sock").exists());

    let rafs = rafs_mountpoint("c1").unwrap();
    daemon
        .client()
        .mount(
            &rafs,
            &MountRequest::rafs(image.bootstrap.to_string_lossy(), image.config(SECRET))
                .with_prefetch_files(vec!["/etc/hello.txt".into()]),
        )
        .await
        .expect("rafs mount in virtiofs mode");
    let mut listed = daemon.client().daemon_info().await.unwrap().mountpoints();
    listed.sort();
    assert_eq!(listed, [PASSTHROUGH_MOUNTPOINT, rafs.as_str()]);
    daemon.client().umount(&rafs).await.expect("rafs umount");

    let status = daemon.stop().await.expect("stop");
    eprintln!("virtiofs nydusd exited: {status}");
    assert_gone(pid, tmp.path());
}

#[tokio::test]
async fn sigkill_fires_on_exit_and_leaves_no_zombie() {
    capture_logs();
    let tmp = tempfile::tempdir().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let daemon = Nydusd::start(
        virtiofs_config(tmp.path()),
        Some(Box::new(move |status| {
            let _ = tx.send(status);
        })),
    )
    .await
    .expect("start");
    let pid = daemon.pid();
    let killed_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(1), rx)
        .await
        .expect("on_exit did not fire within a second")
        .unwrap();
    eprintln!("on_exit after {:?}: {status}", killed_at.elapsed());
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9));
    assert!(!process_exists(pid), "nydusd was not reaped");
    assert_eq!(daemon.exit_status(), Some(status));
    daemon.stop().await.unwrap();
    assert_gone(pid, tmp.path());
}

#[tokio::test]
async fn stop_does_not_fire_on_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = fired.clone();
    let daemon = Nydusd::start(
        virtiofs_config(tmp.path()),
        Some(Box::new(move |_| {
            flag.store(true, std::sync::atomic::Ordering::SeqCst)
        })),
    )
    .await
    .unwrap();
    let pid = daemon.pid();
    daemon.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!fired.load(std::sync::atomic::Ordering::SeqCst));
    assert_gone(pid, tmp.path());
}

#[tokio::test]
async fn bad_paths_give_their_error_and_start_nothing() {
    let tmp = tempfile::tempdir().unwrap();

    let mut config = virtiofs_config(tmp.path());
    config.path = tmp.path().join("no-such-nydusd");
    let err = Nydusd::start(config, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            DaemonError::InvalidPath {
                kind: PathKind::Daemon,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("no-such-nydusd"), "{err}");

    let mut config = virtiofs_config(tmp.path());
    config.mode = Mode::Virtiofs {
        sock: tmp.path().join("missing-dir/vhost-fs.sock"),
    };
    let err = Nydusd::start(config, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            DaemonError::InvalidPath {
                kind: PathKind::Socket,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("missing-dir"), "{err}");

    let mut config = virtiofs_config(tmp.path());
    config.api_sock = tmp.path().join("missing-dir/api.sock");
    let err = Nydusd::start(config, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            DaemonError::InvalidPath {
                kind: PathKind::ApiSocket,
                ..
            }
        ),
        "{err:?}"
    );

    let mut config = virtiofs_config(tmp.path());
    config.shared_dir = Some(tmp.path().join("no-shared-dir"));
    let err = Nydusd::start(config, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            DaemonError::InvalidPath {
                kind: PathKind::Source,
                ..
            }
        ),
        "{err:?}"
    );

    assert!(processes_mentioning(tmp.path()).is_empty());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn a_daemon_that_dies_during_start_leaves_nothing() {
    capture_logs();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = virtiofs_config(tmp.path());
    config.extra_args = vec!["--no-such-option".into()];
    let err = Nydusd::start(config, None).await.unwrap_err();
    match &err {
        DaemonError::ExitedEarly { output, .. } => {
            assert!(output.contains("no-such-option"), "{err}")
        }
        other => panic!("expected ExitedEarly, got {other:?}"),
    }
    assert!(processes_mentioning(tmp.path()).is_empty());
    assert_gone(0, tmp.path());
}

#[tokio::test]
async fn a_failed_shared_dir_mount_stops_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = virtiofs_config(tmp.path());
    // A file, not a directory: passes nothing to nydusd until the mount, which fails.
    let not_a_dir = tmp.path().join("file");
    std::fs::write(&not_a_dir, "").unwrap();
    config.shared_dir = Some(not_a_dir);
    let err = Nydusd::start(config, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            DaemonError::InvalidPath {
                kind: PathKind::Source,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(processes_mentioning(tmp.path()).is_empty());
}

#[test]
fn spawns_in_the_process_netns_even_from_another_one() {
    let tmp = tempfile::tempdir().unwrap();
    let config = virtiofs_config(tmp.path());
    let dir = tmp.path().to_path_buf();
    std::thread::spawn(move || {
        // This thread moves to a fresh network namespace, as a shim thread serving a pod
        // might be; nydusd must still land in the process's namespace.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare netns");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let daemon = Nydusd::start(config, None).await.expect("start");
            let pid = daemon.pid();
            let ns = |p: &str| std::fs::read_link(p).unwrap();
            let nydusd_ns = ns(&format!("/proc/{pid}/ns/net"));
            let result = (
                nydusd_ns == ns("/proc/self/ns/net"),
                nydusd_ns != ns("/proc/thread-self/ns/net"),
            );
            daemon.stop().await.unwrap();
            assert_eq!(
                result,
                (true, true),
                "nydusd must be in the process netns, not the thread's"
            );
            assert_gone(pid, &dir);
        });
    })
    .join()
    .unwrap();
}
