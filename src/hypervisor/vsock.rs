//! `vhost-device-vsock`: the vhost-user vsock device (rust-vmm) behind QEMU's
//! `vhost-user-vsock-device` (`-pci` with machine `pc`). The host reaches the guest
//! through its hybrid vsock unix socket (`CONNECT <port>\n`). It does not exit when the VM does: it is stopped by pid.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::process::Command;

use crate::process::{OnExit, ProcessError, Supervised};

/// The guest's vsock context id (each VM has its own device process, so all use 3).
pub const GUEST_CID: u32 = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(5);
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Why vhost-device-vsock could not be started.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The binary is missing.
    #[error("vhost-device-vsock {0:?} does not exist (run `make deps`)")]
    Binary(PathBuf),
    /// Spawning or stopping failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// It exited before creating its socket.
    #[error("vhost-device-vsock exited during start ({status}): {output}")]
    ExitedEarly {
        /// How it exited.
        status: std::process::ExitStatus,
        /// Its last output.
        output: String,
    },
    /// It did not create its socket in time.
    #[error("vhost-device-vsock did not create {0:?} within {READY_TIMEOUT:?}")]
    NotReady(PathBuf),
}

/// A running vhost-device-vsock.
#[derive(Debug)]
pub struct VhostVsock {
    process: Supervised,
    socket: PathBuf,
    uds_path: PathBuf,
}

impl VhostVsock {
    /// Starts `binary` with the vhost-user socket `socket` (for QEMU) and the hybrid vsock
    /// socket `uds_path` (for us), and waits until QEMU can connect.
    pub async fn start(
        binary: &Path,
        socket: &Path,
        uds_path: &Path,
        on_exit: Option<OnExit>,
    ) -> Result<Self, VsockError> {
        if !binary.is_file() {
            return Err(VsockError::Binary(binary.to_path_buf()));
        }
        let mut cmd = Command::new(binary);
        cmd.arg(format!("--guest-cid={GUEST_CID}"))
            .arg("--socket")
            .arg(socket)
            .arg("--uds-path")
            .arg(uds_path);
        let process = Supervised::spawn("vhost-device-vsock", &mut cmd, on_exit)?;
        let mut vsock = VhostVsock {
            process,
            socket: socket.to_path_buf(),
            uds_path: uds_path.to_path_buf(),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = vsock.process.exit_status() {
                let output = vsock.process.output_tail();
                vsock.stop().await;
                return Err(VsockError::ExitedEarly { status, output });
            }
            if vsock.socket.exists() {
                return Ok(vsock);
            }
            if Instant::now() >= deadline {
                vsock.stop().await;
                return Err(VsockError::NotReady(socket.to_path_buf()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Takes over a running vhost-device-vsock another process started with these sockets
    /// (the VM cache): `process` is it, adopted.
    pub fn adopt(process: Supervised, socket: &Path, uds_path: &Path) -> Self {
        VhostVsock {
            process,
            socket: socket.to_path_buf(),
            uds_path: uds_path.to_path_buf(),
        }
    }

    /// Lets it run on for another owner; returns a pidfd of it.
    pub fn release(mut self) -> io::Result<std::os::fd::OwnedFd> {
        self.process.release()
    }

    /// A handle that SIGKILLs the process by its pidfd (see
    /// [`crate::process::Supervised::kill_handle`]).
    pub fn kill_handle(&self) -> Option<crate::process::KillHandle> {
        self.process.kill_handle()
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The hybrid vsock socket the host connects to.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Stops it (SIGTERM, then SIGKILL) and removes its sockets.
    pub async fn stop(&mut self) {
        if let Err(e) = self.process.terminate(STOP_GRACE).await {
            log::warn!("stopping vhost-device-vsock: {e}");
        }
        for path in [&self.socket, &self.uds_path] {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("removing {}: {e}", path.display()),
            }
        }
    }
}
