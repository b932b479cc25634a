//! The VM cache (`lazyvm cache`) through a private containerd: `ctr run` takes a booted
//! VM from it, the cache boots the next, a sandbox of another configuration boots its
//! own, a stopped cache leaves nothing, and a killed cache's VMs are removed by the next
//! cache. Needs root and the guest image (`make guest`).

mod common;
#[path = "common/containerd.rs"]
mod containerd;
#[path = "common/vmcache.rs"]
mod vmcache;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use containerd::{Containerd, RUNTIME};
use vmcache::{recorded_pids, Cache};

const IMAGE: &str = "docker.io/library/lazyvm-busybox:test";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct Env {
    tmp: tempfile::TempDir,
    containerd: Containerd,
    config: PathBuf,
    socket: PathBuf,
}

/// A containerd whose lazyvm configuration names a cache socket (in the temp dir), with
/// the busybox image imported. `extra` is appended to the shim's configuration (inside
/// its `[hypervisor]` table).
fn setup(extra: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("cache.sock");
    let config = tmp.path().join("lazyvm.toml");
    write_config(&config, &guest_dir());
    let written = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, written + extra).unwrap();
    vmcache::name_socket(&config, &socket);
    let containerd = Containerd::start(tmp.path(), &config, &shim_dir());
    let archive = tmp.path().join("image.tar");
    oci_image_archive(&busybox_rootfs(tmp.path()), IMAGE, &archive);
    containerd.import(&archive);
    Env {
        tmp,
        containerd,
        config,
        socket,
    }
}

impl Env {
    fn run(&self, name: &str, cmd: &[&str]) -> Output {
        let cid = format!("{}{name}", test_prefix());
        let mut args = vec!["run", "--rm", "--runtime", RUNTIME, IMAGE, &cid];
        args.extend_from_slice(cmd);
        let out = self.containerd.ctr(&args);
        eprintln!(
            "ctr run {cid}: {:?}\n  stdout: {}\n  stderr: {}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }

    fn containerd_log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("containerd.log")).unwrap_or_default()
    }

    fn start_cache(&self, config: &Path, log: &str) -> Cache {
        Cache::start(config, &self.socket, &self.tmp.path().join(log))
    }
}

/// What `lazyvm check` prints with configuration `config`.
fn check_report(config: &Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lazyvm"))
        .arg("--config")
        .arg(config)
        .arg("check")
        .output()
        .unwrap();
    text(&out.stdout)
}

fn assert_gone(pids: &[u32], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| process_exists(*p)) {
        assert!(Instant::now() < deadline, "{what}: {pids:?} still run");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctr_run_takes_a_vm_from_the_cache_and_the_cache_boots_the_next() {
    let env = setup("");
    let mut cache = env.start_cache(&env.config, "cache.log");
    cache.wait_ready(1);
    let warm = cache.warm_dirs();
    assert_eq!(warm.len(), 1, "one VM ready: {warm:?}");
    let helpers = recorded_pids(&warm[0]);
    assert_eq!(
        helpers.len(),
        3,
        "nydusd, vhost-device-vsock and QEMU: {helpers:?}"
    );
    let report = check_report(&env.config);
    assert!(
        report.contains("vm cache") && report.contains("1 of 1 VMs ready"),
        "lazyvm check reports the cache:\n{report}"
    );
    // While it waits, its agent warms crun up with a throwaway container.
    let console = warm[0]
        .join(lazyvm::sandbox::confine::VM_DIR)
        .join("console.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let warmed = loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if text.contains("warm-up: crun create took") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(
        warmed.contains("warm-up: crun create took")
            && !warmed
                .lines()
                .any(|l| l.contains("warm-up") && l.contains("WARN")),
        "the cached VM's agent warmed crun up:\n{warmed}"
    );

    let out = env.run("cached", &["echo", "hello from a cached VM"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim(), "hello from a cached VM");
    let log = env.containerd_log();
    assert!(
        log.contains("(a VM from the cache)"),
        "the shim took the cached VM:\n{log}"
    );
    assert!(log.contains("cached=1"), "the timings say so");
    assert!(
        !warm[0].exists(),
        "the cached VM's directory was handed over"
    );
    let cid = format!("{}cached", test_prefix());
    let dir = lazyvm::sandbox::sandbox_dir(Path::new(lazyvm::sandbox::RUN_DIR), &cid);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert_gone(&helpers, "the handed-over VM's helpers after ctr run --rm");

    // The cache boots the next one, and a second run takes it.
    cache.wait_ready(1);
    let next = cache.warm_dirs();
    assert_eq!(next.len(), 1);
    assert_ne!(next, warm, "a fresh VM, not the used one");
    let out = env.run("cached2", &["echo", "again"]);
    assert_eq!(text(&out.stdout).trim(), "again");
    assert_eq!(
        env.containerd_log()
            .matches("(a VM from the cache)")
            .count(),
        2
    );

    // Stopped, the cache stops the VM it holds and removes its socket.
    cache.wait_ready(1);
    let held = recorded_pids(&cache.warm_dirs()[0]);
    assert!(cache.stop(nix::sys::signal::Signal::SIGTERM).success());
    assert_gone(&held, "the cache's VM after SIGTERM");
    assert!(cache.warm_dirs().is_empty(), "{:?}", cache.warm_dirs());
    assert!(!env.socket.exists(), "the socket is removed");
    assert!(processes_mentioning(Path::new(lazyvm::sandbox::RUN_DIR))
        .iter()
        .all(|p| !helpers.contains(p) && !held.contains(p)),);

    let report = check_report(&env.config);
    assert!(report.contains("is `lazyvm cache` running?"), "{report}");

    // With no cache, ctr run boots its own VM.
    let out = env.run("cold", &["echo", "cold"]);
    assert_eq!(text(&out.stdout).trim(), "cold");
    assert!(env.containerd_log().contains("no VM from the cache"));
}

#[test]
fn a_sandbox_of_another_configuration_boots_its_own_vm() {
    // The shim's configuration differs from the cache's (QEMU's memory): the cache
    // refuses.
    let env = setup("memory_mib = 320\n");
    let cache_config = env.tmp.path().join("cache.toml");
    write_config(&cache_config, &guest_dir());
    let cache = env.start_cache(&cache_config, "cache.log");
    cache.wait_ready(1);
    let warm = cache.warm_dirs();
    let out = env.run("other", &["echo", "own VM"]);
    assert_eq!(text(&out.stdout).trim(), "own VM");
    let log = env.containerd_log();
    assert!(
        log.contains("the sandbox's configuration is not the cache's"),
        "refused for its configuration:\n{log}"
    );
    assert!(!log.contains("(a VM from the cache)"));
    assert_eq!(cache.warm_dirs(), warm, "the cached VM stays the cache's");
}

#[test]
fn a_killed_cache_leaves_vms_the_next_cache_removes() {
    let env = setup("");
    let mut first = env.start_cache(&env.config, "first.log");
    first.wait_ready(1);
    let warm = first.warm_dirs();
    let helpers = recorded_pids(&warm[0]);
    let _ = first.stop(nix::sys::signal::Signal::SIGKILL);
    assert!(warm[0].exists(), "SIGKILL leaves the VM");
    assert!(env.socket.exists(), "and the socket");

    // A shim finds no cache behind the stale socket, and boots its own VM.
    let out = env.run("stale", &["echo", "booted"]);
    assert_eq!(text(&out.stdout).trim(), "booted");

    // The next cache takes the socket over and removes the dead cache's VM.
    let second = env.start_cache(&env.config, "second.log");
    second.wait_ready(1);
    assert!(!warm[0].exists(), "{} left behind", warm[0].display());
    assert_gone(&helpers, "the dead cache's VM");
    assert!(second.log().contains("left by a cache that is gone"));
}

#[test]
fn a_second_cache_on_the_same_socket_is_refused() {
    let env = setup("");
    let first = env.start_cache(&env.config, "first.log");
    // The socket is bound before the first boot.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env.socket.exists() {
        assert!(Instant::now() < deadline, "no socket:\n{}", first.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut second = env.start_cache(&env.config, "second.log");
    let status = second.stop(nix::sys::signal::Signal::SIGCONT);
    assert!(!status.success());
    assert!(
        second.log().contains("another VM cache serves"),
        "{}",
        second.log()
    );
    drop(first);
}

#[test]
fn a_killed_helper_of_a_cached_vm_ends_its_container() {
    let env = setup("");
    let cache = env.start_cache(&env.config, "cache.log");
    cache.wait_ready(1);
    let cid = format!("{}cachedfault", test_prefix());
    let run = [
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        &cid,
        "sleep",
        "1000",
    ];
    let out = env.containerd.ctr(&run);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(env.containerd_log().contains("(a VM from the cache)"));
    let dir = lazyvm::sandbox::sandbox_dir(Path::new(lazyvm::sandbox::RUN_DIR), &cid);
    let helpers = recorded_pids(&dir);
    assert_eq!(helpers.len(), 3, "{helpers:?}");
    // QEMU: the cache's child, the shim's to watch.
    let qemu = *helpers
        .iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains("qemu-system"))
        })
        .expect("QEMU among the helpers");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ls = text(&env.containerd.ctr(&["task", "ls"]).stdout);
        if ls
            .lines()
            .any(|l| l.contains(&cid) && l.contains("STOPPED"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "{cid} did not stop:\n{ls}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = env.containerd_log();
    assert!(
        log.lines()
            .any(|l| l.contains("the pod failed") && l.contains("QEMU exited unexpectedly")),
        "the shim's log says why:\n{log}"
    );
    assert!(env
        .containerd
        .ctr(&["task", "delete", &cid])
        .status
        .success());
    assert!(env
        .containerd
        .ctr(&["container", "delete", &cid])
        .status
        .success());
    assert_gone(&helpers, "the failed VM's helpers");
    assert!(!dir.exists(), "{} left behind", dir.display());
    // The cache is unharmed: the next run takes its next VM.
    cache.wait_ready(1);
    let out = env.run("afterfault", &["echo", "next"]);
    assert_eq!(text(&out.stdout).trim(), "next");
    assert_eq!(
        env.containerd_log()
            .matches("(a VM from the cache)")
            .count(),
        2
    );
}
