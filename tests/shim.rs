//! The shim through a private containerd (Debian's 1.6): `ctr run --runtime
//! io.containerd.lazyvm.v2` with a busybox image built here and imported with `ctr`.
//! Needs root and the guest image (`make guest`).

mod common;
#[path = "common/containerd.rs"]
mod containerd;

use std::path::Path;
use std::process::Output;

use common::*;

use containerd::{Containerd, RUNTIME};

const IMAGE: &str = "docker.io/library/lazyvm-busybox:test";

struct Env {
    _tmp: tempfile::TempDir,
    containerd: Containerd,
}

fn setup() -> Env {
    setup_with(|config| write_config(config, &guest_dir()))
}

/// [`setup`] with lazyvm's configuration written by `write`.
fn setup_with(write: impl FnOnce(&Path)) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("lazyvm.toml");
    write(&config);
    let containerd = Containerd::start(tmp.path(), &config, &shim_dir());
    let archive = tmp.path().join("image.tar");
    oci_image_archive(&busybox_rootfs(tmp.path()), IMAGE, &archive);
    containerd.import(&archive);
    Env {
        _tmp: tmp,
        containerd,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn id(name: &str) -> String {
    format!("{}{name}", test_prefix())
}

impl Env {
    fn ctr(&self, args: &[&str]) -> Output {
        let out = self.containerd.ctr(args);
        eprintln!(
            "ctr {args:?}: {:?}\n  stdout: {}\n  stderr: {}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }

    /// `ctr run -d` of `sleep 1000` as container `cid`.
    fn run_detached(&self, cid: &str) {
        self.run_detached_with(&[], cid, &["sleep", "1000"]);
    }

    /// `ctr run -d <flags> … cid cmd…`, which must succeed.
    fn run_detached_with(&self, flags: &[&str], cid: &str, cmd: &[&str]) {
        let mut args = vec!["run", "-d", "--runtime", RUNTIME];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[IMAGE, cid]);
        args.extend_from_slice(cmd);
        assert!(self.ctr(&args).status.success(), "run -d {cid}");
    }

    /// SIGKILLs `cid`, waits until it is stopped, deletes its task and container.
    fn kill_and_delete(&self, cid: &str) {
        assert!(self
            .ctr(&["task", "kill", "-s", "SIGKILL", cid])
            .status
            .success());
        self.wait_stopped(cid);
        assert!(self.ctr(&["task", "delete", cid]).status.success());
        assert!(self.ctr(&["container", "delete", cid]).status.success());
    }

    /// Waits until `ctr task ls` shows `cid` STOPPED.
    fn wait_stopped(&self, cid: &str) {
        for _ in 0..100 {
            let ls = text(&self.ctr(&["task", "ls"]).stdout);
            if ls.lines().any(|l| l.contains(cid) && l.contains("STOPPED")) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("{cid} did not stop");
    }

    fn run(&self, name: &str, cmd: &[&str]) -> Output {
        let cid = id(name);
        let mut args = vec!["run", "--rm", "--runtime", RUNTIME, IMAGE, &cid];
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }
}

/// SIGKILLs the one process whose command line mentions `needle` and whose program
/// name contains `program` (by pid: it is ours to stop).
fn kill_the_one(needle: &Path, program: &str) {
    let found: Vec<u32> = processes_mentioning(needle)
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                c.split('\0')
                    .next()
                    .is_some_and(|exe| exe.contains(program))
            })
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {program} for {}: {found:?}",
        needle.display()
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(found[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

fn assert_sandbox_gone(cid: &str) {
    let dir = lazyvm::sandbox::sandbox_dir(Path::new(lazyvm::sandbox::RUN_DIR), cid);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(
        processes_mentioning(&dir).is_empty(),
        "processes left for {cid}"
    );
}

#[test]
fn ctr_run_exec_kill_pause_metrics() {
    let env = setup();
    let out = env.run("c1", &["echo", "hello"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "hello\n");
    assert_sandbox_gone(&id("c1"));

    let out = env.run("c2", &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_sandbox_gone(&id("c2"));

    let c3 = id("c3");
    env.run_detached(&c3);
    let ls = text(&env.ctr(&["task", "ls"]).stdout);
    assert!(
        ls.lines().any(|l| l.contains(&c3) && l.contains("RUNNING")),
        "{ls}"
    );

    let out = env.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &c3,
        "sh",
        "-c",
        "echo from-exec; exit 4",
    ]);
    assert_eq!(text(&out.stdout), "from-exec\n");
    assert_eq!(out.status.code(), Some(4));

    assert!(env.ctr(&["task", "pause", &c3]).status.success());
    let ls = text(&env.ctr(&["task", "ls"]).stdout);
    assert!(
        ls.lines().any(|l| l.contains(&c3) && l.contains("PAUSED")),
        "{ls}"
    );
    assert!(env.ctr(&["task", "resume", &c3]).status.success());
    let ls = text(&env.ctr(&["task", "ls"]).stdout);
    assert!(
        ls.lines().any(|l| l.contains(&c3) && l.contains("RUNNING")),
        "{ls}"
    );

    let out = env.ctr(&["task", "metrics", &c3]);
    assert!(out.status.success());
    let metrics = text(&out.stdout);
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
    };
    assert_eq!(value("pids.current"), 1, "only sleep runs");
    assert!(value("memory.usage") > 0);
    assert!(value("cpu.usage_usec") > 0);

    env.kill_and_delete(&c3);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_sandbox_gone(&c3);
}

/// The topics of the events about `cid` that `ctr events` printed.
fn topics_for(events: &str, cid: &str) -> Vec<String> {
    events
        .lines()
        .filter(|l| l.contains(cid))
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("/tasks/"))
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn events_come_in_order() {
    let env = setup();
    let events = env.containerd.events();
    let cid = id("ev");
    env.run_detached(&cid);
    let out = env.ctr(&["task", "exec", "--exec-id", "e1", &cid, "true"]);
    assert!(out.status.success());
    env.kill_and_delete(&cid);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let printed = containerd::stop_events(events);
    eprintln!("{printed}");
    assert_eq!(
        topics_for(&printed, &cid),
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/exit",
            "/tasks/delete"
        ]
    );
    assert_sandbox_gone(&cid);
}

#[test]
fn twenty_run_delete_cycles_leave_nothing() {
    let env = setup();
    for i in 0..20 {
        let out = env.run(&format!("cy{i}"), &["echo", "cycle"]);
        assert!(out.status.success(), "cycle {i}");
        assert_eq!(text(&out.stdout), "cycle\n");
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let leftovers: Vec<_> = std::fs::read_dir(lazyvm::sandbox::RUN_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&test_prefix()))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "left under /run/lazyvm: {leftovers:?}"
    );
    assert!(
        processes_mentioning(&env.containerd.socket)
            .iter()
            .all(|p| std::fs::read_to_string(format!("/proc/{p}/comm"))
                .map(|c| c.trim() == "containerd")
                .unwrap_or(true)),
        "a shim is left"
    );
    for comm in ["qemu-system-x86", "nydusd", "vhost-device-vs"] {
        let ours: Vec<u32> = processes_mentioning(Path::new(&format!(
            "{}/{}",
            lazyvm::sandbox::RUN_DIR,
            test_prefix()
        )))
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect();
        assert!(ours.is_empty(), "{comm} left: {ours:?}");
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&format!("/run/lazyvm/{}", test_prefix())));
}

#[test]
fn a_killed_shim_is_cleaned_up_by_containerd() {
    let env = setup();
    let cid = id("sk");
    env.run_detached(&cid);
    let dir = lazyvm::sandbox::sandbox_dir(Path::new(lazyvm::sandbox::RUN_DIR), &cid);
    assert!(dir.exists());
    kill_the_one(&env.containerd.socket, "containerd-shim-lazyvm-v2");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = env.ctr(&["task", "delete", "--force", &cid]);
    let _ = env.ctr(&["container", "delete", &cid]);
    for _ in 0..50 {
        if !dir.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_sandbox_gone(&cid);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&cid), "a mount of {cid} is left");
}

#[test]
fn ctr_run_tty_gives_a_terminal() {
    let env = setup();
    let cid = id("tty");
    // ctr -t needs a terminal of its own: script(1) gives it one.
    let ctr = format!(
        "ctr --address {} --namespace lazyvm-test run -t --rm --runtime {RUNTIME} {IMAGE} {cid} sh -c 'test -t 0 && echo tty-ok; stty size'",
        env.containerd.socket.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &ctr, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let printed = text(&out.stdout);
    eprintln!("{printed}");
    assert!(printed.contains("tty-ok"), "{printed}");
    assert!(out.status.success());
    assert_sandbox_gone(&cid);
}

/// How a test breaks a running pod.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL of the helper whose command line holds this.
    Kill(&'static str),
    /// The guest kernel panics (`echo c > /proc/sysrq-trigger` from a privileged container).
    GuestPanic,
}

/// A part of a running pod dies: the task exits with 255 (no hang), its state is
/// STOPPED, Delete works, every helper, mount and directory is gone, the shim's log
/// says why, and a fresh container runs afterwards.
fn a_dead_part_ends_the_pod(name: &str, fault: Fault) {
    let env = match fault {
        // The minimal kernel has no sysrq: Debian's has.
        Fault::GuestPanic => setup_with(|config| {
            let g = guest_dir();
            std::fs::write(
                config,
                format!(
                    "[hypervisor]\naccel = \"tcg\"\nkernel = {:?}\ninitramfs = {:?}\n",
                    g.join("vmlinux-debian"),
                    g.join("initramfs-debian.cpio")
                ),
            )
            .unwrap();
        }),
        Fault::Kill(_) => setup(),
    };
    let cid = id(name);
    let events = env.containerd.events();
    match fault {
        Fault::Kill(_) => env.run_detached(&cid),
        Fault::GuestPanic => env.run_detached_with(
            &["--privileged"],
            &cid,
            &[
                "sh",
                "-c",
                "sleep 1; echo c > /proc/sysrq-trigger; sleep 1000",
            ],
        ),
    }
    let dir = lazyvm::sandbox::sandbox_dir(Path::new(lazyvm::sandbox::RUN_DIR), &cid);
    let t0 = std::time::Instant::now();
    if let Fault::Kill(what) = fault {
        kill_the_one(&dir, what);
    }
    env.wait_stopped(&cid);
    eprintln!(
        "{fault:?}: the task stopped {:?} after the fault",
        t0.elapsed()
    );
    assert!(env.ctr(&["task", "delete", &cid]).status.success());
    assert!(env.ctr(&["container", "delete", &cid]).status.success());
    std::thread::sleep(std::time::Duration::from_millis(500));
    let printed = containerd::stop_events(events);
    let exit = printed
        .lines()
        .find(|l| l.contains("/tasks/exit") && l.contains(&cid))
        .unwrap_or_else(|| panic!("no TaskExit for {cid} in:\n{printed}"));
    assert!(exit.contains("\"exit_status\":255"), "{exit}");
    assert_sandbox_gone(&cid);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&cid), "a mount of {cid} is left");
    let log = std::fs::read_to_string(env.containerd.dir.join("containerd.log")).unwrap();
    let why = log
        .lines()
        .find(|l| l.contains("the pod failed"))
        .unwrap_or_else(|| panic!("the shim's log does not say why"));
    eprintln!("{why}");
    let expected = match fault {
        Fault::Kill("qemu-system") | Fault::GuestPanic => "QEMU exited unexpectedly",
        Fault::Kill("nydusd") => "nydusd exited unexpectedly",
        Fault::Kill(_) => "vhost-device-vsock exited unexpectedly",
    };
    assert!(why.contains(expected), "{why}");
    if let Fault::GuestPanic = fault {
        assert!(
            log.contains("Kernel panic"),
            "the console's last lines are in the log"
        );
    }
    // The next pod starts normally.
    let out = env.run(&format!("{name}-next"), &["echo", "next"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "next\n");
}

#[test]
fn qemu_killed_ends_the_pod() {
    a_dead_part_ends_the_pod("f-qemu", Fault::Kill("qemu-system"));
}

#[test]
fn nydusd_killed_ends_the_pod() {
    a_dead_part_ends_the_pod("f-nydusd", Fault::Kill("nydusd"));
}

#[test]
fn vhost_vsock_killed_ends_the_pod() {
    a_dead_part_ends_the_pod("f-vsock", Fault::Kill("vhost-device-vsock"));
}

#[test]
fn a_guest_kernel_panic_ends_the_pod() {
    a_dead_part_ends_the_pod("f-panic", Fault::GuestPanic);
}

/// containerd stopped (SIGTERM, then in a second round SIGKILL) and started again under
/// running containers: they keep running and are listed with the right state, their
/// output keeps reaching their log, exec works, a container that exited while containerd
/// was down is STOPPED with its exit status, and stop and delete work afterwards.
#[test]
fn containerd_restarts_under_running_containers() {
    use nix::sys::signal::Signal;
    for sig in [Signal::SIGTERM, Signal::SIGKILL] {
        let mut env = setup();
        let tag = if sig == Signal::SIGTERM { "t" } else { "k" };
        let (a, b) = (id(&format!("cr{tag}-a")), id(&format!("cr{tag}-b")));
        let log = env._tmp.path().join(format!("{a}.log"));
        let uri = format!("file://{}", log.display());
        let ticker = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.5; done";
        env.run_detached_with(&["--log-uri", &uri], &a, &["sh", "-c", ticker]);
        // b exits 4 s after its start: about 3 s after containerd is told to stop and 3 s
        // before it is back, so its exit is published while containerd is surely down
        // (with 2 s, a slow shutdown could still take the event).
        env.run_detached_with(&[], &b, &["sh", "-c", "sleep 4; exit 7"]);
        let ticks = || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .count()
        };
        std::thread::sleep(std::time::Duration::from_secs(1));
        let before = ticks();
        // Down for 6 s: b exits meanwhile, a keeps printing.
        env.containerd
            .restart(sig, std::time::Duration::from_secs(6));
        assert!(
            ticks() >= before + 8,
            "{a}'s output stopped reaching its log: {before} then {} lines",
            ticks()
        );
        let ls = text(&env.ctr(&["task", "ls"]).stdout);
        assert!(
            ls.lines().any(|l| l.contains(&a) && l.contains("RUNNING")),
            "{ls}"
        );
        env.wait_stopped(&b);
        let out = env.ctr(&["task", "exec", "--exec-id", "after", &a, "echo", "exec-ok"]);
        assert!(out.status.success());
        assert_eq!(text(&out.stdout), "exec-ok\n");
        // b's exit status survived the restart.
        let out = env.ctr(&["task", "delete", &b]);
        assert!(out.status.success());
        assert!(
            text(&out.stderr).contains("exit code 7"),
            "b's exit status: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(env.ctr(&["container", "delete", &b]).status.success());
        // b's TaskExit, sent while containerd was down, was delivered once it was back.
        let log = std::fs::read_to_string(env.containerd.dir.join("containerd.log")).unwrap();
        assert!(
            log.contains("published /tasks/exit after"),
            "the exit event was not retried"
        );
        env.kill_and_delete(&a);
        assert_sandbox_gone(&a);
        assert_sandbox_gone(&b);
    }
}
