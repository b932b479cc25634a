//! Fixtures shared by the integration tests: real images built with nydus-image, the
//! paths of the real components, and a log capture (to prove secrets never reach a log).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, Once};

/// The nydusd under test: `$LAZYVM_NYDUSD`, else `/usr/local/bin/nydusd` (`make deps`).
pub fn nydusd_path() -> PathBuf {
    let p = std::env::var_os("LAZYVM_NYDUSD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin/nydusd"));
    assert!(
        p.is_file(),
        "{} is missing: run `make deps` (these tests need the real nydusd)",
        p.display()
    );
    p
}

/// The nydus-image under test, beside nydusd.
pub fn nydus_image_path() -> PathBuf {
    nydusd_path().with_file_name("nydus-image")
}

/// A small rootfs: busybox-static as /bin/busybox (with a `sh` link) and /etc/hello.txt.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (Debian busybox-static) is missing: run `make deps`");
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::fs::write(root.join("etc/hello.txt"), "hello from rafs\n").unwrap();
    root
}

/// A RAFS image built by nydus-image from a directory, with a localfs backend.
pub struct RafsImage {
    /// The bootstrap (metadata) file.
    pub bootstrap: PathBuf,
    /// The directory holding the data blob(s).
    pub blob_dir: PathBuf,
    /// nydusd's blob cache directory for this image.
    pub cache_dir: PathBuf,
    /// Total size of the data blobs in bytes.
    pub blob_bytes: u64,
}

impl RafsImage {
    /// Builds a RAFS v6 image of `src` into `dir`.
    pub fn build(src: &Path, dir: &Path) -> RafsImage {
        let blob_dir = dir.join("blobs");
        let cache_dir = dir.join("cache");
        std::fs::create_dir_all(&blob_dir).unwrap();
        std::fs::create_dir_all(&cache_dir).unwrap();
        let bootstrap = dir.join("image.boot");
        let out = Command::new(nydus_image_path())
            .args([
                "create",
                "--type",
                "dir-rafs",
                "--fs-version",
                "6",
                "--log-level",
                "warn",
            ])
            .arg("--bootstrap")
            .arg(&bootstrap)
            .arg("--blob-dir")
            .arg(&blob_dir)
            .arg(src)
            .output()
            .expect("running nydus-image");
        assert!(
            out.status.success(),
            "nydus-image create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let blob_bytes = std::fs::read_dir(&blob_dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        RafsImage {
            bootstrap,
            blob_dir,
            cache_dir,
            blob_bytes,
        }
    }

    /// nydusd's configuration for this image; `auth` goes where registry credentials
    /// would (a localfs backend ignores it).
    pub fn config(&self, auth: &str) -> String {
        serde_json::json!({
            "device": {
                "backend": {"type": "localfs", "config": {"dir": self.blob_dir, "auth": auth}},
                "cache": {"type": "blobcache", "config": {"work_dir": self.cache_dir}}
            },
            "mode": "direct",
            "digest_validate": false,
            "iostats_files": false
        })
        .to_string()
    }
}

static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());
static LOGGER_INIT: Once = Once::new();

struct CaptureLogger;

impl log::Log for CaptureLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let line = format!("{} {}: {}", record.level(), record.target(), record.args());
        eprintln!("{line}");
        if let Ok(mut log) = LOG.lock() {
            log.push(line);
        }
    }
    fn flush(&self) {}
}

/// Installs a logger that prints every record and keeps it for [`logged`].
pub fn capture_logs() {
    LOGGER_INIT.call_once(|| {
        let _ = log::set_boxed_logger(Box::new(CaptureLogger));
        log::set_max_level(log::LevelFilter::Trace);
    });
}

/// Every line logged so far (by any test of this binary).
pub fn logged() -> Vec<String> {
    LOG.lock().map(|l| l.clone()).unwrap_or_default()
}

/// Whether process `pid` still exists (a zombie counts: it has not been reaped).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Processes whose command line mentions `needle` (e.g. a test's temp dir): what a
/// test started and must not leave behind, whatever other tests run beside it.
pub fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().into_owned();
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if pid != me && String::from_utf8_lossy(&cmdline).contains(&needle) {
            found.push(pid);
        }
    }
    found
}
