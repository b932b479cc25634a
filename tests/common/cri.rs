//! A private containerd 1.6 with its CRI plugin enabled, for crictl-style tests driven
//! through CRI v1 (`k8s-cri`). Everything it starts lives in a network namespace of its
//! own (`lzcri-<pid>-<n>`): containerd, the shims, the CNI bridge and the pods' veths, so
//! test traffic never reaches the host's interfaces. Images (a pause image and a busybox
//! app image) are built here and imported with `ctr -n k8s.io`. [`CriEnv`] stops and
//! removes all of it when dropped, also when the test panics (and then prints what helps
//! to understand the failure).
#![allow(dead_code)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, DnsConfig, ExecSyncRequest, ExecSyncResponse, ImageSpec,
    ImageStatusRequest, KeyValue, LinuxContainerConfig, LinuxContainerResources,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    ListPodSandboxRequest, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxStatusRequest, PodSandboxStatusResponse, PullImageRequest, RemoveContainerRequest,
    RemoveImageRequest, RemovePodSandboxRequest, RunPodSandboxRequest, SecurityProfile,
    StartContainerRequest, StatusRequest, StopContainerRequest, StopPodSandboxRequest,
};
use tonic::transport::Channel;

use crate::common::registry::{Registry, Snapshotter, REGISTRY};
use crate::common::{busybox_rootfs, oci_image_archive_cmd, processes_mentioning, write_config};

/// The proxy snapshotter's name in containerd's configuration.
pub const SNAPSHOTTER: &str = "lazyvm";

/// How [`CriEnv::start_lazy_with`] sets up the lazy-pull parts.
#[derive(Default)]
pub struct LazyOptions<'a> {
    /// Registry credentials in the snapshotter's config (the registry checks none).
    pub credentials: Option<(&'a str, &'a str)>,
    /// The registry's storage, to serve images pushed by an earlier env.
    pub registry_storage: Option<&'a Path>,
}

/// A [`CriEnv`]'s lazy-pull parts: a registry in its netns and lazyvm-snapshotter as the
/// CRI's snapshotter (with snapshot annotations on, and the registry as plain HTTP).
pub struct LazyPull {
    pub registry: Registry,
    pub snapshotter: Snapshotter,
}

/// The CRI's containerd namespace.
pub const K8S_NS: &str = "k8s.io";
/// The pause (sandbox) image: busybox sleeping forever.
pub const PAUSE_IMAGE: &str = "docker.io/lazyvm/pause:cri-test";
/// The app image: busybox with a web root holding [`WEB_MARKER`].
pub const APP_IMAGE: &str = "docker.io/lazyvm/busybox:cri-test";
/// What the app image's `/www/index.html` says.
pub const WEB_MARKER: &str = "lazyvm-cri-web-ok";
/// The port the test web servers listen on.
pub const WEB_PORT: u16 = 8080;
/// The bound on one CRI call (a pod start boots a VM under TCG, maybe twice).
pub const CALL_SECS: u64 = 150;
/// The runtime handler names in the CRI config.
pub const LAZYVM: &str = "lazyvm";
pub const RUNC: &str = "runc";

/// Applets linked in the app image beyond the common busybox rootfs's.
const MORE_APPLETS: &[&str] = &[
    "httpd", "nc", "ip", "wget", "ifconfig", "sysctl", "grep", "ps", "route", "env", "uname",
    "sed", "seq", "awk", "ls", "mkdir", "rm", "readlink", "stat", "find", "xargs",
];

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs `fut`, panicking with `what` if it takes longer than `secs` seconds.
pub async fn within<T>(what: &str, secs: u64, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {secs} s"),
    }
}

/// Polls `check` every 200 ms until it holds or `secs` pass.
pub async fn eventually(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The busybox rootfs of the app image: the common one plus [`MORE_APPLETS`], a web root
/// and the account files the CRI reads.
pub fn app_rootfs(dir: &Path) -> PathBuf {
    let root = busybox_rootfs(dir);
    for applet in MORE_APPLETS {
        let link = root.join("bin").join(applet);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
    std::fs::create_dir_all(root.join("www")).unwrap();
    std::fs::write(root.join("www/index.html"), format!("{WEB_MARKER}\n")).unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::create_dir_all(root.join("root")).unwrap();
    root
}

/// A pod the test started.
#[derive(Clone, Debug)]
pub struct Pod {
    pub id: String,
    pub handler: String,
    pub config: PodSandboxConfig,
    pub log_dir: PathBuf,
}

impl Pod {
    /// The lazyvm agent's footprint, asked over the pod's own agent channel (a second
    /// hybrid-vsock connection beside the shim's): `(VmRSS kB, open fds, processes
    /// tracked)`.
    pub async fn agent_footprint(&self) -> (u64, u32, u32) {
        let uds = self.sandbox_dir().join("vsock.sock");
        let agent = lazyvm::agent::AgentClient::connect(
            &uds,
            lazyvm_proto::AGENT_VSOCK_PORT,
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| panic!("connecting to the agent of {}: {e}", self.id));
        let (rss, fds, procs) = agent.footprint().await.unwrap();
        (rss / 1024, fds, procs)
    }

    /// lazyvm's sandbox directory for this pod (`/run/lazyvm/<key>`).
    pub fn sandbox_dir(&self) -> PathBuf {
        lazyvm::sandbox::sandbox_dir(Path::new(lazyvm::sandbox::RUN_DIR), &self.id)
    }

    /// The QEMU processes of this pod (their command lines name its sandbox directory).
    pub fn qemu_pids(&self) -> Vec<u32> {
        processes_mentioning(&self.sandbox_dir())
            .into_iter()
            .filter(|p| comm(*p).is_some_and(|c| c.starts_with("qemu-system")))
            .collect()
    }
}

/// The command name of process `pid`.
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_string())
}

/// A private containerd with the CRI plugin, its own netns, CNI network and images.
pub struct CriEnv {
    /// Everything on disk: containerd's root and state, CNI config and IPAM data, images,
    /// pod logs.
    pub dir: PathBuf,
    /// The network namespace (under /var/run/netns) of containerd and the CNI bridge.
    pub netns: String,
    /// The CNI bridge (in [`Self::netns`]).
    pub bridge: String,
    /// The CNI network name.
    pub network: String,
    /// The pods' subnet, e.g. `10.88.3.0/24`, and its first three octets.
    pub subnet: String,
    pub subnet_prefix: String,
    /// containerd's gRPC socket.
    pub socket: PathBuf,
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
    containerd: Option<Child>,
    /// The registry and the snapshotter, when started with [`Self::start_lazy`].
    pub lazy: Option<LazyPull>,
    /// Pod ids (and their netns paths once known) seen by this fixture, for cleanup.
    pods: Mutex<Vec<(String, Option<PathBuf>)>>,
    tmp: Option<tempfile::TempDir>,
}

impl CriEnv {
    /// Sets everything up: netns, CNI config, containerd (in the netns) with the CRI plugin
    /// and the `lazyvm` and `runc` handlers, the images; waits until the CRI reports the
    /// runtime and the network ready and knows both images.
    pub async fn start() -> CriEnv {
        CriEnv::start_with(None).await
    }

    /// [`Self::start`] with a registry (127.0.0.1:5000 in the env's netns) and
    /// lazyvm-snapshotter as the CRI's snapshotter, `credentials` in its config if given.
    pub async fn start_lazy(credentials: Option<(&str, &str)>) -> CriEnv {
        CriEnv::start_with(Some(LazyOptions {
            credentials,
            ..Default::default()
        }))
        .await
    }

    /// [`Self::start_lazy`] with every option.
    pub async fn start_lazy_with(options: LazyOptions<'_>) -> CriEnv {
        CriEnv::start_with(Some(options)).await
    }

    async fn start_with(lazy: Option<LazyOptions<'_>>) -> CriEnv {
        assert!(
            rustix::process::geteuid().is_root(),
            "the CRI tests need root (network namespaces, containerd)"
        );
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tmp = tempfile::Builder::new().prefix("lzcri").tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let netns = format!("lzcri-{pid}-{n}");
        let bridge = format!("lzbr{}{n}", pid % 10_000_000);
        let network = format!("lzcri-{pid}-{n}");
        let subnet_prefix = format!("10.88.{}", n % 250);
        let subnet = format!("{subnet_prefix}.0/24");
        let socket = dir.join("containerd.sock");
        let mut env = CriEnv {
            dir: dir.clone(),
            netns: netns.clone(),
            bridge,
            network,
            subnet,
            subnet_prefix,
            socket: socket.clone(),
            // Placeholders until containerd answers (a lazy channel connects on first use).
            runtime: RuntimeServiceClient::new(
                tonic::transport::Endpoint::from_static("http://[::]").connect_lazy(),
            ),
            images: ImageServiceClient::new(
                tonic::transport::Endpoint::from_static("http://[::]").connect_lazy(),
            ),
            containerd: None,
            lazy: None,
            pods: Mutex::new(Vec::new()),
            tmp: Some(tmp),
        };
        // From here on, Drop cleans up whatever was made.
        run(Command::new("ip").args(["netns", "add", &netns]));
        run(Command::new("ip").args(["-n", &netns, "link", "set", "lo", "up"]));
        env.write_cni_config();
        if let Some(options) = lazy {
            env.lazy = Some(LazyPull {
                registry: Registry::start(&netns, &dir.join("registry"), options.registry_storage),
                snapshotter: Snapshotter::start(&dir.join("snapshotter"), options.credentials),
            });
        }
        env.spawn_containerd();
        let channel = env.wait_for_containerd().await;
        env.runtime = RuntimeServiceClient::new(channel.clone());
        env.images = ImageServiceClient::new(channel);
        env.import_images();
        env.wait_for_cri().await;
        env
    }

    fn write_cni_config(&self) {
        let conf_dir = self.dir.join("cni/net.d");
        std::fs::create_dir_all(&conf_dir).unwrap();
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.network,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": self.dir.join("cni/ipam"),
                        "ranges": [[{"subnet": self.subnet}]],
                        "routes": [{"dst": "0.0.0.0/0"}]
                    }
                },
                {"type": "loopback"}
            ]
        });
        std::fs::write(
            conf_dir.join("10-lzcri.conflist"),
            serde_json::to_vec_pretty(&conflist).unwrap(),
        )
        .unwrap();
    }

    /// The containerd configuration: CRI enabled, `lazyvm` (no options table) and `runc`
    /// handlers, CNI from /usr/lib/cni with our conflist. Version 2 for containerd 1.x,
    /// version 3 (the CRI split into `io.containerd.cri.v1.images` and `.runtime`) for 2.x.
    fn containerd_config(&self) -> String {
        let d = &self.dir;
        let (version, images, runtime, server) = if crate::common::containerd_bin().major >= 2 {
            (
                3,
                r#"plugins."io.containerd.cri.v1.images".pinned_images"#,
                r#"plugins."io.containerd.cri.v1.runtime""#,
                r#"plugins."io.containerd.grpc.v1.cri""#,
            )
        } else {
            let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
            (2, cri, cri, cri)
        };
        // Version 2 keeps everything in one CRI table; version 3 names the pause image
        // `sandbox` where version 2 says `sandbox_image`.
        let pause_key = if version >= 3 {
            "sandbox"
        } else {
            "sandbox_image"
        };
        let level = if std::env::var_os("LAZYVM_CRI_DEBUG").is_some() {
            "debug"
        } else {
            "info"
        };
        // The lazy-pull setup: our snapshotter for every image (the pause image too), with
        // the layer labels it needs, and the registry's hosts.toml.
        let (snapshotter_keys, registry_table, proxy) = match &self.lazy {
            Some(l) => {
                let certs = d.join("certs.d");
                let host_dir = certs.join(REGISTRY);
                std::fs::create_dir_all(&host_dir).unwrap();
                std::fs::write(
                    host_dir.join("hosts.toml"),
                    format!("server = \"http://{REGISTRY}\"\n[host.\"http://{REGISTRY}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
                )
                .unwrap();
                (
                    format!("  snapshotter = \"{SNAPSHOTTER}\"\n  disable_snapshot_annotations = false\n"),
                    format!("[{images}.registry]\n  config_path = \"{}\"\n", certs.display()),
                    format!(
                        "[proxy_plugins.{SNAPSHOTTER}]\n  type = \"snapshot\"\n  address = \"{}\"\n",
                        l.snapshotter.socket.display()
                    ),
                )
            }
            None => Default::default(),
        };
        // Version 2 has the snapshotter in the CRI's `containerd` table, version 3 in the
        // images plugin.
        let (images_keys, containerd_keys) = if version >= 3 {
            (snapshotter_keys, String::new())
        } else {
            (String::new(), snapshotter_keys)
        };
        let tables = [
            (
                images,
                format!("  {pause_key} = \"{PAUSE_IMAGE}\"\n{images_keys}"),
            ),
            (
                server,
                "  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n".into(),
            ),
            (
                runtime,
                format!(
                    r#"  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  [{runtime}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
  [{runtime}.containerd]
    default_runtime_name = "runc"
{containerd_keys}    [{runtime}.containerd.runtimes.lazyvm]
      runtime_type = "io.containerd.lazyvm.v2"
      pod_annotations = ["io.lazyvm.*"]
    [{runtime}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{runtime}.containerd.runtimes.runc.options]
        Root = "{runc_root}"
"#,
                    cni_conf = d.join("cni/net.d").display(),
                    runc_root = self.runc_root().display(),
                ),
            ),
        ];
        // A table's header is written when it changes: in version 2 the three are one.
        let mut body = String::new();
        let mut open = "";
        for (table, keys) in tables {
            if table != open {
                body += &format!("[{table}]\n");
                open = table;
            }
            body += &keys;
        }
        body += &registry_table;
        body += &proxy;
        format!(
            r#"version = {version}
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  level = "{level}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
{body}"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = self.socket.display(),
            opt = d.join("opt").display(),
        )
    }

    fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }

    /// containerd, spawned through `nsenter --net` (not `ip netns exec`, which remounts
    /// /sys and hides the cgroup v1 mounts); nsenter execs it, so the child's pid is
    /// containerd's.
    fn spawn_containerd(&mut self) {
        let config = self.dir.join("containerd.toml");
        std::fs::write(&config, self.containerd_config()).unwrap();
        let lazyvm_config = self.dir.join("lazyvm.toml");
        let guest = std::env::var_os("LAZYVM_GUEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("build/guest"));
        write_config(&lazyvm_config, &guest);
        let bin = crate::common::containerd_bin();
        let path = bin.search_path(&crate::common::shim_dir());
        // Appended to: a restarted containerd writes after the first one's lines.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.netns))
            .arg(bin.path("containerd"))
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env("LAZYVM_CONFIG", &lazyvm_config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd in the test netns (make deps installs it)");
        self.containerd = Some(child);
    }

    /// Stops containerd with `sig` (its shims and pods keep running), waits for it to
    /// exit, leaves it down for `down`, starts it again on the same root, state and
    /// socket, and waits until its CRI is ready.
    pub async fn restart_containerd(&mut self, sig: nix::sys::signal::Signal, down: Duration) {
        let mut child = self.containerd.take().expect("containerd is running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig)
            .expect("signalling containerd");
        let _ = child.wait();
        tokio::time::sleep(down).await;
        self.spawn_containerd();
        let channel = self.wait_for_containerd().await;
        self.runtime = RuntimeServiceClient::new(channel.clone());
        self.images = ImageServiceClient::new(channel);
        self.wait_for_cri().await;
    }

    /// ListContainers: every container's id and state.
    pub async fn list_containers(&self) -> Vec<(String, ContainerState)> {
        let mut runtime = self.runtime.clone();
        within(
            "ListContainers",
            CALL_SECS,
            runtime.list_containers(k8s_cri::v1::ListContainersRequest::default()),
        )
        .await
        .unwrap_or_else(|e| panic!("ListContainers: {e}"))
        .into_inner()
        .containers
        .into_iter()
        .map(|c| {
            let state =
                ContainerState::try_from(c.state).unwrap_or(ContainerState::ContainerUnknown);
            (c.id, state)
        })
        .collect()
    }

    /// containerd's pid (nsenter execs it), while it runs.
    pub fn containerd_pid(&self) -> Option<u32> {
        self.containerd.as_ref().map(|c| c.id())
    }

    /// containerd's log (the shims' logs land there too).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    async fn wait_for_containerd(&mut self) -> Channel {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = self.containerd.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "containerd exited ({status}):\n{}",
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            if self.socket.exists() {
                if let Ok(Ok(ch)) = tokio::time::timeout(
                    Duration::from_secs(5),
                    containerd_client::connect(&self.socket),
                )
                .await
                {
                    return ch;
                }
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                std::fs::read_to_string(self.log_path()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `ctr` against this containerd in namespace k8s.io, bounded in time.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("timeout")
            .arg("120")
            .arg(crate::common::containerd_bin().path("ctr"))
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", K8S_NS])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn import_images(&self) {
        let snapshotter = match self.lazy {
            Some(_) => format!("--snapshotter={SNAPSHOTTER}"),
            None => "--snapshotter=overlayfs".to_string(),
        };
        let img = self.dir.join("images");
        let rootfs = app_rootfs(&img);
        for (name, cmd, file) in [
            (PAUSE_IMAGE, &["/bin/sleep", "2147483647"][..], "pause.tar"),
            (APP_IMAGE, &["sh"][..], "app.tar"),
        ] {
            let archive = img.join(file);
            oci_image_archive_cmd(&rootfs, name, cmd, &archive);
            let out = self.ctr(&["images", "import", &snapshotter, archive.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "ctr images import {name}: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
    }

    /// Waits until the CRI says RuntimeReady and NetworkReady and knows both images.
    async fn wait_for_cri(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let last;
            let mut runtime = self.runtime.clone();
            let ready =
                match within("CRI Status", 30, runtime.status(StatusRequest::default())).await {
                    Ok(r) => {
                        let conds = r
                            .into_inner()
                            .status
                            .map(|s| s.conditions)
                            .unwrap_or_default();
                        last = format!("{conds:?}");
                        ["RuntimeReady", "NetworkReady"]
                            .iter()
                            .all(|t| conds.iter().any(|c| c.r#type == *t && c.status))
                    }
                    Err(e) => {
                        last = e.to_string();
                        false
                    }
                };
            let mut have_images = true;
            for image in [PAUSE_IMAGE, APP_IMAGE] {
                let mut images = self.images.clone();
                let st = within(
                    "CRI ImageStatus",
                    30,
                    images.image_status(ImageStatusRequest {
                        image: Some(ImageSpec {
                            image: image.into(),
                            ..Default::default()
                        }),
                        verbose: false,
                    }),
                )
                .await;
                have_images &= st.is_ok_and(|s| s.into_inner().image.is_some());
            }
            if ready && have_images {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the CRI is not ready (images known: {have_images}): {last}\n{}",
                std::fs::read_to_string(self.log_path()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A pod configuration as the kubelet sends it by default: hostname, DNS config, log
    /// directory, cgroup parent, pod-scoped network and IPC, container-scoped PID,
    /// unconfined seccomp.
    pub fn pod_config(&self, name: &str) -> PodSandboxConfig {
        let log_dir = self.dir.join("pods").join(name);
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}-{}", std::process::id()),
                namespace: "lzcri".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_dir.display().to_string(),
            dns_config: Some(DnsConfig {
                servers: vec![format!("{}.53", self.subnet_prefix)],
                searches: vec!["lzcri.example".into(), "svc.lzcri.example".into()],
                options: vec!["ndots:2".into()],
            }),
            labels: [("app".to_string(), name.to_string())].into(),
            linux: Some(LinuxPodSandboxConfig {
                // As the kubelet's cgroupfs driver does (`/kubepods/besteffort/pod<uid>`),
                // under a parent of this env's own, removed on drop.
                cgroup_parent: format!("/{}/pod-{name}", self.network),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces(NamespaceMode::Container)),
                    seccomp: Some(unconfined()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox with `config` under `handler`; records the pod for cleanup.
    pub async fn run_pod_with(
        &self,
        config: PodSandboxConfig,
        handler: &str,
    ) -> Result<Pod, tonic::Status> {
        let log_dir = PathBuf::from(&config.log_directory);
        // The kubelet makes the log directory; the CRI does not.
        std::fs::create_dir_all(&log_dir).unwrap();
        let mut runtime = self.runtime.clone();
        let id = within(
            "RunPodSandbox",
            CALL_SECS,
            runtime.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.into(),
            }),
        )
        .await?
        .into_inner()
        .pod_sandbox_id;
        self.pods.lock().unwrap().push((id.clone(), None));
        let pod = Pod {
            id,
            handler: handler.into(),
            config,
            log_dir,
        };
        // Remember the pod's netns for cleanup, should containerd not get to it.
        if let Some(ns) = self.pod_netns(&pod).await {
            for p in self.pods.lock().unwrap().iter_mut() {
                if p.0 == pod.id {
                    p.1 = Some(ns.clone());
                }
            }
        }
        Ok(pod)
    }

    /// RunPodSandbox of [`Self::pod_config`]`(name)`; panics on failure.
    pub async fn run_pod(&self, name: &str, handler: &str) -> Pod {
        let config = self.pod_config(name);
        self.run_pod_with(config, handler)
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox {name} ({handler}): {e}"))
    }

    /// PodSandboxStatus (verbose).
    pub async fn pod_status(&self, pod: &Pod) -> PodSandboxStatusResponse {
        let mut runtime = self.runtime.clone();
        within(
            "PodSandboxStatus",
            30,
            runtime.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.id.clone(),
                verbose: true,
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("PodSandboxStatus {}: {e}", pod.id))
        .into_inner()
    }

    /// The pod's IP as the CRI reports it.
    pub async fn pod_ip(&self, pod: &Pod) -> String {
        let st = self.pod_status(pod).await;
        let ip = st
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        assert!(!ip.is_empty(), "pod {} has no IP", pod.id);
        ip
    }

    /// The pod's network namespace path, from the sandbox's runtime spec in the verbose
    /// status.
    pub async fn pod_netns(&self, pod: &Pod) -> Option<PathBuf> {
        let st = self.pod_status(pod).await;
        let info: serde_json::Value = serde_json::from_str(st.info.get("info")?).ok()?;
        info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()?
            .iter()
            .find(|n| n["type"] == "network")?["path"]
            .as_str()
            .map(PathBuf::from)
    }

    /// The verbose status's `info` JSON of the pod.
    pub async fn pod_info(&self, pod: &Pod) -> serde_json::Value {
        let st = self.pod_status(pod).await;
        st.info
            .get("info")
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or_default()
    }

    /// A container configuration as the kubelet sends it: `command`, log path
    /// `<name>.log`, BestEffort resources as the kubelet sets them with its default CPU CFS
    /// quota on (period 100000 µs and no quota, 2 CPU shares, oom_score_adj 1000),
    /// unconfined seccomp; `pid` is its PID namespace mode.
    pub fn container_config(
        &self,
        name: &str,
        command: &[&str],
        pid: NamespaceMode,
    ) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: APP_IMAGE.into(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            envs: vec![KeyValue {
                key: "LZCRI_CONTAINER".into(),
                value: name.into(),
            }],
            log_path: format!("{name}.log"),
            linux: Some(LinuxContainerConfig {
                resources: Some(LinuxContainerResources {
                    cpu_period: 100_000,
                    cpu_shares: 2,
                    oom_score_adj: 1000,
                    ..Default::default()
                }),
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces(pid)),
                    seccomp: Some(unconfined()),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    /// CreateContainer of `config` in `pod`.
    pub async fn create_container_with(
        &self,
        pod: &Pod,
        config: ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let mut runtime = self.runtime.clone();
        Ok(within(
            "CreateContainer",
            CALL_SECS,
            runtime.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            }),
        )
        .await?
        .into_inner()
        .container_id)
    }

    /// PullImage `image` through the CRI: its image id.
    pub async fn pull_image(&self, image: &str) -> Result<String, tonic::Status> {
        let mut images = self.images.clone();
        Ok(within(
            "PullImage",
            CALL_SECS,
            images.pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )
        .await?
        .into_inner()
        .image_ref)
    }

    /// RemoveImage `image` through the CRI; panics on failure.
    pub async fn remove_image(&self, image: &str) {
        let mut images = self.images.clone();
        within(
            "RemoveImage",
            CALL_SECS,
            images.remove_image(RemoveImageRequest {
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("RemoveImage {image}: {e}"));
    }

    /// Waits until container `cid` has exited; its status then.
    pub async fn wait_exited(&self, cid: &str, secs: u64) -> ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let st = self.container_status(cid).await;
            if st.state == ContainerState::ContainerExited as i32 {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{cid} did not exit within {secs} s: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// CreateContainer `name` running `command` in `pod`; panics on failure.
    pub async fn create_container(&self, pod: &Pod, name: &str, command: &[&str]) -> String {
        let config = self.container_config(name, command, NamespaceMode::Container);
        self.create_container_with(pod, config)
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"))
    }

    /// StartContainer `cid`; panics on failure.
    pub async fn start_container(&self, cid: &str) {
        self.try_start_container(cid)
            .await
            .unwrap_or_else(|e| panic!("StartContainer {cid}: {e}"));
    }

    /// StartContainer `cid`, its error returned.
    pub async fn try_start_container(&self, cid: &str) -> Result<(), tonic::Status> {
        let mut runtime = self.runtime.clone();
        within(
            "StartContainer",
            CALL_SECS,
            runtime.start_container(StartContainerRequest {
                container_id: cid.into(),
            }),
        )
        .await
        .map(|_| ())
    }

    pub async fn container_status(&self, cid: &str) -> ContainerStatus {
        let mut runtime = self.runtime.clone();
        within(
            "ContainerStatus",
            30,
            runtime.container_status(ContainerStatusRequest {
                container_id: cid.into(),
                verbose: false,
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("ContainerStatus {cid}: {e}"))
        .into_inner()
        .status
        .unwrap_or_else(|| panic!("ContainerStatus {cid}: no status"))
    }

    /// The state of container `cid`.
    pub async fn container_state(&self, cid: &str) -> ContainerState {
        ContainerState::try_from(self.container_status(cid).await.state)
            .unwrap_or(ContainerState::ContainerUnknown)
    }

    /// ExecSync of `cmd` in `cid`, bounded by `secs` (in the CRI and here).
    pub async fn exec(
        &self,
        cid: &str,
        cmd: &[&str],
        secs: i64,
    ) -> Result<ExecSyncResponse, tonic::Status> {
        let mut runtime = self.runtime.clone();
        Ok(within(
            &format!("ExecSync {cmd:?}"),
            secs as u64 + 30,
            runtime.exec_sync(ExecSyncRequest {
                container_id: cid.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: secs,
            }),
        )
        .await?
        .into_inner())
    }

    /// ExecSync of `cmd` in `cid` that must exit 0; returns its stdout.
    pub async fn exec_ok(&self, cid: &str, cmd: &[&str]) -> String {
        let r = self
            .exec(cid, cmd, 60)
            .await
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?} in {cid}: {e}"));
        assert_eq!(
            r.exit_code,
            0,
            "ExecSync {cmd:?} in {cid} exited {}: stdout {:?} stderr {:?}",
            r.exit_code,
            text(&r.stdout),
            text(&r.stderr)
        );
        text(&r.stdout)
    }

    /// Runs `cmd` in `cid` until it exits 0 (a server may still be starting); returns its
    /// stdout, or panics with the last failure after `secs`.
    pub async fn exec_until_ok(&self, cid: &str, cmd: &[&str], secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let last = match self.exec(cid, cmd, 20).await {
                Ok(r) if r.exit_code == 0 => return text(&r.stdout),
                Ok(r) => format!(
                    "exit {}: stdout {:?} stderr {:?}",
                    r.exit_code,
                    text(&r.stdout),
                    text(&r.stderr)
                ),
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "ExecSync {cmd:?} in {cid} never succeeded within {secs} s: {last}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub async fn stop_container(&self, cid: &str, timeout: i64) {
        let mut runtime = self.runtime.clone();
        within(
            "StopContainer",
            CALL_SECS,
            runtime.stop_container(StopContainerRequest {
                container_id: cid.into(),
                timeout,
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("StopContainer {cid}: {e}"));
    }

    pub async fn remove_container(&self, cid: &str) {
        let mut runtime = self.runtime.clone();
        within(
            "RemoveContainer",
            CALL_SECS,
            runtime.remove_container(RemoveContainerRequest {
                container_id: cid.into(),
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("RemoveContainer {cid}: {e}"));
    }

    pub async fn stop_pod(&self, pod: &Pod) {
        let mut runtime = self.runtime.clone();
        within(
            "StopPodSandbox",
            CALL_SECS,
            runtime.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox {}: {e}", pod.id));
    }

    pub async fn remove_pod(&self, pod: &Pod) {
        let mut runtime = self.runtime.clone();
        within(
            "RemovePodSandbox",
            CALL_SECS,
            runtime.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox {}: {e}", pod.id));
    }

    /// The ports (veths) attached to the CNI bridge.
    pub fn bridge_ports(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args([
                "-n",
                &self.netns,
                "-o",
                "link",
                "show",
                "master",
                &self.bridge,
            ])
            .output()
            .unwrap();
        text(&out.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .collect()
    }

    /// Whether interface `name` exists in this env's netns.
    pub fn netns_has_link(&self, name: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.netns, "link", "show", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    /// The shim processes of this containerd serving `pod` (their command line names the
    /// socket and the pod id).
    pub fn shim_pids(&self, pod: &Pod) -> Vec<u32> {
        let containerd = self.containerd.as_ref().map(|c| c.id());
        processes_mentioning(&self.socket)
            .into_iter()
            .filter(|p| Some(*p) != containerd)
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| text(&c).contains(&pod.id))
            })
            .collect()
    }

    /// An HTTP GET of `/` at `ip:port` from a thread inside this env's netns (the host's
    /// own network never sees it); retried for up to `secs` while the server starts.
    pub fn http_get_from_netns(&self, ip: &str, port: u16, secs: u64) -> Result<String, String> {
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let netns = PathBuf::from(format!("/var/run/netns/{}", self.netns));
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&netns).map_err(|e| e.to_string())?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns: {e}"))?;
            let deadline = Instant::now() + Duration::from_secs(secs);
            loop {
                let attempt = || -> std::io::Result<String> {
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))?;
                    s.write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")?;
                    let mut out = String::new();
                    s.read_to_string(&mut out)?;
                    Ok(out)
                };
                match attempt() {
                    Ok(out) => return Ok(out),
                    Err(e) if Instant::now() > deadline => {
                        return Err(format!("GET http://{addr}/ from the test netns: {e}"))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(300)),
                }
            }
        })
        .join()
        .unwrap()
    }

    /// Prints what helps to understand a failure: containerd's log (with the shims'),
    /// each pod's guest console, the netns's links and addresses.
    pub fn print_diagnostics(&self) {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!(
            "==== containerd log (last 150 of {} lines; shim logs included) ====",
            lines.len()
        );
        for l in &lines[lines.len().saturating_sub(150)..] {
            eprintln!("{l}");
        }
        for (id, _) in self.pods.lock().map(|p| p.clone()).unwrap_or_default() {
            let dir = lazyvm::sandbox::sandbox_dir(Path::new(lazyvm::sandbox::RUN_DIR), &id);
            match std::fs::read_to_string(dir.join("vm/console.log")) {
                Ok(c) => {
                    let lines: Vec<&str> = c.lines().collect();
                    eprintln!("==== {}/vm/console.log (last 60 lines) ====", dir.display());
                    for l in &lines[lines.len().saturating_sub(60)..] {
                        eprintln!("{l}");
                    }
                }
                Err(_) => eprintln!("==== no {}/vm/console.log ====", dir.display()),
            }
        }
        for args in [&["addr"][..], &["route"][..]] {
            let out = Command::new("ip")
                .args(["-n", &self.netns])
                .args(args)
                .output();
            if let Ok(out) = out {
                eprintln!(
                    "==== ip -n {} {args:?} ====\n{}",
                    self.netns,
                    text(&out.stdout)
                );
            }
        }
    }

    /// Stops and removes every pod the CRI still has, from a thread with a runtime of its
    /// own (Drop may run inside the test's runtime), bounded in time.
    fn remove_remaining_pods(&self) {
        let socket = self.socket.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let cleanup = async {
                    let channel = containerd_client::connect(&socket).await.ok()?;
                    let mut runtime = RuntimeServiceClient::new(channel);
                    let pods = runtime
                        .list_pod_sandbox(ListPodSandboxRequest::default())
                        .await
                        .ok()?
                        .into_inner()
                        .items;
                    for p in pods {
                        eprintln!("cleanup: removing pod {}", p.id);
                        let _ = runtime
                            .stop_pod_sandbox(StopPodSandboxRequest {
                                pod_sandbox_id: p.id.clone(),
                            })
                            .await;
                        let _ = runtime
                            .remove_pod_sandbox(RemovePodSandboxRequest {
                                pod_sandbox_id: p.id,
                            })
                            .await;
                    }
                    Some(())
                };
                let _ = tokio::time::timeout(Duration::from_secs(90), cleanup).await;
            });
        })
        .join();
    }
}

impl Drop for CriEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_diagnostics();
        }
        let containerd_pid = self.containerd.as_ref().map(|c| c.id());
        if containerd_pid.is_some() && self.socket.exists() {
            self.remove_remaining_pods();
        }
        // Whatever is still running: containers of runc (killed through runc, the shims do
        // not take them along), then the shims of this containerd, then what lazyvm
        // sandboxes recorded.
        let runc_ns_root = self.runc_root().join(K8S_NS);
        if let Ok(entries) = std::fs::read_dir(&runc_ns_root) {
            for e in entries.flatten() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&runc_ns_root)
                    .args(["delete", "--force"])
                    .arg(e.file_name())
                    .output();
            }
        }
        for pid in processes_mentioning(&self.socket) {
            if Some(pid) != containerd_pid {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let pods = self.pods.lock().map(|p| p.clone()).unwrap_or_default();
        for (id, _) in &pods {
            let dir = lazyvm::sandbox::sandbox_dir(Path::new(lazyvm::sandbox::RUN_DIR), id);
            if dir.exists() {
                eprintln!("cleanup: {} was left behind", dir.display());
                lazyvm::sandbox::kill_recorded(&dir);
                let _ = lazyvm::mounts::remove_dir_unmounted(&dir);
            }
        }
        if let Some(mut child) = self.containerd.take() {
            crate::common::registry::stop(&mut child);
        }
        // The snapshotter and the registry, once containerd no longer calls them.
        drop(self.lazy.take());
        // Pod netns containerd did not get to remove.
        for (_, ns) in &pods {
            if let Some(ns) = ns {
                if ns.exists() {
                    eprintln!("cleanup: pod netns {} was left behind", ns.display());
                    let _ = nix::mount::umount2(ns, nix::mount::MntFlags::MNT_DETACH);
                    let _ = std::fs::remove_file(ns);
                }
            }
        }
        // CNI state outside our directory: host-local's default store (we set dataDir, but
        // remove it should a plugin use it) and libcni's result cache.
        let _ = std::fs::remove_dir_all(Path::new("/var/lib/cni/networks").join(&self.network));
        for cache in ["/var/lib/cni/results", "/var/lib/cni/cache/results"] {
            if let Ok(entries) = std::fs::read_dir(cache) {
                for e in entries.flatten() {
                    if e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{}-", self.network))
                    {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
        let _ = Command::new("ip")
            .args(["-n", &self.netns, "link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        // The pods' cgroup parents (runc makes them in every v1 hierarchy of the host).
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                remove_cgroup_tree(&h.path().join(&self.network));
            }
        }
        // Snapshots and the sandbox shm stay mounted under the root after containerd exits.
        let _ = lazyvm::mounts::unmount_all_under(&self.dir);
        if let Some(tmp) = self.tmp.take() {
            if std::env::var_os("LAZYVM_CRI_KEEP").is_some() {
                eprintln!("keeping {}", tmp.keep().display());
            } else {
                let _ = tmp.close();
            }
        }
    }
}

/// Removes the (empty) cgroup directory `dir` and the ones below it, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Namespace options as the kubelet sets them: pod network and IPC, `pid` for PID.
pub fn namespaces(pid: NamespaceMode) -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: pid as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

fn unconfined() -> SecurityProfile {
    SecurityProfile {
        profile_type: ProfileType::Unconfined as i32,
        localhost_ref: String::new(),
    }
}

/// The lines of a CRI log file (`<time> <stream> <P|F> <text>`) from `stream`, text only.
pub fn cri_log_lines(path: &Path, stream: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(4, ' ');
            let (_time, s, _tag, rest) = (f.next()?, f.next()?, f.next()?, f.next()?);
            (s == stream).then(|| rest.to_string())
        })
        .collect()
}
