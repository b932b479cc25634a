//! The VM cache (`lazyvm cache`): booted VMs kept ready, as Kata's VM cache does, so a
//! sandbox starts without a boot on its path.
//!
//! The cache boots VMs ([`Sandbox::boot_warm`]) until it holds its size, and serves a Unix
//! socket (root only). A sandbox whose configuration names the socket asks it for a VM
//! ([`claim`]) with its sandbox key, its configuration's [`Config::vm_fingerprint`] and,
//! for a pod, the pod's network namespace; the cache hands one over only when its own
//! configuration has the same fingerprint and the same run directory
//! ([`Sandbox::hand_over`], which moves the VM's NIC into the pod's namespace), and boots
//! the next. Each VM serves one sandbox, once; nothing of a guest is reused. The cache
//! stays the helpers' parent (it reaps them); the shim owns and stops them. A cache that
//! dies leaves its claimed VMs running; its unclaimed ones are found by their recorded
//! owner (the cache) and removed when a cache starts again.

mod wire;

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Mutex, Notify};

use crate::config::Config;
use crate::sandbox::{sandbox_key, Handoff, Sandbox, SandboxSpec};
pub use wire::{Answer, Request};

/// How long a client waits for the cache's answer before it boots its own VM.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the cache waits for a client's request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The prefix of a cached VM's directory name (no sandbox key starts with a dot).
pub const WARM_PREFIX: &str = ".warm-";
/// The pause after a failed boot, doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why the cache gave no VM, or could not run.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The socket could not be reached or used.
    #[error("the VM cache at {path:?}: {source}")]
    Socket {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The pod's network namespace could not be opened.
    #[error("opening the pod's network namespace {path:?}: {source}")]
    Netns {
        /// Its path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Another cache serves the socket.
    #[error("another VM cache serves {0:?}")]
    InUse(PathBuf),
    /// The cache refused.
    #[error("the VM cache refused: {0}")]
    Refused(String),
    /// The cache's answer made no sense.
    #[error("the VM cache answered {0}")]
    Protocol(String),
}

/// Asks the cache at `socket` for a booted VM for sandbox `spec`; the answer is the VM,
/// already in the sandbox directory and recorded as ours (for a pod, with its NIC's tap
/// in the pod's network namespace). Never waits longer than [`ANSWER_TIMEOUT`].
pub async fn claim(socket: &Path, spec: &SandboxSpec) -> Result<Handoff, CacheError> {
    let mut fds = Vec::new();
    if let Some(netns) = &spec.netns {
        let file = std::fs::File::open(netns).map_err(|source| CacheError::Netns {
            path: netns.clone(),
            source,
        })?;
        fds.push(OwnedFd::from(file));
    }
    let request = Request::Claim {
        key: sandbox_key(&spec.id),
        run_dir: spec.run_dir.clone(),
        fingerprint: spec.config.vm_fingerprint(),
        netns: spec.netns.is_some(),
    };
    let (answer, mut fds) = exchange(socket, request, fds).await?;
    match answer {
        Answer::Vm {
            dir,
            pids,
            vm_user,
            nic_mac,
        } => {
            let nic = match nic_mac {
                Some(mac) if fds.len() == 4 => fds.pop().map(|tap| (tap, mac)),
                _ => None,
            };
            Ok(Handoff {
                dir,
                pids,
                pidfds: fds,
                vm_user,
                nic,
            })
        }
        Answer::Refused { reason } => Err(CacheError::Refused(reason)),
        other => Err(CacheError::Protocol(format!("{other:?} to a claim"))),
    }
}

/// How many VMs the cache at `socket` has ready, and how many it keeps.
pub async fn status(socket: &Path) -> Result<(usize, usize), CacheError> {
    match exchange(socket, Request::Status, Vec::new()).await?.0 {
        Answer::Ready { ready, size } => Ok((ready, size)),
        other => Err(CacheError::Protocol(format!(
            "{other:?} to a status request"
        ))),
    }
}

async fn exchange(
    socket: &Path,
    request: Request,
    fds: Vec<OwnedFd>,
) -> Result<(Answer, Vec<OwnedFd>), CacheError> {
    let path = socket.to_path_buf();
    let err = |source| CacheError::Socket {
        path: socket.to_path_buf(),
        source,
    };
    tokio::task::spawn_blocking(move || {
        let stream = std::os::unix::net::UnixStream::connect(&path)?;
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        wire::send(stream.as_fd(), &request, &raw)?;
        wire::recv(stream.as_fd())
    })
    .await
    .map_err(|e| err(std::io::Error::other(e)))?
    .map_err(err)
}

/// A running cache.
struct Cache {
    config: Config,
    fingerprint: String,
    run_dir: PathBuf,
    size: usize,
    ready: Mutex<VecDeque<Sandbox>>,
    /// Wakes the refiller: a VM was taken, or the cache stops.
    refill: Notify,
    stopping: AtomicBool,
    booted: AtomicU64,
}

/// Runs the cache: keeps `size` VMs booted from `config` under `run_dir` and serves
/// `socket` until `shutdown` resolves; then stops the VMs it still holds and removes the
/// socket. Leftovers of a cache that died (its unclaimed VMs) are removed first.
pub async fn serve(
    config: Config,
    socket: &Path,
    size: usize,
    run_dir: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), CacheError> {
    let sock_err = |source| CacheError::Socket {
        path: socket.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(run_dir).map_err(sock_err)?;
    let listener = bind(socket)?;
    remove_stale(run_dir);
    let cache = Arc::new(Cache {
        fingerprint: config.vm_fingerprint(),
        config,
        run_dir: run_dir.to_path_buf(),
        size,
        ready: Mutex::new(VecDeque::new()),
        refill: Notify::new(),
        stopping: AtomicBool::new(false),
        booted: AtomicU64::new(0),
    });
    log::info!("VM cache serving {} with {size} VMs", socket.display());
    let refiller = tokio::spawn(refill(cache.clone()));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    tokio::spawn(answer(cache.clone(), stream));
                }
                Err(e) => log::warn!("VM cache: accepting a connection: {e}"),
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = std::fs::remove_file(socket);
    cache.stopping.store(true, Ordering::SeqCst);
    cache.refill.notify_one();
    let _ = refiller.await;
    let left: Vec<Sandbox> = cache.ready.lock().await.drain(..).collect();
    for vm in left {
        vm.stop().await;
    }
    log::info!("VM cache stopped");
    Ok(())
}

/// Binds `socket` (owner only), replacing a stale one nobody serves.
fn bind(socket: &Path) -> Result<UnixListener, CacheError> {
    let err = |source| CacheError::Socket {
        path: socket.to_path_buf(),
        source,
    };
    if std::fs::symlink_metadata(socket).is_ok() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(CacheError::InUse(socket.to_path_buf()));
        }
        std::fs::remove_file(socket).map_err(err)?;
    }
    // Made owner-only from the start: the socket hands out VMs.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let listener = UnixListener::bind(socket);
    nix::sys::stat::umask(old);
    listener.map_err(err)
}

/// Removes the VMs of caches that are gone: `.warm-*` directories whose recorded owner is
/// dead (their helpers are killed).
fn remove_stale(run_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(WARM_PREFIX) {
            continue;
        }
        let dir = entry.path();
        if crate::sandbox::owner_alive(&dir) {
            continue;
        }
        log::info!(
            "VM cache: removing {}, left by a cache that is gone",
            dir.display()
        );
        crate::sandbox::kill_recorded(&dir);
        if let Err(e) = crate::mounts::remove_dir_unmounted(&dir) {
            log::warn!("VM cache: removing {}: {e}", dir.display());
        }
    }
}

/// Boots VMs until the cache holds its size, one at a time; drops VMs whose helpers
/// died; backs off after a failed boot.
async fn refill(cache: Arc<Cache>) {
    let mut backoff = FIRST_BACKOFF;
    while !cache.stopping.load(Ordering::SeqCst) {
        let failed: Vec<Sandbox> = {
            let mut ready = cache.ready.lock().await;
            let (failed, ok): (VecDeque<_>, VecDeque<_>) =
                ready.drain(..).partition(Sandbox::has_failed);
            *ready = ok;
            failed.into()
        };
        for vm in failed {
            log::warn!(
                "VM cache: VM {} failed while waiting: replacing it",
                vm.id()
            );
            vm.stop().await;
        }
        if cache.ready.lock().await.len() >= cache.size {
            tokio::select! {
                () = cache.refill.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let n = cache.booted.fetch_add(1, Ordering::SeqCst);
        let name = format!("{WARM_PREFIX}{}-{n}", std::process::id());
        match Sandbox::boot_warm(cache.config.clone(), &cache.run_dir, &name).await {
            Ok(vm) => {
                log::info!("VM cache: {name} ready in {:?}", vm.timings().total);
                backoff = FIRST_BACKOFF;
                cache.ready.lock().await.push_back(vm);
            }
            Err(e) => {
                log::warn!("VM cache: booting {name}: {e}; next try in {backoff:?}");
                tokio::select! {
                    () = cache.refill.notified() => {}
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Answers one connection.
async fn answer(cache: Arc<Cache>, stream: UnixStream) {
    let peer = stream.peer_cred();
    // One small message each way: the socket is made blocking, with timeouts, and read and
    // written on a blocking thread.
    let stream = match stream.into_std().and_then(|s| {
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        s.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("VM cache: a connection: {e}");
            return;
        }
    };
    let received = tokio::task::spawn_blocking(move || {
        let r = wire::recv::<Request>(stream.as_fd());
        (stream, r)
    })
    .await;
    let Ok((stream, received)) = received else {
        return;
    };
    let (answer, handoff) = match (received, peer) {
        (Ok((request, fds)), Ok(peer)) => decide(&cache, peer, request, fds).await,
        (Err(e), _) => refused(format!("reading the request: {e}")),
        (_, Err(e)) => refused(format!("the peer's credentials: {e}")),
    };
    let sent = tokio::task::spawn_blocking(move || {
        let fds: Vec<RawFd> = handoff
            .iter()
            .flat_map(|h| {
                h.pidfds
                    .iter()
                    .chain(h.nic.iter().map(|(tap, _)| tap))
                    .map(AsRawFd::as_raw_fd)
            })
            .collect();
        let r = wire::send(stream.as_fd(), &answer, &fds);
        (r, handoff)
    })
    .await;
    if let Ok((Err(e), Some(h))) = sent {
        // The claimer is gone: nobody owns the VM. It goes.
        log::warn!(
            "VM cache: handing over {}: {e}: stopping it",
            h.dir.display()
        );
        h.discard().await;
    }
}

fn refused(reason: String) -> (Answer, Option<Handoff>) {
    (Answer::Refused { reason }, None)
}

/// The answer to `request` (which came with `fds`) from `peer`, and the VM handed over
/// with it.
async fn decide(
    cache: &Cache,
    peer: tokio::net::unix::UCred,
    request: Request,
    mut fds: Vec<OwnedFd>,
) -> (Answer, Option<Handoff>) {
    let (key, run_dir, fingerprint, netns) = match request {
        Request::Status => {
            let ready = cache.ready.lock().await.len();
            return (
                Answer::Ready {
                    ready,
                    size: cache.size,
                },
                None,
            );
        }
        Request::Claim {
            key,
            run_dir,
            fingerprint,
            netns,
        } => (key, run_dir, fingerprint, netns),
    };
    let netns = match (netns, fds.len()) {
        (true, 1) => fds.pop(),
        (false, 0) => None,
        (want, n) => {
            return refused(format!(
                "{n} descriptors with a claim {} a network namespace",
                if want { "for" } else { "without" }
            ))
        }
    };
    let Some(pid) = peer.pid().and_then(|p| u32::try_from(p).ok()) else {
        return refused("the peer has no pid".into());
    };
    if peer.uid() != rustix::process::geteuid().as_raw() {
        return refused(format!("uid {} may not take VMs", peer.uid()));
    }
    if run_dir != cache.run_dir {
        return refused(format!(
            "this cache keeps VMs for {:?}, not {run_dir:?}",
            cache.run_dir
        ));
    }
    if fingerprint != cache.fingerprint {
        return refused("the sandbox's configuration is not the cache's".into());
    }
    let vm = cache.ready.lock().await.pop_front();
    cache.refill.notify_one();
    let Some(vm) = vm else {
        return refused("no VM is ready".into());
    };
    let id = vm.id().to_string();
    match vm.hand_over(&key, pid, netns).await {
        Ok(h) => {
            log::info!("VM cache: {id} handed to pid {pid} as {}", h.dir.display());
            (
                Answer::Vm {
                    dir: h.dir.clone(),
                    pids: h.pids,
                    vm_user: h.vm_user.clone(),
                    nic_mac: h.nic.as_ref().map(|(_, mac)| mac.clone()),
                },
                Some(h),
            )
        }
        Err(e) => refused(format!("handing over {id}: {e}")),
    }
}
