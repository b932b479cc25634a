//! lazyvm-agent: PID 1 of lazyvm's micro-VM. It sets the VM up, then serves the agent
//! protocol (`proto/agent.proto`) over ttrpc on vsock port 1024, running containers
//! through crun.
//!
//! Usage: `lazyvm-agent [--listen ADDR] [--crun PATH]`; ADDR defaults to
//! `vsock://-1:1024`, `unix:///path` is accepted for tests outside a VM. The kernel
//! command line option `lazyvm.debug` turns on debug logging, `lazyvm.warm` (a VM the
//! host's cache boots) a crun warm-up (see `warm`); `lazyvm_no_pivot=1` keeps
//! the agent on the initramfs's own mount (crun then runs containers with `--no-pivot`)
//! instead of moving it onto a bind of the initramfs first (see `rootfs`).

mod cgroup;
mod container;
mod init;
mod logger;
mod modules;
mod mount;
mod network;
mod reaper;
mod remove;
mod rootfs;
mod runtime;
mod service;
mod stdio;
mod warm;

// OCI spec handling lives in the library target (agent/src/lib.rs), which fuzz/ uses too.
use lazyvm_agent::spec;

use std::path::PathBuf;
use std::time::Duration;

use lazyvm_proto::agent_ttrpc::create_agent;

/// Command-line options.
struct Options {
    listen: String,
    crun: PathBuf,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        listen: format!("vsock://-1:{}", lazyvm_proto::AGENT_VSOCK_PORT),
        crun: PathBuf::from("/usr/bin/crun"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--listen" => o.listen = value("--listen")?,
            "--crun" => o.crun = PathBuf::from(value("--crun")?),
            // The kernel passes unknown command-line words to init: ignore them.
            _ => {}
        }
    }
    Ok(o)
}

/// Whether the kernel command line `cmdline` holds the word `word`.
fn has_word(cmdline: &str, word: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == word)
}

/// PID 1 must never exit: on a fatal error, say why and power the VM off.
fn fatal(pid1: bool, msg: &str) -> ! {
    log::error!("fatal: {msg}");
    if pid1 {
        nix::unistd::sync();
        std::thread::sleep(Duration::from_millis(200));
        let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    }
    std::process::exit(1);
}

fn main() {
    let pid1 = std::process::id() == 1;
    logger::init(false);
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => fatal(pid1, &e),
    };
    // Leave the initramfs's own mount first, so that crun can pivot_root.
    let mut no_pivot = false;
    let mut warm = false;
    if pid1 {
        // `lazyvm_no_pivot=1` on the kernel command line (the kernel hands it to init's
        // environment) skips the switch: containers then run with crun --no-pivot.
        if std::env::var_os("lazyvm_no_pivot").is_some() {
            no_pivot = true;
        } else if let Err(e) = rootfs::switch_to_bind() {
            log::warn!("staying on the initramfs, containers use crun --no-pivot: {e}");
            no_pivot = true;
        }
        log::info!("started; root is a bind of the initramfs: {}", !no_pivot);
        std::env::set_var(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        if let Err(e) = init::setup() {
            fatal(pid1, &format!("boot setup: {e}"));
        }
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let debug = has_word(&cmdline, "lazyvm.debug");
        warm = has_word(&cmdline, lazyvm_proto::WARM_CMDLINE_FLAG);
        logger::init(debug);
        if debug {
            log::set_max_level(log::LevelFilter::Debug);
        }
    } else if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        fatal(pid1, &format!("becoming a subreaper: {e}"));
    }

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fatal(pid1, &format!("tokio runtime: {e}")),
    };
    if let Err(e) = rt.block_on(serve(opts, no_pivot, warm)) {
        fatal(pid1, &e);
    }
}

/// Tells the host that the server listens: a connection to the host's vsock port
/// [`lazyvm_proto::AGENT_READY_VSOCK_PORT`], closed at once. Best effort: the host
/// keeps trying to connect without it.
fn signal_ready() {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};
    use std::os::fd::AsRawFd;
    let res = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .and_then(|fd| {
        let host = VsockAddr::new(libc::VMADDR_CID_HOST, lazyvm_proto::AGENT_READY_VSOCK_PORT);
        connect(fd.as_raw_fd(), &host)
    });
    if let Err(e) = res {
        log::debug!("telling the host the agent listens: {e}");
    }
}

/// Serves the agent protocol; `warm`: once listening, warm crun up too (a VM for the cache, see
/// [`warm`]).
async fn serve(opts: Options, no_pivot: bool, warm: bool) -> Result<(), String> {
    let reaper = reaper::Reaper::start().map_err(|e| e.to_string())?;
    let work = PathBuf::from(if std::process::id() == 1 {
        "/run/lazyvm/work".to_owned()
    } else {
        std::env::var("LAZYVM_AGENT_WORK").unwrap_or_else(|_| "/tmp/lazyvm-agent".to_owned())
    });
    std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    if !opts.crun.exists() {
        return Err(format!(
            "the OCI runtime {} is missing",
            opts.crun.display()
        ));
    }
    let crun = runtime::Crun::new(
        opts.crun,
        PathBuf::from("/run/crun"),
        work,
        reaper,
        no_pivot,
    );
    let warm_crun = warm.then(|| crun.clone());
    let svc = service::AgentService::new(crun);
    let handler = service::Handler(svc);
    let mut server = ttrpc::r#async::Server::new()
        .bind(&opts.listen)
        .map_err(|e| format!("listening on {}: {e}", opts.listen))?
        .register_service(create_agent(std::sync::Arc::new(handler)));
    server
        .start()
        .await
        .map_err(|e| format!("starting the ttrpc server: {e}"))?;
    log::info!("agent ready on {}", opts.listen);
    if opts.listen.starts_with("vsock://") {
        tokio::task::spawn_blocking(signal_ready);
    }
    if let Some(warm_crun) = warm_crun {
        tokio::spawn(async move {
            match warm::crun(&warm_crun).await {
                Ok(took) => log::info!("warm-up: crun create took {took:?}"),
                Err(e) => log::warn!("warm-up: {e}"),
            }
        });
    }
    // The server runs on its own tasks; PID 1 lives until the VM stops.
    std::future::pending::<()>().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_word_asks_for_the_warm_up() {
        let warm = lazyvm_proto::WARM_CMDLINE_FLAG;
        assert!(has_word("console=ttyS0 lazyvm.warm quiet", warm));
        assert!(!has_word("console=ttyS0 lazyvm.warmer lazyvm.debug", warm));
        assert!(!has_word("", warm));
    }
}
