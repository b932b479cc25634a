//! The task service: containerd's task API on top of one [`Sandbox`].
//!
//! The first container of a pod boots the sandbox; every call after that goes to the
//! guest agent through the sandbox.
//!
//! No call waits behind another container's work: the process table (`state`) is only
//! ever locked for short bookkeeping, never across a VM boot or a guest round trip; the
//! pod itself (`pod`) is locked by the calls that change what the VM holds (create,
//! delete, shutdown), and calls on a process (State, Wait, Kill, Stats, exits) use the
//! agent client without it. Events go out in containerd's order: TaskCreate,
//! TaskStart, TaskExecAdded, TaskExecStarted, TaskExit (never before its start event),
//! TaskDelete, and TaskOOM when the guest reports an OOM kill.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::TtrpcResult;
use containerd_shim_protos::api;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics::*;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::Code;
use containerd_shim_protos::types::task::Status as TaskStatus;
use oci_spec::runtime::Spec;
use tokio::sync::Mutex;

use super::errors::{check_id, internal, not_found, status_error};
use super::events::Events;
use super::process::{status_name, Container, Exit, Proc, State, LOST_STATUS};
use super::rootfs::{rootfs_of, unmount_rootfs};
use super::stdio::{Relays, StdioPaths};
use crate::agent::AgentClient;
use crate::config::Config;
use crate::sandbox::{pod, Created, Sandbox, SandboxSpec, StartTimings};

/// How long output may still arrive after a process exits before its exit is published.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// The task service of one shim.
#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

struct Inner {
    exit: Arc<ExitSignal>,
    events: Events,
    /// The process table: locked only for bookkeeping.
    state: Mutex<State>,
    /// The pod's VM: locked across boot, container create/remove and stop (taken before
    /// `state` when both are needed).
    pod: Mutex<Option<Sandbox>>,
    /// The running VM's agent client, for calls that need no lock.
    agent: std::sync::RwLock<Option<AgentClient>>,
    /// Set (with the reason) when a part of the pod dies on its own: every process still
    /// waited for exits at once with [`LOST_STATUS`].
    pod_failure: tokio::sync::watch::Sender<Option<String>>,
}

impl TaskService {
    /// A task service publishing its events through `publisher`.
    pub fn new(namespace: &str, exit: Arc<ExitSignal>, publisher: RemotePublisher) -> Self {
        // `debug = true` in lazyvm's configuration brings nydusd's output and the guest
        // console into the shim's log.
        if Config::load(None).is_ok_and(|c| c.debug) {
            log::set_max_level(log::LevelFilter::Debug);
        }
        TaskService {
            inner: Arc::new(Inner {
                exit,
                events: Events::new(namespace, publisher),
                state: Mutex::new(State::default()),
                pod: Mutex::new(None),
                agent: std::sync::RwLock::new(None),
                pod_failure: tokio::sync::watch::channel(None).0,
            }),
        }
    }

    async fn agent(&self) -> TtrpcResult<AgentClient> {
        self.inner
            .agent
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| status_error(Code::FAILED_PRECONDITION, "the sandbox is not running"))
    }

    fn set_agent(&self, agent: Option<AgentClient>) {
        *self.inner.agent.write().unwrap_or_else(|p| p.into_inner()) = agent;
    }

    /// Boots the pod's sandbox if this is its first container; returns its start
    /// timings when it did.
    async fn ensure_sandbox(
        &self,
        pod: &mut Option<Sandbox>,
        spec: &Spec,
        cid: &str,
    ) -> TtrpcResult<Option<StartTimings>> {
        if pod.is_some() {
            return Ok(None);
        }
        let role = pod::role(spec);
        if role == pod::Role::Container {
            return Err(status_error(
                Code::FAILED_PRECONDITION,
                format!("container {cid} is a pod's app container, but its pod's sandbox container is not running in this shim"),
            ));
        }
        let mut config = Config::load(None).map_err(internal)?;
        let size = pod::vm_size(spec, &config.hypervisor)
            .map_err(|e| status_error(Code::INVALID_ARGUMENT, e.to_string()))?;
        config.hypervisor.vcpus = size.vcpus;
        config.hypervisor.memory_mib = size.memory_mib;
        let sandbox_id = super::sandbox_id_of(Some(spec), cid);
        let mut sandbox_spec = SandboxSpec::new(&sandbox_id, config);
        if let Some(h) = spec.hostname() {
            sandbox_spec.hostname = h.clone();
        }
        sandbox_spec.netns = pod::netns_path(spec);
        let sandbox = Sandbox::start(sandbox_spec).await.map_err(|e| {
            let code = if e.is_invalid_input() {
                Code::INVALID_ARGUMENT
            } else {
                Code::INTERNAL
            };
            status_error(code, e.to_string())
        })?;
        let agent = sandbox.agent().cloned();
        let timings = sandbox.timings();
        let (failed, kill) = (sandbox.failed(), sandbox.kill_switch());
        let svc = self.clone();
        tokio::spawn(async move {
            let reason = failed.await;
            svc.pod_failed(&reason, kill).await;
        });
        *pod = Some(sandbox);
        self.set_agent(agent.clone());
        if let Some(agent) = agent {
            self.watch_oom(agent);
        }
        Ok(Some(timings))
    }

    /// A part of the pod died on its own (QEMU, the guest kernel, nydusd,
    /// vhost-device-vsock): the pod is over. Every helper is killed (so that pending guest
    /// calls end now), every waited-for process exits with [`LOST_STATUS`], and the sandbox
    /// is torn down (mounts, directories, network); Delete then only forgets the tasks.
    async fn pod_failed(&self, reason: &str, kill: crate::sandbox::KillSwitch) {
        log::error!("the pod failed: {reason}");
        kill.kill();
        self.inner
            .pod_failure
            .send_replace(Some(reason.to_string()));
        self.set_agent(None);
        // Held until the sandbox is down: a Shutdown that comes meanwhile (the last
        // Delete) waits for the teardown instead of ending the shim in its middle.
        let mut pod = self.inner.pod.lock().await;
        // Processes that were created but never started end too (the started ones end
        // through their exit watchers); one whose Start is under way ends when it fails.
        {
            let mut state = self.inner.state.lock().await;
            for (cid, c) in state.containers.iter_mut() {
                let procs = std::iter::once((String::new(), &mut c.init))
                    .chain(c.execs.iter_mut().map(|(id, p)| (id.clone(), p)));
                for (exec_id, p) in procs {
                    if p.status == TaskStatus::CREATED && !p.starting {
                        self.lose(cid, &exec_id, p);
                    }
                }
            }
        }
        if let Some(sandbox) = pod.take() {
            sandbox.stop().await;
        }
    }

    /// Process `exec_id` of `cid` will never run (its pod failed): it is stopped with
    /// [`LOST_STATUS`] and its TaskExit is published, as when runc's shim kills a created
    /// container's init.
    fn lose(&self, cid: &str, exec_id: &str, p: &mut Proc) {
        let lost = Exit {
            status: LOST_STATUS,
            at: None,
        };
        self.exited(cid, exec_id, p.pid, lost, Some(p));
    }

    /// Records process `exec_id` of `cid` (`pid`) as stopped with `exit`, if it is still
    /// in the table as `p`, and publishes its TaskExit.
    fn exited(&self, cid: &str, exec_id: &str, pid: u32, exit: Exit, p: Option<&mut Proc>) {
        if let Some(p) = p {
            p.status = TaskStatus::STOPPED;
            p.exit_tx.send_replace(Some(exit));
        }
        self.inner.events.send(
            TASK_EXIT_EVENT_TOPIC,
            TaskExit {
                container_id: cid.to_string(),
                id: if exec_id.is_empty() { cid } else { exec_id }.to_string(),
                pid,
                exit_status: exit.status,
                exited_at: MessageField::some(exit.timestamp()),
                ..Default::default()
            },
        );
    }

    fn watch_oom(&self, agent: AgentClient) {
        let events = self.inner.events.clone();
        tokio::spawn(async move {
            while let Ok(cid) = agent.oom_event().await {
                events.send(
                    TASK_OOM_EVENT_TOPIC,
                    TaskOOM {
                        container_id: cid,
                        ..Default::default()
                    },
                );
            }
        });
    }

    /// Waits for a started process's exit in the guest, lets its output drain, records
    /// the exit and publishes TaskExit.
    fn watch_exit(&self, agent: AgentClient, cid: String, exec_id: String, pid: u32) {
        let svc = self.clone();
        let mut failure = self.inner.pod_failure.subscribe();
        tokio::spawn(async move {
            let lost = Exit {
                status: LOST_STATUS,
                at: None,
            };
            let exit = tokio::select! {
                r = agent.wait_process(&cid, &exec_id) => match r {
                    Ok(e) => Exit {
                        status: e.status as u32,
                        at: Some(e.exited_at_ns),
                    },
                    Err(e) => {
                        log::warn!("waiting for {cid}/{exec_id}: {e}");
                        lost
                    }
                },
                _ = failure.wait_for(Option::is_some) => lost,
            };
            let relays = {
                let mut state = svc.inner.state.lock().await;
                state
                    .containers
                    .get_mut(&cid)
                    .and_then(|c| c.process_mut(&exec_id).ok())
                    .and_then(|p| p.relays.take())
            };
            if let Some(mut relays) = relays {
                let _ = tokio::time::timeout(OUTPUT_DRAIN, relays.wait_outputs()).await;
            }
            let mut state = svc.inner.state.lock().await;
            let p = state
                .containers
                .get_mut(&cid)
                .and_then(|c| c.process_mut(&exec_id).ok());
            svc.exited(&cid, &exec_id, pid, exit, p);
        });
    }
}

/// One line per container with its start-up phases, for operators and tests:
/// `lazyvm timings <cid>: vm_boot_ms=… nydusd_ready_ms=… sandbox_ms=… rafs_mount_ms=…
/// create_ms=… start_ms=…` (the sandbox phases only for the container that booted it).
fn log_timings(cid: &str, boot: Option<StartTimings>, created: Created, start: Duration) {
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
    let mut line = format!("lazyvm timings {cid}:");
    if let Some(b) = boot {
        line += &format!(
            " vm_boot_ms={} nydusd_ready_ms={} sandbox_ms={}",
            ms(b.vm_boot),
            ms(b.nydusd_ready),
            ms(b.total)
        );
        if b.cached {
            line += " cached=1";
        }
    }
    if let Some(r) = created.rafs_mount {
        line += &format!(" rafs_mount_ms={}", ms(r));
    }
    line += &format!(" create_ms={} start_ms={}", ms(created.total), ms(start));
    log::info!("{line}");
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let cid = req.id.clone();
        let bundle = PathBuf::from(&req.bundle);
        log::info!("create {cid} (bundle {})", bundle.display());
        check_id("container id", &cid)?;
        if self.inner.state.lock().await.containers.contains_key(&cid) {
            return Err(status_error(
                Code::ALREADY_EXISTS,
                format!("container {cid} already exists"),
            ));
        }
        let spec = Spec::load(bundle.join("config.json"))
            .map_err(|e| internal(format!("reading the bundle's config.json: {e}")))?;
        pod::check(&spec).map_err(|e| status_error(Code::INVALID_ARGUMENT, e.to_string()))?;
        let mut pod = self.inner.pod.lock().await;
        let booted = self.ensure_sandbox(&mut pod, &spec, &cid).await?;

        let (rootfs, host_rootfs) = rootfs_of(&bundle, &spec, &req.rootfs)?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let sandbox = pod
            .as_mut()
            .ok_or_else(|| internal("the sandbox is gone"))?;
        let created = sandbox.create_container(&cid, rootfs, spec).await;
        let created = match created {
            Ok(created) => created,
            Err(e) => {
                if let Some(p) = &host_rootfs {
                    unmount_rootfs(p);
                }
                let code = if e.is_invalid_input() {
                    Code::INVALID_ARGUMENT
                } else {
                    Code::INTERNAL
                };
                return Err(status_error(code, e.to_string()));
            }
        };
        let agent = sandbox
            .agent()
            .cloned()
            .ok_or_else(|| internal("no agent"))?;
        let relays = match Relays::start(&agent, &cid, "", &stdio).await {
            Ok(r) => r,
            Err(e) => {
                let _ = sandbox.remove_container(&cid).await;
                if let Some(p) = &host_rootfs {
                    unmount_rootfs(p);
                }
                return Err(internal(format!("opening the stdio fifos: {e}")));
            }
        };
        let pid = created.pid;
        let mut init = Proc::new(stdio.clone());
        init.pid = pid;
        init.relays = Some(relays);
        let mut state = self.inner.state.lock().await;
        state.containers.insert(
            cid.clone(),
            Container {
                bundle: bundle.clone(),
                host_rootfs,
                init,
                execs: HashMap::new(),
                timings: (booted, created),
            },
        );
        self.inner.events.send(
            TASK_CREATE_EVENT_TOPIC,
            TaskCreate {
                container_id: cid.clone(),
                bundle: req.bundle.clone(),
                // Everyone subscribed to containerd's events sees this: never the nydusd
                // configuration (registry credentials) inside an extraoption.
                rootfs: req
                    .rootfs
                    .iter()
                    .map(|m| {
                        let mut m = m.clone();
                        m.options = crate::rootfs::redact_options(&m.options);
                        m
                    })
                    .collect(),
                io: MessageField::some(TaskIO {
                    stdin: stdio.stdin,
                    stdout: stdio.stdout,
                    stderr: stdio.stderr,
                    terminal: stdio.terminal,
                    ..Default::default()
                }),
                checkpoint: req.checkpoint.clone(),
                pid,
                ..Default::default()
            },
        );
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let agent = self.agent().await?;
        let (boot, created, exec_spec, stdio) = {
            let mut state = self.inner.state.lock().await;
            let c = state.container_mut(&req.id)?;
            let (boot, created) = c.timings;
            let p = c.process_mut(&req.exec_id)?;
            if p.status != TaskStatus::CREATED || p.starting {
                return Err(status_error(
                    Code::FAILED_PRECONDITION,
                    format!("process is {}, not created", status_name(p.status)),
                ));
            }
            p.starting = true;
            (boot, created, p.exec_spec.clone(), p.stdio.clone())
        };
        // The guest call runs without the table locked.
        let started: TtrpcResult<(u32, Option<Relays>)> = if req.exec_id.is_empty() {
            let t = std::time::Instant::now();
            match agent.start_container(&req.id).await {
                Ok(()) => {
                    log_timings(&req.id, boot, created, t.elapsed());
                    Ok((0, None))
                }
                Err(e) => Err(internal(e)),
            }
        } else {
            match agent
                .exec_process(&req.id, &req.exec_id, exec_spec.unwrap_or_default())
                .await
            {
                Ok(pid) => {
                    let relays = match Relays::start(&agent, &req.id, &req.exec_id, &stdio).await {
                        Ok(r) => Some(r),
                        Err(e) => {
                            log::warn!("stdio of exec {}: {e}", req.exec_id);
                            None
                        }
                    };
                    Ok((pid, relays))
                }
                Err(e) => Err(internal(e)),
            }
        };
        let mut state = self.inner.state.lock().await;
        let p = state.container_mut(&req.id)?.process_mut(&req.exec_id)?;
        p.starting = false;
        if started.is_err() && self.inner.pod_failure.borrow().is_some() {
            self.lose(&req.id, &req.exec_id, p);
        }
        let (exec_pid, relays) = started?;
        p.status = TaskStatus::RUNNING;
        if req.exec_id.is_empty() {
            self.inner.events.send(
                TASK_START_EVENT_TOPIC,
                TaskStart {
                    container_id: req.id.clone(),
                    pid: p.pid,
                    ..Default::default()
                },
            );
        } else {
            p.pid = exec_pid;
            p.exec_spec = None;
            p.relays = relays;
            self.inner.events.send(
                TASK_EXEC_STARTED_EVENT_TOPIC,
                TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid: exec_pid,
                    ..Default::default()
                },
            );
        }
        let pid = p.pid;
        drop(state);
        self.watch_exit(agent, req.id.clone(), req.exec_id.clone(), pid);
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let mut state = self.inner.state.lock().await;
        let c = state.container_mut(&req.id)?;
        if !req.exec_id.is_empty() {
            let p = c.process(&req.exec_id)?;
            if p.status == TaskStatus::RUNNING || p.starting {
                return Err(status_error(
                    Code::FAILED_PRECONDITION,
                    format!("exec {} is still running", req.exec_id),
                ));
            }
            let exit = p.exit().unwrap_or_default();
            let pid = p.pid;
            let started = p.status != TaskStatus::CREATED;
            c.execs.remove(&req.exec_id);
            drop(state);
            if started {
                // The agent keeps an exec's entry, buffers and pipes until it is removed.
                if let Ok(agent) = self.agent().await {
                    if let Err(e) = agent.remove_process(&req.id, &req.exec_id).await {
                        if !e.is_not_found() {
                            log::warn!("removing exec {} of {}: {e}", req.exec_id, req.id);
                        }
                    }
                }
            }
            return Ok(api::DeleteResponse {
                pid,
                exit_status: exit.status,
                exited_at: MessageField::some(exit.timestamp()),
                ..Default::default()
            });
        }
        if c.init.status == TaskStatus::RUNNING
            || c.init.status == TaskStatus::PAUSED
            || c.init.starting
        {
            return Err(status_error(
                Code::FAILED_PRECONDITION,
                format!("container {} is still running: kill it first", req.id),
            ));
        }
        // The last container: the VM ends with it at containerd's Shutdown, which comes
        // next, and DestroySandbox removes it in the guest then (with less to do there
        // for an exited container than a RemoveContainer: no crun delete).
        let last = state.containers.len() == 1;
        drop(state);
        // The guest first: if it cannot remove the container, Delete fails and the task
        // stays, so that containerd (or the kubelet) can retry.
        if let Some(sandbox) = self.inner.pod.lock().await.as_mut().filter(|_| !last) {
            match sandbox.remove_container(&req.id).await {
                Ok(()) | Err(crate::sandbox::SandboxError::NoContainer(_)) => {}
                Err(e) => {
                    log::warn!("removing {} from the sandbox: {e}", req.id);
                    return Err(internal(format!("removing {} from the VM: {e}", req.id)));
                }
            }
        }
        let c = self
            .inner
            .state
            .lock()
            .await
            .containers
            .remove(&req.id)
            .ok_or_else(|| not_found(&req.id))?;
        if let Some(p) = &c.host_rootfs {
            unmount_rootfs(p);
        }
        let exit = c.init.exit().unwrap_or_default();
        self.inner.events.send(
            TASK_DELETE_EVENT_TOPIC,
            TaskDelete {
                container_id: req.id.clone(),
                pid: c.init.pid,
                exit_status: exit.status,
                exited_at: MessageField::some(exit.timestamp()),
                id: req.id.clone(),
                ..Default::default()
            },
        );
        log::info!("deleted {} (bundle {})", req.id, c.bundle.display());
        Ok(api::DeleteResponse {
            pid: c.init.pid,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.timestamp()),
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let state = self.inner.state.lock().await;
        let c = state.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let exit = p.exit();
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.to_string_lossy().into_owned(),
            pid: p.pid,
            status: p.status.into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exit.map(|e| e.status).unwrap_or_default(),
            exited_at: match exit {
                Some(e) => MessageField::some(e.timestamp()),
                None => MessageField::none(),
            },
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let agent = self.agent().await?;
        let pids = agent.list_pids(&req.id).await.map_err(internal)?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| containerd_shim_protos::types::task::ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let agent = self.agent().await?;
        agent.pause_container(&req.id).await.map_err(internal)?;
        let mut state = self.inner.state.lock().await;
        if let Some(c) = state.containers.get_mut(&req.id) {
            c.init.status = TaskStatus::PAUSED;
        }
        self.inner.events.send(
            TASK_PAUSED_EVENT_TOPIC,
            TaskPaused {
                container_id: req.id.clone(),
                ..Default::default()
            },
        );
        Ok(api::Empty::new())
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        let agent = self.agent().await?;
        agent.resume_container(&req.id).await.map_err(internal)?;
        let mut state = self.inner.state.lock().await;
        if let Some(c) = state.containers.get_mut(&req.id) {
            if c.init.status == TaskStatus::PAUSED {
                c.init.status = TaskStatus::RUNNING;
            }
        }
        self.inner.events.send(
            TASK_RESUMED_EVENT_TOPIC,
            TaskResumed {
                container_id: req.id.clone(),
                ..Default::default()
            },
        );
        Ok(api::Empty::new())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(status_error(
            Code::UNIMPLEMENTED,
            "checkpoint is not supported by lazyvm",
        ))
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let agent = self.agent().await?;
        {
            let state = self.inner.state.lock().await;
            let c = state.container(&req.id)?;
            let p = c.process(&req.exec_id)?;
            if p.status == TaskStatus::STOPPED {
                return Err(not_found("process (already finished)"));
            }
        }
        // A process that exits while the signal is on its way is NOT_FOUND, as with runc
        // ("process already finished"): the CRI's StopContainer takes that as success.
        agent
            .signal_process(&req.id, &req.exec_id, req.signal, req.all)
            .await
            .map_err(|e| {
                if e.is_not_found() {
                    not_found("process (already finished)")
                } else {
                    internal(e)
                }
            })?;
        Ok(api::Empty::new())
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        check_id("exec id", &req.exec_id)?;
        let mut state = self.inner.state.lock().await;
        let c = state.container_mut(&req.id)?;
        if c.execs.contains_key(&req.exec_id) {
            return Err(status_error(
                Code::ALREADY_EXISTS,
                format!("exec {} already exists", req.exec_id),
            ));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| status_error(Code::INVALID_ARGUMENT, "exec has no process spec"))?;
        let mut p = Proc::new(StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        });
        p.exec_spec = Some(spec);
        c.execs.insert(req.exec_id.clone(), p);
        self.inner.events.send(
            TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
        );
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let agent = self.agent().await?;
        agent
            .resize_tty(&req.id, &req.exec_id, req.height, req.width)
            .await
            .map_err(internal)?;
        Ok(api::Empty::new())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        let state = self.inner.state.lock().await;
        let c = state.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if req.stdin {
            if let Some(r) = &p.relays {
                r.close_stdin();
            }
        }
        Ok(api::Empty::new())
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let agent = self.agent().await?;
        let resources = req
            .resources
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| status_error(Code::INVALID_ARGUMENT, "update has no resources"))?;
        agent
            .update_container(&req.id, resources)
            .await
            .map_err(internal)?;
        Ok(api::Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let mut rx = {
            let state = self.inner.state.lock().await;
            let c = state.container(&req.id)?;
            c.process(&req.exec_id)?.exit_tx.subscribe()
        };
        let exit = rx
            .wait_for(Option::is_some)
            .await
            .map(|e| e.unwrap_or_default())
            .unwrap_or(Exit {
                status: LOST_STATUS,
                at: None,
            });
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(exit.timestamp()),
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        use containerd_shim_protos::cgroups_v2::metrics as m;
        let agent = self.agent().await?;
        let s = agent.stats_container(&req.id).await.map_err(internal)?;
        let mut metrics = m::Metrics::new();
        if let Some(cpu) = s.cpu.as_ref() {
            metrics.cpu = MessageField::some(m::CPUStat {
                usage_usec: cpu.usage_usec,
                user_usec: cpu.user_usec,
                system_usec: cpu.system_usec,
                nr_periods: cpu.nr_periods,
                nr_throttled: cpu.nr_throttled,
                throttled_usec: cpu.throttled_usec,
                ..Default::default()
            });
        }
        if let Some(mem) = s.memory.as_ref() {
            let stat = |k: &str| mem.stat.get(k).copied().unwrap_or_default();
            metrics.memory = MessageField::some(m::MemoryStat {
                usage: mem.usage,
                usage_limit: mem.limit,
                swap_usage: mem.swap_usage,
                anon: stat("anon"),
                file: stat("file"),
                kernel_stack: stat("kernel_stack"),
                slab: stat("slab"),
                sock: stat("sock"),
                shmem: stat("shmem"),
                file_mapped: stat("file_mapped"),
                file_dirty: stat("file_dirty"),
                pgfault: stat("pgfault"),
                pgmajfault: stat("pgmajfault"),
                ..Default::default()
            });
            metrics.memory_events = MessageField::some(m::MemoryEvents {
                oom_kill: mem.oom_kills,
                ..Default::default()
            });
        }
        if let Some(pids) = s.pids.as_ref() {
            metrics.pids = MessageField::some(m::PidsStat {
                current: pids.current,
                limit: pids.limit,
                ..Default::default()
            });
        }
        let mut any = Any::new();
        any.type_url = "io.containerd.cgroups.v2.Metrics".to_string();
        any.value = metrics.write_to_bytes().map_err(internal)?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let state = self.inner.state.lock().await;
        let task_pid = state
            .containers
            .get(&req.id)
            .map(|c| c.init.pid)
            .unwrap_or_default();
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        let mut pod = self.inner.pod.lock().await;
        // (A create holds `pod` until its container is in the table: checked under it.)
        if !self.inner.state.lock().await.containers.is_empty() {
            // containerd 1.6 calls Shutdown after every Delete: the pod still has containers.
            return Ok(api::Empty::new());
        }
        self.set_agent(None);
        if let Some(sandbox) = pod.take() {
            sandbox.stop().await;
        }
        self.inner.exit.signal();
        Ok(api::Empty::new())
    }
}
