//! Supervised helper processes: nydusd, QEMU and vhost-device-vsock.
//!
//! A [`Supervised`] process is spawned in the shim process's own network namespace (the
//! calling thread may sit in a pod's namespace) and in its own process group (a Ctrl-C on
//! the terminal is ours to handle, not the helper's). Its stdout and stderr go to our log
//! line by line at debug level, and the last lines are kept for error messages. A watcher task reaps it;
//! if it dies without being asked to, the `on_exit` callback runs. Signals go through a
//! pidfd, so a recycled pid is never hit. Dropping a `Supervised` that was not stopped
//! kills it.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::process::Signal;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// The process's network namespace, as opposed to the calling thread's.
const PROCESS_NETNS: &str = "/proc/self/ns/net";
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";
/// How long to wait for a process to go after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long the watcher waits for the output relays to drain after the process exits.
const DRAIN_WAIT: Duration = Duration::from_millis(500);
/// Output lines kept for error messages.
const TAIL_LINES: usize = 12;

tokio::task_local! {
    /// Where processes spawned in this task write their stdout and stderr instead of a
    /// pipe to our log: see [`with_output_file`].
    static OUTPUT_FILE: PathBuf;
}

/// Runs `fut` with every process it spawns writing its output to `file` (appended, made
/// owner-only): for helpers that must outlive us (the VM cache hands them to a shim), a
/// pipe to our log would break when we exit.
pub async fn with_output_file<F: std::future::Future>(file: PathBuf, fut: F) -> F::Output {
    OUTPUT_FILE.scope(file, fut).await
}

/// Called with the exit status when a process dies without being asked to.
pub type OnExit = Box<dyn FnOnce(ExitStatus) + Send + 'static>;

/// Why a process could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Entering the shim's network namespace failed; nothing was started.
    #[error("entering the shim's network namespace ({PROCESS_NETNS}) to start {name}: {source}")]
    Netns {
        /// The process's name.
        name: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The process could not be spawned.
    #[error("spawning {name}: {source}")]
    Spawn {
        /// The process's name.
        name: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The process did not go away even after SIGKILL.
    #[error("{name} (pid {pid}) did not exit after SIGKILL")]
    Unkillable {
        /// The process's name.
        name: &'static str,
        /// Its pid.
        pid: u32,
    },
}

/// Kills one supervised process by its pidfd: see [`Supervised::kill_handle`].
#[derive(Debug)]
pub struct KillHandle {
    name: &'static str,
    pidfd: OwnedFd,
}

impl KillHandle {
    /// SIGKILLs the process (nothing happens if it is gone already).
    pub fn kill(&self) {
        send_signal(&self.pidfd, Signal::KILL, self.name);
    }
}

/// Sends `sig` through `pidfd` (nothing happens if the process is gone already).
fn send_signal(pidfd: &OwnedFd, sig: Signal, name: &str) {
    match rustix::process::pidfd_send_signal(pidfd, sig) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
        Err(e) => log::warn!("signalling {name}: {e}"),
    }
}

/// A running helper process, watched and reaped by a task of the current runtime.
#[derive(Debug)]
pub struct Supervised {
    name: &'static str,
    pid: u32,
    pidfd: OwnedFd,
    exit: watch::Receiver<Option<ExitStatus>>,
    stopping: Arc<AtomicBool>,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// Where its output goes when not to our log (see [`with_output_file`]).
    output_file: Option<PathBuf>,
    done: bool,
}

impl Supervised {
    /// Spawns `cmd` (stdin from /dev/null, stdout and stderr to the log) under the name
    /// `name`. Must be called within a tokio runtime.
    pub fn spawn(
        name: &'static str,
        cmd: &mut Command,
        on_exit: Option<OnExit>,
    ) -> Result<Self, ProcessError> {
        let std_cmd = cmd.as_std();
        log::info!(
            "starting {name}: {} {}",
            std_cmd.get_program().to_string_lossy(),
            std_cmd
                .get_args()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let output_file = OUTPUT_FILE.try_with(Clone::clone).ok();
        cmd.stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(false);
        match &output_file {
            Some(path) => {
                let file =
                    open_output(path).map_err(|source| ProcessError::Spawn { name, source })?;
                let err = file
                    .try_clone()
                    .map_err(|source| ProcessError::Spawn { name, source })?;
                cmd.stdout(file).stderr(err);
            }
            None => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
        }
        let mut child = spawn_in_process_netns(cmd).map_err(|e| match e {
            SpawnError::Netns(source) => ProcessError::Netns { name, source },
            SpawnError::Spawn(source) => ProcessError::Spawn { name, source },
        })?;
        let pid = child.id().unwrap_or_default();
        let pidfd = match open_pidfd(pid) {
            Ok(fd) => fd,
            Err(source) => {
                let _ = child.start_kill();
                tokio::spawn(async move { child.wait().await });
                return Err(ProcessError::Spawn { name, source });
            }
        };
        log::debug!("{name} started, pid {pid}");
        let stopping = Arc::new(AtomicBool::new(false));
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let (exit_tx, exit) = watch::channel(None);
        let relays = [
            child
                .stdout
                .take()
                .map(|o| relay(o, name, pid, tail.clone())),
            child
                .stderr
                .take()
                .map(|o| relay(o, name, pid, tail.clone())),
        ];
        tokio::spawn(watch_exit(
            child,
            name,
            pid,
            relays,
            exit_tx,
            stopping.clone(),
            on_exit,
        ));
        Ok(Supervised {
            name,
            pid,
            pidfd,
            exit,
            stopping,
            tail,
            output_file,
            done: false,
        })
    }

    /// Takes over process `pid`, which another process started and reaps (the VM cache),
    /// by its `pidfd`: it is signalled and watched through the pidfd (it readies when the
    /// process exits). Its exit status is its parent's to read: it is reported as
    /// unknown (255). Its output went to `output_file`, whose last lines
    /// [`Supervised::output_tail`] reads.
    pub fn adopt(
        name: &'static str,
        pid: u32,
        pidfd: OwnedFd,
        output_file: Option<PathBuf>,
        on_exit: Option<OnExit>,
    ) -> Result<Self, ProcessError> {
        let watched = pidfd
            .try_clone()
            .and_then(|fd| {
                // SAFETY: the AsyncFd owns `fd` (an OwnedFd), which stays open and the
                // same descriptor until the AsyncFd drops it.
                unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(io::Error::from)
            })
            .map_err(|source| ProcessError::Spawn { name, source })?;
        let stopping = Arc::new(AtomicBool::new(false));
        let (exit_tx, exit) = watch::channel(None);
        let asked = stopping.clone();
        tokio::spawn(async move {
            let _ = watched.readable().await;
            report_exit(name, pid, unknown_exit(), &asked, &exit_tx, on_exit);
        });
        log::debug!("{name} (pid {pid}) adopted");
        Ok(Supervised {
            name,
            pid,
            pidfd,
            exit,
            stopping,
            tail: Arc::new(Mutex::new(VecDeque::new())),
            output_file,
            done: false,
        })
    }

    /// Lets the process go on without us: its exit no longer runs `on_exit`, dropping
    /// does not kill it, and it is still reaped here (we stay its parent). Returns a pidfd
    /// of it for its new owner ([`Supervised::adopt`]).
    pub fn release(&mut self) -> io::Result<OwnedFd> {
        let fd = self.pidfd.as_fd().try_clone_to_owned()?;
        self.set_stopping();
        self.done = true;
        Ok(fd)
    }

    /// The process's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How the process exited, once it has been reaped.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// The last lines the process printed.
    pub fn output_tail(&self) -> String {
        if let Some(path) = &self.output_file {
            return file_tail(path);
        }
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    /// Marks the process as being stopped by us: its exit no longer runs `on_exit`.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// A handle that can SIGKILL this process from anywhere, by its pidfd (never another
    /// process that reuses the pid); `None` if the descriptor cannot be duplicated.
    pub fn kill_handle(&self) -> Option<KillHandle> {
        Some(KillHandle {
            name: self.name,
            pidfd: self.pidfd.try_clone().ok()?,
        })
    }

    /// Sends `sig` (nothing happens if the process is already gone).
    pub fn signal(&self, sig: Signal) {
        send_signal(&self.pidfd, sig, self.name);
    }

    /// Waits up to `timeout` for the process to exit and be reaped.
    pub async fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(timeout, wait_exit(&mut self.exit))
            .await
            .ok()
    }

    /// Stops the process: SIGTERM, up to `grace`, then SIGKILL; returns once it is
    /// reaped. `on_exit` does not run.
    pub async fn terminate(&mut self, grace: Duration) -> Result<ExitStatus, ProcessError> {
        self.set_stopping();
        if let Some(status) = self.exit_status() {
            self.done = true;
            return Ok(status);
        }
        self.signal(Signal::TERM);
        if let Some(status) = self.wait_timeout(grace).await {
            self.done = true;
            return Ok(status);
        }
        log::warn!(
            "{} (pid {}) still running {grace:?} after SIGTERM: sending SIGKILL",
            self.name,
            self.pid
        );
        self.kill().await
    }

    /// Kills the process with SIGKILL and returns once it is reaped. `on_exit` does not
    /// run.
    pub async fn kill(&mut self) -> Result<ExitStatus, ProcessError> {
        self.set_stopping();
        self.signal(Signal::KILL);
        let status = self
            .wait_timeout(KILL_WAIT)
            .await
            .ok_or(ProcessError::Unkillable {
                name: self.name,
                pid: self.pid,
            })?;
        self.done = true;
        Ok(status)
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if !self.done && self.exit_status().is_none() {
            log::warn!(
                "{} (pid {}) dropped while running: killing it",
                self.name,
                self.pid
            );
            self.set_stopping();
            self.signal(Signal::KILL);
        }
    }
}

/// Opens (creating it owner-only) the output file of spawned processes, for appending.
fn open_output(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The last [`TAIL_LINES`] lines of output file `path` (empty if unreadable).
fn file_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

fn open_pidfd(pid: u32) -> io::Result<OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| io::Error::other("the child has no pid"))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

async fn wait_exit(exit: &mut watch::Receiver<Option<ExitStatus>>) -> ExitStatus {
    match exit.wait_for(Option::is_some).await {
        Ok(status) => status.unwrap_or_else(unknown_exit),
        // The watcher is gone (its runtime is shutting down): nothing more can be learnt.
        Err(_) => unknown_exit(),
    }
}

/// The status reported when the real one is lost (e.g. another reaper took it).
fn unknown_exit() -> ExitStatus {
    ExitStatus::from_raw(255 << 8)
}

async fn watch_exit(
    mut child: Child,
    name: &'static str,
    pid: u32,
    relays: [Option<tokio::task::JoinHandle<()>>; 2],
    exit_tx: watch::Sender<Option<ExitStatus>>,
    stopping: Arc<AtomicBool>,
    on_exit: Option<OnExit>,
) {
    let status = match child.wait().await {
        Ok(status) => status,
        Err(e) => {
            // Another reaper (containerd-shim's reaps every child) took the status.
            log::debug!("waiting for {name} (pid {pid}): {e}");
            unknown_exit()
        }
    };
    for relay in relays.into_iter().flatten() {
        let _ = tokio::time::timeout(DRAIN_WAIT, relay).await;
    }
    report_exit(name, pid, status, &stopping, &exit_tx, on_exit);
}

/// Logs an exit, publishes its status and, when nobody asked for it, runs `on_exit`.
fn report_exit(
    name: &'static str,
    pid: u32,
    status: ExitStatus,
    stopping: &AtomicBool,
    exit_tx: &watch::Sender<Option<ExitStatus>>,
    on_exit: Option<OnExit>,
) {
    let asked = stopping.load(Ordering::SeqCst);
    if asked {
        log::info!("{name} (pid {pid}) exited: {status}");
    } else {
        log::warn!("{name} (pid {pid}) exited on its own: {status}");
    }
    let _ = exit_tx.send(Some(status));
    if !asked {
        if let Some(on_exit) = on_exit {
            on_exit(status);
        }
    }
}

fn relay(
    out: impl AsyncRead + Unpin + Send + 'static,
    name: &'static str,
    pid: u32,
    tail: Arc<Mutex<VecDeque<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            log::debug!(target: "lazyvm::process::output", "{name}[{pid}]: {line}");
            if let Ok(mut tail) = tail.lock() {
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        }
    })
}

enum SpawnError {
    Netns(io::Error),
    Spawn(io::Error),
}

/// Spawns `cmd` from a short-lived thread that has joined the process's network
/// namespace, so the child runs there whatever namespace the calling thread is in.
fn spawn_in_process_netns(cmd: &mut Command) -> Result<Child, SpawnError> {
    let runtime = tokio::runtime::Handle::current();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let _guard = runtime.enter();
                enter_process_netns().map_err(SpawnError::Netns)?;
                cmd.spawn().map_err(SpawnError::Spawn)
            })
            .join()
            .unwrap_or_else(|_| {
                Err(SpawnError::Spawn(io::Error::other(
                    "the spawning thread panicked",
                )))
            })
    })
}

fn enter_process_netns() -> io::Result<()> {
    let process = std::fs::metadata(PROCESS_NETNS)?;
    let thread = std::fs::metadata(THREAD_NETNS)?;
    if (process.dev(), process.ino()) == (thread.dev(), thread.ino()) {
        return Ok(());
    }
    let ns = File::open(PROCESS_NETNS)?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.args(["-c", script]);
        c
    }

    #[tokio::test]
    async fn output_tail_and_exit_status() {
        let mut p =
            Supervised::spawn("sh", &mut sh("echo one; echo two >&2; exit 7"), None).unwrap();
        let status = p.wait_timeout(Duration::from_secs(5)).await.unwrap();
        assert_eq!(status.code(), Some(7));
        let tail = p.output_tail();
        assert!(tail.contains("one") && tail.contains("two"), "{tail}");
    }

    #[tokio::test]
    async fn on_exit_runs_only_when_not_stopping() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _p = Supervised::spawn(
            "sh",
            &mut sh("exit 3"),
            Some(Box::new(move |s| {
                let _ = tx.send(s);
            })),
        )
        .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(3));

        let fired = Arc::new(AtomicBool::new(false));
        let flag = fired.clone();
        let mut p = Supervised::spawn(
            "sleep",
            &mut sh("exec sleep 30"),
            Some(Box::new(move |_| flag.store(true, Ordering::SeqCst))),
        )
        .unwrap();
        let status = p.terminate(Duration::from_secs(5)).await.unwrap();
        assert_eq!(status.signal(), Some(15));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!fired.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn terminate_escalates_to_sigkill() {
        let mut p = Supervised::spawn(
            "stubborn",
            &mut sh("trap '' TERM; echo ready; while :; do sleep 0.05; done"),
            None,
        )
        .unwrap();
        while !p.output_tail().contains("ready") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let status = p.terminate(Duration::from_millis(200)).await.unwrap();
        assert_eq!(status.signal(), Some(9));
        assert!(!std::path::Path::new(&format!("/proc/{}", p.pid())).exists());
    }

    #[tokio::test]
    async fn a_released_process_is_adopted_by_its_pidfd() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let released_fired = Arc::new(AtomicBool::new(false));
        let flag = released_fired.clone();
        let mut first = with_output_file(log.clone(), async {
            Supervised::spawn(
                "sleeper",
                &mut sh("echo started; exec sleep 30"),
                Some(Box::new(move |_| flag.store(true, Ordering::SeqCst))),
            )
        })
        .await
        .unwrap();
        let pid = first.pid();
        let pidfd = first.release().unwrap();
        drop(first);
        assert!(
            process_alive(pid),
            "dropping a released process leaves it running"
        );

        let (tx, rx) = tokio::sync::oneshot::channel();
        let adopted = Supervised::adopt(
            "sleeper",
            pid,
            pidfd,
            Some(log.clone()),
            Some(Box::new(move |s| {
                let _ = tx.send(s);
            })),
        )
        .unwrap();
        while !adopted.output_tail().contains("started") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // It dies on its own: the adopter's on_exit runs, the releaser's does not.
        adopted.signal(Signal::KILL);
        let status = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status, unknown_exit());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!released_fired.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn an_adopted_process_is_terminated() {
        let mut first = Supervised::spawn("sleeper", &mut sh("exec sleep 30"), None).unwrap();
        let pid = first.pid();
        let pidfd = first.release().unwrap();
        let fired = Arc::new(AtomicBool::new(false));
        let flag = fired.clone();
        let mut adopted = Supervised::adopt(
            "sleeper",
            pid,
            pidfd,
            None,
            Some(Box::new(move |_| flag.store(true, Ordering::SeqCst))),
        )
        .unwrap();
        adopted.terminate(Duration::from_secs(5)).await.unwrap();
        // Its parent (the releaser, here the same process) reaps it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while process_alive(pid) {
            assert!(std::time::Instant::now() < deadline, "{pid} was not reaped");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!fired.load(Ordering::SeqCst));
    }

    fn process_alive(pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[tokio::test]
    async fn spawn_error_names_the_process() {
        let err =
            Supervised::spawn("ghost", &mut Command::new("/no/such/binary"), None).unwrap_err();
        assert!(err.to_string().starts_with("spawning ghost"), "{err}");
    }
}
