//! `lazyvm-snapshotter [--config FILE]`: containerd's proxy snapshotter for lazyvm (see
//! the `lazyvm-snapshotter` crate), serving on a unix socket until SIGTERM or SIGINT.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use lazyvm_snapshotter::config::Config;

/// The configuration file read when `--config` is not given (defaults if missing).
const DEFAULT_CONFIG: &str = "/etc/lazyvm/snapshotter.toml";

#[derive(Parser)]
#[command(
    name = "lazyvm-snapshotter",
    version,
    about = "containerd snapshotter for lazyvm: overlayfs layers and lazily pulled nydus images"
)]
struct Cli {
    /// Configuration file (TOML: socket, root, registries); default
    /// /etc/lazyvm/snapshotter.toml when it exists.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log level (error, warn, info, debug).
    #[arg(long, default_value = "info")]
    log_level: log::LevelFilter,
}

fn load(cli: &Cli) -> Result<Config, String> {
    let path = match &cli.config {
        Some(p) => p.as_path(),
        None if Path::new(DEFAULT_CONFIG).exists() => Path::new(DEFAULT_CONFIG),
        None => return Ok(Config::default()),
    };
    Config::load(path).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .format_timestamp_millis()
        .init();
    let config = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lazyvm-snapshotter: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lazyvm-snapshotter: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(lazyvm_snapshotter::server::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lazyvm-snapshotter: {e}");
            ExitCode::from(1)
        }
    }
}
