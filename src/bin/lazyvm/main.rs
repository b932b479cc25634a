//! `lazyvm`: the user-facing command.
//!
//! - `lazyvm run --rootfs DIR [--tty] -- CMD ARGS...` runs CMD as a container in a fresh
//!   micro-VM, relays its stdio, and exits with its status;
//! - `lazyvm check` tells what this host has and lacks for lazyvm;
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
    match cli.command {
        Command::Check => check::check(&config),
        Command::Run(args) => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("lazyvm: starting the async runtime: {e}");
                    return ExitCode::from(125);
                }
            };
            let code = runtime.block_on(run::run(config, args));
            // stdin may still be read by a blocking thread: don't wait for it.
            runtime.shutdown_background();
            ExitCode::from(code)
        }
        Command::Image(args) => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("lazyvm: starting the async runtime: {e}");
                    return ExitCode::from(125);
                }
            };
            let code = runtime.block_on(image::image(&config, args));
            ExitCode::from(code)
        }
    }
}
