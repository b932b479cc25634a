//! The OCI runtime: crun, run as a child of the agent. Its exit statuses come from the
//! [`Reaper`]; its error messages from its `--log` file.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::net::UnixListener;

use crate::reaper::{Reaper, ReaperError};

/// How long one crun invocation may take.
const CRUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of the OCI runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// crun could not be started.
    #[error("starting {bin}: {source}")]
    Spawn {
        /// The binary.
        bin: String,
        /// The cause.
        source: std::io::Error,
    },
    /// crun failed; `log` is its error output.
    #[error("crun {op} failed (exit status {status}): {log}")]
    Failed {
        /// The subcommand.
        op: String,
        /// Its exit status.
        status: i32,
        /// What crun logged.
        log: String,
    },
    /// crun did not finish in time.
    #[error("crun {0} timed out")]
    Timeout(String),
    /// The console socket or pid file could not be handled.
    #[error("crun {op}: {msg}")]
    Io {
        /// The subcommand.
        op: String,
        /// What went wrong.
        msg: String,
    },
    /// The reaper is gone.
    #[error(transparent)]
    Reaper(#[from] ReaperError),
}

/// The stdio a container process gets when it has no terminal (child ends).
pub struct ChildStdio {
    /// Read end of the stdin pipe.
    pub stdin: OwnedFd,
    /// Write end of the stdout pipe.
    pub stdout: OwnedFd,
    /// Write end of the stderr pipe.
    pub stderr: OwnedFd,
}

/// How a new process gets its stdio.
pub enum ProcessIo {
    /// Pipes.
    Pipes(ChildStdio),
    /// A terminal: crun creates a pty and hands its master back over a console socket.
    Terminal,
}

/// A handle to crun.
#[derive(Clone)]
pub struct Crun {
    bin: PathBuf,
    root: PathBuf,
    work: PathBuf,
    reaper: Reaper,
    no_pivot: bool,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl Crun {
    /// crun at `bin`, state in `root`, temporary files (logs, console sockets) in `work`.
    /// `no_pivot`: create containers with `--no-pivot` (needed when the agent's root is
    /// the initramfs, where pivot_root is impossible).
    pub fn new(bin: PathBuf, root: PathBuf, work: PathBuf, reaper: Reaper, no_pivot: bool) -> Self {
        Crun {
            bin,
            root,
            work,
            reaper,
            no_pivot,
        }
    }

    /// The same crun and reaper with another state root and work directory: containers
    /// there never meet this one's.
    pub fn with_state(&self, root: PathBuf, work: PathBuf) -> Crun {
        Crun {
            root,
            work,
            ..self.clone()
        }
    }

    /// The reaper crun's children are reaped by.
    pub fn reaper(&self) -> &Reaper {
        &self.reaper
    }

    fn temp(&self, what: &str) -> PathBuf {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        self.work.join(format!("{what}-{n}"))
    }

    /// Runs `crun <args>` with the given stdio (null when None) and waits for it.
    async fn run(
        &self,
        op: &str,
        args: &[&str],
        io: Option<ChildStdio>,
    ) -> Result<(), RuntimeError> {
        let log = self.temp("crun.log");
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&log)
            .args(args);
        match io {
            Some(io) => {
                cmd.stdin(Stdio::from(io.stdin))
                    .stdout(Stdio::from(io.stdout))
                    .stderr(Stdio::from(io.stderr));
            }
            None => {
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
            }
        }
        log::debug!("crun {}", args.join(" "));
        let since = std::time::Instant::now();
        let child = cmd.spawn().map_err(|source| RuntimeError::Spawn {
            bin: self.bin.display().to_string(),
            source,
        })?;
        // Drop our copies of the child's stdio ends now (cmd holds them).
        drop(cmd);
        let pid = child.id() as i32;
        // The reaper owns waitpid: never call child.wait() (dropping a Child does not wait).
        drop(child);
        let status = tokio::time::timeout(CRUN_TIMEOUT, self.reaper.wait(pid, since))
            .await
            .map_err(|_| RuntimeError::Timeout(op.to_owned()))??;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        if status.code != 0 {
            return Err(RuntimeError::Failed {
                op: op.to_owned(),
                status: status.code,
                log: text.trim().to_owned(),
            });
        }
        Ok(())
    }

    /// Runs `crun <args>` that creates a process, handling a console socket when needed.
    /// Returns the process's pid (from `--pid-file`) and, for a terminal, the pty master.
    async fn run_process(
        &self,
        op: &str,
        mut args: Vec<String>,
        io: ProcessIo,
    ) -> Result<(i32, Option<OwnedFd>), RuntimeError> {
        let io_err = |msg: String| RuntimeError::Io {
            op: op.to_owned(),
            msg,
        };
        let pid_file = self.temp("pid");
        args.insert(1, format!("--pid-file={}", pid_file.display()));
        let (pipes, console) = match io {
            ProcessIo::Pipes(p) => (Some(p), None),
            ProcessIo::Terminal => {
                let sock = self.temp("console.sock");
                let listener = UnixListener::bind(&sock)
                    .map_err(|e| io_err(format!("binding {}: {e}", sock.display())))?;
                args.insert(1, format!("--console-socket={}", sock.display()));
                (None, Some((listener, sock)))
            }
        };
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let master = match console {
            None => {
                self.run(op, &arg_refs, pipes).await?;
                None
            }
            Some((listener, sock)) => {
                let run = self.run(op, &arg_refs, None);
                tokio::pin!(run);
                let accepted = tokio::select! {
                    r = &mut run => {
                        let _ = std::fs::remove_file(&sock);
                        r?;
                        return Err(io_err("crun exited without sending the pty master".into()));
                    }
                    a = listener.accept() => a,
                };
                let _ = std::fs::remove_file(&sock);
                let (stream, _) = accepted.map_err(|e| io_err(format!("console socket: {e}")))?;
                let std_stream = stream
                    .into_std()
                    .map_err(|e| io_err(format!("console socket: {e}")))?;
                std_stream
                    .set_nonblocking(false)
                    .map_err(|e| io_err(format!("console socket: {e}")))?;
                let fd = tokio::task::spawn_blocking(move || receive_fd(&std_stream))
                    .await
                    .map_err(|e| io_err(format!("console socket: {e}")))?
                    .map_err(|e| io_err(format!("receiving the pty master: {e}")))?;
                run.await?;
                Some(fd)
            }
        };
        let text = std::fs::read_to_string(&pid_file)
            .map_err(|e| io_err(format!("reading {}: {e}", pid_file.display())))?;
        let _ = std::fs::remove_file(&pid_file);
        let pid = text
            .trim()
            .parse::<i32>()
            .map_err(|_| io_err(format!("pid file holds {text:?}")))?;
        Ok((pid, master))
    }

    /// `crun create`: the container's init process, waiting to be started.
    pub async fn create(
        &self,
        cid: &str,
        bundle: &Path,
        io: ProcessIo,
    ) -> Result<(i32, Option<OwnedFd>), RuntimeError> {
        let mut args = vec!["create".to_owned()];
        if self.no_pivot {
            args.push("--no-pivot".to_owned());
        }
        args.extend([format!("--bundle={}", bundle.display()), cid.to_owned()]);
        self.run_process("create", args, io).await
    }

    /// `crun exec --detach --process <file>`.
    pub async fn exec(
        &self,
        cid: &str,
        process_file: &Path,
        io: ProcessIo,
    ) -> Result<(i32, Option<OwnedFd>), RuntimeError> {
        let args = vec![
            "exec".to_owned(),
            "--detach".to_owned(),
            format!("--process={}", process_file.display()),
            cid.to_owned(),
        ];
        self.run_process("exec", args, io).await
    }

    /// Starts a created container, as `crun start` does but without running crun: the
    /// container's init waits reading crun's `exec.fifo`; one byte written to it lets the
    /// init exec the process, and the fifo's removal marks the container running in
    /// crun's state. (crun start adds poststart hooks and a notify socket, neither of
    /// which the agent's specs have.) An exec of crun costs tens of milliseconds under
    /// TCG; this costs three syscalls.
    pub async fn start(&self, cid: &str) -> Result<(), RuntimeError> {
        let fifo = self.exec_fifo(cid);
        let failed = |msg: String| RuntimeError::Io {
            op: "start".to_owned(),
            msg,
        };
        // Non-blocking: an init that is gone (no reader) fails with ENXIO instead of
        // blocking the open forever.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&fifo)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) => failed(format!(
                    "container {cid} is not waiting to start ({} is missing: started already, \
                     or never created)",
                    fifo.display()
                )),
                Some(libc::ENXIO) => failed(format!(
                    "container {cid} is not waiting to start: its init process is gone"
                )),
                _ => failed(format!("opening {}: {e}", fifo.display())),
            })?;
        std::fs::remove_file(&fifo)
            .map_err(|e| failed(format!("removing {}: {e}", fifo.display())))?;
        (&file)
            .write_all(&[0])
            .map_err(|e| failed(format!("writing to {}: {e}", fifo.display())))
    }

    /// The fifo a created container's init waits on, in crun's state directory.
    fn exec_fifo(&self, cid: &str) -> PathBuf {
        self.root.join(cid).join("exec.fifo")
    }

    /// `crun kill [--all] <cid> <signal>`.
    pub async fn kill(&self, cid: &str, signal: u32, all: bool) -> Result<(), RuntimeError> {
        let sig = signal.to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([cid, sig.as_str()]);
        self.run("kill", &args, None).await
    }

    /// `crun delete [--force]`.
    pub async fn delete(&self, cid: &str, force: bool) -> Result<(), RuntimeError> {
        let mut args = vec!["delete"];
        if force {
            args.push("--force");
        }
        args.push(cid);
        self.run("delete", &args, None).await
    }

    /// `crun pause`.
    pub async fn pause(&self, cid: &str) -> Result<(), RuntimeError> {
        self.run("pause", &["pause", cid], None).await
    }

    /// `crun resume`.
    pub async fn resume(&self, cid: &str) -> Result<(), RuntimeError> {
        self.run("resume", &["resume", cid], None).await
    }

    /// `crun update --resources <file>`.
    pub async fn update(&self, cid: &str, resources_file: &Path) -> Result<(), RuntimeError> {
        let res = format!("--resources={}", resources_file.display());
        self.run("update", &["update", &res, cid], None).await
    }

    /// Where to write a temporary file for crun (process.json, resources.json).
    pub fn temp_file(&self, what: &str) -> PathBuf {
        self.temp(what)
    }
}

/// Receives one file descriptor sent with SCM_RIGHTS.
fn receive_fd(stream: &std::os::unix::net::UnixStream) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "no file descriptor in the message",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn crun_in(root: &Path) -> Crun {
        Crun::new(
            PathBuf::from("/nonexistent/crun"),
            root.to_path_buf(),
            root.to_path_buf(),
            Reaper::default(),
            false,
        )
    }

    /// A container `cid` as crun create leaves it: its exec fifo (whose path it returns)
    /// with no reader yet.
    fn created(crun: &Crun, cid: &str) -> PathBuf {
        let fifo = crun.exec_fifo(cid);
        std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        fifo
    }

    async fn start_error(crun: &Crun, cid: &str) -> String {
        crun.start(cid).await.unwrap_err().to_string()
    }

    #[tokio::test]
    async fn start_writes_one_byte_to_the_waiting_init_and_removes_the_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let crun = crun_in(dir.path());
        let fifo = created(&crun, "c1");
        // The waiting init's end, as crun create leaves it.
        let mut init = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        crun.start("c1").await.unwrap();
        assert!(!fifo.exists(), "crun's state must say running");
        let mut got = Vec::new();
        init.read_to_end(&mut got).unwrap();
        assert_eq!(got, [0]);
        // A second start finds no fifo.
        let e = start_error(&crun, "c1").await;
        assert!(e.contains("c1 is not waiting to start"), "{e}");
    }

    #[tokio::test]
    async fn start_fails_at_once_when_the_init_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let crun = crun_in(dir.path());
        let fifo = created(&crun, "c2");
        let e = start_error(&crun, "c2").await;
        assert!(e.contains("its init process is gone"), "{e}");
        assert!(fifo.exists(), "a failed start changes nothing");
    }
}
