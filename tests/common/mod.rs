//! Fixtures shared by the integration tests: real images built with nydus-image, the
//! paths of the real components, and a log capture (to prove secrets never reach a log).
#![allow(dead_code)]

pub mod bare;
pub mod registry;
pub mod timings;

use std::path::{Path, PathBuf};

/// The directory holding the shim binary under test (containerd finds it on its PATH):
/// Cargo names it for tests and benches; an example looks in its profile's directory.
pub fn shim_dir() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_containerd-shim-lazyvm-v2") {
        Some(shim) => Path::new(shim).parent().unwrap().to_path_buf(),
        None => std::env::current_exe()
            .unwrap()
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .to_path_buf(),
    }
}
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

/// Applets linked in the busybox rootfs.
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "hostname", "ls", "sleep", "kill", "test", "id", "wc", "head", "tr",
    "stty", "true", "false", "mount", "dd",
];

/// A small rootfs: busybox-static as /bin/busybox with links for common applets, the
/// usual mount points, and /etc/hello.txt.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "run"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (Debian busybox-static) is missing: run `make deps`");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/hello.txt"), "hello from rafs\n").unwrap();
    root
}

/// Writes `files` files of `mib` MiB each under `dir` that no compressor can shrink
/// (xorshift output), for images whose size matters.
pub fn write_incompressible(dir: &Path, files: usize, mib: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let mut chunk = vec![0u8; mib << 20];
    for i in 0..files {
        for b in chunk.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        std::fs::write(dir.join(format!("part{i}")), &chunk).unwrap();
    }
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
        // The command line `lazyvm image convert` uses.
        let out = Command::new(nydus_image_path())
            .args(lazyvm::image::nydus::create_args(
                src, &bootstrap, &blob_dir,
            ))
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

/// A prefix for the ids of this test process's containers (sandbox dirs carry it).
/// The containerd the tests run against: the system's (Debian bookworm's 1.6.20) unless
/// `LAZYVM_TEST_CONTAINERD` names another: `trixie` (1.7) or `sid` (2.x), unpacked by
/// `make deps` into the cache, or a directory holding `usr/bin/containerd`.
#[derive(Debug, Clone)]
pub struct ContainerdBin {
    /// The directory of `containerd`, `ctr` and its runc shim (`None`: from PATH).
    pub bin_dir: Option<PathBuf>,
    /// The major version (1 or 2): 2 takes a version 3 configuration.
    pub major: u32,
    /// `containerd --version`, for messages.
    pub version: String,
}

impl ContainerdBin {
    /// The binary `name` (`containerd`, `ctr`).
    pub fn path(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        }
    }

    /// PATH for containerd: the shim under test first, then this release's binaries (its
    /// runc shim), then the caller's PATH.
    pub fn search_path(&self, shim_dir: &Path) -> String {
        let mut parts = vec![shim_dir.display().to_string()];
        if let Some(d) = &self.bin_dir {
            parts.push(d.display().to_string());
        }
        parts.push(std::env::var("PATH").unwrap_or_default());
        parts.join(":")
    }
}

/// See [`ContainerdBin`].
pub fn containerd_bin() -> &'static ContainerdBin {
    static BIN: std::sync::OnceLock<ContainerdBin> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let cache = std::env::var("LAZYVM_CACHE").unwrap_or_else(|_| "/var/cache/lazyvm".into());
        let bin_dir = match std::env::var("LAZYVM_TEST_CONTAINERD").ok().as_deref() {
            None | Some("") | Some("system") => None,
            Some(suite @ ("trixie" | "sid")) => {
                Some(Path::new(&cache).join(format!("containerd-{suite}/usr/bin")))
            }
            Some(dir) => Some(Path::new(dir).join("usr/bin")),
        };
        let bin = ContainerdBin {
            bin_dir,
            major: 1,
            version: String::new(),
        };
        let out = Command::new(bin.path("containerd"))
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (make deps)", bin.path("containerd").display()));
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // "containerd github.com/containerd/containerd/v2 2.1.9+unknown ..."
        let major = version
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("cannot read containerd's version from {version:?}"));
        eprintln!("tests run against {version}");
        ContainerdBin {
            major,
            version,
            ..bin
        }
    })
}

pub fn test_prefix() -> String {
    format!("lzt{}-", std::process::id())
}

/// The guest image under test: `$LAZYVM_GUEST_DIR`, else the checkout's `build/guest`.
pub fn guest_dir() -> PathBuf {
    let dir = std::env::var_os("LAZYVM_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("build/guest"));
    assert!(
        dir.join("vmlinux").is_file() && dir.join("initramfs.cpio").is_file(),
        "no guest image in {}: run `make guest`",
        dir.display()
    );
    dir
}

/// Extra guest kernel parameters for the tests and benches: `$LAZYVM_TEST_APPEND`
/// (space-separated; e.g. `lapic_bus_khz=0` to measure boots that calibrate the APIC
/// timer).
pub fn test_kernel_params() -> Vec<String> {
    std::env::var("LAZYVM_TEST_APPEND")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Writes a lazyvm configuration using the guest image in `guest` under TCG, with the
/// kernel parameters of [`test_kernel_params`].
pub fn write_config(path: &Path, guest: &Path) {
    let params = test_kernel_params();
    std::fs::write(
        path,
        format!(
            "[hypervisor]\naccel = \"tcg\"\nkernel = {:?}\ninitramfs = {:?}\nkernel_params = {:?}\n",
            guest.join("vmlinux"),
            guest.join("initramfs.cpio"),
            params
        ),
    )
    .unwrap();
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Builds an OCI image archive (for `ctr images import`) of the directory `rootfs`,
/// named `name`, whose config runs `sh`.
pub fn oci_image_archive(rootfs: &Path, name: &str, out: &Path) {
    oci_image_archive_cmd(rootfs, name, &["sh"], out)
}

/// Like [`oci_image_archive`], with an image config that runs `cmd`.
pub fn oci_image_archive_cmd(rootfs: &Path, name: &str, cmd: &[&str], out: &Path) {
    let mut layer = tar::Builder::new(Vec::new());
    layer.follow_symlinks(false);
    layer.append_dir_all(".", rootfs).unwrap();
    let layer = layer.into_inner().unwrap();
    let layer_digest = sha256_hex(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"], "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]}
    }))
    .unwrap();
    let config_digest = sha256_hex(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_digest}"), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{layer_digest}"), "size": layer.len()}]
    }))
    .unwrap();
    let manifest_digest = sha256_hex(&manifest);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"), "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": "latest"}
        }]
    }))
    .unwrap();
    let mut archive = tar::Builder::new(std::fs::File::create(out).unwrap());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        archive.append_data(&mut h, path, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &index);
    for (digest, data) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        add(&format!("blobs/sha256/{digest}"), data);
    }
    archive.finish().unwrap();
}
