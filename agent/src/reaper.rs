//! The one place that calls waitpid: the agent is PID 1 (or a child subreaper), so every
//! orphan becomes its child. Exit statuses are delivered to whoever subscribed to the pid
//! (crun invocations, container processes); statuses nobody asked for yet are kept for a
//! while so that a subscriber arriving after the exit (a fast process, a pid read late
//! from a pid file) still gets it. A subscriber says since when its process can exist
//! (an instant taken before it was created): an exit reaped earlier belongs to another
//! process that had the same pid, and is never handed out for this one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How long an unclaimed exit status is kept.
const KEEP_UNCLAIMED: Duration = Duration::from_secs(300);

/// Errors of the reaper.
#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    /// Installing the SIGCHLD handler failed.
    #[error("installing the SIGCHLD handler: {0}")]
    Signal(std::io::Error),
    /// The reaper is gone (the agent is shutting down).
    #[error("the reaper stopped")]
    Stopped,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// Shell convention: exit code, or 128 + signal.
    pub code: i32,
    /// When it was reaped, nanoseconds since the Unix epoch.
    pub at_ns: u64,
}

impl ExitStatus {
    fn from_wait(status: WaitStatus) -> Option<(Pid, Self)> {
        let at_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        match status {
            WaitStatus::Exited(pid, code) => Some((pid, ExitStatus { code, at_ns })),
            WaitStatus::Signaled(pid, sig, _) => Some((
                pid,
                ExitStatus {
                    code: 128 + sig as i32,
                    at_ns,
                },
            )),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Table {
    waiters: HashMap<i32, Vec<oneshot::Sender<ExitStatus>>>,
    /// Per pid, the unclaimed exits with the instant each was reaped (oldest first).
    unclaimed: HashMap<i32, Vec<(ExitStatus, Instant)>>,
}

/// Handle to the reaper; cheap to clone.
#[derive(Clone, Default)]
pub struct Reaper {
    table: Arc<Mutex<Table>>,
}

impl Reaper {
    /// Starts reaping on SIGCHLD (must run inside a tokio runtime).
    pub fn start() -> Result<Self, ReaperError> {
        let mut sigchld = signal(SignalKind::child()).map_err(ReaperError::Signal)?;
        let reaper = Reaper::default();
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_all();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    /// Reaps every child that has exited and dispatches the statuses.
    fn reap_all(&self) {
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => {
                    if let Some((pid, exit)) = ExitStatus::from_wait(status) {
                        self.deliver(pid.as_raw(), exit);
                    }
                }
            }
        }
    }

    fn deliver(&self, pid: i32, exit: ExitStatus) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        match t.waiters.remove(&pid) {
            Some(waiters) => {
                for w in waiters {
                    let _ = w.send(exit);
                }
            }
            None => {
                let now = Instant::now();
                t.unclaimed.retain(|_, exits| {
                    exits.retain(|(_, at)| now.duration_since(*at) < KEEP_UNCLAIMED);
                    !exits.is_empty()
                });
                t.unclaimed.entry(pid).or_default().push((exit, now));
            }
        }
    }

    /// Waits for `pid` to exit, `since` being an instant before that process was created.
    /// Works whether the exit happened already or not; an exit of the same pid reaped
    /// before `since` was another process's and is dropped.
    pub async fn wait(&self, pid: i32, since: Instant) -> Result<ExitStatus, ReaperError> {
        let rx = {
            let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(exits) = t.unclaimed.remove(&pid) {
                let mut ours = exits.into_iter().filter(|(_, at)| *at >= since);
                if let Some((exit, _)) = ours.next() {
                    let later: Vec<_> = ours.collect();
                    if !later.is_empty() {
                        t.unclaimed.insert(pid, later);
                    }
                    return Ok(exit);
                }
            }
            let (tx, rx) = oneshot::channel();
            t.waiters.entry(pid).or_default().push(tx);
            rx
        };
        rx.await.map_err(|_| ReaperError::Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let (pid, e) = ExitStatus::from_wait(WaitStatus::Exited(Pid::from_raw(5), 3)).unwrap();
        assert_eq!((pid.as_raw(), e.code), (5, 3));
        let (_, e) = ExitStatus::from_wait(WaitStatus::Signaled(
            Pid::from_raw(5),
            nix::sys::signal::Signal::SIGKILL,
            false,
        ))
        .unwrap();
        assert_eq!(e.code, 137);
    }

    #[tokio::test]
    async fn early_and_late_subscribers() {
        let r = Reaper::default();
        let since = Instant::now();
        let exit = ExitStatus { code: 7, at_ns: 1 };
        r.deliver(42, exit);
        assert_eq!(r.wait(42, since).await.unwrap(), exit);
        let r2 = r.clone();
        let h = tokio::spawn(async move { r2.wait(43, since).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        r.deliver(43, exit);
        assert_eq!(h.await.unwrap().unwrap(), exit);
    }

    #[tokio::test]
    async fn a_reused_pid_never_gets_the_old_exit() {
        let r = Reaper::default();
        let old = ExitStatus { code: 1, at_ns: 1 };
        r.deliver(50, old);
        tokio::time::sleep(Duration::from_millis(5)).await;
        // A new process gets pid 50 after the old one was reaped.
        let since = Instant::now();
        let r2 = r.clone();
        let h = tokio::spawn(async move { r2.wait(50, since).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !h.is_finished(),
            "the old exit was handed to the new process"
        );
        let new = ExitStatus { code: 0, at_ns: 2 };
        r.deliver(50, new);
        assert_eq!(h.await.unwrap().unwrap(), new);
    }
}
