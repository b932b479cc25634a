//! `lazyvm`: the user-facing command.
//!
//! - `lazyvm run --rootfs DIR [--tty] -- CMD ARGS...` runs CMD as a container in a fresh
//!   micro-VM, relays its stdio, and exits with its status;
//! - `lazyvm check` tells what this host has and lacks for lazyvm;
//! - `lazyvm cache [--size N] [--socket PATH]` keeps booted VMs ready for sandboxes
//!   (see `lazyvm::vmcache`), until SIGTERM or SIGINT;
//! - `lazyvm image convert --from … --to …` makes a nydus (or OCI) image of a rootfs or
//!   an OCI archive and pushes it to a registry.

mod check;
mod image;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lazyvm",
    version,
    about = "lazy-loading micro-VM container runtime"
)]
struct Cli {
    /// Configuration file (default: $LAZYVM_CONFIG, else /etc/lazyvm/config.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log level for lazyvm's own messages (error, warn, info, debug).
    #[arg(long, global = true, default_value = "warn")]
    log_level: log::LevelFilter,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command as a container in a new micro-VM.
    Run(run::RunArgs),
    /// Check what this host has and lacks for lazyvm.
    Check,
    /// Build and push images (nydus for lazy pulling, or plain OCI).
    Image(image::ImageArgs),
    /// Keep booted VMs ready for sandboxes (until SIGTERM/SIGINT).
    Cache(CacheArgs),
}

#[derive(clap::Args)]
struct CacheArgs {
    /// The socket to serve (default: `[cache] socket` of the configuration).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// How many booted VMs to keep (default: `[cache] size` of the configuration).
    #[arg(long)]
    size: Option<u32>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .format_timestamp_millis()
        .init();
    let config = match lazyvm::config::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lazyvm: {e}");
            return ExitCode::from(125);
        }
    };
    let runtime = || {
        tokio::runtime::Runtime::new()
            .map_err(|e| eprintln!("lazyvm: starting the async runtime: {e}"))
            .ok()
    };
    match cli.command {
        Command::Check => check::check(&config),
        Command::Cache(args) => {
            let Some(runtime) = runtime() else {
                return ExitCode::from(125);
            };
            runtime.block_on(cache(config, args))
        }
        Command::Run(args) => {
            let Some(runtime) = runtime() else {
                return ExitCode::from(125);
            };
            let code = runtime.block_on(run::run(config, args));
            // stdin may still be read by a blocking thread: don't wait for it.
            runtime.shutdown_background();
            ExitCode::from(code)
        }
        Command::Image(args) => {
            let Some(runtime) = runtime() else {
                return ExitCode::from(125);
            };
            let code = runtime.block_on(image::image(&config, args));
            ExitCode::from(code)
        }
    }
}

/// `lazyvm cache`: serves the VM cache until SIGTERM or SIGINT.
async fn cache(config: lazyvm::config::Config, args: CacheArgs) -> ExitCode {
    let Some(socket) = args.socket.or_else(|| config.cache.socket.clone()) else {
        eprintln!(
            "lazyvm cache: no socket: pass --socket or set [cache] socket in the configuration"
        );
        return ExitCode::from(2);
    };
    let size = args.size.unwrap_or(config.cache.size);
    if size == 0 {
        eprintln!("lazyvm cache: a size of 0 keeps no VMs");
        return ExitCode::from(2);
    }
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("lazyvm cache: cannot handle SIGTERM and SIGINT");
        return ExitCode::from(125);
    };
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let run_dir = std::path::Path::new(lazyvm::sandbox::RUN_DIR);
    match lazyvm::vmcache::serve(config, &socket, size as usize, run_dir, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lazyvm cache: {e}");
            ExitCode::from(1)
        }
    }
}
