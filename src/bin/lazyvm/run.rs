//! `lazyvm run`: one container in a fresh micro-VM, its stdio relayed, its exit status
//! returned, and everything torn down afterwards, also on Ctrl-C or SIGTERM.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use lazyvm::agent::AgentClient;
use lazyvm::config::Config;
use lazyvm::sandbox::{Rootfs, Sandbox, SandboxSpec};
use oci_spec::runtime::Spec;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};

/// Exit status when lazyvm itself fails (as `docker run` does).
const RUNTIME_FAILURE: u8 = 125;
const CONTAINER_ID: &str = "run";

#[derive(Args)]
pub struct RunArgs {
    /// The container's root filesystem: a host directory.
    #[arg(long)]
    rootfs: PathBuf,
    /// Give the process a terminal.
    #[arg(long, short = 't')]
    tty: bool,
    /// The container's hostname.
    #[arg(long, default_value = "lazyvm")]
    hostname: String,
    /// Print the start-up phase timings to stderr.
    #[arg(long)]
    timings: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub async fn run(config: Config, args: RunArgs) -> u8 {
    match run_inner(config, args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lazyvm: {e}");
            RUNTIME_FAILURE
        }
    }
}

fn spec(args: &RunArgs) -> Spec {
    let mut spec = Spec::default();
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args.command.clone()));
    process.set_terminal(Some(args.tty));
    spec.set_process(Some(process));
    spec.set_hostname(Some(args.hostname.clone()));
    if let Some(root) = spec.root().clone() {
        let mut root = root;
        root.set_readonly(Some(false));
        spec.set_root(Some(root));
    }
    spec
}

async fn run_inner(config: Config, args: RunArgs) -> Result<u8, String> {
    let started = Instant::now();
    let rootfs = args
        .rootfs
        .canonicalize()
        .map_err(|e| format!("rootfs {:?}: {e}", args.rootfs))?;
    if !rootfs.is_dir() {
        return Err(format!("rootfs {:?} is not a directory", args.rootfs));
    }
    let oci_spec = spec(&args);
    let id = format!("run-{}", std::process::id());
    let mut spec = SandboxSpec::new(&id, config);
    spec.hostname = args.hostname.clone();

    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let sandbox = tokio::select! {
        s = Sandbox::start(spec) => s.map_err(|e| e.to_string())?,
        _ = term.recv() => return Err("interrupted while starting".into()),
        _ = int.recv() => return Err("interrupted while starting".into()),
    };
    // From here on, every way out goes through the teardown below.
    let mut sandbox = sandbox;
    let failed = sandbox.failed();
    let result = tokio::select! {
        r = run_container(&mut sandbox, &args, rootfs, oci_spec, started) => r,
        reason = failed => Err(reason),
        _ = term.recv() => Err("terminated".to_string()),
        _ = int.recv() => Ok(130),
    };
    if let Err(e) = sandbox.remove_container(CONTAINER_ID).await {
        log::debug!("removing the container: {e}");
    }
    sandbox.stop().await;
    result
}

async fn run_container(
    sandbox: &mut Sandbox,
    args: &RunArgs,
    rootfs: PathBuf,
    oci_spec: Spec,
    started: Instant,
) -> Result<u8, String> {
    let boot = sandbox.timings();
    let created = sandbox
        .create_container(CONTAINER_ID, Rootfs::HostDir(rootfs), oci_spec)
        .await
        .map_err(|e| e.to_string())?;
    let agent = sandbox.agent().cloned().ok_or("the sandbox has no agent")?;
    let stdout = tokio::spawn(pump_output(agent.clone(), false, tokio::io::stdout()));
    let stderr = tokio::spawn(pump_output(agent.clone(), true, tokio::io::stderr()));
    agent
        .start_container(CONTAINER_ID)
        .await
        .map_err(|e| e.to_string())?;
    if args.timings {
        eprintln!(
            "lazyvm: nydusd ready {:?}, VM boot to agent {:?}, sandbox {:?}, container create {:?}, container started {:?}",
            boot.nydusd_ready,
            boot.vm_boot,
            boot.total,
            created.total,
            started.elapsed()
        );
    }
    let _raw = if args.tty {
        let guard = RawTerminal::enter();
        tokio::spawn(relay_window_size(agent.clone()));
        guard
    } else {
        None
    };
    tokio::spawn(pump_stdin(agent.clone()));
    let exit = agent
        .wait_process(CONTAINER_ID, "")
        .await
        .map_err(|e| e.to_string())?;
    // The output ends at the process's exit; don't hang on a stream the guest keeps open.
    let drain = std::time::Duration::from_secs(5);
    let _ = tokio::time::timeout(drain, stdout).await;
    let _ = tokio::time::timeout(drain, stderr).await;
    Ok(u8::try_from(exit.status & 0xff).unwrap_or(RUNTIME_FAILURE))
}

async fn pump_output(agent: AgentClient, stderr: bool, mut out: impl AsyncWrite + Unpin) {
    loop {
        match agent.read_output(CONTAINER_ID, "", stderr).await {
            Ok(data) if data.is_empty() => break,
            Ok(data) => {
                if out.write_all(&data).await.is_err() || out.flush().await.is_err() {
                    break;
                }
            }
            Err(e) => {
                log::debug!("reading the container's output: {e}");
                break;
            }
        }
    }
}

async fn pump_stdin(agent: AgentClient) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Err(e) = agent.write_stdin(CONTAINER_ID, "", buf[..n].to_vec()).await {
                    log::debug!("writing the container's stdin: {e}");
                    return;
                }
            }
        }
    }
    if let Err(e) = agent.close_stdin(CONTAINER_ID, "").await {
        log::debug!("closing the container's stdin: {e}");
    }
}

fn window_size() -> Option<(u32, u32)> {
    let mut ws: nix::libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we own.
    let r = unsafe { nix::libc::ioctl(0, nix::libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0).then_some((u32::from(ws.ws_row), u32::from(ws.ws_col)))
}

async fn relay_window_size(agent: AgentClient) {
    let Ok(mut winch) = signal(SignalKind::window_change()) else {
        return;
    };
    loop {
        if let Some((rows, cols)) = window_size() {
            if let Err(e) = agent.resize_tty(CONTAINER_ID, "", rows, cols).await {
                log::debug!("resizing the terminal: {e}");
            }
        }
        if winch.recv().await.is_none() {
            return;
        }
    }
}

/// The host terminal in raw mode while the guest process owns a terminal.
struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}
