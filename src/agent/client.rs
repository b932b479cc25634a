//! A client of the guest agent, over vhost-device-vsock's hybrid vsock socket: connect to
//! the unix socket, write `CONNECT <port>\n`, read `OK <port>\n`, then speak ttrpc.
//! Connecting retries while the guest boots; every call has a bounded timeout except the
//! ones that wait for the guest by design (wait, read, OOM events).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lazyvm_proto::agent::{self as pb};
use lazyvm_proto::agent_ttrpc::AgentClient as RawClient;
use lazyvm_proto::ttrpc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::network::{GuestNetwork, IpNet};

/// The timeout of ordinary calls.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The first pause between connect attempts (the guest refused: not listening yet); it
/// doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_millis(200);
/// How long the first Health call on a fresh connection may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// The host end of the agent's "I listen" signal: once its server is up, the agent
/// connects to the host's vsock port [`lazyvm_proto::AGENT_READY_VSOCK_PORT`], which
/// vhost-device-vsock hands to the unix socket `<uds>_<port>` bound here. The socket
/// file goes when this is dropped.
pub struct ReadySignal {
    listener: UnixListener,
    path: PathBuf,
}

impl ReadySignal {
    /// Binds the signal's socket beside the hybrid vsock socket `uds` (before the VM
    /// starts, so the signal cannot be missed).
    pub fn bind(uds: &Path) -> std::io::Result<Self> {
        let mut path = uds.as_os_str().to_owned();
        path.push(format!("_{}", lazyvm_proto::AGENT_READY_VSOCK_PORT));
        let path = PathBuf::from(path);
        let listener = UnixListener::bind(&path)?;
        Ok(ReadySignal { listener, path })
    }

    /// Waits for the agent's signal (the connection itself; nothing is read from it). A
    /// failed accept ends the wait too: the next attempt then comes at once, as after a
    /// signal.
    async fn wait(&self) {
        let _ = self.listener.accept().await;
    }
}

impl Drop for ReadySignal {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Why talking to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent could not be reached in time.
    #[error("the guest agent was not reachable through {path:?} within {timeout:?}: {last}")]
    Connect {
        /// The hybrid vsock socket.
        path: PathBuf,
        /// The connect timeout.
        timeout: Duration,
        /// The last attempt's error.
        last: String,
    },
    /// The agent answered with an error.
    #[error("agent {what}: {message}")]
    Rpc {
        /// The call.
        what: &'static str,
        /// The ttrpc status code (e.g. `NOT_FOUND`) or the transport error kind.
        code: String,
        /// The agent's message.
        message: String,
    },
}

impl AgentError {
    /// Whether the agent answered NOT_FOUND (no such container or process, or the
    /// process has exited).
    pub fn is_not_found(&self) -> bool {
        matches!(self, AgentError::Rpc { code, .. } if code == "NOT_FOUND")
    }
}

/// How a guest process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    /// Exit code, or 128 + signal number.
    pub status: i32,
    /// Exit time, nanoseconds since the Unix epoch (guest clock).
    pub exited_at_ns: u64,
}

/// A connected agent client. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct AgentClient {
    raw: RawClient,
}

impl AgentClient {
    /// The generated ttrpc client under this one, for calls that want the raw messages
    /// and status codes (tests, diagnostics).
    pub fn raw(&self) -> &RawClient {
        &self.raw
    }
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentClient")
    }
}

fn ctx(timeout: Option<Duration>) -> ttrpc::context::Context {
    match timeout {
        Some(t) => ttrpc::context::with_timeout(t.as_nanos() as i64),
        None => ttrpc::context::Context::default(),
    }
}

fn rpc_error(what: &'static str) -> impl FnOnce(ttrpc::Error) -> AgentError {
    move |e| match e {
        ttrpc::Error::RpcStatus(s) => AgentError::Rpc {
            what,
            code: format!("{:?}", s.code()),
            message: s.message().to_string(),
        },
        other => AgentError::Rpc {
            what,
            code: "TRANSPORT".into(),
            message: other.to_string(),
        },
    }
}

async fn handshake(path: &Path, port: u32) -> std::io::Result<UnixStream> {
    let mut stream = UnixStream::connect(path).await?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    // Read the answer byte by byte: what follows the line is ttrpc's.
    let mut reader = BufReader::with_capacity(1, &mut stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    if line.starts_with("OK ") {
        Ok(stream)
    } else if line.is_empty() {
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "the guest closed the connection (agent not listening yet)",
        ))
    } else {
        Err(std::io::Error::other(format!(
            "unexpected handshake answer {:?}",
            line.trim_end()
        )))
    }
}

impl AgentClient {
    /// Connects to the agent on vsock `port` through the hybrid vsock socket `path`,
    /// retrying while the guest refuses (its agent is not listening yet) until
    /// `timeout`, and checks it with a health call.
    ///
    /// A handshake in flight is never abandoned before `timeout`: the answer to
    /// `CONNECT` is the guest's, and it can be slow to come while the guest boots (under
    /// TCG, with other VMs booting). Closing the socket before it came (after 1 s, as
    /// this did) left vhost-device-vsock 0.3.0 with a half-made connection, after which
    /// the VM never completed a handshake: 18 of 200 VMs booted 10 at a time had to be
    /// booted again, 3 of 200 since.
    pub async fn connect(path: &Path, port: u32, timeout: Duration) -> Result<Self, AgentError> {
        Self::connect_signalled(path, port, timeout, None).await
    }

    /// As [`AgentClient::connect`], and the pause between two attempts ends as soon as
    /// the agent signals through `ready` that it listens (the signal is then dropped,
    /// its socket removed).
    pub async fn connect_signalled(
        path: &Path,
        port: u32,
        timeout: Duration,
        mut ready: Option<ReadySignal>,
    ) -> Result<Self, AgentError> {
        let deadline = Instant::now() + timeout;
        let mut pause = RETRY_FIRST;
        let mut last: String;
        loop {
            let attempt = async {
                let left = deadline.saturating_duration_since(Instant::now());
                let stream = tokio::time::timeout(left, handshake(path, port))
                    .await
                    .map_err(|_| "the handshake got no answer".to_string())?
                    .map_err(|e| e.to_string())?;
                let client = AgentClient {
                    raw: RawClient::new(ttrpc::r#async::Client::new(
                        ttrpc::asynchronous::transport::Socket::new(stream),
                    )),
                };
                client
                    .health_within(HEALTH_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(client)
            };
            match attempt.await {
                Ok(client) => return Ok(client),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                return Err(AgentError::Connect {
                    path: path.to_path_buf(),
                    timeout,
                    last,
                });
            }
            let signalled = match &ready {
                Some(signal) => tokio::select! {
                    _ = tokio::time::sleep(pause) => false,
                    _ = signal.wait() => true,
                },
                None => {
                    tokio::time::sleep(pause).await;
                    false
                }
            };
            if signalled {
                ready = None;
            } else {
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }

    async fn health_within(&self, t: Duration) -> Result<pb::HealthResponse, AgentError> {
        self.raw
            .health(ctx(Some(t)), &pb::HealthRequest::new())
            .await
            .map_err(rpc_error("Health"))
    }

    /// The agent's version and the guest kernel release.
    pub async fn health(&self) -> Result<(String, String), AgentError> {
        let r = self.health_within(CALL_TIMEOUT).await?;
        Ok((r.version, r.kernel))
    }

    /// The agent's footprint: resident bytes, open file descriptors, tracked processes.
    pub async fn footprint(&self) -> Result<(u64, u32, u32), AgentError> {
        let r = self.health_within(CALL_TIMEOUT).await?;
        Ok((r.rss_bytes, r.open_fds, r.tracked_processes))
    }

    /// Prepares the sandbox: hostname, virtio-fs share, the pod's `/dev/shm` tmpfs of
    /// `shm_size` bytes (0: the agent's default).
    pub async fn create_sandbox(&self, hostname: &str, shm_size: u64) -> Result<(), AgentError> {
        let req = pb::CreateSandboxRequest {
            hostname: hostname.to_string(),
            shm_size,
            ..Default::default()
        };
        self.raw
            .create_sandbox(ctx(Some(CALL_TIMEOUT)), &req)
            .await
            .map_err(rpc_error("CreateSandbox"))?;
        Ok(())
    }

    /// Configures the pod's network in the guest: interfaces (found by MAC), addresses,
    /// routes, permanent neighbours.
    pub async fn update_network(&self, net: &GuestNetwork) -> Result<(), AgentError> {
        let ip = |n: &IpNet| pb::IpAddress {
            address: n.addr.to_string(),
            prefix_len: u32::from(n.prefix_len),
            ..Default::default()
        };
        let opt = |a: Option<std::net::IpAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        let req = pb::UpdateNetworkRequest {
            interfaces: net
                .interfaces
                .iter()
                .map(|i| pb::Interface {
                    mac: i.mac.clone(),
                    name: i.name.clone(),
                    mtu: i.mtu,
                    addresses: i.addresses.iter().map(ip).collect(),
                    device_mac: i.device_mac.clone().unwrap_or_default(),
                    ..Default::default()
                })
                .collect(),
            routes: net
                .routes
                .iter()
                .map(|r| pb::Route {
                    destination: r.destination.map(|d| d.to_string()).unwrap_or_default(),
                    gateway: opt(r.gateway),
                    device: r.device.clone(),
                    source: opt(r.source),
                    scope: u32::from(r.scope),
                    ..Default::default()
                })
                .collect(),
            neighbors: net
                .neighbors
                .iter()
                .map(|n| pb::Neighbor {
                    address: n.address.to_string(),
                    mac: n.mac.clone(),
                    device: n.device.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        self.raw
            .update_network(ctx(Some(CALL_TIMEOUT)), &req)
            .await
            .map_err(rpc_error("UpdateNetwork"))?;
        Ok(())
    }

    /// Kills and removes every container, unmounts the share.
    pub async fn destroy_sandbox(&self) -> Result<(), AgentError> {
        self.raw
            .destroy_sandbox(ctx(Some(CALL_TIMEOUT)), &pb::DestroySandboxRequest::new())
            .await
            .map_err(rpc_error("DestroySandbox"))?;
        Ok(())
    }

    /// Mounts `storages` and creates the container from the OCI spec (JSON); its `ipc`,
    /// `uts` and `pid` namespace paths mean those of container `sandbox`'s init. Returns
    /// the guest pid of its init process.
    pub async fn create_container(
        &self,
        id: &str,
        storages: Vec<pb::Storage>,
        rootfs: &str,
        oci_spec: Vec<u8>,
        sandbox: Option<&str>,
    ) -> Result<u32, AgentError> {
        let req = pb::CreateContainerRequest {
            container_id: id.to_string(),
            storages,
            rootfs: rootfs.to_string(),
            oci_spec,
            sandbox_container_id: sandbox.unwrap_or_default().to_string(),
            ..Default::default()
        };
        let r = self
            .raw
            .create_container(ctx(Some(CALL_TIMEOUT)), &req)
            .await
            .map_err(rpc_error("CreateContainer"))?;
        Ok(r.pid)
    }

    /// Starts the container's init process.
    pub async fn start_container(&self, id: &str) -> Result<(), AgentError> {
        let req = pb::StartContainerRequest {
            container_id: id.to_string(),
            ..Default::default()
        };
        self.raw
            .start_container(ctx(Some(CALL_TIMEOUT)), &req)
            .await
            .map_err(rpc_error("StartContainer"))?;
        Ok(())
    }

    /// Deletes the container and unmounts its storages.
    pub async fn remove_container(&self, id: &str, force: bool) -> Result<(), AgentError> {
        let req = pb::RemoveContainerRequest {
            container_id: id.to_string(),
            force,
            ..Default::default()
        };
        self.raw
            .remove_container(ctx(Some(CALL_TIMEOUT)), &req)
            .await
            .map_err(rpc_error("RemoveContainer"))?;
        Ok(())
    }

    /// Starts an extra process (OCI process JSON) in a running container.
    pub async fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
    ) -> Result<u32, AgentError> {
        let req = pb::ExecProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            process,
            ..Default::default()
        };
        let r = self
            .raw
            .exec_process(ctx(Some(CALL_TIMEOUT)), &req)
            .await
            .map_err(rpc_error("ExecProcess"))?;
        Ok(r.pid)
    }

    /// Forgets an exited exec process: the agent frees its entry, buffers and pipes.
    pub async fn remove_process(&self, id: &str, exec_id: &str) -> Result<(), AgentError> {
        let req = pb::RemoveProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.raw
            .remove_process(ctx(Some(CALL_TIMEOUT)), &req)
            .await
            .map_err(rpc_error("RemoveProcess"))?;
        Ok(())
    }

    /// Sends `signal` to a process (`exec_id` empty: the init process), or with `all` to
    /// every process of the container.
    pub async fn signal_process(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), AgentError> {
        let req = pb::SignalProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            all,
            ..Default::default()
        };
        self.raw
            .signal_process(ctx(Some(CALL_TIMEOUT)), &req)
            .await
            .map_err(rpc_error("SignalProcess"))?;
        Ok(())
    }

    /// Waits (without timeout) until the process exits.
    pub async fn wait_process(&self, id: &str, exec_id: &str) -> Result<ProcessExit, AgentError> {
        let req = pb::WaitProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        let r = self
            .raw
            .wait_process(ctx(None), &req)
            .await
            .map_err(rpc_error("WaitProcess"))?;
        Ok(ProcessExit {
            status: r.exit_status,
            exited_at_ns: r.exited_at_ns,
        })
    }

    /// Writes `data` to the process's stdin.
    pub async fn write_stdin(
        &self,
        id: &str,
        exec_id: &str,
        data: Vec<u8>,
    ) -> Result<(), AgentError> {
        let req = pb::WriteStreamRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            data,
            ..Default::default()
        };
        self.raw
            .write_stdin(ctx(Some(CALL_TIMEOUT)), &req)
            .await
            .map_err(rpc_error("WriteStdin"))?;
        Ok(())
    }

    /// Closes the process's stdin.
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), AgentError> {
        let req = pb::CloseStdinRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.raw
            .close_stdin(ctx(Some(CALL_TIMEOUT)), &req)
            .await
            .map_err(rpc_error("CloseStdin"))?;
        Ok(())
    }

    /// The next chunk of the process's stdout (`stderr` false) or stderr; empty at the end.
    /// Waits without timeout for data.
    pub async fn read_output(
        &self,
        id: &str,
        exec_id: &str,
        stderr: bool,
    ) -> Result<Vec<u8>, AgentError> {
        let req = pb::ReadStreamRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        let r = if stderr {
            self.raw
                .read_stderr(ctx(None), &req)
                .await
                .map_err(rpc_error("ReadStderr"))?
        } else {
            self.raw
                .read_stdout(ctx(None), &req)
                .await
                .map_err(rpc_error("ReadStdout"))?
        };
        Ok(r.data)
    }

    /// Sets a terminal process's window size.
    pub async fn resize_tty(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), AgentError> {
        let req = pb::TtyWinResizeRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            rows,
            cols,
            ..Default::default()
        };
        self.raw
            .tty_win_resize(ctx(Some(CALL_TIMEOUT)), &req)
            .await
            .map_err(rpc_error("TtyWinResize"))?;
        Ok(())
    }

    /// Freezes the container.
    pub async fn pause_container(&self, id: &str) -> Result<(), AgentError> {
        self.raw
            .pause_container(ctx(Some(CALL_TIMEOUT)), &container_req(id))
            .await
            .map_err(rpc_error("PauseContainer"))?;
        Ok(())
    }

    /// Thaws the container.
    pub async fn resume_container(&self, id: &str) -> Result<(), AgentError> {
        self.raw
            .resume_container(ctx(Some(CALL_TIMEOUT)), &container_req(id))
            .await
            .map_err(rpc_error("ResumeContainer"))?;
        Ok(())
    }

    /// The container's cgroup numbers.
    pub async fn stats_container(
        &self,
        id: &str,
    ) -> Result<pb::StatsContainerResponse, AgentError> {
        self.raw
            .stats_container(ctx(Some(CALL_TIMEOUT)), &container_req(id))
            .await
            .map_err(rpc_error("StatsContainer"))
    }

    /// Changes the container's resources (OCI LinuxResources JSON).
    pub async fn update_container(&self, id: &str, resources: Vec<u8>) -> Result<(), AgentError> {
        let req = pb::UpdateContainerRequest {
            container_id: id.to_string(),
            resources,
            ..Default::default()
        };
        self.raw
            .update_container(ctx(Some(CALL_TIMEOUT)), &req)
            .await
            .map_err(rpc_error("UpdateContainer"))?;
        Ok(())
    }

    /// The guest pids of the container's processes.
    pub async fn list_pids(&self, id: &str) -> Result<Vec<u32>, AgentError> {
        let r = self
            .raw
            .list_pids(ctx(Some(CALL_TIMEOUT)), &container_req(id))
            .await
            .map_err(rpc_error("ListPids"))?;
        Ok(r.pids)
    }

    /// Waits (without timeout) for the next OOM kill; returns the container's id.
    pub async fn oom_event(&self) -> Result<String, AgentError> {
        let r = self
            .raw
            .get_oom_event(ctx(None), &pb::GetOOMEventRequest::new())
            .await
            .map_err(rpc_error("GetOOMEvent"))?;
        Ok(r.container_id)
    }
}

fn container_req(id: &str) -> pb::ContainerRequest {
    pb::ContainerRequest {
        container_id: id.to_string(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Attempts are refused (the agent does not listen yet) until 760 ms, when the agent
    /// signals: the next attempt comes at once, not at the next retry (the pauses have
    /// grown to 200 ms by then).
    #[tokio::test]
    async fn the_ready_signal_ends_the_pause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let ready = ReadySignal::bind(&path).unwrap();
        let signal_path = dir.path().join("vsock.sock_1025");
        assert!(signal_path.exists());
        let start = Instant::now();
        let client = tokio::spawn({
            let path = path.clone();
            async move {
                AgentClient::connect_signalled(&path, 1024, Duration::from_secs(2), Some(ready))
                    .await
            }
        });
        let server = tokio::spawn(async move {
            let mut attempts = Vec::new();
            loop {
                let (s, _) = listener.accept().await.unwrap();
                attempts.push(start.elapsed());
                drop(s);
                if start.elapsed() > Duration::from_millis(1000) {
                    return attempts;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(760)).await;
        let signalled_at = start.elapsed();
        let _agent = UnixStream::connect(&signal_path).await.unwrap();
        let attempts = server.await.unwrap();
        let first_after = attempts
            .iter()
            .find(|t| **t >= signalled_at)
            .expect("an attempt after the signal");
        assert!(
            *first_after - signalled_at < Duration::from_millis(60),
            "first attempt {first_after:?} after the signal at {signalled_at:?}: {attempts:?}"
        );
        assert!(
            !signal_path.exists(),
            "the signal's socket is removed once used"
        );
        client.abort();
    }

    #[tokio::test]
    async fn a_slow_handshake_is_waited_for_not_abandoned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            // The guest answers the first CONNECT after 1.5 s: was the socket closed
            // before that?
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"CONNECT 1024\n");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let closed = matches!(
                tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf)).await,
                Ok(Ok(0))
            );
            // Refuse, as a guest not listening does; later attempts find no one.
            drop(s);
            drop(listener);
            closed
        });
        let r = AgentClient::connect(&path, 1024, Duration::from_secs(3)).await;
        assert!(r.is_err());
        assert!(
            !server.await.unwrap(),
            "the client closed its handshake before the guest answered"
        );
    }
}
