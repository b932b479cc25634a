//! Process stdio in the agent: output is read by a thread per stream into a bounded
//! buffer (so the host may read late and lose nothing), stdin is a pipe or the pty master.
//! Discarding a stream stops its thread and closes its descriptor at once, even while a
//! leftover descendant of the process still holds the other end open.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::sync::Notify;

/// Largest amount of unread output kept per stream; the producer then waits (the
/// process blocks on a full pipe, as it would without the agent).
const BUFFER_CAP: usize = 4 << 20;
/// Default chunk size for reads.
pub const DEFAULT_CHUNK: usize = 64 << 10;

/// Errors of stdio handling.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// Writing to stdin failed.
    #[error("writing stdin: {0}")]
    Write(std::io::Error),
    /// Stdin was closed already (or the process has none).
    #[error("stdin is closed")]
    Closed,
    /// Creating a pipe or duplicating a descriptor failed.
    #[error("setting up stdio: {0}")]
    Setup(std::io::Error),
}

#[derive(Default)]
struct State {
    buf: VecDeque<u8>,
    eof: bool,
    discarded: bool,
}

/// Buffered output of one stream (stdout or stderr) of one process.
#[derive(Default)]
pub struct Output {
    state: Mutex<State>,
    readable: Notify,
    writable: Condvar,
    /// The reader thread's stop signal, while it runs.
    stop: Mutex<Option<Arc<EventFd>>>,
}

impl Output {
    /// A stream that is already at end of file (stderr of a terminal process).
    pub fn empty() -> Arc<Self> {
        let o = Output::default();
        o.lock().eof = true;
        Arc::new(o)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends data, waiting while the buffer is full. Returns false once discarded.
    fn push(&self, data: &[u8]) -> bool {
        let mut s = self.lock();
        while s.buf.len() >= BUFFER_CAP && !s.discarded {
            s = self.writable.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if s.discarded {
            return false;
        }
        s.buf.extend(data);
        drop(s);
        self.readable.notify_one();
        true
    }

    fn finish(&self) {
        self.lock().eof = true;
        self.readable.notify_one();
    }

    /// Drops buffered and future output (the process is removed) and stops the reader
    /// thread, which closes its descriptor.
    pub fn discard(&self) {
        let mut s = self.lock();
        s.discarded = true;
        s.buf.clear();
        s.eof = true;
        drop(s);
        if let Some(stop) = self.stop_signal().take() {
            // Cannot fail short of a counter overflow; the reader then stops at EOF.
            let _ = stop.arm();
        }
        self.writable.notify_all();
        self.readable.notify_one();
    }

    /// Returns up to `max` bytes, waiting for data; empty means end of stream.
    pub async fn read(&self, max: usize) -> Vec<u8> {
        let max = if max == 0 { DEFAULT_CHUNK } else { max };
        loop {
            {
                let mut s = self.lock();
                if !s.buf.is_empty() {
                    let n = max.min(s.buf.len());
                    let chunk: Vec<u8> = s.buf.drain(..n).collect();
                    let more = !s.buf.is_empty() || s.eof;
                    drop(s);
                    self.writable.notify_all();
                    if more {
                        // Let the next reader in without waiting for new data.
                        self.readable.notify_one();
                    }
                    return chunk;
                }
                if s.eof {
                    self.readable.notify_one();
                    return Vec::new();
                }
            }
            self.readable.notified().await;
        }
    }

    fn stop_signal(&self) -> std::sync::MutexGuard<'_, Option<Arc<EventFd>>> {
        self.stop.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the thread copying `source` into this buffer until EOF (or EIO: a pty whose
    /// other side is closed), or until [`Output::discard`]. One reader per buffer.
    pub fn spawn_reader(self: &Arc<Self>, source: OwnedFd) -> Result<(), StdioError> {
        let stop = EventFd::from_flags(EfdFlags::EFD_CLOEXEC)
            .map(Arc::new)
            .map_err(|e| StdioError::Setup(e.into()))?;
        *self.stop_signal() = Some(Arc::clone(&stop));
        let out = Arc::clone(self);
        std::thread::spawn(move || {
            let mut file = File::from(source);
            let mut chunk = vec![0u8; DEFAULT_CHUNK];
            loop {
                let mut fds = [
                    PollFd::new(file.as_fd(), PollFlags::POLLIN),
                    PollFd::new(stop.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::Error::EINTR) => continue,
                    Err(_) => break,
                }
                if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                    break;
                }
                if fds[0].revents().is_none_or(|r| r.is_empty()) {
                    continue;
                }
                match file.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        if !out.push(&chunk[..n]) {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            out.finish();
            let mut signal = out.stop_signal();
            if signal.as_ref().is_some_and(|s| Arc::ptr_eq(s, &stop)) {
                signal.take();
            }
        });
        Ok(())
    }
}

/// The write side of a process's stdin.
pub enum Stdin {
    /// The write end of a pipe.
    Pipe(File),
    /// The pty master (shared with the output reader).
    Pty(Arc<File>),
}

impl Stdin {
    /// Writes all of `data` (blocking; call from a blocking context).
    pub fn write_all(&self, data: &[u8]) -> Result<(), StdioError> {
        match self {
            Stdin::Pipe(f) => (&*f).write_all(data),
            Stdin::Pty(f) => (&**f).write_all(data),
        }
        .map_err(StdioError::Write)
    }

    /// Closes stdin: the pipe is closed; on a pty, EOF (^D) is sent (unless nobody holds
    /// the terminal any more: EIO).
    pub fn close(self: Arc<Self>) -> Result<(), StdioError> {
        match &*self {
            Stdin::Pipe(_) => drop(self),
            Stdin::Pty(f) => match (&**f).write_all(&[4]) {
                Err(e) if e.raw_os_error() != Some(libc::EIO) => return Err(StdioError::Write(e)),
                _ => {}
            },
        }
        Ok(())
    }
}

/// A pipe as (read end, write end), both close-on-exec.
pub fn pipe() -> Result<(OwnedFd, OwnedFd), StdioError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| StdioError::Setup(e.into()))
}

/// Duplicates a descriptor (close-on-exec).
pub fn dup(fd: impl AsFd) -> Result<OwnedFd, StdioError> {
    fd.as_fd().try_clone_to_owned().map_err(StdioError::Setup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn buffers_until_read_then_eof() {
        let out = Arc::new(Output::default());
        let (r, w) = pipe().unwrap();
        out.spawn_reader(r).unwrap();
        let mut w = File::from(w);
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        drop(w);
        let mut got = Vec::new();
        loop {
            let c = out.read(4).await;
            if c.is_empty() {
                break;
            }
            assert!(c.len() <= 4);
            got.extend(c);
        }
        assert_eq!(got, b"hello world");
        assert!(out.read(0).await.is_empty());
    }

    #[tokio::test]
    async fn empty_and_discarded() {
        assert!(Output::empty().read(10).await.is_empty());
        let out = Arc::new(Output::default());
        out.push(b"x");
        out.discard();
        assert!(out.read(10).await.is_empty());
        assert!(!out.push(b"y"));
    }

    #[tokio::test]
    async fn discard_stops_the_reader_while_the_writer_lives() {
        let out = Arc::new(Output::default());
        let (r, w) = pipe().unwrap();
        out.spawn_reader(r).unwrap();
        let mut w = File::from(w);
        w.write_all(b"x").unwrap();
        assert_eq!(out.read(10).await, b"x");
        out.discard();
        // The reader thread closes the read end: writing then fails with EPIPE (the
        // test binary ignores SIGPIPE, as Rust programs do).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match w.write_all(b"y") {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                Err(e) => panic!("unexpected {e}"),
                Ok(()) => {
                    assert!(std::time::Instant::now() < deadline, "reader still open");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
        assert!(out.read(10).await.is_empty());
    }
}
