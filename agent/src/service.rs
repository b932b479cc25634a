//! The ttrpc `Agent` service: maps each RPC onto mounts, crun and the process table.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lazyvm_proto::agent::*;
use lazyvm_proto::agent_ttrpc::Agent;
use lazyvm_proto::protobuf::MessageField;
use ttrpc::r#async::TtrpcContext;
use ttrpc::{Code, Error as TtrpcError};

use crate::cgroup::{Cgroup, CgroupError};
use crate::container::{Container, PendingIo, Process};
use crate::mount::{self, MountError, CONTAINERS_DIR};
use crate::network::{NetworkConfig, NetworkError};
use crate::remove::{self, RemoveError};
use crate::runtime::{Crun, RuntimeError};
use crate::spec::{self, SandboxNamespace, SpecError, Sysctl};
use crate::stdio::StdioError;

/// Where the virtio-fs share is mounted.
pub const SHARED_DIR: &str = "/run/lazyvm/shared";
/// The pod's shared memory (a tmpfs); the pod's containers bind it at /dev/shm.
pub const POD_SHM_DIR: &str = "/run/lazyvm/pod/shm";
/// Size of the pod's shared memory when CreateSandbox leaves it 0.
const DEFAULT_SHM_SIZE: u64 = 64 << 20;
/// How often cgroups are checked for OOM kills.
const OOM_POLL: Duration = Duration::from_millis(250);

/// Errors of the service; each maps onto a ttrpc status code.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Unknown container or process.
    #[error("{0} not found")]
    NotFound(String),
    /// The container or exec exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A bad argument.
    #[error("{0}")]
    Invalid(String),
    /// Wrong state for the call.
    #[error("{0}")]
    Precondition(String),
    /// A spec or id problem.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A mount failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// crun failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// stdio failed.
    #[error(transparent)]
    Stdio(#[from] StdioError),
    /// cgroup access failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Network configuration failed.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// Removing a container's directory failed (a mount still in it, say).
    #[error(transparent)]
    Remove(#[from] RemoveError),
    /// A failed CreateContainer whose rollback kept the container's directory.
    #[error("{source}; the directory {dir} was kept: {reason}")]
    Kept {
        /// The error that failed the create.
        source: Box<ServiceError>,
        /// The container's directory.
        dir: String,
        /// Why it was kept.
        reason: String,
    },
    /// Writing a sysctl failed.
    #[error("writing sysctl {name}={value:?} ({path}): {source}")]
    Sysctl {
        /// The sysctl.
        name: String,
        /// The value.
        value: String,
        /// Its /proc/sys file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Some other I/O failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl ServiceError {
    fn code(&self) -> Code {
        match self {
            ServiceError::NotFound(_) => Code::NOT_FOUND,
            ServiceError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ServiceError::Invalid(_) | ServiceError::Spec(_) => Code::INVALID_ARGUMENT,
            ServiceError::Mount(MountError::BadMountPoint { .. })
            | ServiceError::Mount(MountError::Invalid(_)) => Code::INVALID_ARGUMENT,
            ServiceError::Precondition(_) => Code::FAILED_PRECONDITION,
            ServiceError::Kept { source, .. } => source.code(),
            ServiceError::Stdio(StdioError::Closed) => Code::FAILED_PRECONDITION,
            ServiceError::Network(e) => match e {
                NetworkError::Invalid { .. } => Code::INVALID_ARGUMENT,
                NetworkError::MacNotFound { .. } | NetworkError::DeviceNotFound { .. } => {
                    Code::NOT_FOUND
                }
                NetworkError::Conflict(_) => Code::FAILED_PRECONDITION,
                e if e.already_exists() => Code::ALREADY_EXISTS,
                _ => Code::INTERNAL,
            },
            _ => Code::INTERNAL,
        }
    }
}

impl From<ServiceError> for TtrpcError {
    fn from(e: ServiceError) -> Self {
        TtrpcError::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServiceError {
    let what = what.into();
    move |source| ServiceError::Io { what, source }
}

type Result<T> = std::result::Result<T, ServiceError>;

/// Undoes a failed CreateContainer: unmounts the storages, then removes the container's
/// directory without crossing a mount. A storage that would not unmount keeps the
/// directory (removing it could reach the host data behind the mount): the create's error
/// `e` is returned with a note saying so.
fn rollback_create(cid: &str, dir: &Path, mounted: &[PathBuf], e: ServiceError) -> ServiceError {
    let mut still_mounted = None;
    for m in mounted.iter().rev() {
        if let Err(ue) = mount::umount(m) {
            log::warn!("create {cid} rollback: {ue}");
            still_mounted.get_or_insert_with(|| format!("{} is still mounted ({ue})", m.display()));
        }
    }
    let reason = match still_mounted {
        Some(reason) => reason,
        None => match remove::remove_tree(dir) {
            Ok(()) => return e,
            Err(re) => {
                log::warn!("create {cid} rollback: {re}");
                re.to_string()
            }
        },
    };
    log::warn!("create {cid} rollback: keeping {}", dir.display());
    ServiceError::Kept {
        source: Box::new(e),
        dir: dir.display().to_string(),
        reason,
    }
}

#[derive(Default)]
struct SandboxState {
    created: bool,
    share_mounted: bool,
    /// Size of the mounted pod shm tmpfs.
    shm_size: Option<u64>,
}

/// The agent's state and RPC implementation.
pub struct AgentService {
    crun: Crun,
    sandbox: tokio::sync::Mutex<SandboxState>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    oom_rx: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>,
}

impl AgentService {
    /// A service using `crun`; starts the OOM watcher.
    pub fn new(crun: Crun) -> Arc<Self> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let svc = Arc::new(AgentService {
            crun,
            sandbox: tokio::sync::Mutex::new(SandboxState::default()),
            containers: Mutex::new(HashMap::new()),
            oom_rx: tokio::sync::Mutex::new(rx),
        });
        let weak = Arc::downgrade(&svc);
        tokio::spawn(async move {
            let mut seen: HashMap<String, u64> = HashMap::new();
            loop {
                tokio::time::sleep(OOM_POLL).await;
                let Some(svc) = weak.upgrade() else { break };
                let list: Vec<(String, Cgroup)> = svc
                    .lock_containers()
                    .values()
                    .map(|c| (c.id.clone(), c.cgroup.clone()))
                    .collect();
                drop(svc);
                seen.retain(|id, _| list.iter().any(|(i, _)| i == id));
                for (id, cg) in list {
                    let Ok(n) = cg.oom_kills() else { continue };
                    let before = seen.insert(id.clone(), n).unwrap_or(0);
                    if n > before {
                        log::info!("container {id}: OOM kill");
                        if tx.send(id).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        svc
    }

    /// How many processes (container inits and execs) the agent keeps an entry for.
    fn tracked_processes(&self) -> u32 {
        self.lock_containers()
            .values()
            .map(|c| 1 + c.execs.lock().unwrap_or_else(|p| p.into_inner()).len() as u32)
            .sum()
    }

    fn lock_containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn container(&self, cid: &str) -> Result<Arc<Container>> {
        spec::check_id("container id", cid)?;
        self.lock_containers()
            .get(cid)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(format!("container {cid}")))
    }

    fn process(&self, cid: &str, exec_id: &str) -> Result<Arc<Process>> {
        let c = self.container(cid)?;
        c.process(exec_id)
            .ok_or_else(|| ServiceError::NotFound(format!("process {exec_id} in container {cid}")))
    }

    async fn create_sandbox(&self, req: CreateSandboxRequest) -> Result<()> {
        let mut sb = self.sandbox.lock().await;
        if !req.hostname.is_empty() {
            nix::unistd::sethostname(&req.hostname)
                .map_err(|e| ServiceError::Invalid(format!("hostname {:?}: {e}", req.hostname)))?;
        }
        if !sb.share_mounted {
            let tag = if req.share_tag.is_empty() {
                "lazyvm"
            } else {
                req.share_tag.as_str()
            };
            mount::mount_storage("virtiofs", tag, &[], Path::new(SHARED_DIR))?;
            sb.share_mounted = true;
            log::info!("virtio-fs {tag} mounted at {SHARED_DIR}");
        }
        let size = if req.shm_size == 0 {
            DEFAULT_SHM_SIZE
        } else {
            req.shm_size
        };
        if sb.shm_size != Some(size) {
            let mut options: Vec<String> = ["nosuid", "nodev", "noexec", "mode=1777"]
                .map(String::from)
                .into();
            options.push(format!("size={size}"));
            if sb.shm_size.is_some() {
                options.push("remount".to_owned());
            }
            mount::mount_storage("tmpfs", "shm", &options, Path::new(POD_SHM_DIR))?;
            sb.shm_size = Some(size);
            log::info!("pod shm ({size} bytes) mounted at {POD_SHM_DIR}");
        }
        sb.created = true;
        Ok(())
    }

    async fn update_network(&self, req: UpdateNetworkRequest) -> Result<()> {
        let config = NetworkConfig::parse(&req)?;
        let sb = self.sandbox.lock().await;
        if !sb.created {
            return Err(ServiceError::Precondition(
                "CreateSandbox must come first".to_owned(),
            ));
        }
        config.apply().await?;
        drop(sb);
        Ok(())
    }

    /// The init pid of the sandbox container whose namespaces a spec joins.
    fn sandbox_init_pid(&self, sandbox_id: &str, joined: &[SandboxNamespace]) -> Result<i32> {
        let names: Vec<&str> = joined.iter().map(|n| n.name()).collect();
        let names = names.join(", ");
        if sandbox_id.is_empty() {
            return Err(ServiceError::Precondition(format!(
                "the spec joins the pod's {names} namespace(s) but sandbox_container_id is empty"
            )));
        }
        spec::check_id("sandbox container id", sandbox_id)?;
        let sandbox = self
            .lock_containers()
            .get(sandbox_id)
            .cloned()
            .ok_or_else(|| {
                ServiceError::NotFound(format!(
                    "sandbox container {sandbox_id} (whose {names} namespace(s) the spec joins)"
                ))
            })?;
        if let Some(st) = sandbox.init.exited() {
            return Err(ServiceError::Precondition(format!(
                "sandbox container {sandbox_id} has exited (status {}): its {names} \
                 namespace(s) are gone",
                st.code
            )));
        }
        Ok(sandbox.init.pid)
    }

    async fn destroy_sandbox(&self) -> Result<()> {
        let ids: Vec<String> = self.lock_containers().keys().cloned().collect();
        let mut first_err = None;
        for id in ids {
            if let Err(e) = self.remove_container(&id, true, true).await {
                log::warn!("destroy sandbox: removing {id}: {e}");
                first_err.get_or_insert(e);
            }
        }
        let mut sb = self.sandbox.lock().await;
        if sb.shm_size.is_some() {
            mount::umount(Path::new(POD_SHM_DIR))?;
            sb.shm_size = None;
        }
        if sb.share_mounted {
            mount::umount(Path::new(SHARED_DIR))?;
            sb.share_mounted = false;
        }
        sb.created = false;
        nix::unistd::sync();
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn create_container(&self, req: CreateContainerRequest) -> Result<u32> {
        let cid = req.container_id.as_str();
        spec::check_id("container id", cid)?;
        if !self.sandbox.lock().await.created {
            return Err(ServiceError::Precondition(
                "CreateSandbox must come first".to_owned(),
            ));
        }
        if self.lock_containers().contains_key(cid) {
            return Err(ServiceError::AlreadyExists(format!("container {cid}")));
        }
        let dir = Path::new(CONTAINERS_DIR).join(cid);
        let rootfs = if req.rootfs.is_empty() {
            dir.join("rootfs").display().to_string()
        } else {
            req.rootfs.clone()
        };
        let mut spec = spec::rewrite_spec(&req.oci_spec, cid, &rootfs)?;
        for s in &req.storages {
            mount::check_under(&s.mount_point, &dir)?;
        }
        if dir.exists() {
            return Err(ServiceError::AlreadyExists(format!(
                "directory {} (a container {cid} was not cleaned up)",
                dir.display()
            )));
        }
        if !spec.sandbox_namespaces.is_empty() {
            let pid = self.sandbox_init_pid(&req.sandbox_container_id, &spec.sandbox_namespaces)?;
            spec.join_sandbox(pid);
        }
        write_sysctls(&spec.vm_sysctls)?;
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;

        let mut mounted: Vec<PathBuf> = Vec::new();
        let result = async {
            for s in &req.storages {
                let target = PathBuf::from(&s.mount_point);
                mount::mount_storage(&s.fstype, &s.source, &s.options, &target)?;
                mounted.push(target);
            }
            if !Path::new(&rootfs).is_dir() {
                return Err(ServiceError::Invalid(format!(
                    "rootfs {rootfs} is not a directory"
                )));
            }
            let config = dir.join("config.json");
            let text = serde_json::to_vec(&spec.json)
                .map_err(|e| ServiceError::Invalid(format!("encoding the spec: {e}")))?;
            std::fs::write(&config, text)
                .map_err(io_err(format!("writing {}", config.display())))?;
            let (pending, io) = PendingIo::new(spec.terminal)?;
            match self.crun.create(cid, &dir, io).await {
                Ok((pid, master)) => Ok(pending.into_process(pid, master, self.crun.reaper())?),
                Err(e) => {
                    pending.abandon();
                    Err(e.into())
                }
            }
        }
        .await;
        let init = match result {
            Ok(p) => p,
            Err(e) => return Err(rollback_create(cid, &dir, &mounted, e)),
        };
        let pid = init.pid as u32;
        let container = Arc::new(Container {
            id: cid.to_owned(),
            bundle: dir,
            mounts: mounted,
            cgroup: Cgroup::new(&spec::cgroup_path(cid)),
            init,
            execs: Mutex::new(HashMap::new()),
            started: Mutex::new(false),
            deleted: Mutex::new(false),
        });
        self.lock_containers().insert(cid.to_owned(), container);
        log::info!("container {cid} created, init pid {pid}");
        Ok(pid)
    }

    async fn start_container(&self, cid: &str) -> Result<()> {
        let c = self.container(cid)?;
        if *c.started.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(ServiceError::Precondition(format!(
                "container {cid} is started already"
            )));
        }
        self.crun.start(cid).await?;
        *c.started.lock().unwrap_or_else(|p| p.into_inner()) = true;
        Ok(())
    }

    /// Removes a container: crun's state and cgroup, its mounts, its bundle. With
    /// `vm_ends` (a DestroySandbox: the VM stops next), an exited container skips crun's
    /// delete, whose state and cgroup go with the VM; its mounts still go, which flushes
    /// what it wrote to the host.
    async fn remove_container(&self, cid: &str, force: bool, vm_ends: bool) -> Result<()> {
        let c = self.container(cid)?;
        if c.init.exited().is_none() && !force {
            return Err(ServiceError::Precondition(format!(
                "container {cid} is running (use force)"
            )));
        }
        let exited = c.init.exited().is_some();
        let deleted = *c.deleted.lock().unwrap_or_else(|p| p.into_inner());
        // crun delete is needed unless done already, or the VM ends with an exited container.
        if !(deleted || (vm_ends && exited)) {
            self.crun.delete(cid, force || !exited).await?;
            *c.deleted.lock().unwrap_or_else(|p| p.into_inner()) = true;
        }
        c.init.discard_output();
        for p in c.execs.lock().unwrap_or_else(|p| p.into_inner()).values() {
            p.discard_output();
        }
        let mut first_err = None;
        for m in c.mounts.iter().rev() {
            if let Err(e) = mount::umount(m) {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e.into());
        }
        // Never crosses a mount: should one survive, the container stays for a retry.
        remove::remove_tree(&c.bundle)?;
        self.lock_containers().remove(cid);
        log::info!("container {cid} removed");
        Ok(())
    }

    /// After a RemoveContainer (not a DestroySandbox, whose VM ends next): the removed
    /// container's files are unused now, and forgetting them lets the host's virtio-fs
    /// daemon close them.
    async fn forget_removed_files(&self, cid: &str) {
        match tokio::task::spawn_blocking(mount::forget_unused_inodes).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("container {cid}: dropping unused inodes: {e}"),
            Err(e) => log::warn!("container {cid}: dropping unused inodes: {e}"),
        }
    }

    async fn exec_process(&self, req: ExecProcessRequest) -> Result<u32> {
        let c = self.container(&req.container_id)?;
        spec::check_id("exec id", &req.exec_id)?;
        if c.process(&req.exec_id).is_some() {
            return Err(ServiceError::AlreadyExists(format!(
                "exec {} in container {}",
                req.exec_id, req.container_id
            )));
        }
        let (process, terminal) = spec::rewrite_process(&req.process)?;
        let file = self.crun.temp_file("process.json");
        let text = serde_json::to_vec(&process)
            .map_err(|e| ServiceError::Invalid(format!("encoding the process: {e}")))?;
        std::fs::write(&file, text).map_err(io_err(format!("writing {}", file.display())))?;
        let (pending, io) = PendingIo::new(terminal)?;
        let res = self.crun.exec(&req.container_id, &file, io).await;
        let _ = std::fs::remove_file(&file);
        let (pid, master) = match res {
            Ok(v) => v,
            Err(e) => {
                pending.abandon();
                return Err(e.into());
            }
        };
        let p = pending.into_process(pid, master, self.crun.reaper())?;
        c.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(req.exec_id.clone(), p);
        Ok(pid as u32)
    }

    fn remove_process(&self, req: &RemoveProcessRequest) -> Result<()> {
        let c = self.container(&req.container_id)?;
        spec::check_id("exec id", &req.exec_id)?;
        let mut execs = c.execs.lock().unwrap_or_else(|p| p.into_inner());
        let p = execs.get(&req.exec_id).ok_or_else(|| {
            ServiceError::NotFound(format!(
                "exec {} in container {}",
                req.exec_id, req.container_id
            ))
        })?;
        if p.exited().is_none() {
            return Err(ServiceError::Precondition(format!(
                "exec {} in container {} is running",
                req.exec_id, req.container_id
            )));
        }
        p.discard_output();
        execs.remove(&req.exec_id);
        Ok(())
    }

    async fn signal_process(&self, req: SignalProcessRequest) -> Result<()> {
        let c = self.container(&req.container_id)?;
        let p = c.process(&req.exec_id).ok_or_else(|| {
            ServiceError::NotFound(format!(
                "process {} in container {}",
                req.exec_id, req.container_id
            ))
        })?;
        let sig = nix::sys::signal::Signal::try_from(req.signal as i32)
            .map_err(|_| ServiceError::Invalid(format!("signal {}", req.signal)))?;
        if req.exec_id.is_empty() && req.all {
            return Ok(self.crun.kill(&req.container_id, req.signal, true).await?);
        }
        if p.exited().is_some() {
            return Err(ServiceError::NotFound(format!(
                "process {} in container {} has exited",
                req.exec_id, req.container_id
            )));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), sig).map_err(|e| {
            ServiceError::Io {
                what: format!("signalling pid {}", p.pid),
                source: e.into(),
            }
        })
    }

    async fn stats(&self, cid: &str) -> Result<StatsContainerResponse> {
        let c = self.container(cid)?;
        let cpu = c.cgroup.cpu()?;
        let mem = c.cgroup.memory()?;
        let pids = c.cgroup.pids()?;
        let mut r = StatsContainerResponse::new();
        r.cpu = MessageField::some(CpuStats {
            usage_usec: cpu.usage_usec,
            user_usec: cpu.user_usec,
            system_usec: cpu.system_usec,
            nr_periods: cpu.nr_periods,
            nr_throttled: cpu.nr_throttled,
            throttled_usec: cpu.throttled_usec,
            ..Default::default()
        });
        r.memory = MessageField::some(MemoryStats {
            usage: mem.usage,
            limit: mem.limit,
            swap_usage: mem.swap_usage,
            oom_kills: mem.oom_kills,
            stat: mem.stat,
            ..Default::default()
        });
        r.pids = MessageField::some(PidsStats {
            current: pids.current,
            limit: pids.limit,
            ..Default::default()
        });
        Ok(r)
    }
}

/// Writes sysctls for the whole VM, in order (an unknown one is an error: its file is
/// never created).
fn write_sysctls(list: &[Sysctl]) -> Result<()> {
    use std::io::Write as _;
    for s in list {
        let path = s.path();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(s.value.as_bytes()))
            .map_err(|source| ServiceError::Sysctl {
                name: s.name.clone(),
                value: s.value.clone(),
                path: path.display().to_string(),
                source,
            })?;
        log::info!("sysctl {}={:?}", s.name, s.value);
    }
    Ok(())
}

/// Adapts the service to the generated ttrpc trait.
#[derive(Clone)]
pub struct Handler(pub Arc<AgentService>);

/// The agent's resident memory (VmRSS of /proc/self/status), in bytes.
fn self_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or_default()
}

fn uname_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn empty() -> Empty {
    Empty::new()
}

fn log_err<T>(rpc: &str, r: Result<T>) -> ttrpc::Result<T> {
    r.map_err(|e| {
        log::warn!("{rpc}: {e}");
        e.into()
    })
}

#[async_trait]
impl Agent for Handler {
    async fn health(&self, _: &TtrpcContext, _: HealthRequest) -> ttrpc::Result<HealthResponse> {
        Ok(HealthResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel: uname_release(),
            rss_bytes: self_rss_bytes(),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .map(|d| d.count() as u32)
                .unwrap_or_default(),
            tracked_processes: self.0.tracked_processes(),
            ..Default::default()
        })
    }

    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        r: CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        log_err("CreateSandbox", self.0.create_sandbox(r).await).map(|_| empty())
    }

    async fn destroy_sandbox(
        &self,
        _: &TtrpcContext,
        _: DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        log_err("DestroySandbox", self.0.destroy_sandbox().await).map(|_| empty())
    }

    async fn update_network(
        &self,
        _: &TtrpcContext,
        r: UpdateNetworkRequest,
    ) -> ttrpc::Result<Empty> {
        log_err("UpdateNetwork", self.0.update_network(r).await).map(|_| empty())
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        r: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        let pid = log_err("CreateContainer", self.0.create_container(r).await)?;
        Ok(CreateContainerResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start_container(
        &self,
        _: &TtrpcContext,
        r: StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        log_err(
            "StartContainer",
            self.0.start_container(&r.container_id).await,
        )
        .map(|_| empty())
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        r: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        log_err(
            "RemoveContainer",
            self.0
                .remove_container(&r.container_id, r.force, false)
                .await,
        )?;
        self.0.forget_removed_files(&r.container_id).await;
        Ok(empty())
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        r: ExecProcessRequest,
    ) -> ttrpc::Result<ExecProcessResponse> {
        let pid = log_err("ExecProcess", self.0.exec_process(r).await)?;
        Ok(ExecProcessResponse {
            pid,
            ..Default::default()
        })
    }

    async fn remove_process(
        &self,
        _: &TtrpcContext,
        r: RemoveProcessRequest,
    ) -> ttrpc::Result<Empty> {
        log_err("RemoveProcess", self.0.remove_process(&r)).map(|_| empty())
    }

    async fn signal_process(
        &self,
        _: &TtrpcContext,
        r: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        log_err("SignalProcess", self.0.signal_process(r).await).map(|_| empty())
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        r: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        let p = log_err("WaitProcess", self.0.process(&r.container_id, &r.exec_id))?;
        let status = p.wait().await.ok_or_else(|| {
            TtrpcError::from(ServiceError::Precondition(
                "the agent is shutting down".into(),
            ))
        })?;
        Ok(WaitProcessResponse {
            exit_status: status.code,
            exited_at_ns: status.at_ns,
            ..Default::default()
        })
    }

    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        r: WriteStreamRequest,
    ) -> ttrpc::Result<WriteStreamResponse> {
        let p = log_err("WriteStdin", self.0.process(&r.container_id, &r.exec_id))?;
        let len = log_err(
            "WriteStdin",
            p.write_stdin(r.data).await.map_err(Into::into),
        )?;
        Ok(WriteStreamResponse {
            len: len as u32,
            ..Default::default()
        })
    }

    async fn close_stdin(&self, _: &TtrpcContext, r: CloseStdinRequest) -> ttrpc::Result<Empty> {
        let p = log_err("CloseStdin", self.0.process(&r.container_id, &r.exec_id))?;
        log_err("CloseStdin", p.close_stdin().await.map_err(Into::into)).map(|_| empty())
    }

    async fn read_stdout(
        &self,
        _: &TtrpcContext,
        r: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        let p = log_err("ReadStdout", self.0.process(&r.container_id, &r.exec_id))?;
        Ok(ReadStreamResponse {
            data: p.stdout.read(r.max_len as usize).await,
            ..Default::default()
        })
    }

    async fn read_stderr(
        &self,
        _: &TtrpcContext,
        r: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        let p = log_err("ReadStderr", self.0.process(&r.container_id, &r.exec_id))?;
        Ok(ReadStreamResponse {
            data: p.stderr.read(r.max_len as usize).await,
            ..Default::default()
        })
    }

    async fn tty_win_resize(
        &self,
        _: &TtrpcContext,
        r: TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        let p = log_err("TtyWinResize", self.0.process(&r.container_id, &r.exec_id))?;
        let rows = u16::try_from(r.rows).unwrap_or(u16::MAX);
        let cols = u16::try_from(r.cols).unwrap_or(u16::MAX);
        match p.resize(rows, cols) {
            Ok(true) => Ok(empty()),
            Ok(false) => log_err(
                "TtyWinResize",
                Err(ServiceError::Precondition(
                    "the process has no terminal".into(),
                )),
            ),
            Err(e) => log_err("TtyWinResize", Err(io_err("resizing the pty")(e))),
        }
    }

    async fn pause_container(&self, _: &TtrpcContext, r: ContainerRequest) -> ttrpc::Result<Empty> {
        let res = async {
            self.0.container(&r.container_id)?;
            Ok(self.0.crun.pause(&r.container_id).await?)
        };
        log_err("PauseContainer", res.await).map(|_| empty())
    }

    async fn resume_container(
        &self,
        _: &TtrpcContext,
        r: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let res = async {
            self.0.container(&r.container_id)?;
            Ok(self.0.crun.resume(&r.container_id).await?)
        };
        log_err("ResumeContainer", res.await).map(|_| empty())
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        r: ContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        log_err("StatsContainer", self.0.stats(&r.container_id).await)
    }

    async fn update_container(
        &self,
        _: &TtrpcContext,
        r: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let res = async {
            self.0.container(&r.container_id)?;
            let res = spec::parse_resources(&r.resources)?;
            let file = self.0.crun.temp_file("resources.json");
            let text = serde_json::to_vec(&res)
                .map_err(|e| ServiceError::Invalid(format!("encoding resources: {e}")))?;
            std::fs::write(&file, text).map_err(io_err(format!("writing {}", file.display())))?;
            let out = self.0.crun.update(&r.container_id, &file).await;
            let _ = std::fs::remove_file(&file);
            Ok(out?)
        };
        log_err("UpdateContainer", res.await).map(|_| empty())
    }

    async fn list_pids(
        &self,
        _: &TtrpcContext,
        r: ContainerRequest,
    ) -> ttrpc::Result<ListPidsResponse> {
        let res = async {
            let c = self.0.container(&r.container_id)?;
            Ok(c.cgroup.procs()?)
        };
        let pids = log_err("ListPids", res.await)?;
        Ok(ListPidsResponse {
            pids,
            ..Default::default()
        })
    }

    async fn get_oom_event(
        &self,
        _: &TtrpcContext,
        _: GetOOMEventRequest,
    ) -> ttrpc::Result<OOMEvent> {
        let mut rx = self.0.oom_rx.lock().await;
        match rx.recv().await {
            Some(container_id) => Ok(OOMEvent {
                container_id,
                ..Default::default()
            }),
            None => log_err(
                "GetOOMEvent",
                Err(ServiceError::Precondition("the OOM watcher stopped".into())),
            ),
        }
    }
}
