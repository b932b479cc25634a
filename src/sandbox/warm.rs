//! Booted VMs handed from the VM cache ([`crate::vmcache`]) to a shim.
//!
//! The cache boots a VM as a sandbox would ([`Sandbox::boot_warm`]: nydusd,
//! vhost-device-vsock, QEMU, until the agent answers) in a directory of the run directory
//! no sandbox key can name (`.warm-…`), with the helpers' output in a file there, not a
//! pipe to the cache. To hand it over ([`Sandbox::hand_over`]) it renames the directory
//! to the claiming shim's sandbox directory, records the shim as its owner (so a dead
//! shim's cleanup finds and kills the helpers), and lets go of the helpers: it stays
//! their parent and reaps them, and passes pidfds of them. The shim adopts them
//! ([`Sandbox::claim`]): it watches and signals them through the pidfds, connects to the
//! agent and sends CreateSandbox. From then on the sandbox is the shim's as if it had
//! booted it.
//!
//! Every cached VM has one NIC, on a tap parked in a network namespace of its own
//! ([`ParkedTap`]). A pod's claim sends the pod's network namespace along: the cache moves
//! the tap into it and passes the tap's descriptor, and the shim connects it to the pod's
//! interface as it would a tap of its own ([`PodNetwork::adopt`]); the agent gives the
//! guest NIC the interface's MAC. A claim without a network drops the tap (its namespace
//! ends with it).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{exit_hook, sandbox_dir, Sandbox, SandboxError, SandboxSpec};
use crate::agent::AgentClient;
use crate::beneath::Beneath;
use crate::config::Config;
use crate::hypervisor::qemu::VmUser;
use crate::hypervisor::{Qemu, VhostVsock};
use crate::network::{ParkedTap, PodNetwork};
use crate::nydusd::Nydusd;
use crate::process::Supervised;

/// The file in a cached VM's directory its helpers write their output to.
pub const HELPERS_LOG: &str = "helpers.log";
/// How long a claimed VM's agent may take to answer: it was answering already.
const CLAIM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A booted VM on its way from the cache to a shim.
#[derive(Debug)]
pub struct Handoff {
    /// Its directory: the claiming shim's sandbox directory.
    pub dir: PathBuf,
    /// The pids of nydusd, vhost-device-vsock and QEMU.
    pub pids: [u32; 3],
    /// pidfds of them, in the same order.
    pub pidfds: Vec<OwnedFd>,
    /// Who QEMU runs as.
    pub vm_user: Option<VmUser>,
    /// For a pod: the VM's tap, in the pod's network namespace, and its NIC's MAC.
    pub nic: Option<(OwnedFd, String)>,
}

impl Handoff {
    /// SIGKILLs the helpers (for a handoff nobody can take).
    pub fn kill(&self) {
        for fd in &self.pidfds {
            let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
        }
    }

    /// Kills the helpers, waits for them to go and removes the directory: for a VM handed
    /// to a claimer that is gone.
    pub async fn discard(self) {
        self.kill();
        let dir = self.dir;
        let _ = tokio::task::spawn_blocking(move || {
            super::kill_recorded(&dir);
            if let Err(e) = crate::mounts::remove_dir_unmounted(&dir) {
                log::warn!("removing {}: {e}", dir.display());
            }
        })
        .await;
    }
}

impl Sandbox {
    /// Boots a VM for the cache in `<run_dir>/<name>`: as [`Sandbox::start`] up to the
    /// agent's answer, without CreateSandbox, with one NIC on a parked tap
    /// ([`ParkedTap`]). The helpers write their output to [`HELPERS_LOG`] there.
    pub async fn boot_warm(
        config: Config,
        run_dir: &Path,
        name: &str,
    ) -> Result<Sandbox, SandboxError> {
        let mut spec = SandboxSpec::new(name, config);
        spec.run_dir = run_dir.to_path_buf();
        let dir = run_dir.join(name);
        let log = dir.join(HELPERS_LOG);
        let parked = ParkedTap::new(&parked_mac(name))?;
        crate::process::with_output_file(log, Sandbox::start_at(&spec, dir, Some(parked))).await
    }

    /// Whether a helper of this sandbox died on its own.
    pub fn has_failed(&self) -> bool {
        self.failed.borrow().is_some()
    }

    /// Hands this booted VM to the process `owner` for its sandbox key `key`: renames the
    /// directory to `<run dir>/<key>` (never over an existing one), records `owner` as its
    /// owner, moves its NIC's tap into the pod's network namespace `netns` (a pod's claim)
    /// or drops it, and lets go of the helpers. On failure the sandbox is stopped and
    /// removed.
    pub async fn hand_over(
        mut self,
        key: &str,
        owner: u32,
        netns: Option<OwnedFd>,
    ) -> Result<Handoff, SandboxError> {
        let target = match self.dir.parent() {
            Some(run_dir) => run_dir.join(key),
            None => return Err(SandboxError::Claim("the VM has no run directory".into())),
        };
        if super::sandbox_key(key) != key || self.has_failed() {
            self.teardown().await;
            return Err(SandboxError::Claim(format!(
                "sandbox key {key:?} is not a key, or the VM failed"
            )));
        }
        if let Err(e) = rustix::fs::renameat_with(
            rustix::fs::CWD,
            &self.dir,
            rustix::fs::CWD,
            &target,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            self.teardown().await;
            return Err(if e == rustix::io::Errno::EXIST {
                SandboxError::Exists(target)
            } else {
                SandboxError::Dir {
                    path: target,
                    source: e.into(),
                }
            });
        }
        self.moved_to(target);
        self.write_pids(owner);
        let parked = self.parked.take();
        let nic = match (netns, parked) {
            (Some(netns), Some(parked)) => {
                let mac = parked.mac().to_string();
                match parked.move_to(std::os::fd::AsFd::as_fd(&netns)).await {
                    Ok(tap) => Some((tap, mac)),
                    Err(e) => {
                        self.teardown().await;
                        return Err(e.into());
                    }
                }
            }
            (Some(_), None) => {
                self.teardown().await;
                return Err(SandboxError::Claim("the VM has no NIC for the pod".into()));
            }
            // Its namespace ends, and the tap with it: the NIC leads nowhere.
            (None, parked) => {
                drop(parked);
                None
            }
        };
        if let Some(follower) = self.console_follower.take() {
            follower.abort();
        }
        self.host = None;
        let pids = [
            self.nydusd.as_ref().map(Nydusd::pid),
            self.vsock.as_ref().map(VhostVsock::pid),
            self.qemu.as_ref().map(Qemu::pid),
        ];
        let [Some(n), Some(v), Some(q)] = pids else {
            self.teardown().await;
            return Err(SandboxError::Claim("the VM lacks a helper".into()));
        };
        let fds = (|| -> std::io::Result<Vec<OwnedFd>> {
            // Each release is final: a helper let go of is no longer ours to stop.
            let n = self.nydusd.take().map(Nydusd::release).transpose()?;
            let v = self.vsock.take().map(VhostVsock::release).transpose()?;
            let q = self.qemu.take().map(Qemu::release).transpose()?;
            Ok([n, v, q].into_iter().flatten().collect())
        })();
        let handoff = Handoff {
            dir: self.dir.clone(),
            pids: [n, v, q],
            pidfds: Vec::new(),
            vm_user: self.vm_user.clone(),
            nic,
        };
        match fds {
            Ok(pidfds) if pidfds.len() == 3 => Ok(Handoff { pidfds, ..handoff }),
            other => {
                // Unreachable in practice (a pidfd that cannot be duplicated): whatever
                // was let go of is killed by pid, which was ours a moment ago.
                for pid in handoff.pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                self.teardown().await;
                Err(SandboxError::Claim(format!(
                    "letting go of the helpers: {:?}",
                    other.err()
                )))
            }
        }
    }

    /// Takes over the VM of `handoff` as sandbox `spec`: adopts its helpers, connects to
    /// its agent and sends CreateSandbox. On failure everything of it is stopped and its
    /// directory removed.
    pub(super) async fn claim(
        spec: &SandboxSpec,
        handoff: Handoff,
    ) -> Result<Sandbox, SandboxError> {
        let started = Instant::now();
        let dir = sandbox_dir(&spec.run_dir, &spec.id);
        if handoff.dir != dir || handoff.pidfds.len() != 3 {
            handoff.kill();
            return Err(SandboxError::Claim(format!(
                "the cache handed over {:?} with {} helpers, not {dir:?} with 3",
                handoff.dir,
                handoff.pidfds.len()
            )));
        }
        let (mut sandbox, fail_tx) = Sandbox::empty(&spec.id, dir);
        sandbox.vm_user = handoff.vm_user.clone();
        sandbox.timings.cached = true;
        let console = sandbox.console_path();
        let output = Some(sandbox.dir.join(HELPERS_LOG));
        let Handoff {
            pids, pidfds, nic, ..
        } = handoff;
        // Each helper's process name, and its name in the reason the sandbox fails with.
        let names = [
            ("nydusd", "nydusd"),
            ("vhost-device-vsock", "vhost-device-vsock"),
            ("qemu", "QEMU"),
        ];
        let mut adopted = Vec::with_capacity(3);
        let mut error = None;
        for ((pid, fd), (name, what)) in pids.into_iter().zip(pidfds).zip(names) {
            let hook = Some(exit_hook(&fail_tx, &console, what));
            match Supervised::adopt(name, pid, fd, output.clone(), hook) {
                Ok(p) => adopted.push(p),
                Err(e) => {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    error = Some(e.to_string());
                }
            }
        }
        if error.is_none() {
            let mut it = adopted.into_iter();
            if let (Some(n), Some(v), Some(q)) = (it.next(), it.next(), it.next()) {
                sandbox.nydusd = Some(Nydusd::adopt(&sandbox.nydusd_config(&spec.config), n));
                let files = sandbox.vm_files();
                sandbox.vsock = Some(VhostVsock::adopt(
                    v,
                    &files.vhost_vsock,
                    &sandbox.dir.join("vsock.sock"),
                ));
                sandbox.qemu = Some(Qemu::adopt(q, files));
            }
        }
        sandbox.record_pids();
        let result = match error {
            Some(e) => Err(SandboxError::Claim(format!("adopting the helpers: {e}"))),
            None => sandbox.take_over(spec, nic, started).await,
        };
        match result {
            Ok(()) => {
                log::info!(
                    "sandbox {} ready in {:?} (a VM from the cache)",
                    sandbox.id,
                    sandbox.timings.total
                );
                Ok(sandbox)
            }
            Err(e) => {
                sandbox.teardown().await;
                Err(e)
            }
        }
    }

    async fn take_over(
        &mut self,
        spec: &SandboxSpec,
        nic: Option<(OwnedFd, String)>,
        started: Instant,
    ) -> Result<(), SandboxError> {
        self.host = Some(Beneath::open(&self.private)?);
        if spec.config.debug {
            self.console_follower = Some(tokio::spawn(super::follow_console(self.console_path())));
        }
        let agent = AgentClient::connect(
            &self.dir.join("vsock.sock"),
            lazyvm_proto::AGENT_VSOCK_PORT,
            CLAIM_CONNECT_TIMEOUT,
        )
        .await?;
        self.timings.vm_boot = started.elapsed();
        match (&spec.netns, nic) {
            (Some(netns), Some((tap, mac))) => {
                self.network = Some(PodNetwork::adopt(netns, tap, &mac).await?);
            }
            (Some(_), None) => {
                return Err(SandboxError::Claim(
                    "the cache sent no NIC for the pod".into(),
                ))
            }
            (None, _) => {}
        }
        self.create(agent, spec).await?;
        self.timings.total = started.elapsed();
        Ok(())
    }
}

/// The MAC of the NIC of the cache's VM `name`: locally administered, unicast, from the
/// name (unique among the cache's VMs).
fn parked_mac(name: &str) -> String {
    let h = super::fnv1a(name).to_be_bytes();
    format!("02:6c:7a:{:02x}:{:02x}:{:02x}", h[5], h[6], h[7])
}
