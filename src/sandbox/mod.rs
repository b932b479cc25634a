//! One pod: nydusd (virtio-fs), vhost-device-vsock, QEMU and the agent client, and the
//! containers in it.
//!
//! Start order (DESIGN.md): nydusd → ready → passthrough mount of the shared directory →
//! vhost-device-vsock → QEMU → agent health → CreateSandbox. Stop order: DestroySandbox →
//! QEMU quit → vhost-device-vsock → nydusd → unmount → remove the sandbox directory. A
//! failed step rolls back the ones before it. A helper process dying on its own fails the
//! sandbox: [`Sandbox::failed`] resolves with the reason.

pub mod confine;
pub mod pod;
pub mod spec;
mod warm;

pub use warm::{Handoff, HELPERS_LOG};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::agent::{AgentClient, AgentError, ReadySignal, Storage};
use crate::beneath::{Beneath, BeneathError, BindOptions, BindSource};
use crate::config::Config;
use crate::hypervisor::qemu::console_tail;
use crate::hypervisor::qemu::VmUser;
use crate::hypervisor::{Qemu, QemuError, VhostVsock, VmFiles, VsockError};
use crate::mounts::{self, MountError};
use crate::network::{NetworkError, ParkedTap, PodNetwork};
use crate::nydusd::{self, DaemonConfig, DaemonError, LogLevel, Mode, MountpointError, Nydusd};
use crate::process::OnExit;
use crate::rootfs::ExtraOption;

/// Where sandboxes keep their sockets, logs and shared directories.
pub const RUN_DIR: &str = "/run/lazyvm";
/// Where the guest mounts the virtio-fs share.
pub const GUEST_SHARED: &str = "/run/lazyvm/shared";
/// Where the guest builds container root filesystems.
pub const GUEST_CONTAINERS: &str = "/run/lazyvm/containers";
/// How long the guest may take to boot until its agent answers (per attempt).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times the VM is booted before the sandbox start fails. The second boot is for
/// a cause outside lazyvm: vhost-device-vsock 0.3.0 sometimes stops delivering packets
/// to or from a guest whose agent listens (see [`READY_GRACE`]).
const BOOT_ATTEMPTS: u32 = 2;
/// What the agent prints on the console once it listens on vsock.
const AGENT_READY_LINE: &str = "agent ready on vsock:";
/// How long the channel may stay silent after the agent said it listens: the answer to
/// a handshake comes from the guest's kernel at once. Past this, the VM is booted again:
/// vhost-device-vsock 0.3.0 sometimes stops delivering packets (3 VMs in 200 booted 10 at
/// a time), and only a fresh VM and daemon recover.
const READY_GRACE: Duration = Duration::from_secs(10);
const DESTROY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest sandbox directory name that keeps every socket path within `sun_path`.
const MAX_KEY_LEN: usize = 64;

/// Why a sandbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// An id that cannot name a container.
    #[error(transparent)]
    ContainerId(#[from] MountpointError),
    /// The sandbox directory already exists: another sandbox has this id.
    #[error("sandbox directory {0:?} already exists (is a sandbox with this id running?)")]
    Exists(PathBuf),
    /// A container with this id exists already.
    #[error("container {0:?} already exists in this sandbox")]
    ContainerExists(String),
    /// No such container.
    #[error("container {0:?} does not exist in this sandbox")]
    NoContainer(String),
    /// The sandbox is stopped or was never fully started.
    #[error("the sandbox is not running")]
    NotRunning,
    /// A host directory could not be made.
    #[error("creating {path:?}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// nydusd failed.
    #[error("nydusd: {0}")]
    Nydusd(#[from] DaemonError),
    /// vhost-device-vsock failed.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// QEMU failed.
    #[error(transparent)]
    Qemu(#[from] QemuError),
    /// The agent failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The guest never answered: its console tells why.
    #[error("{source}; the guest console's last lines:\n{console}")]
    AgentUnreachable {
        /// The connect error.
        source: AgentError,
        /// The end of the guest console log.
        console: String,
    },
    /// A nydus image's bootstrap file is missing.
    #[error("the nydus image's bootstrap (extraoption source) {0:?} does not exist")]
    Bootstrap(PathBuf),
    /// A nydus snapshot directory is missing.
    #[error("the nydus snapshot directory (extraoption snapshotdir) {0:?} does not exist")]
    Snapshotdir(PathBuf),
    /// nydusd refused the RAFS mount.
    #[error("mounting the nydus image at {0}: {1}")]
    RafsMount(String, #[source] Box<nydusd::ClientError>),
    /// The OCI spec could not be encoded.
    #[error("encoding the OCI spec: {0}")]
    Spec(String),
    /// A host mount failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// A path in the shared tree was refused (a symlink, a mount point) or failed.
    #[error("shared directory: {0}")]
    Shared(#[from] BeneathError),
    /// The pod's network could not be connected to the VM.
    #[error("pod network: {0}")]
    Network(#[from] NetworkError),
    /// An app container arrived before its pod's sandbox container.
    #[error(
        "container {0:?} is a pod's app container, but the pod has no sandbox container in this VM"
    )]
    NoPodSandbox(String),
    /// A VM from the cache could not be taken over.
    #[error("taking over a VM from the cache: {0}")]
    Claim(String),
}

impl SandboxError {
    /// Whether the error is the caller's input (a bad id or image reference), not a
    /// failure of the runtime.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            SandboxError::ContainerId(_)
                | SandboxError::ContainerExists(_)
                | SandboxError::Bootstrap(_)
                | SandboxError::Snapshotdir(_)
                | SandboxError::NoPodSandbox(_)
        )
    }
}

/// How long each phase of the sandbox start took.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StartTimings {
    /// nydusd spawn → `RUNNING` (with the shared directory mounted).
    pub nydusd_ready: Duration,
    /// QEMU spawn → the agent answered its health check.
    pub vm_boot: Duration,
    /// The whole start, up to CreateSandbox done.
    pub total: Duration,
    /// The VM came booted from the VM cache ([`crate::vmcache`]): `vm_boot` is then the
    /// takeover, up to the agent's answer.
    pub cached: bool,
}

/// What a sandbox is made from.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// The sandbox id (the pod's, or the only container's).
    pub id: String,
    /// The guest hostname.
    pub hostname: String,
    /// The runtime configuration.
    pub config: Config,
    /// Parent of the sandbox directory (default [`RUN_DIR`]).
    pub run_dir: PathBuf,
    /// The pod's network namespace (made by the CRI, with CNI's interfaces in it), to
    /// connect to the VM; `None`: the VM has no network card.
    pub netns: Option<PathBuf>,
    /// Size of the pod's `/dev/shm` tmpfs in the guest, bytes; 0: the agent's default
    /// (64 MiB, as containerd's).
    pub shm_size: u64,
}

impl SandboxSpec {
    /// A sandbox `id` with hostname `id` under [`RUN_DIR`].
    pub fn new(id: &str, config: Config) -> Self {
        SandboxSpec {
            id: id.to_string(),
            hostname: id.chars().take(63).collect(),
            config,
            run_dir: PathBuf::from(RUN_DIR),
            netns: None,
            shm_size: 0,
        }
    }
}

/// A container's root filesystem as the sandbox gets it.
#[derive(Debug, Clone)]
pub enum Rootfs {
    /// A host directory, shared through virtio-fs (binds it into the shared directory).
    HostDir(PathBuf),
    /// A nydus image: its RAFS is mounted by nydusd at `/rafs/<cid>/lowerdir`, the
    /// snapshot directory is shared, and the guest builds the overlay.
    Nydus {
        /// The decoded `extraoption`.
        extra: ExtraOption,
        /// Files nydusd prefetches after mounting.
        prefetch_files: Vec<String>,
    },
}

/// What creating a container took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Created {
    /// The guest pid of the container's init process.
    pub pid: u32,
    /// How long nydusd took to mount the RAFS image (nydus rootfs only).
    pub rafs_mount: Option<Duration>,
    /// The whole create, mounts included.
    pub total: Duration,
}

/// What a container holds on the host, to undo on removal.
#[derive(Debug)]
struct Holdings {
    /// Its directory in the private tree (`<private>/<cid>`).
    host_dir: PathBuf,
    rafs: Option<String>,
}

/// Kills a sandbox's helpers: see [`Sandbox::kill_switch`].
#[derive(Debug, Default)]
pub struct KillSwitch(Vec<crate::process::KillHandle>);

impl KillSwitch {
    /// SIGKILLs every helper still running.
    pub fn kill(&self) {
        for h in &self.0 {
            h.kill();
        }
    }
}

/// A running sandbox.
#[derive(Debug)]
pub struct Sandbox {
    id: String,
    dir: PathBuf,
    /// Where the host makes the containers' directories and binds (`<dir>/private`).
    private: PathBuf,
    /// The guest's read-only view of `private` (`<dir>/shared`), served by nydusd.
    shared: PathBuf,
    /// `private`, held open: every operation in it goes through here.
    host: Option<Beneath>,
    /// Who QEMU runs as (`None`: root).
    vm_user: Option<VmUser>,
    nydusd: Option<Nydusd>,
    vsock: Option<VhostVsock>,
    qemu: Option<Qemu>,
    agent: Option<AgentClient>,
    containers: BTreeMap<String, Holdings>,
    /// The pod's sandbox (pause) container, whose namespaces app containers join.
    pod_sandbox: Option<String>,
    network: Option<PodNetwork>,
    /// A VM of the cache: the tap of its NIC, waiting for a pod.
    parked: Option<ParkedTap>,
    failed: watch::Receiver<Option<String>>,
    timings: StartTimings,
    console_follower: Option<tokio::task::JoinHandle<()>>,
}

/// The sockets and files in a sandbox directory, each made owner-only once the VM is up
/// (QEMU's own, the QMP socket and the console log, are in [`confine::VM_DIR`]).
pub const SANDBOX_FILES: [&str; 5] = [
    "nydusd-api.sock",
    "vhost-fs.sock",
    "vhost-vsock.sock",
    "vsock.sock",
    PIDS_FILE,
];

/// The directory name of sandbox `id`: the id itself when it is short and plain, else a
/// stable hash of it (socket paths must fit `sun_path`).
pub fn sandbox_key(id: &str) -> String {
    let plain = !id.is_empty()
        && id.len() <= MAX_KEY_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if plain {
        return id.to_string();
    }
    format!("h{:016x}", fnv1a(id))
}

/// FNV-1a, 64 bit: stable across builds (the shim's `delete` recomputes keys with it).
pub(crate) fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Creates directory `dir` for its owner only (mode 0700, whatever the umask): a
/// sandbox directory holds the sandbox's API, QMP and agent sockets.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    // The umask can only have taken bits away: set the mode exactly.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// The sandbox directory of `id` under `run_dir`.
pub fn sandbox_dir(run_dir: &Path, id: &str) -> PathBuf {
    run_dir.join(sandbox_key(id))
}

impl Sandbox {
    /// Starts the sandbox. On failure everything started is stopped and the sandbox
    /// directory is removed.
    ///
    /// A sandbox takes a booted VM from the VM cache when the configuration names one
    /// (`[cache] socket`) and it has one for this configuration (a pod's with the VM's NIC
    /// moved into the pod's network namespace); else, or when the takeover fails, it
    /// boots its own.
    pub async fn start(spec: SandboxSpec) -> Result<Sandbox, SandboxError> {
        if let Some(socket) = &spec.config.cache.socket {
            match crate::vmcache::claim(socket, &spec).await {
                Ok(handoff) => match Sandbox::claim(&spec, handoff).await {
                    Ok(sandbox) => return Ok(sandbox),
                    Err(e) => log::warn!(
                        "sandbox {}: the VM from the cache failed ({e}): booting one",
                        spec.id
                    ),
                },
                Err(e) => log::info!("sandbox {}: no VM from the cache: {e}", spec.id),
            }
        }
        Sandbox::start_at(&spec, sandbox_dir(&spec.run_dir, &spec.id), None).await
    }

    /// Starts the sandbox in directory `dir`, up to CreateSandbox (and the pod network);
    /// with a `parked` tap, a VM for the cache ([`Sandbox::boot_warm`]): only until the
    /// agent answers, its NIC on that tap. On failure everything started is stopped and
    /// `dir` is removed.
    async fn start_at(
        spec: &SandboxSpec,
        dir: PathBuf,
        parked: Option<ParkedTap>,
    ) -> Result<Sandbox, SandboxError> {
        let started = Instant::now();
        std::fs::create_dir_all(&spec.run_dir).map_err(|source| SandboxError::Dir {
            path: spec.run_dir.clone(),
            source,
        })?;
        if let Err(source) = create_private_dir(&dir) {
            return Err(if source.kind() == std::io::ErrorKind::AlreadyExists {
                SandboxError::Exists(dir)
            } else {
                SandboxError::Dir { path: dir, source }
            });
        }
        let (mut sandbox, fail_tx) = Sandbox::empty(&spec.id, dir);
        if spec.config.hypervisor.unprivileged {
            let key = sandbox
                .dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy();
            sandbox.vm_user = confine::vm_user(&spec.run_dir, &key, spec.config.qemu().accel);
        }
        if let Err(source) = confine::prepare(&sandbox.dir, sandbox.vm_user.as_ref()) {
            let e = SandboxError::Dir {
                path: sandbox.dir.clone(),
                source,
            };
            sandbox.teardown().await;
            return Err(e);
        }
        if let Err(e) = sandbox.share() {
            log::warn!("sandbox {} failed to start: {e}", sandbox.id);
            sandbox.teardown().await;
            return Err(e);
        }
        if let Some(netns) = &spec.netns {
            match PodNetwork::setup(netns).await {
                Ok(n) => sandbox.network = Some(n),
                Err(e) => {
                    log::warn!("sandbox {} failed to start: {e}", sandbox.id);
                    sandbox.teardown().await;
                    return Err(e.into());
                }
            }
        }
        sandbox.parked = parked;
        let mut attempt = 1;
        let booted = loop {
            match sandbox.boot(spec, fail_tx.clone()).await {
                Err(e @ SandboxError::AgentUnreachable { .. }) if attempt < BOOT_ATTEMPTS => {
                    log::warn!(
                        "sandbox {}: boot attempt {attempt} failed, booting a fresh VM: {e}",
                        sandbox.id
                    );
                    // Nothing in a VM whose agent never answered needs saving.
                    sandbox.stop_helpers(true).await;
                    attempt += 1;
                }
                other => break other,
            }
        };
        match booted {
            Ok(()) => {
                sandbox.timings.total = started.elapsed();
                log::info!(
                    "sandbox {} ready in {:?} (nydusd {:?}, VM boot to agent {:?})",
                    sandbox.id,
                    sandbox.timings.total,
                    sandbox.timings.nydusd_ready,
                    sandbox.timings.vm_boot
                );
                Ok(sandbox)
            }
            Err(e) => {
                log::warn!("sandbox {} failed to start: {e}", sandbox.id);
                sandbox.teardown().await;
                Err(e)
            }
        }
    }

    /// A sandbox `id` in directory `dir` with nothing started yet, and the sender that
    /// fails it.
    fn empty(id: &str, dir: PathBuf) -> (Sandbox, Arc<watch::Sender<Option<String>>>) {
        let (fail_tx, failed) = watch::channel(None);
        let sandbox = Sandbox {
            id: id.to_string(),
            private: dir.join("private"),
            shared: dir.join("shared"),
            host: None,
            vm_user: None,
            dir,
            nydusd: None,
            vsock: None,
            qemu: None,
            agent: None,
            containers: BTreeMap::new(),
            pod_sandbox: None,
            network: None,
            parked: None,
            failed,
            timings: StartTimings::default(),
            console_follower: None,
        };
        (sandbox, Arc::new(fail_tx))
    }

    /// Makes the private tree and the guest's read-only view of it (see
    /// [`mounts::share_read_only`]).
    fn share(&mut self) -> Result<(), SandboxError> {
        for d in [&self.private, &self.shared] {
            create_private_dir(d).map_err(|source| SandboxError::Dir {
                path: d.clone(),
                source,
            })?;
        }
        mounts::share_read_only(&self.private, &self.shared)?;
        self.host = Some(Beneath::open(&self.private)?);
        Ok(())
    }

    /// nydusd's configuration for this sandbox directory.
    fn nydusd_config(&self, cfg: &Config) -> DaemonConfig {
        let mut nydusd_cfg = DaemonConfig::new(
            &cfg.nydusd.path,
            self.dir.join("nydusd-api.sock"),
            Mode::Virtiofs {
                sock: self.dir.join("vhost-fs.sock"),
            },
        );
        nydusd_cfg.shared_dir = Some(self.shared.clone());
        nydusd_cfg.extra_args = cfg.nydusd.extra_args.clone();
        nydusd_cfg.log_level = if cfg.debug {
            LogLevel::Debug
        } else {
            LogLevel::Info
        };
        nydusd_cfg
    }

    /// The VM's host files in this sandbox directory.
    fn vm_files(&self) -> VmFiles {
        VmFiles {
            vhost_fs: self.dir.join("vhost-fs.sock"),
            vhost_vsock: self.dir.join("vhost-vsock.sock"),
            qmp: self.dir.join(confine::VM_DIR).join("qmp.sock"),
            console: self.console_path(),
            nics: self
                .network
                .iter()
                .flat_map(PodNetwork::nics)
                .chain(self.parked.iter().map(ParkedTap::nic))
                .collect(),
        }
    }

    fn console_path(&self) -> PathBuf {
        self.dir.join(confine::VM_DIR).join("console.log")
    }

    async fn boot(
        &mut self,
        spec: &SandboxSpec,
        fail_tx: Arc<watch::Sender<Option<String>>>,
    ) -> Result<(), SandboxError> {
        let cfg = &spec.config;
        let console = self.console_path();
        let fail = |what: &'static str| exit_hook(&fail_tx, &console, what);
        let nydusd_cfg = self.nydusd_config(cfg);
        let files = self.vm_files();
        let uds = self.dir.join("vsock.sock");
        // The two helpers start together; whichever started is kept (and stopped by the
        // rollback) when the other failed.
        let t = Instant::now();
        let (nydusd, vsock) = tokio::join!(
            async {
                let r = Nydusd::start(nydusd_cfg, Some(fail("nydusd"))).await;
                (r, t.elapsed())
            },
            VhostVsock::start(
                &cfg.vsock.path,
                &files.vhost_vsock,
                &uds,
                Some(fail("vhost-device-vsock")),
            )
        );
        let (nydusd, nydusd_ready) = nydusd;
        self.timings.nydusd_ready = nydusd_ready;
        let nydusd = nydusd.map(|n| self.nydusd = Some(n));
        let vsock = vsock.map(|v| self.vsock = Some(v));
        self.record_pids();
        nydusd?;
        vsock?;
        if let Some(user) = &self.vm_user {
            for sock in [&files.vhost_fs, &files.vhost_vsock] {
                confine::hand_over(sock, user).map_err(|source| SandboxError::Dir {
                    path: sock.clone(),
                    source,
                })?;
            }
        }
        // A VM for the cache: its agent warms crun up while it waits, and its sandbox comes
        // with its claimer.
        let for_cache = self.parked.is_some();
        let mut qemu_cfg = cfg.qemu();
        qemu_cfg.user = self.vm_user.clone();
        if for_cache {
            qemu_cfg
                .kernel_params
                .push(lazyvm_proto::WARM_CMDLINE_FLAG.to_owned());
        }

        // Bound before the VM starts, so the agent's signal cannot come too early.
        let ready = ReadySignal::bind(&uds)
            .map_err(|e| log::warn!("sandbox {}: the agent's ready signal: {e}", self.id))
            .ok();
        let t = Instant::now();
        let qemu = Qemu::start(&qemu_cfg, files, Some(fail("QEMU"))).await?;
        if cfg.debug {
            self.console_follower = Some(tokio::spawn(follow_console(console.clone())));
        }
        self.qemu = Some(qemu);
        self.record_pids();
        let agent = self.connect_agent(&uds, ready).await?;
        self.timings.vm_boot = t.elapsed();
        self.restrict_modes();
        if for_cache {
            return Ok(());
        }
        self.create(agent, spec).await
    }

    /// Sends CreateSandbox (and the pod network) to the VM's agent, which is then ours.
    async fn create(&mut self, agent: AgentClient, spec: &SandboxSpec) -> Result<(), SandboxError> {
        agent.create_sandbox(&spec.hostname, spec.shm_size).await?;
        if let Some(net) = &self.network {
            agent.update_network(net.guest()).await?;
        }
        self.agent = Some(agent);
        Ok(())
    }

    /// Moves the sandbox to directory `dir` (renamed there already), with the paths in it.
    fn moved_to(&mut self, dir: PathBuf) {
        self.private = dir.join("private");
        self.shared = dir.join("shared");
        self.dir = dir;
    }

    /// Sockets and logs the helpers made in the sandbox directory: owner only (0600),
    /// whatever umask they were made with.
    fn restrict_modes(&self) {
        use std::os::unix::fs::PermissionsExt;
        for name in SANDBOX_FILES {
            let path = self.dir.join(name);
            match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("sandbox {}: chmod {}: {e}", self.id, path.display()),
            }
        }
    }

    /// Writes the owner's (this process's) and the helpers' pids, with their start times
    /// so a recycled pid is never taken for ours, to `<dir>/pids`, for a cleanup after the
    /// owner is gone.
    fn record_pids(&self) {
        self.write_pids(std::process::id());
    }

    /// Writes the pids file with `owner` as the owner.
    fn write_pids(&self, owner: u32) {
        let mut lines = format!(
            "{OWNER} {owner} {}\n",
            start_time(owner).unwrap_or_default()
        );
        for pid in self.pids() {
            if let Some(started) = start_time(pid) {
                lines += &format!("helper {pid} {started}\n");
            }
        }
        if let Err(e) = std::fs::write(self.dir.join(PIDS_FILE), lines) {
            log::warn!("sandbox {}: recording pids: {e}", self.id);
        }
    }

    /// Connects to the agent, giving up as soon as QEMU exits, or [`READY_GRACE`] after
    /// the guest's console says its agent listens while the channel still gives no
    /// answer.
    async fn connect_agent(
        &mut self,
        uds: &Path,
        ready: Option<ReadySignal>,
    ) -> Result<AgentClient, SandboxError> {
        let connect = AgentClient::connect_signalled(
            uds,
            lazyvm_proto::AGENT_VSOCK_PORT,
            AGENT_TIMEOUT,
            ready,
        );
        tokio::pin!(connect);
        let console = || {
            self.qemu
                .as_ref()
                .map(Qemu::console_tail)
                .unwrap_or_default()
        };
        let mut ready_at: Option<Instant> = None;
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                r = &mut connect => {
                    return r.map_err(|source| SandboxError::AgentUnreachable {
                        source,
                        console: console(),
                    });
                }
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if let Some(e) = self.qemu.as_ref().and_then(Qemu::exit_error) {
                        return Err(e.into());
                    }
                    ticks += 1;
                    if ready_at.is_none() && ticks.is_multiple_of(10) && console().contains(AGENT_READY_LINE) {
                        ready_at = Some(Instant::now());
                    }
                    if ready_at.is_some_and(|t| t.elapsed() > READY_GRACE) {
                        return Err(SandboxError::AgentUnreachable {
                            source: crate::agent::AgentError::Connect {
                                path: uds.to_path_buf(),
                                timeout: READY_GRACE,
                                last: format!(
                                    "the guest's agent listens, yet the channel gave no answer \
                                     for {READY_GRACE:?} (vhost-device-vsock stopped delivering)"
                                ),
                            },
                            console: console(),
                        });
                    }
                }
            }
        }
    }

    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The sandbox's host directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The start phase timings.
    pub fn timings(&self) -> StartTimings {
        self.timings
    }

    /// The agent client.
    pub fn agent(&self) -> Option<&AgentClient> {
        self.agent.as_ref()
    }

    /// The pids of the helper processes: nydusd, vhost-device-vsock, QEMU.
    pub fn pids(&self) -> Vec<u32> {
        [
            self.nydusd.as_ref().map(Nydusd::pid),
            self.vsock.as_ref().map(VhostVsock::pid),
            self.qemu.as_ref().map(Qemu::pid),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// What kills every helper of the sandbox at once (QEMU, vhost-device-vsock, nydusd)
    /// without its lock: for a failed pod, whose pending guest calls must end now.
    pub fn kill_switch(&self) -> KillSwitch {
        let handles = [
            self.qemu.as_ref().and_then(Qemu::kill_handle),
            self.vsock.as_ref().and_then(VhostVsock::kill_handle),
            self.nydusd.as_ref().and_then(Nydusd::kill_handle),
        ];
        KillSwitch(handles.into_iter().flatten().collect())
    }

    /// A future that resolves when a helper process dies on its own, with the reason (and
    /// the end of the guest console when it was QEMU). It does not borrow the sandbox.
    pub fn failed(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.failed.clone();
        async move {
            let reason = rx
                .wait_for(Option::is_some)
                .await
                .map(|r| r.clone().unwrap_or_default());
            match reason {
                Ok(r) => r,
                // Stopped by its owner: that is no failure, and none will come.
                Err(_) => std::future::pending().await,
            }
        }
    }

    /// Creates container `cid` from `rootfs` and its OCI spec (adapted for the guest: see
    /// [`spec::adapt`]; the caller has refused what a VM cannot give, [`pod::check`]); returns
    /// the guest pid of its init process. On failure nothing of it is left.
    pub async fn create_container(
        &mut self,
        cid: &str,
        rootfs: Rootfs,
        mut oci_spec: oci_spec::runtime::Spec,
    ) -> Result<Created, SandboxError> {
        let started = Instant::now();
        let rafs = nydusd::mountpoint::rafs_mountpoint(cid)?;
        if self.containers.contains_key(cid) {
            return Err(SandboxError::ContainerExists(cid.to_string()));
        }
        let role = pod::role(&oci_spec);
        let join = match role {
            pod::Role::Container => Some(
                self.pod_sandbox
                    .clone()
                    .ok_or_else(|| SandboxError::NoPodSandbox(cid.to_string()))?,
            ),
            _ => None,
        };
        let mut holdings = Holdings {
            host_dir: self.private.join(cid),
            rafs: None,
        };
        let created = self
            .create_in(
                cid,
                &mut holdings,
                &rafs,
                rootfs,
                &mut oci_spec,
                join.as_deref(),
            )
            .await;
        match created {
            Ok((pid, rafs_mount)) => {
                self.containers.insert(cid.to_string(), holdings);
                if role == pod::Role::Sandbox {
                    self.pod_sandbox = Some(cid.to_string());
                }
                let created = Created {
                    pid,
                    rafs_mount,
                    total: started.elapsed(),
                };
                log::info!(
                    "container {cid} created in {:?} (rafs mount {:?})",
                    created.total,
                    created.rafs_mount
                );
                Ok(created)
            }
            Err(e) => {
                self.release(cid, holdings).await;
                Err(e)
            }
        }
    }

    /// Undoes a container's host side: rafs umount, then its binds and directory.
    async fn release(&self, cid: &str, holdings: Holdings) {
        if let (Some(mp), Some(nydusd)) = (&holdings.rafs, &self.nydusd) {
            if let Err(e) = nydusd.client().umount(mp).await {
                log::warn!("container {cid}: unmounting {mp}: {e}");
            }
        }
        if let Err(e) = mounts::unmount_all_under(&holdings.host_dir) {
            log::warn!("container {cid}: {e}");
        } else if let Some(host) = &self.host {
            if let Err(e) = host.remove_all(Path::new(cid)) {
                log::warn!("container {cid}: {e}");
            }
        }
    }

    async fn create_in(
        &self,
        cid: &str,
        holdings: &mut Holdings,
        rafs: &str,
        rootfs: Rootfs,
        oci_spec: &mut oci_spec::runtime::Spec,
        join: Option<&str>,
    ) -> Result<(u32, Option<Duration>), SandboxError> {
        let host = self.host.as_ref().ok_or(SandboxError::NotRunning)?;
        host.create_dir_all(Path::new(cid), 0o755)?;
        let rel = |p: &str| Path::new(cid).join(p);
        let rw = BindOptions {
            readonly: false,
            recursive: true,
        };
        let guest_dir = format!("{GUEST_SHARED}/containers/{cid}");
        let guest_root = format!("{GUEST_CONTAINERS}/{cid}/rootfs");
        let mut rafs_mount = None;
        let storages = match rootfs {
            Rootfs::HostDir(src) => {
                host.bind(BindSource::Path(&src), &rel("rootfs"), rw)?;
                vec![Storage {
                    fstype: "bind".into(),
                    source: format!("{guest_dir}/rootfs"),
                    mount_point: guest_root.clone(),
                    options: vec!["rbind".into()],
                    ..Default::default()
                }]
            }
            Rootfs::Nydus {
                extra,
                prefetch_files,
            } => {
                if !Path::new(&extra.source).is_file() {
                    return Err(SandboxError::Bootstrap(PathBuf::from(&extra.source)));
                }
                // The snapshot directory (its upper `fs` and `work`, checked to be real
                // directories) is the guest's to write, as one bind: overlayfs renames
                // from `work` into `fs` (copy-up), which fails with EXDEV across two.
                let snapshot = Beneath::open(&extra.snapshotdir)
                    .map_err(|_| SandboxError::Snapshotdir(extra.snapshotdir.clone()))?;
                snapshot.open_dir(Path::new("fs"))?;
                snapshot.open_dir(Path::new("work"))?;
                let nydusd = self.nydusd.as_ref().ok_or(SandboxError::NotRunning)?;
                let t = Instant::now();
                let req = nydusd::MountRequest::rafs(extra.source.clone(), extra.config())
                    .with_prefetch_files(prefetch_files);
                nydusd
                    .client()
                    .mount(rafs, &req)
                    .await
                    .map_err(|e| SandboxError::RafsMount(rafs.to_string(), Box::new(e)))?;
                holdings.rafs = Some(rafs.to_string());
                rafs_mount = Some(t.elapsed());
                host.bind(BindSource::Fd(snapshot.fd()), &rel("snapshotdir"), rw)?;
                vec![Storage {
                    fstype: "overlay".into(),
                    source: "overlay".into(),
                    mount_point: guest_root.clone(),
                    options: vec![
                        format!("lowerdir={GUEST_SHARED}{rafs}"),
                        format!("upperdir={guest_dir}/snapshotdir/fs"),
                        format!("workdir={guest_dir}/snapshotdir/work"),
                        "index=off".into(),
                    ],
                    ..Default::default()
                }]
            }
        };
        for bind in spec::adapt(oci_spec, &format!("{guest_dir}/mounts")) {
            let opts = BindOptions {
                readonly: bind.readonly,
                recursive: bind.recursive,
            };
            let target = rel("mounts").join(&bind.shared_name);
            host.bind(BindSource::Path(&bind.host), &target, opts)?;
        }
        let json = serde_json::to_vec(oci_spec).map_err(|e| SandboxError::Spec(e.to_string()))?;
        let agent = self.agent.as_ref().ok_or(SandboxError::NotRunning)?;
        let pid = agent
            .create_container(cid, storages, &guest_root, json, join)
            .await?;
        Ok((pid, rafs_mount))
    }

    /// Removes container `cid`: the agent deletes it (killing what still runs), then its
    /// host mounts and directory go. If the guest fails to remove it, nothing changes on
    /// the host (the guest may still use its mounts) and the removal can be retried.
    pub async fn remove_container(&mut self, cid: &str) -> Result<(), SandboxError> {
        if !self.containers.contains_key(cid) {
            return Err(SandboxError::NoContainer(cid.to_string()));
        }
        if let Some(agent) = &self.agent {
            match agent.remove_container(cid, true).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        if self.pod_sandbox.as_deref() == Some(cid) {
            self.pod_sandbox = None;
        }
        if let Some(holdings) = self.containers.remove(cid) {
            self.release(cid, holdings).await;
        }
        Ok(())
    }

    /// Stops the sandbox and removes everything it made on the host.
    pub async fn stop(mut self) {
        self.teardown().await;
    }

    async fn teardown(&mut self) {
        let t0 = Instant::now();
        // The guest removes its containers, unmounts the share and syncs: after that,
        // nothing in the VM needs saving.
        let mut saved = false;
        if let Some(agent) = self.agent.take() {
            match tokio::time::timeout(DESTROY_TIMEOUT, agent.destroy_sandbox()).await {
                Ok(Ok(())) => saved = true,
                Ok(Err(e)) => log::warn!("sandbox {}: {e}", self.id),
                Err(_) => log::warn!("sandbox {}: DestroySandbox timed out", self.id),
            }
        }
        let t_agent = t0.elapsed();
        self.stop_helpers(saved).await;
        let t_helpers = t0.elapsed() - t_agent;
        if let Some(net) = self.network.take() {
            if let Err(e) = net.teardown().await {
                log::warn!("sandbox {}: {e}", self.id);
            }
        }
        self.containers.clear();
        self.host = None;
        if let Err(e) = mounts::remove_dir_unmounted(&self.dir) {
            log::warn!("sandbox {}: {e}", self.id);
        }
        log::info!(
            "sandbox {} torn down in {:.1} ms (guest {:.1} ms, helpers {:.1} ms)",
            self.id,
            t0.elapsed().as_secs_f64() * 1000.0,
            t_agent.as_secs_f64() * 1000.0,
            t_helpers.as_secs_f64() * 1000.0
        );
    }

    /// Stops QEMU (killed at once when the guest has `saved` everything, else asked to
    /// quit), then vhost-device-vsock and nydusd together; the directory stays.
    async fn stop_helpers(&mut self, saved: bool) {
        if let Some(follower) = self.console_follower.take() {
            follower.abort();
        }
        if let Some(qemu) = self.qemu.take() {
            let stopped = if saved {
                qemu.kill().await
            } else {
                qemu.stop().await
            };
            if let Err(e) = stopped {
                log::warn!("sandbox {}: stopping QEMU: {e}", self.id);
            }
        }
        let (id, vsock, nydusd) = (&self.id, self.vsock.take(), self.nydusd.take());
        let vsock = async {
            if let Some(mut vsock) = vsock {
                vsock.stop().await;
            }
        };
        let nydusd = async {
            if let Some(nydusd) = nydusd {
                if let Err(e) = nydusd.stop().await {
                    log::warn!("sandbox {id}: stopping nydusd: {e}");
                }
            }
        };
        tokio::join!(vsock, nydusd);
    }
}

/// The callback for a helper (`what`) dying on its own: the sandbox fails with the reason
/// (and, for QEMU, the end of the guest console).
fn exit_hook(
    fail_tx: &Arc<watch::Sender<Option<String>>>,
    console: &Path,
    what: &'static str,
) -> OnExit {
    let tx = fail_tx.clone();
    let console = console.to_path_buf();
    Box::new(move |status| {
        let mut reason = format!("{what} exited unexpectedly ({status})");
        if what == "QEMU" {
            reason += &format!(
                "; the guest console's last lines:\n{}",
                console_tail(&console).unwrap_or_default()
            );
        }
        let _ = tx.send(Some(reason));
    })
}

/// Copies the guest console into the log (debug mode), line by line, as it grows.
async fn follow_console(path: PathBuf) {
    use tokio::io::AsyncBufReadExt;
    // QEMU creates the file as it starts: wait for it.
    let mut file = None;
    for _ in 0..200 {
        match crate::hypervisor::qemu::open_console(&path) {
            Ok(f) => {
                file = Some(tokio::fs::File::from_std(f));
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(_) => return,
        }
    }
    let Some(file) = file else { return };
    let mut reader = tokio::io::BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(_) => log::debug!(target: "lazyvm::guest::console", "{}", line.trim_end()),
            Err(_) => return,
        }
    }
}

const PIDS_FILE: &str = "pids";
const OWNER: &str = "owner";

/// The recorded (role, pid, start time) entries of sandbox directory `dir` whose process
/// is still the same process.
fn recorded_alive(dir: &Path) -> Vec<(String, u32, u64)> {
    let Ok(text) = std::fs::read_to_string(dir.join(PIDS_FILE)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            let role = parts.next()?.to_string();
            let pid = parts.next()?.parse::<u32>().ok()?;
            let started = parts.next()?.parse::<u64>().ok()?;
            (start_time(pid) == Some(started)).then_some((role, pid, started))
        })
        .collect()
}

/// Whether the process that owns sandbox directory `dir` (its shim, or `lazyvm run`) is
/// alive: then it cleans up after itself, and nobody else may.
pub fn owner_alive(dir: &Path) -> bool {
    recorded_alive(dir).iter().any(|(role, _, _)| role == OWNER)
}

/// The start time of live process `pid` (field 22 of /proc/<pid>/stat), in clock ticks;
/// `None` when it is gone or a zombie.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let mut fields = after_comm.split(' ');
    if matches!(fields.next(), Some("Z") | Some("X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// The helper processes recorded in sandbox directory `dir` that are still the same
/// processes: (pid, start time).
pub fn recorded_helpers(dir: &Path) -> Vec<(u32, u64)> {
    recorded_alive(dir)
        .into_iter()
        .filter(|(role, _, _)| role != OWNER)
        .map(|(_, pid, started)| (pid, started))
        .collect()
}

/// Kills (SIGKILL) the helper processes recorded in sandbox directory `dir` that are still
/// the same processes, and waits up to two seconds for them to go. For cleanup when the
/// owner that started them is gone.
pub fn kill_recorded(dir: &Path) {
    let helpers = recorded_helpers(dir);
    for (pid, _) in &helpers {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline
        && helpers
            .iter()
            .any(|(pid, started)| start_time(*pid) == Some(*started))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_pids_are_killed_only_if_unchanged() {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let started = start_time(pid).unwrap();
        // A wrong start time stands for a recycled pid: it must be left alone.
        let me = std::process::id();
        let owner = format!("{OWNER} {me} {}\n", start_time(me).unwrap());
        std::fs::write(
            tmp.path().join(PIDS_FILE),
            format!("{owner}helper {pid} {}\n", started + 1),
        )
        .unwrap();
        assert!(owner_alive(tmp.path()));
        kill_recorded(tmp.path());
        assert!(child.try_wait().unwrap().is_none());
        std::fs::write(
            tmp.path().join(PIDS_FILE),
            format!("{owner}helper {pid} {started}\n"),
        )
        .unwrap();
        kill_recorded(tmp.path());
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
    }

    #[test]
    fn sandbox_directories_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        create_private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let e = create_private_dir(&dir).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
    }

    #[test]
    fn keys_are_plain_ids_or_stable_hashes() {
        assert_eq!(sandbox_key("c1"), "c1");
        let long = "a".repeat(65);
        let k = sandbox_key(&long);
        assert_eq!(k, sandbox_key(&long));
        assert_eq!(k.len(), 17);
        assert_ne!(sandbox_key("../x"), "../x");
        assert_ne!(sandbox_key(".."), "..");
        assert_ne!(sandbox_key(""), "");
        assert_ne!(sandbox_key("a/b"), sandbox_key("a_b"));
        let dir = sandbox_dir(Path::new(RUN_DIR), &"f".repeat(64));
        assert!(dir.join("nydusd-api.sock").as_os_str().len() <= 107);
    }
}
