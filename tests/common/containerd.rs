//! A private containerd for the integration tests (included by the tests that need it).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{processes_mentioning, test_prefix};

/// A private containerd (own root, state and sockets) with lazyvm registered, stopped
/// (by pid) when dropped.
pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: std::process::Child,
}

impl Containerd {
    /// Starts containerd in `dir`; the shim is found in the directory of the test's
    /// binaries and reads `lazyvm_config`.
    pub fn start(dir: &Path, lazyvm_config: &Path) -> Containerd {
        let socket = dir.join("containerd.sock");
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
"#,
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = socket.display()
            ),
        )
        .unwrap();
        let shim_dir = Path::new(env!("CARGO_BIN_EXE_containerd-shim-lazyvm-v2"))
            .parent()
            .unwrap()
            .to_path_buf();
        let path = format!(
            "{}:{}",
            shim_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env("LAZYVM_CONFIG", lazyvm_config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd (make deps installs it)");
        let c = Containerd {
            dir: dir.to_path_buf(),
            socket,
            child,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !c.ctr(&["version"]).status.success() {
            assert!(
                std::time::Instant::now() < deadline,
                "containerd did not start: {}",
                std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        c
    }

    /// `ctr` against this containerd, in namespace `lazyvm-test`.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "lazyvm-test"])
            .args(args);
        c
    }

    /// Runs `ctr` and returns its output.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        self.ctr_command(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Shims outlive containerd: stop the ones of this containerd (by pid), then what
        // their sandboxes left.
        for pid in processes_mentioning(&self.socket) {
            if pid != self.child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if let Ok(entries) = std::fs::read_dir(lazyvm::sandbox::RUN_DIR) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&test_prefix()) {
                    lazyvm::sandbox::kill_recorded(&e.path());
                    let _ = lazyvm::mounts::remove_dir_unmounted(&e.path());
                }
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        // Snapshots stay mounted under the root after containerd exits.
        let _ = lazyvm::mounts::unmount_all_under(&self.dir);
    }
}
