//! A private containerd for the integration tests (included by the tests that need it).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetRequest, KillRequest, StartRequest, WaitRequest,
};
use containerd_client::types::Mount;
use containerd_client::with_namespace;
use tonic::transport::Channel;
use tonic::Request;

use crate::common::{processes_mentioning, test_prefix, RafsImage};

/// The namespace the tests and the demo use.
pub const NS: &str = "lazyvm-test";
/// lazyvm's runtime type.
pub const RUNTIME: &str = "io.containerd.lazyvm.v2";
/// The task status containerd reports for a running task.
pub const RUNNING: i32 = 2;

/// A snapshot directory as the nydus snapshotter makes one: `fs` (upper) and `work`.
pub fn snapshotdir(base: &Path, name: &str) -> PathBuf {
    let dir = base.join("snapshots").join(name);
    std::fs::create_dir_all(dir.join("fs")).unwrap();
    std::fs::create_dir_all(dir.join("work")).unwrap();
    dir
}

pub fn extraoption(json: &serde_json::Value) -> String {
    format!(
        "extraoption={}",
        base64::engine::general_purpose::STANDARD.encode(json.to_string())
    )
}

pub fn nydus_mount(image: &RafsImage, snapshotdir: &Path) -> Mount {
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

pub fn mount_with(options: Vec<String>) -> Mount {
    Mount {
        r#type: "fuse.nydus-overlayfs".into(),
        source: "overlay".into(),
        target: String::new(),
        options,
    }
}

pub fn spec(args: &[&str], sandbox: &str, annotations: &[(&str, &str)]) -> prost_types::Any {
    let mut spec = oci_spec::runtime::Spec::default();
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    spec.set_process(Some(process));
    spec.set_hostname(Some("lazyvm".into()));
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

/// containerd's gRPC API for the containers of one pod (grouped by the sandbox-id
/// annotation `id`), with stdout captured in files under `out_dir`.
pub struct PodClient {
    /// The gRPC channel.
    pub channel: Channel,
    /// The pod's id.
    pub id: String,
    /// Where stdout files go.
    pub out_dir: PathBuf,
}

impl PodClient {
    /// Creates container `cid` and its task with `rootfs`; returns the stdout file.
    pub async fn create(
        &self,
        cid: &str,
        args: &[&str],
        rootfs: Vec<Mount>,
        annotations: &[(&str, &str)],
    ) -> Result<PathBuf, tonic::Status> {
        self.create_with_spec(cid, spec(args, &self.id, annotations), rootfs)
            .await
    }

    /// Creates container `cid` and its task from a ready OCI `spec` (see [`spec`]).
    pub async fn create_with_spec(
        &self,
        cid: &str,
        spec: prost_types::Any,
        rootfs: Vec<Mount>,
    ) -> Result<PathBuf, tonic::Status> {
        let container = Container {
            id: cid.to_string(),
            image: "lazyvm-test/nydus".into(),
            runtime: Some(Runtime {
                name: RUNTIME.into(),
                options: None,
            }),
            spec: Some(spec),
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
        let stdout = self.out_dir.join(format!("{cid}.out"));
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

    pub async fn start(&self, cid: &str) {
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

    pub async fn wait(&self, cid: &str) -> u32 {
        let mut tasks = TasksClient::new(self.channel.clone());
        let wait = tasks.wait(with_namespace!(
            WaitRequest {
                container_id: cid.to_string(),
                ..Default::default()
            },
            NS
        ));
        tokio::time::timeout(std::time::Duration::from_secs(120), wait)
            .await
            .unwrap_or_else(|_| panic!("waiting for {cid} timed out"))
            .unwrap()
            .into_inner()
            .exit_status
    }

    pub async fn status(&self, cid: &str) -> i32 {
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

    pub async fn kill(&self, cid: &str) {
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

    pub async fn delete(&self, cid: &str) {
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

    pub async fn delete_container(&self, cid: &str) {
        let _ = ContainersClient::new(self.channel.clone())
            .delete(with_namespace!(
                DeleteContainerRequest {
                    id: cid.to_string()
                },
                NS
            ))
            .await;
    }
}

/// A private containerd (own root, state and sockets) with lazyvm registered, stopped
/// (by pid) when dropped.
pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: std::process::Child,
    command: Vec<(String, String)>,
}

impl Containerd {
    /// Starts containerd in `dir`; the shim is found in `shim_dir` and reads
    /// `lazyvm_config`.
    pub fn start(dir: &Path, lazyvm_config: &Path, shim_dir: &Path) -> Containerd {
        let bin = crate::common::containerd_bin();
        let socket = dir.join("containerd.sock");
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = {version}
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
"#,
                // containerd 2.x prefers version 3 (the same keys here).
                version = if bin.major >= 2 { 3 } else { 2 },
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = socket.display()
            ),
        )
        .unwrap();
        let command = vec![
            ("PATH".to_string(), bin.search_path(shim_dir)),
            (
                "LAZYVM_CONFIG".to_string(),
                lazyvm_config.display().to_string(),
            ),
        ];
        let child = Self::spawn(dir, &command);
        let c = Containerd {
            dir: dir.to_path_buf(),
            socket,
            child,
            command,
        };
        c.wait_ready();
        c
    }

    fn spawn(dir: &Path, env: &[(String, String)]) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("containerd.log"))
            .unwrap();
        Command::new(crate::common::containerd_bin().path("containerd"))
            .arg("--config")
            .arg(dir.join("containerd.toml"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd (make deps installs it)")
    }

    /// Stops containerd with `sig` (its shims keep running), waits for it to exit, leaves
    /// it down for `down`, and starts it again on the same root, state and sockets.
    pub fn restart(&mut self, sig: nix::sys::signal::Signal, down: std::time::Duration) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = Self::spawn(&self.dir, &self.command);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let dir = &self.dir;
        let c = self;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !c.ctr(&["version"]).status.success() {
            assert!(
                std::time::Instant::now() < deadline,
                "containerd did not start: {}",
                std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// containerd's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `ctr` against this containerd, in namespace `lazyvm-test`.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        // Bounded: a hung call fails the test instead of hanging it.
        let mut c = Command::new("timeout");
        c.arg("120")
            .arg(crate::common::containerd_bin().path("ctr"))
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "lazyvm-test"])
            .args(args);
        c
    }

    /// Starts `ctr events` (stopped and read with [`stop_events`]), and gives it a moment
    /// to subscribe.
    pub fn events(&self) -> std::process::Child {
        let child = self
            .ctr_command(&["events"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        child
    }

    /// Imports the OCI image archive `archive` (`ctr images import`); panics with ctr's
    /// error if it fails.
    pub fn import(&self, archive: &Path) {
        let out = self.ctr(&["images", "import", &archive.to_string_lossy()]);
        assert!(
            out.status.success(),
            "ctr images import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `ctr` and returns its output.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        self.ctr_command(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }
}

/// Stops a `ctr events` of [`Containerd::events`] (by pid) and returns what it printed.
pub fn stop_events(events: std::process::Child) -> String {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(events.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    String::from_utf8_lossy(&events.wait_with_output().unwrap().stdout).into_owned()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Shims outlive containerd: stop the ones of this containerd (by pid), then what
        // their sandboxes left.
        for pid in processes_mentioning(&self.socket) {
            if pid != self.child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if let Ok(entries) = std::fs::read_dir(lazyvm::sandbox::RUN_DIR) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&test_prefix()) {
                    lazyvm::sandbox::kill_recorded(&e.path());
                    let _ = lazyvm::mounts::remove_dir_unmounted(&e.path());
                }
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        // Snapshots stay mounted under the root after containerd exits.
        let _ = lazyvm::mounts::unmount_all_under(&self.dir);
    }
}
