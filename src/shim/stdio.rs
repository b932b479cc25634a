//! containerd's stdio fifos, relayed to and from a guest process.
//!
//! The fifos are opened without blocking: stdout and stderr read-write, so a reader is
//! always there (a write never fails because containerd's side came and went); stdin
//! read-write too, so its end is never seen before containerd says so: the process gets
//! EOF only on CloseIO, after what was written has been relayed.

use std::io;
use std::sync::Arc;

use std::os::unix::fs::FileTypeExt;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::agent::AgentClient;

/// The stdio of one process, as containerd gives it.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    /// The stdin fifo (empty: none).
    pub stdin: String,
    /// The stdout fifo (empty: none).
    pub stdout: String,
    /// The stderr fifo (empty: none).
    pub stderr: String,
    /// Whether the process has a terminal.
    pub terminal: bool,
}

/// The running relays of one process.
#[derive(Debug, Default)]
pub struct Relays {
    outputs: Vec<JoinHandle<()>>,
    close_stdin: Option<Arc<Notify>>,
}

impl Relays {
    /// Starts relaying for process `exec_id` (empty: init) of container `cid`. Without a
    /// stdin fifo, the process's stdin is closed at once.
    pub async fn start(
        agent: &AgentClient,
        cid: &str,
        exec_id: &str,
        paths: &StdioPaths,
    ) -> io::Result<Relays> {
        let mut relays = Relays::default();
        for (path, stderr) in [(&paths.stdout, false), (&paths.stderr, true)] {
            if path.is_empty() || (stderr && paths.terminal) {
                continue;
            }
            let sink = open_output(path).await?;
            relays.outputs.push(tokio::spawn(pump_output(
                agent.clone(),
                cid.to_string(),
                exec_id.to_string(),
                stderr,
                sink,
            )));
        }
        if paths.stdin.is_empty() {
            if let Err(e) = agent.close_stdin(cid, exec_id).await {
                log::debug!("closing stdin of {cid}/{exec_id}: {e}");
            }
        } else {
            let fifo = pipe::OpenOptions::new()
                .read_write(true)
                .open_receiver(&paths.stdin)?;
            let close = Arc::new(Notify::new());
            tokio::spawn(pump_stdin(
                agent.clone(),
                cid.to_string(),
                exec_id.to_string(),
                fifo,
                close.clone(),
            ));
            relays.close_stdin = Some(close);
        }
        Ok(relays)
    }

    /// Closes the process's stdin once what containerd wrote has been relayed.
    pub fn close_stdin(&self) {
        if let Some(close) = &self.close_stdin {
            close.notify_one();
        }
    }

    /// Waits until the output relays reach the end of the process's output.
    pub async fn wait_outputs(&mut self) {
        for h in self.outputs.drain(..) {
            let _ = h.await;
        }
    }
}

type Sink = Box<dyn AsyncWrite + Unpin + Send>;

/// Opens an output: a fifo read-write (never blocks, always has a reader), or a plain
/// file for appending (a path, or a `file://` URI as `ctr run --log-uri` gives it; a
/// `binary://` logger is refused by name).
async fn open_output(path: &str) -> io::Result<Sink> {
    let path = match path.split_once("://") {
        Some(("file", p)) if p.starts_with('/') => p,
        Some((scheme, _)) => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("log URI scheme {scheme}:// is not supported (file:// is)"),
            ))
        }
        None => path,
    };
    let is_fifo = tokio::fs::metadata(path)
        .await
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false);
    if is_fifo {
        Ok(Box::new(
            pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(path)?,
        ))
    } else {
        Ok(Box::new(
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await?,
        ))
    }
}

async fn pump_output(
    agent: AgentClient,
    cid: String,
    exec_id: String,
    stderr: bool,
    mut sink: Sink,
) {
    loop {
        match agent.read_output(&cid, &exec_id, stderr).await {
            Ok(data) if data.is_empty() => break,
            Ok(data) => {
                if let Err(e) = async {
                    sink.write_all(&data).await?;
                    sink.flush().await
                }
                .await
                {
                    log::warn!("writing the output of {cid}/{exec_id}: {e}");
                    break;
                }
            }
            Err(e) => {
                log::debug!("reading the output of {cid}/{exec_id}: {e}");
                break;
            }
        }
    }
}

async fn pump_stdin(
    agent: AgentClient,
    cid: String,
    exec_id: String,
    mut fifo: pipe::Receiver,
    close: Arc<Notify>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        tokio::select! {
            r = fifo.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if agent.write_stdin(&cid, &exec_id, buf[..n].to_vec()).await.is_err() {
                        return;
                    }
                }
            },
            _ = close.notified() => {
                // Relay what is still in the fifo, then close.
                loop {
                    match fifo.try_read(&mut buf) {
                        Ok(n) if n > 0 => {
                            if agent.write_stdin(&cid, &exec_id, buf[..n].to_vec()).await.is_err() {
                                return;
                            }
                        }
                        _ => break,
                    }
                }
                break;
            }
        }
    }
    if let Err(e) = agent.close_stdin(&cid, &exec_id).await {
        log::debug!("closing stdin of {cid}/{exec_id}: {e}");
    }
}
