//! `lazyvm run` and `lazyvm check` end to end, under TCG: a real QEMU booting the guest
//! kernel and the agent, nydusd sharing the rootfs, vhost-device-vsock carrying ttrpc.
//! Needs root and the guest image (`make guest`).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use common::*;

struct Fixture {
    tmp: tempfile::TempDir,
    config: PathBuf,
    rootfs: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        Self::with_guest(&guest_dir())
    }

    fn with_guest(guest: &Path) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = busybox_rootfs(tmp.path());
        let config = tmp.path().join("config.toml");
        write_config(&config, guest);
        Fixture {
            tmp,
            config,
            rootfs,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lazyvm"));
        c.arg("--config").arg(&self.config).args(args);
        c
    }

    /// Runs `lazyvm run` with `extra` flags and `cmd`, feeding `stdin`; checks that nothing
    /// of the sandbox is left afterwards.
    fn run(&self, extra: &[&str], cmd: &[&str], stdin: &[u8]) -> Output {
        let mut c = self.command(&["run"]);
        c.arg("--rootfs")
            .arg(&self.rootfs)
            .args(extra)
            .arg("--")
            .args(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = c.spawn().expect("spawning lazyvm");
        let pid = child.id();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        eprintln!(
            "lazyvm run {cmd:?}: {:?} in {:?}\nstdout: {}\nstderr: {}",
            out.status,
            started.elapsed(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_nothing_left(pid);
        out
    }
}

fn assert_nothing_left(pid: u32) {
    let dir = PathBuf::from(format!("/run/lazyvm/run-{pid}"));
    assert!(!dir.exists(), "{} was left behind", dir.display());
    let left = processes_mentioning(&dir);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&dir.to_string_lossy().to_string()),
        "mounts left behind under {}",
        dir.display()
    );
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn echo_hello_and_exit_statuses() {
    let f = Fixture::new();
    let out = f.run(&["--timings"], &["sh", "-c", "echo hello"], b"");
    assert_eq!(stdout(&out), "hello\n");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("VM boot to agent"));

    let out = f.run(&[], &["sh", "-c", "echo oops >&2; exit 3"], b"");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("oops"));

    // The container's PID 1 cannot be killed from inside its own PID namespace (as with
    // runc): a child kills itself and the status of its SIGKILL comes back as 137.
    let out = f.run(&[], &["sh", "-c", "sh -c 'kill -9 $$'; exit $?"], b"");
    assert_eq!(out.status.code(), Some(137));
}

#[test]
fn stdin_reaches_the_process() {
    let f = Fixture::new();
    let out = f.run(&[], &["cat"], b"line one\nline two\n");
    assert_eq!(stdout(&out), "line one\nline two\n");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn tty_gives_a_terminal() {
    let f = Fixture::new();
    let out = f.run(
        &["--tty"],
        &["sh", "-c", "test -t 0 && test -t 1 && echo is-a-tty"],
        b"",
    );
    assert!(stdout(&out).contains("is-a-tty"), "{}", stdout(&out));
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn isolation_hostname_and_shared_files() {
    let f = Fixture::new();
    std::fs::write(f.rootfs.join("etc/from-host"), "written on the host\n").unwrap();
    let out = f.run(
        &["--hostname", "box1"],
        &[
            "sh",
            "-c",
            "echo pid=$$; hostname; cat /etc/from-host; echo from-guest > /tmp/out",
        ],
        b"",
    );
    assert_eq!(
        stdout(&out),
        "pid=1\nbox1\nwritten on the host\n",
        "PID 1 must be the command, in its own PID namespace"
    );
    assert_eq!(out.status.code(), Some(0));
    // A plain rootfs is shared as it is: the container's writes land in it.
    assert_eq!(
        std::fs::read_to_string(f.rootfs.join("tmp/out")).unwrap(),
        "from-guest\n"
    );
}

#[test]
fn missing_pieces_are_named_and_nothing_is_left() {
    let f = Fixture::with_guest(Path::new("/nonexistent/guest"));
    let out = f.run(&[], &["true"], b"");
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/guest/vmlinux"), "{err}");

    let guest = guest_dir();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(guest.join("vmlinux"), tmp.path().join("vmlinux")).unwrap();
    let f = Fixture::with_guest(tmp.path());
    let out = f.run(&[], &["true"], b"");
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("initramfs.cpio"), "{err}");

    let f = Fixture::new();
    let out = f
        .command(&["run", "--rootfs", "/nonexistent/rootfs", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/rootfs"), "{err}");
    drop(f.tmp);
}

#[test]
fn check_reports_the_host() {
    let f = Fixture::new();
    let out = f.command(&["check"]).output().unwrap();
    let text = stdout(&out);
    eprintln!("{text}");
    assert_eq!(out.status.code(), Some(0), "{text}");
    for item in [
        "qemu",
        "kvm",
        "accel",
        "machine",
        "kernel",
        "initramfs",
        "nydusd",
    ] {
        assert!(text.contains(item), "{item} missing from:\n{text}");
    }
    let f = Fixture::with_guest(Path::new("/nonexistent/guest"));
    let out = f.command(&["check"]).output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("FAIL kernel"));
}
