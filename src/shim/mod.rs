//! The containerd shim v2 (`io.containerd.lazyvm.v2`): one shim process per pod.
//!
//! - [`LazyvmShim`] answers containerd's `start` (one shim per pod, grouped by the
//!   `io.kubernetes.cri.sandbox-id` annotation) and `delete` (cleanup when the shim daemon
//!   is gone), and runs the daemon;
//! - [`task`] is the task service: containerd's 17 task calls on top of a
//!   [`crate::sandbox::Sandbox`];
//! - `process` is the process table (containers, their processes and exits); `rootfs`
//!   turns containerd's rootfs mounts into the sandbox's; `errors` holds the ttrpc
//!   statuses and the id rule checked at the edge;
//! - [`stdio`] relays containerd's fifos to and from the guest processes;
//! - [`events`] publishes task events to containerd, in order.

mod errors;
pub mod events;
mod process;
mod rootfs;
pub mod stdio;
pub mod task;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config as ShimConfig, Error, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use oci_spec::runtime::Spec;

pub use task::TaskService;

/// The runtime id containerd knows lazyvm by.
pub const RUNTIME_ID: &str = "io.containerd.lazyvm.v2";
/// The annotation grouping a pod's containers into one shim and one VM.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// The sandbox (pod) a container belongs to: its `io.kubernetes.cri.sandbox-id`
/// annotation, else the container itself.
pub fn sandbox_id_of(spec: Option<&Spec>, container_id: &str) -> String {
    spec.and_then(|s| s.annotations().as_ref())
        .and_then(|a| a.get(SANDBOX_ID_ANNOTATION))
        .filter(|v| !v.is_empty())
        .cloned()
        .unwrap_or_else(|| container_id.to_string())
}

/// The shim.
#[derive(Clone)]
pub struct LazyvmShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
}

#[async_trait]
impl Shim for LazyvmShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, config: &mut ShimConfig) -> Self {
        // Container processes live in the VM: the only children are our helpers, reaped by
        // their watchers. A reaper taking every child would steal their exit statuses.
        config.no_reaper = true;
        config.no_sub_reaper = true;
        LazyvmShim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        // containerd runs `start` in the bundle directory.
        let spec = Spec::load("config.json").ok();
        let grouping = sandbox_id_of(spec.as_ref(), &opts.id);
        let address = spawn(opts, &grouping, Vec::new()).await?;
        containerd_shim::asynchronous::util::write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let bundle = std::env::current_dir().map_err(|e| Error::Other(e.to_string()))?;
        let spec = Spec::load(bundle.join("config.json")).ok();
        let sandbox_id = sandbox_id_of(spec.as_ref(), &self.id);
        // Blocking work (waiting for killed helpers, unmounting): off the async workers.
        let cleanup = bundle.clone();
        tokio::task::spawn_blocking(move || cleanup_dead_shim(&cleanup, &sandbox_id))
            .await
            .map_err(|e| Error::Other(e.to_string()))?;
        let mut resp = DeleteResponse::new();
        // As runc's shim: the task was killed with the shim.
        resp.exit_status = 128 + 9;
        resp.exited_at = containerd_shim_protos::protobuf::MessageField::some(events::now());
        Ok(resp)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        TaskService::new(&self.namespace, self.exit.clone(), publisher)
    }
}

/// containerd's `delete` action: when the pod's shim is gone, kills the sandbox's helpers
/// by their recorded pids, unmounts, removes the sandbox directory and unmounts the
/// bundle's rootfs. While the shim lives (containerd also runs `delete` when it merely
/// closes its connection for a deleted task), the shim cleans up itself: nothing is done.
fn cleanup_dead_shim(bundle: &Path, sandbox_id: &str) {
    let dir = crate::sandbox::sandbox_dir(Path::new(crate::sandbox::RUN_DIR), sandbox_id);
    if crate::sandbox::owner_alive(&dir) {
        log::info!("delete: the shim of sandbox {sandbox_id} is alive: nothing to clean");
        return;
    }
    crate::sandbox::kill_recorded(&dir);
    if let Err(e) = crate::mounts::remove_dir_unmounted(&dir) {
        log::warn!("removing {}: {e}", dir.display());
    }
    rootfs::unmount_rootfs(&bundle.join("rootfs"));
}

/// Runs the shim binary (`containerd-shim-lazyvm-v2`).
pub async fn main() {
    // containerd 2.x asks a shim what it is (`-info`) before it starts one.
    if std::env::args()
        .skip(1)
        .any(|a| a == "-info" || a == "--info")
    {
        use std::io::Write;
        let mut stdout = std::io::stdout();
        let written = stdout
            .write_all(&runtime_info())
            .and_then(|()| stdout.flush());
        std::process::exit(i32::from(written.is_err()));
    }
    containerd_shim::asynchronous::run::<LazyvmShim>(RUNTIME_ID, None).await;
}

/// The `RuntimeInfo` protobuf `-info` prints: the shim's name and version. (No OCI
/// runtime features: the runtime is in the guest, and containerd only uses them to turn
/// on optional mount kinds.)
fn runtime_info() -> Vec<u8> {
    use containerd_shim_protos::protobuf::{Message, MessageField};
    use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};
    let info = RuntimeInfo {
        name: "containerd-shim-lazyvm-v2".into(),
        version: MessageField::some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    info.write_to_bytes().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_names_the_shim() {
        use containerd_shim_protos::protobuf::Message;
        use containerd_shim_protos::types::introspection::RuntimeInfo;
        let info = RuntimeInfo::parse_from_bytes(&runtime_info()).unwrap();
        assert_eq!(info.name, "containerd-shim-lazyvm-v2");
        assert_eq!(info.version.version, env!("CARGO_PKG_VERSION"));
    }
}
