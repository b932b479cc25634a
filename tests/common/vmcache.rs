//! A `lazyvm cache` for the tests and benches (included by those that need it).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a cache may take to boot a VM under TCG.
const BOOT_WAIT: Duration = Duration::from_secs(120);

/// A `lazyvm cache` we started, stopped (by pid) and cleaned up after when dropped.
pub struct Cache {
    child: Option<Child>,
    pid: u32,
    socket: PathBuf,
    log: PathBuf,
}

impl Cache {
    /// Starts `lazyvm cache` with configuration `config` on `socket`, its log in `log`.
    pub fn start(config: &Path, socket: &Path, log: &Path) -> Cache {
        let out = std::fs::File::create(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_lazyvm"))
            .arg("--config")
            .arg(config)
            .args(["--log-level", "info", "cache", "--size", "1", "--socket"])
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Cache {
            pid: child.id(),
            child: Some(child),
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the cache has `n` VMs ready (blocking: from a test's async code, call it
    /// in `spawn_blocking` or `block_in_place`).
    pub fn wait_ready(&self, n: usize) {
        let deadline = Instant::now() + BOOT_WAIT;
        loop {
            let socket = self.socket.clone();
            // A runtime of its own, on a thread of its own: callable from any context.
            let status = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(lazyvm::vmcache::status(&socket))
            })
            .join()
            .unwrap();
            if let Ok((ready, _)) = status {
                if ready >= n {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the cache did not get {n} VMs ready in {BOOT_WAIT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Its VMs' directories (`.warm-<pid>-…` under the run directory).
    pub fn warm_dirs(&self) -> Vec<PathBuf> {
        warm_dirs_of(self.pid)
    }

    /// Sends `sig` and waits for the cache to exit.
    pub fn stop(&mut self, sig: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the cache runs");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), sig);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the cache did not stop on {sig}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in warm_dirs_of(self.pid) {
            lazyvm::sandbox::kill_recorded(&dir);
            let _ = lazyvm::mounts::remove_dir_unmounted(&dir);
        }
    }
}

pub fn warm_dirs_of(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("{}{pid}-", lazyvm::vmcache::WARM_PREFIX);
    std::fs::read_dir(lazyvm::sandbox::RUN_DIR)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Appends a `[cache]` table naming `socket` to the lazyvm configuration at `config`.
pub fn name_socket(config: &Path, socket: &Path) {
    let mut text = std::fs::read_to_string(config).unwrap();
    text += &format!("[cache]\nsocket = {socket:?}\n");
    std::fs::write(config, text).unwrap();
}

/// The pids of the live helpers recorded in a sandbox directory.
pub fn recorded_pids(dir: &Path) -> Vec<u32> {
    lazyvm::sandbox::recorded_helpers(dir)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}
