//! Containers and their processes as the agent tracks them.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::cgroup::Cgroup;
use crate::reaper::{ExitStatus, Reaper};
use crate::runtime::{ChildStdio, ProcessIo};
use crate::stdio::{self, Output, Stdin, StdioError};

/// One process: a container's init or an exec.
pub struct Process {
    /// Guest pid.
    pub pid: i32,
    exit: watch::Receiver<Option<ExitStatus>>,
    /// Held only for a moment (to clone or take): writes happen on a blocking thread
    /// with their own reference, so a full pipe never blocks an async worker or a close.
    stdin: Mutex<Option<Arc<Stdin>>>,
    /// Buffered stdout (pty output for a terminal).
    pub stdout: Arc<Output>,
    /// Buffered stderr (empty for a terminal).
    pub stderr: Arc<Output>,
    /// The pty master of a terminal process (until the process is removed).
    pty: Mutex<Option<Arc<File>>>,
}

/// The agent's ends of a new process's stdio, made before the process exists.
pub struct PendingIo {
    stdin: Option<OwnedFd>,
    stdout: Arc<Output>,
    stderr: Arc<Output>,
    terminal: bool,
    /// Taken before the process is created: an exit of its pid reaped earlier was
    /// another process's.
    since: std::time::Instant,
}

impl PendingIo {
    /// Prepares stdio: pipes (readers start now) or, for a terminal, nothing yet.
    /// Returns what crun must get.
    pub fn new(terminal: bool) -> Result<(Self, ProcessIo), StdioError> {
        if terminal {
            return Ok((
                PendingIo {
                    stdin: None,
                    stdout: Arc::new(Output::default()),
                    stderr: Output::empty(),
                    terminal,
                    since: std::time::Instant::now(),
                },
                ProcessIo::Terminal,
            ));
        }
        let (in_r, in_w) = stdio::pipe()?;
        let (out_r, out_w) = stdio::pipe()?;
        let (err_r, err_w) = stdio::pipe()?;
        let stdout = Arc::new(Output::default());
        let stderr = Arc::new(Output::default());
        stdout.spawn_reader(out_r)?;
        stderr.spawn_reader(err_r)?;
        Ok((
            PendingIo {
                stdin: Some(in_w),
                stdout,
                stderr,
                terminal,
                since: std::time::Instant::now(),
            },
            ProcessIo::Pipes(ChildStdio {
                stdin: in_r,
                stdout: out_w,
                stderr: err_w,
            }),
        ))
    }

    /// Makes the process once crun gave its pid (and pty master for a terminal); starts
    /// waiting for its exit.
    pub fn into_process(
        self,
        pid: i32,
        master: Option<OwnedFd>,
        reaper: &Reaper,
    ) -> Result<Arc<Process>, StdioError> {
        let (stdin, pty) = match (self.terminal, master) {
            (true, Some(m)) => {
                let reader = stdio::dup(&m)?;
                self.stdout.spawn_reader(reader)?;
                let f = Arc::new(File::from(m));
                (Some(Arc::new(Stdin::Pty(Arc::clone(&f)))), Some(f))
            }
            (true, None) => (None, None),
            (false, _) => (
                self.stdin.map(|w| Arc::new(Stdin::Pipe(File::from(w)))),
                None,
            ),
        };
        let (tx, rx) = watch::channel(None);
        let r = reaper.clone();
        let since = self.since;
        tokio::spawn(async move {
            if let Ok(status) = r.wait(pid, since).await {
                let _ = tx.send(Some(status));
            }
        });
        Ok(Arc::new(Process {
            pid,
            exit: rx,
            stdin: Mutex::new(stdin),
            stdout: self.stdout,
            stderr: self.stderr,
            pty: Mutex::new(pty),
        }))
    }

    /// Gives up (crun failed): stops the output readers.
    pub fn abandon(self) {
        self.stdout.discard();
        self.stderr.discard();
    }
}

impl Process {
    /// The exit status, once the process has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> Option<ExitStatus> {
        let mut rx = self.exit.clone();
        let r = rx.wait_for(Option::is_some).await.ok().and_then(|v| *v);
        r
    }

    /// Writes to stdin (blocking until written).
    pub async fn write_stdin(self: &Arc<Self>, data: Vec<u8>) -> Result<usize, StdioError> {
        let len = data.len();
        let stdin = self
            .stdin
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(StdioError::Closed)?;
        tokio::task::spawn_blocking(move || stdin.write_all(&data))
            .await
            .map_err(|e| StdioError::Write(std::io::Error::other(e.to_string())))??;
        Ok(len)
    }

    /// Closes stdin. Closing twice is fine, and so is closing after the exit (a pty then
    /// gets no ^D: nobody would read it).
    pub async fn close_stdin(&self) -> Result<(), StdioError> {
        let taken = self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take();
        match taken {
            // A pipe closes when its last reference (a pending write's, maybe) goes; a
            // pty gets ^D, written off the async workers.
            Some(s) if self.exited().is_none() => tokio::task::spawn_blocking(move || s.close())
                .await
                .map_err(|e| StdioError::Write(std::io::Error::other(e.to_string())))?,
            _ => Ok(()),
        }
    }

    /// Sets the pty size; false when the process has no terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> std::io::Result<bool> {
        let guard = self.pty.lock().unwrap_or_else(|p| p.into_inner());
        let Some(pty) = guard.as_ref() else {
            return Ok(false);
        };
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        use std::os::fd::AsRawFd;
        // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer; the fd is open.
        let rc = unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(true)
    }

    /// Releases the process's stdio on removal: drops buffered output, stops the output
    /// readers (closing their descriptors), closes stdin and the pty master.
    pub fn discard_output(&self) {
        self.stdout.discard();
        self.stderr.discard();
        // Dropping our references closes a pipe (no ^D for a pty nobody will read).
        self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.pty.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// One container.
pub struct Container {
    /// Its id.
    pub id: String,
    /// The bundle directory (config.json).
    pub bundle: PathBuf,
    /// Mounted storages, in mount order.
    pub mounts: Vec<PathBuf>,
    /// Its cgroup.
    pub cgroup: Cgroup,
    /// The init process.
    pub init: Arc<Process>,
    /// Exec'd processes by exec id.
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Whether StartContainer ran.
    pub started: Mutex<bool>,
    /// Whether `crun delete` ran: a RemoveContainer retried after a failed cleanup
    /// (a mount that would not go, say) skips it.
    pub deleted: Mutex<bool>,
}

impl Container {
    /// The process named by `exec_id` (empty: init).
    pub fn process(&self, exec_id: &str) -> Option<Arc<Process>> {
        if exec_id.is_empty() {
            return Some(Arc::clone(&self.init));
        }
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(exec_id)
            .cloned()
    }
}
