//! The lazy-pull fixtures: Debian's `docker-registry` serving on 127.0.0.1:5000 inside a
//! test's network namespace (its access log tells what was fetched), and
//! `lazyvm-snapshotter` on a socket of the test's own. Both are stopped by pid on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The registry's address inside the test netns.
pub const REGISTRY: &str = "127.0.0.1:5000";

fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// One request in the registry's access log.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub bytes: u64,
}

/// A registry in a netns.
pub struct Registry {
    child: Option<Child>,
    netns: String,
    /// Its storage and logs.
    pub dir: PathBuf,
}

impl Registry {
    /// Starts `docker-registry` in netns `netns` with its storage under `dir`; returns
    /// once it answers `GET /v2/`.
    pub fn start(netns: &str, dir: &Path) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {REGISTRY}\n",
                dir.join("storage").display()
            ),
        )
        .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{netns}"))
            .args(["docker-registry", "serve"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("access.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .expect("starting docker-registry (make deps installs it)");
        let mut r = Registry {
            child: Some(child),
            netns: netns.to_string(),
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if r.curl(&["-sf", &format!("http://{REGISTRY}/v2/")])
                .status
                .success()
            {
                return r;
            }
            if let Some(Ok(Some(st))) = r.child.as_mut().map(|c| c.try_wait()) {
                panic!("docker-registry exited ({st}): {}", r.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start: {}",
                r.stderr()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// curl inside the registry's netns.
    pub fn curl(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.netns))
            .args(["curl", "--max-time", "20"])
            .args(args)
            .output()
            .unwrap()
    }

    /// The registry's own log.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// The access log's length: pass it to [`Self::requests_since`].
    pub fn log_mark(&self) -> usize {
        std::fs::read_to_string(self.dir.join("access.log"))
            .map(|s| s.len())
            .unwrap_or(0)
    }

    /// Requests logged after `mark` (combined log format).
    pub fn requests_since(&self, mark: usize) -> Vec<Request> {
        let log = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        let re = regex::Regex::new(r#""([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3}) (\d+|-)"#).unwrap();
        log.get(mark..)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let c = re.captures(l)?;
                Some(Request {
                    method: c[1].to_string(),
                    path: c[2].to_string(),
                    status: c[3].parse().ok()?,
                    bytes: c[4].parse().unwrap_or(0),
                })
            })
            .collect()
    }

    /// Stops the registry (the pods' nydusd then cannot read what is not cached).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c);
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("==== docker-registry log ====\n{}", self.stderr());
        }
        self.stop();
    }
}

/// `lazyvm-snapshotter` with a config of the test's own.
pub struct Snapshotter {
    child: Option<Child>,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its socket.
    pub socket: PathBuf,
    /// Its root (snapshots, metadata, cache).
    pub root: PathBuf,
    /// Its log (appended across restarts).
    pub log: PathBuf,
}

impl Snapshotter {
    /// Writes a config under `dir` (the registry as plain HTTP, with `credentials` if
    /// given) and starts the snapshotter.
    pub fn start(dir: &Path, credentials: Option<(&str, &str)>) -> Snapshotter {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("snapshotter.sock");
        let root = dir.join("root");
        let mut config = format!(
            "socket = \"{}\"\nroot = \"{}\"\n[registries.\"{REGISTRY}\"]\nplain_http = true\n",
            socket.display(),
            root.display()
        );
        if let Some((u, p)) = credentials {
            config += &format!("username = \"{u}\"\npassword = \"{p}\"\n");
        }
        let path = dir.join("snapshotter.toml");
        std::fs::write(&path, config).unwrap();
        let mut s = Snapshotter {
            child: None,
            config: path,
            socket,
            root,
            log: dir.join("snapshotter.log"),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(crate::common::shim_dir().join("lazyvm-snapshotter"))
            .arg("--config")
            .arg(&self.config)
            .args(["--log-level", "debug"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket.exists() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("lazyvm-snapshotter exited ({st}): {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "lazyvm-snapshotter did not listen: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it (SIGTERM) and starts it again on the same root.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c);
        }
        self.spawn();
    }

    /// The snapshot directories on disk.
    pub fn snapshot_dirs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.join("snapshots"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("==== lazyvm-snapshotter log (last 60 lines) ====");
            for l in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{l}");
            }
        }
        if let Some(mut c) = self.child.take() {
            stop(&mut c);
        }
    }
}
