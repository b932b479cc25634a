//! Serving the snapshots gRPC service on the configured unix socket until SIGTERM or
//! SIGINT (the `lazyvm-snapshotter` binary's body).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

use containerd_snapshots::tonic::transport::Server;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::service::Service;
use crate::snapshots::{SnapshotError, Snapshots};

/// Opens the snapshotter's root (removing crash leftovers), listens on its socket (a
/// stale one is replaced; mode 0600) and serves until SIGTERM or SIGINT, then removes
/// the socket. Errors name what failed.
pub async fn serve(config: Config) -> Result<(), String> {
    let socket = config.socket.clone();
    if let Some(dir) = socket.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let root = config.root.clone();
    let snapshots = tokio::task::spawn_blocking(move || {
        let s = Snapshots::open(config)?;
        let n = s.cleanup()?;
        Ok::<_, SnapshotError>((s, n))
    })
    .await
    .map_err(|e| e.to_string())?;
    let (snapshots, cleaned) = snapshots.map_err(|e| format!("opening {}: {e}", root.display()))?;
    if cleaned > 0 {
        log::info!("removed {cleaned} leftover snapshot directories");
    }
    match std::fs::remove_file(&socket) {
        Ok(()) => log::info!("removed the stale socket {}", socket.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing {}: {e}", socket.display())),
    }
    let listener = UnixListener::bind(&socket)
        .map_err(|e| format!("listening on {}: {e}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", socket.display()))?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    log::info!(
        "serving snapshots of {} on {}",
        root.display(),
        socket.display()
    );
    let service = containerd_snapshots::server(std::sync::Arc::new(Service::new(snapshots)));
    let result = Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
            tokio::select! {
                _ = term.recv() => log::info!("SIGTERM: stopping"),
                _ = int.recv() => log::info!("SIGINT: stopping"),
            }
        })
        .await;
    let _ = std::fs::remove_file(&socket);
    result.map_err(|e| format!("serving on {}: {e}", socket.display()))
}
