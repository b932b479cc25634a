//! Starting, watching and stopping a nydusd process.
//!
//! nydusd runs as a [`Supervised`] process: in the shim's own network namespace (it needs
//! the host network to reach registries), its output in our log, reaped by a watcher that
//! calls `on_exit` if it dies on its own.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::process::Command;

use super::client::{ClientError, MountRequest, NydusClient};
use super::mountpoint::PASSTHROUGH_MOUNTPOINT;
use crate::process::{OnExit, ProcessError, Supervised};

/// Longest path a unix socket can be bound at (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How often readiness is polled.
const READY_POLL: Duration = Duration::from_millis(2);
/// How long one readiness probe may take.
const READY_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a virtio-fs nydusd gets to exit on SIGTERM before its socket is poked.
const POKE_AFTER: Duration = Duration::from_millis(50);

/// How nydusd serves its filesystems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// As a vhost-user-fs backend on socket `sock` (`nydusd virtiofs`): the VM's daemon.
    Virtiofs {
        /// The vhost-user socket QEMU connects to.
        sock: PathBuf,
    },
    /// As a FUSE server mounted on the host at `mountpoint` (`nydusd fuse`).
    Fuse {
        /// An existing directory nydusd mounts on.
        mountpoint: PathBuf,
    },
}

/// nydusd's log level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogLevel {
    /// `trace`
    Trace,
    /// `debug`
    Debug,
    /// `info`
    #[default]
    Info,
    /// `warn`
    Warn,
    /// `error`
    Error,
}

impl LogLevel {
    fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// How to run one nydusd.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The nydusd binary.
    pub path: PathBuf,
    /// The API socket nydusd creates.
    pub api_sock: PathBuf,
    /// virtio-fs or FUSE.
    pub mode: Mode,
    /// A host directory to mount as `passthrough_fs` at `/containers` once the daemon is
    /// ready (the sandbox's shared directory).
    pub shared_dir: Option<PathBuf>,
    /// nydusd's log level.
    pub log_level: LogLevel,
    /// Extra arguments, appended after lazyvm's own.
    pub extra_args: Vec<String>,
    /// `--rlimit-nofile`; `None` means the process's hard limit. Never passed higher than
    /// the hard limit (nydusd's default of 1000000 fails with EPERM where it is lower).
    pub rlimit_nofile: Option<u64>,
    /// How long nydusd may take to answer `RUNNING`.
    pub ready_timeout: Duration,
    /// How long nydusd may take to exit after SIGTERM before it gets SIGKILL.
    pub stop_timeout: Duration,
    /// Timeout of each API request made through [`Nydusd::client`].
    pub api_timeout: Duration,
}

impl DaemonConfig {
    /// A configuration with lazyvm's defaults: log level `info`, no extra arguments, a
    /// 10 s ready timeout, a 5 s stop timeout and a 30 s API timeout.
    pub fn new(path: impl Into<PathBuf>, api_sock: impl Into<PathBuf>, mode: Mode) -> Self {
        DaemonConfig {
            path: path.into(),
            api_sock: api_sock.into(),
            mode,
            shared_dir: None,
            log_level: LogLevel::default(),
            extra_args: Vec::new(),
            rlimit_nofile: None,
            ready_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(5),
            api_timeout: super::client::DEFAULT_TIMEOUT,
        }
    }

    fn validate(&self) -> Result<(), DaemonError> {
        let invalid = |kind: PathKind, path: &Path, reason: String| DaemonError::InvalidPath {
            kind,
            path: path.to_path_buf(),
            reason,
        };
        check_binary(&self.path).map_err(|r| invalid(PathKind::Daemon, &self.path, r))?;
        check_socket_path(&self.api_sock)
            .map_err(|r| invalid(PathKind::ApiSocket, &self.api_sock, r))?;
        match &self.mode {
            Mode::Virtiofs { sock } => {
                check_socket_path(sock).map_err(|r| invalid(PathKind::Socket, sock, r))?;
                if sock == &self.api_sock {
                    return Err(invalid(
                        PathKind::Socket,
                        sock,
                        "is the same as the API socket".into(),
                    ));
                }
            }
            Mode::Fuse { mountpoint } => check_dir(mountpoint)
                .map_err(|r| invalid(PathKind::FuseMountpoint, mountpoint, r))?,
        }
        if let Some(dir) = &self.shared_dir {
            check_dir(dir).map_err(|r| invalid(PathKind::Source, dir, r))?;
        }
        Ok(())
    }

    fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        match &self.mode {
            Mode::Virtiofs { sock } => {
                args.push("virtiofs".into());
                args.push("--sock".into());
                args.push(sock.into());
            }
            Mode::Fuse { mountpoint } => {
                args.push("fuse".into());
                args.push("--mountpoint".into());
                args.push(mountpoint.into());
            }
        }
        args.push("--apisock".into());
        args.push(self.api_sock.clone().into());
        args.push("--log-level".into());
        args.push(self.log_level.as_str().into());
        args.push("--rlimit-nofile".into());
        args.push(rlimit_nofile(self.rlimit_nofile).to_string().into());
        args.extend(self.extra_args.iter().map(OsString::from));
        args
    }
}

/// Which path of a [`DaemonConfig`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// The nydusd binary.
    Daemon,
    /// The virtio-fs (vhost-user) socket.
    Socket,
    /// The API socket.
    ApiSocket,
    /// The shared directory (passthrough source).
    Source,
    /// The FUSE mountpoint.
    FuseMountpoint,
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathKind::Daemon => "nydusd daemon path",
            PathKind::Socket => "nydusd socket path",
            PathKind::ApiSocket => "nydusd API socket path",
            PathKind::Source => "nydusd source (shared directory) path",
            PathKind::FuseMountpoint => "nydusd FUSE mountpoint",
        })
    }
}

/// Why nydusd could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A path in the configuration is unusable; nothing was started.
    #[error("{kind} {path:?} is invalid: {reason}")]
    InvalidPath {
        /// Which path.
        kind: PathKind,
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The process could not be started or stopped.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// nydusd exited before it was ready.
    #[error("nydusd exited during start ({status}); its last output:\n{output}")]
    ExitedEarly {
        /// How it exited.
        status: ExitStatus,
        /// The last lines it printed.
        output: String,
    },
    /// nydusd did not report `RUNNING` in time; it was stopped.
    #[error("nydusd was not ready within {timeout:?}: {last}")]
    NotReady {
        /// The ready timeout.
        timeout: Duration,
        /// The last probe's outcome.
        last: String,
    },
    /// Mounting the shared directory failed; nydusd was stopped.
    #[error("mounting the shared directory at {PASSTHROUGH_MOUNTPOINT}: {0}")]
    SharedDir(#[source] ClientError),
}

/// A running nydusd. Stop it with [`Nydusd::stop`]; dropping it kills it.
#[derive(Debug)]
pub struct Nydusd {
    process: Supervised,
    sockets: Vec<PathBuf>,
    vhost_sock: Option<PathBuf>,
    fuse_mountpoint: Option<PathBuf>,
    client: NydusClient,
    ready_after: Duration,
    stop_timeout: Duration,
}

impl Nydusd {
    /// Starts nydusd and waits until it is ready (and, with a shared directory, until that
    /// is mounted). On any failure nothing is left behind: no process, no socket.
    pub async fn start(config: DaemonConfig, on_exit: Option<OnExit>) -> Result<Self, DaemonError> {
        config.validate()?;
        let mut cmd = Command::new(&config.path);
        cmd.args(config.args());
        let spawned_at = Instant::now();
        let process = Supervised::spawn("nydusd", &mut cmd, on_exit)?;
        let mut daemon = Nydusd::adopt(&config, process);

        let setup = async {
            daemon.wait_ready(config.ready_timeout).await?;
            daemon.ready_after = spawned_at.elapsed();
            log::info!(
                "nydusd (pid {}) ready in {:?}",
                daemon.pid(),
                daemon.ready_after
            );
            if let Some(dir) = &config.shared_dir {
                daemon
                    .client
                    .mount(PASSTHROUGH_MOUNTPOINT, &MountRequest::passthrough(dir))
                    .await
                    .map_err(DaemonError::SharedDir)?;
            }
            Ok(())
        };
        match setup.await {
            Ok(()) => Ok(daemon),
            Err(e) => {
                log::warn!("nydusd (pid {}) failed to start: {e}", daemon.pid());
                if let Err(stop_err) = daemon.shutdown().await {
                    log::warn!("stopping the failed nydusd: {stop_err}");
                }
                Err(e)
            }
        }
    }

    /// The daemon of `config` running as `process`: one just spawned, or one another
    /// process started and let go of (the VM cache, see [`Nydusd::release`]), adopted.
    pub fn adopt(config: &DaemonConfig, process: Supervised) -> Self {
        let mut sockets = vec![config.api_sock.clone()];
        let (mut vhost_sock, mut fuse_mountpoint) = (None, None);
        match &config.mode {
            Mode::Virtiofs { sock } => {
                sockets.push(sock.clone());
                vhost_sock = Some(sock.clone());
            }
            Mode::Fuse { mountpoint } => fuse_mountpoint = Some(mountpoint.clone()),
        }
        Nydusd {
            process,
            sockets,
            vhost_sock,
            fuse_mountpoint,
            client: NydusClient::new(&config.api_sock).with_timeout(config.api_timeout),
            ready_after: Duration::ZERO,
            stop_timeout: config.stop_timeout,
        }
    }

    /// Lets nydusd run on for another owner: nothing is stopped or removed; returns a
    /// pidfd of it (see [`Supervised::release`]).
    pub fn release(mut self) -> io::Result<std::os::fd::OwnedFd> {
        let fd = self.process.release()?;
        self.sockets.clear();
        self.fuse_mountpoint = None;
        Ok(fd)
    }

    /// A handle that SIGKILLs the process by its pidfd (see
    /// [`crate::process::Supervised::kill_handle`]).
    pub fn kill_handle(&self) -> Option<crate::process::KillHandle> {
        self.process.kill_handle()
    }

    /// nydusd's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// A client for this daemon's API.
    pub fn client(&self) -> &NydusClient {
        &self.client
    }

    /// The time from spawn to `RUNNING`.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// How nydusd exited, once it has (and has been reaped).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.process.exit_status()
    }

    /// Stops nydusd: SIGTERM, up to the stop timeout, then SIGKILL; waits until it is
    /// reaped; removes its sockets (and a FUSE mount it left). Returns how it exited.
    pub async fn stop(mut self) -> Result<ExitStatus, DaemonError> {
        self.shutdown().await
    }

    async fn shutdown(&mut self) -> Result<ExitStatus, DaemonError> {
        let status = self.terminate().await;
        self.cleanup_files();
        Ok(status?)
    }

    async fn terminate(&mut self) -> Result<ExitStatus, ProcessError> {
        self.process.set_stopping();
        if let Some(sock) = &self.vhost_sock {
            // A virtio-fs nydusd with no vhost-user client stays blocked in accept() and
            // ignores SIGTERM: connecting and hanging up lets it finish its shutdown.
            self.process.signal(rustix::process::Signal::TERM);
            if self.process.wait_timeout(POKE_AFTER).await.is_none() {
                drop(tokio::net::UnixStream::connect(sock).await);
            }
        }
        self.process.terminate(self.stop_timeout).await
    }

    fn cleanup_files(&self) {
        for sock in &self.sockets {
            match std::fs::remove_file(sock) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("removing nydusd socket {}: {e}", sock.display()),
            }
        }
        if let Some(mp) = &self.fuse_mountpoint {
            if crate::mounts::is_mounted(mp, |t| t == "fuse" || t.starts_with("fuse.")) {
                if let Err(e) = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH) {
                    log::warn!("unmounting nydusd's FUSE mount {}: {e}", mp.display());
                }
            }
        }
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), DaemonError> {
        let deadline = Instant::now() + timeout;
        let probe = self.client.clone().with_timeout(READY_PROBE_TIMEOUT);
        let mut last = String::from("its API socket was never created");
        loop {
            if let Some(status) = self.process.exit_status() {
                return Err(DaemonError::ExitedEarly {
                    status,
                    output: self.process.output_tail(),
                });
            }
            if probe.sock().exists() {
                match probe.daemon_info().await {
                    Ok(info) if info.is_running() => return Ok(()),
                    Ok(info) => last = format!("state is {:?}", info.state),
                    Err(e) => last = e.to_string(),
                }
            }
            if Instant::now() >= deadline {
                return Err(DaemonError::NotReady { timeout, last });
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }
}

impl Drop for Nydusd {
    fn drop(&mut self) {
        // The process itself is killed by Supervised's drop; its files are ours.
        self.cleanup_files();
    }
}

/// The `--rlimit-nofile` value: the wanted one (the hard limit by default), never above the
/// hard limit.
fn rlimit_nofile(wanted: Option<u64>) -> u64 {
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        // 0 tells nydusd to leave its limit as it is.
        .unwrap_or(0);
    match wanted {
        Some(w) if w <= hard => w,
        Some(w) => {
            log::warn!("rlimit_nofile {w} is above the hard limit {hard}: using {hard}");
            hard
        }
        None => hard,
    }
}

fn check_binary(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("it is empty".into());
    }
    let meta = std::fs::metadata(path).map_err(|e| describe_io(&e))?;
    if !meta.is_file() {
        return Err("it is not a file".into());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err("it is not executable".into());
    }
    Ok(())
}

fn check_socket_path(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("it is empty".into());
    }
    let len = path.as_os_str().as_bytes().len();
    if len > MAX_SOCKET_PATH {
        return Err(format!(
            "it is {len} bytes long; a unix socket path can be at most {MAX_SOCKET_PATH}"
        ));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!("its directory {} does not exist", dir.display()));
    }
    if path.symlink_metadata().is_ok() {
        return Err("a file already exists there".into());
    }
    Ok(())
}

fn check_dir(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("it is empty".into());
    }
    let meta = std::fs::metadata(path).map_err(|e| describe_io(&e))?;
    if !meta.is_dir() {
        return Err("it is not a directory".into());
    }
    Ok(())
}

fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "it does not exist".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> DaemonConfig {
        DaemonConfig::new(
            "/bin/true",
            dir.join("api.sock"),
            Mode::Virtiofs {
                sock: dir.join("vhost.sock"),
            },
        )
    }

    #[test]
    fn virtiofs_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.log_level = LogLevel::Debug;
        c.extra_args = vec!["--thread-num".into(), "4".into()];
        c.rlimit_nofile = Some(64);
        let args: Vec<String> = c
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let api = dir.path().join("api.sock").display().to_string();
        let sock = dir.path().join("vhost.sock").display().to_string();
        assert_eq!(
            args,
            [
                "virtiofs",
                "--sock",
                &sock,
                "--apisock",
                &api,
                "--log-level",
                "debug",
                "--rlimit-nofile",
                "64",
                "--thread-num",
                "4"
            ]
        );
        assert!(!args.iter().any(|a| a == "--hybrid-mode"));
    }

    #[test]
    fn fuse_command_line() {
        let c = DaemonConfig::new(
            "/bin/true",
            "/tmp/a.sock",
            Mode::Fuse {
                mountpoint: "/mnt/x".into(),
            },
        );
        let args = c.args();
        assert_eq!(args[0], "fuse");
        assert_eq!(args[1], "--mountpoint");
        assert_eq!(args[2], "/mnt/x");
    }

    #[test]
    fn rlimit_never_above_hard_limit() {
        let (_, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(rlimit_nofile(None), hard);
        assert_eq!(rlimit_nofile(Some(u64::MAX)), hard);
        assert_eq!(rlimit_nofile(Some(1)), 1);
    }

    #[test]
    fn each_bad_path_has_its_own_error() {
        let dir = tempfile::tempdir().unwrap();
        let kind = |c: &DaemonConfig| match c.validate() {
            Err(DaemonError::InvalidPath { kind, .. }) => Some(kind),
            _ => None,
        };
        assert_eq!(kind(&config(dir.path())), None);

        let mut c = config(dir.path());
        c.path = dir.path().join("no-such-nydusd");
        assert_eq!(kind(&c), Some(PathKind::Daemon));
        c.path = dir.path().to_path_buf();
        assert_eq!(kind(&c), Some(PathKind::Daemon));
        c.path = PathBuf::new();
        assert_eq!(kind(&c), Some(PathKind::Daemon));

        let mut c = config(dir.path());
        c.mode = Mode::Virtiofs {
            sock: dir.path().join("missing/vhost.sock"),
        };
        assert_eq!(kind(&c), Some(PathKind::Socket));

        let mut c = config(dir.path());
        c.api_sock = dir.path().join("missing/api.sock");
        assert_eq!(kind(&c), Some(PathKind::ApiSocket));
        c.api_sock = dir.path().join("x".repeat(120));
        assert_eq!(kind(&c), Some(PathKind::ApiSocket));
        std::fs::write(dir.path().join("stale.sock"), "").unwrap();
        c.api_sock = dir.path().join("stale.sock");
        assert_eq!(kind(&c), Some(PathKind::ApiSocket));

        let mut c = config(dir.path());
        c.shared_dir = Some(dir.path().join("missing"));
        assert_eq!(kind(&c), Some(PathKind::Source));

        let mut c = config(dir.path());
        c.mode = Mode::Fuse {
            mountpoint: dir.path().join("missing"),
        };
        assert_eq!(kind(&c), Some(PathKind::FuseMountpoint));
    }
}
