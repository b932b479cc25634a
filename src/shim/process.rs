//! The shim's process table: the pod's containers as containerd sees them, each process
//! a small state machine (created → running → stopped, then deleted) with its stdio
//! relays and its exit.

use std::collections::HashMap;
use std::path::PathBuf;

use containerd_shim::TtrpcResult;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::types::task::Status as TaskStatus;
use tokio::sync::watch;

use super::errors::not_found;
use super::events::{now, timestamp_ns};
use super::stdio::{Relays, StdioPaths};
use crate::sandbox::{Created, StartTimings};

/// The status reported for a process whose VM went away.
pub(super) const LOST_STATUS: u32 = 255;

/// How a process ended.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Exit {
    /// Exit status (128 + signal when killed).
    pub status: u32,
    /// When, in nanoseconds since the epoch (guest clock); `None`: now.
    pub at: Option<u64>,
}

impl Exit {
    /// The exit time as a protobuf timestamp.
    pub fn timestamp(&self) -> Timestamp {
        self.at.map(timestamp_ns).unwrap_or_else(now)
    }
}

/// One process: a container's init (exec id "") or an exec.
#[derive(Debug)]
pub(super) struct Proc {
    /// Guest pid.
    pub pid: u32,
    /// Where it is in its life.
    pub status: TaskStatus,
    /// containerd's fifos.
    pub stdio: StdioPaths,
    /// An exec's OCI process (JSON), until it is started.
    pub exec_spec: Option<Vec<u8>>,
    /// The stdio relays while it runs.
    pub relays: Option<Relays>,
    /// A Start is under way (its guest call runs without the table locked).
    pub starting: bool,
    /// Its exit, once known; Wait subscribes to it.
    pub exit_tx: watch::Sender<Option<Exit>>,
}

impl Proc {
    /// A created process with `stdio`.
    pub fn new(stdio: StdioPaths) -> Proc {
        Proc {
            pid: 0,
            status: TaskStatus::CREATED,
            stdio,
            exec_spec: None,
            relays: None,
            starting: false,
            exit_tx: watch::channel(None).0,
        }
    }

    /// Its exit, once known.
    pub fn exit(&self) -> Option<Exit> {
        *self.exit_tx.borrow()
    }
}

/// A container of the pod.
#[derive(Debug)]
pub(super) struct Container {
    /// containerd's bundle directory.
    pub bundle: PathBuf,
    /// The rootfs we mounted on the host (`<bundle>/rootfs`), to unmount on delete.
    pub host_rootfs: Option<PathBuf>,
    /// Its init process (exec id "").
    pub init: Proc,
    /// Its exec processes by exec id.
    pub execs: HashMap<String, Proc>,
    /// The sandbox's start timings (if this container booted it) and its own create.
    pub timings: (Option<StartTimings>, Created),
}

impl Container {
    /// Process `exec_id` (empty: the init).
    pub fn process(&self, exec_id: &str) -> TtrpcResult<&Proc> {
        if exec_id.is_empty() {
            Ok(&self.init)
        } else {
            self.execs
                .get(exec_id)
                .ok_or_else(|| not_found(&format!("exec {exec_id}")))
        }
    }

    /// Process `exec_id`, mutable.
    pub fn process_mut(&mut self, exec_id: &str) -> TtrpcResult<&mut Proc> {
        if exec_id.is_empty() {
            Ok(&mut self.init)
        } else {
            self.execs
                .get_mut(exec_id)
                .ok_or_else(|| not_found(&format!("exec {exec_id}")))
        }
    }
}

/// The pod's containers by id.
#[derive(Default)]
pub(super) struct State {
    /// The containers.
    pub containers: HashMap<String, Container>,
}

impl State {
    /// Container `id`, or NOT_FOUND.
    pub fn container(&self, id: &str) -> TtrpcResult<&Container> {
        self.containers
            .get(id)
            .ok_or_else(|| not_found(&format!("container {id}")))
    }

    /// Container `id`, mutable, or NOT_FOUND.
    pub fn container_mut(&mut self, id: &str) -> TtrpcResult<&mut Container> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| not_found(&format!("container {id}")))
    }
}

/// The status's name, for errors.
pub(super) fn status_name(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::CREATED => "created",
        TaskStatus::RUNNING => "running",
        TaskStatus::STOPPED => "stopped",
        TaskStatus::PAUSED => "paused",
        _ => "unknown",
    }
}
