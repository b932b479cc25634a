//! The lazy-pull fixtures: Debian's `docker-registry` serving on 127.0.0.1:5000 inside a
//! test's network namespace (its access log tells what was fetched), and
//! `lazyvm-snapshotter` on a socket of the test's own. Both are stopped by pid on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The registry's address inside the test netns.
pub const REGISTRY: &str = "127.0.0.1:5000";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Stops `child` by pid: SIGTERM, up to 10 s, then SIGKILL; reaps it.
pub fn stop(child: &mut Child) {
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
    /// Starts `docker-registry` in netns `netns` with its config and logs under `dir`
    /// and its storage in `storage` (default `dir/storage`: another registry's storage
    /// serves the images pushed there); returns once it answers `GET /v2/`.
    pub fn start(netns: &str, dir: &Path, storage: Option<&Path>) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        let storage = storage
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.join("storage"));
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {REGISTRY}\n",
                storage.display()
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

    /// `lazyvm image convert --from FROM --to TO --plain-http --format FORMAT` inside the
    /// registry's netns; its stdout (the summary line).
    pub fn convert(&self, from: &str, to: &str, format: &str) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.netns))
            .arg(crate::common::shim_dir().join("lazyvm"))
            .args([
                "image",
                "convert",
                "--from",
                from,
                "--to",
                to,
                "--plain-http",
            ])
            .args(["--format", format])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "lazyvm image convert --from {from} --to {to}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// The image manifest of `repo:tag`.
    pub fn manifest(&self, repo: &str, tag: &str) -> serde_json::Value {
        let out = self.curl(&[
            "-sf",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
            &format!("http://{REGISTRY}/v2/{repo}/manifests/{tag}"),
        ]);
        assert!(out.status.success(), "GET manifest {repo}:{tag}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Blob `digest` of `repo`.
    pub fn blob(&self, repo: &str, digest: &str) -> Vec<u8> {
        let out = self.curl(&[
            "-sf",
            &format!("http://{REGISTRY}/v2/{repo}/blobs/{digest}"),
        ]);
        assert!(out.status.success(), "GET blob {digest}");
        out.stdout
    }

    /// Uploads `data` as a blob of `repo` (monolithic upload, through a file in `dir`);
    /// its digest.
    pub fn push_blob(&self, repo: &str, data: &[u8], dir: &Path) -> String {
        use sha2::Digest;
        let digest = format!("sha256:{:x}", sha2::Sha256::digest(data));
        let file = dir.join(digest.replace(':', "-"));
        std::fs::write(&file, data).unwrap();
        let out = self.curl(&[
            "-sf",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-X",
            "POST",
            &format!("http://{REGISTRY}/v2/{repo}/blobs/uploads/"),
        ]);
        let headers = text(&out.stdout);
        let location = headers
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("location"))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no upload location: {headers}"));
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = if location.starts_with("http") {
            format!("{location}{sep}digest={digest}")
        } else {
            format!("http://{REGISTRY}{location}{sep}digest={digest}")
        };
        let out = self.curl(&[
            "-sf",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", file.display()),
            &url,
        ]);
        assert!(out.status.success(), "PUT blob: {}", text(&out.stderr));
        digest
    }

    /// Puts `manifest` as `repo:tag` (through a file in `dir`).
    pub fn push_manifest(&self, repo: &str, tag: &str, manifest: &serde_json::Value, dir: &Path) {
        let file = dir.join(format!("manifest-{tag}.json"));
        std::fs::write(&file, serde_json::to_vec(manifest).unwrap()).unwrap();
        let out = self.curl(&[
            "-sf",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("http://{REGISTRY}/v2/{repo}/manifests/{tag}"),
        ]);
        assert!(out.status.success(), "PUT manifest: {}", text(&out.stderr));
    }

    /// The bytes of `GET`s of blob `digest` in `requests`, and how many were ranged (206).
    pub fn blob_reads(requests: &[Request], digest: &str) -> (u64, usize) {
        let reads: Vec<&Request> = requests
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with(digest))
            .collect();
        (
            reads.iter().map(|r| r.bytes).sum(),
            reads.iter().filter(|r| r.status == 206).count(),
        )
    }

    /// Shapes the registry's responses (source port 5000 on the netns's loopback) to
    /// `mbit` Mbit/s with htb: a tbf on `lo` collapses to KB/s because of lo's 64 KiB GSO
    /// packets, and shaping only the registry's port leaves the rest alone.
    pub fn shape(&self, mbit: u32) {
        let ns = self.netns.as_str();
        let rate = format!("{mbit}mbit");
        for args in [
            vec![
                "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "20",
            ],
            vec![
                "class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate",
                &rate, "ceil", &rate, "burst", "1mb", "cburst", "1mb",
            ],
            vec![
                "class", "add", "dev", "lo", "parent", "1:", "classid", "1:20", "htb", "rate",
                "100gbit",
            ],
            vec![
                "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                "match", "ip", "sport", "5000", "0xffff", "flowid", "1:10",
            ],
        ] {
            let out = Command::new("tc")
                .args(["-n", ns])
                .args(&args)
                .output()
                .unwrap();
            assert!(out.status.success(), "tc {args:?}: {}", text(&out.stderr));
        }
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
