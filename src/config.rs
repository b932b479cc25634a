//! lazyvm's configuration: `/etc/lazyvm/config.toml` (the path can be overridden with
//! `$LAZYVM_CONFIG` or a command-line flag). Every setting has a documented default, so an
//! empty or missing file is a valid configuration.
//!
//! ```toml
//! debug = false                       # QEMU console and nydusd output into the log
//! [hypervisor]
//! qemu = "/usr/bin/qemu-system-x86_64"
//! accel = "auto"                      # auto | kvm | tcg (auto: kvm where it really works)
//! machine = "microvm"                 # microvm | pc
//! vcpus = 1
//! memory_mib = 512
//! max_vcpus = 0                       # most a pod may ask for; 0: the host's CPUs
//! max_memory_mib = 0                  # most a pod may ask for; 0: the host's memory
//! kernel = "/usr/local/share/lazyvm/vmlinux"
//! initramfs = "/usr/local/share/lazyvm/initramfs.cpio"
//! kernel_params = []                # appended; "lapic_bus_khz=0": calibrate the APIC timer (TCG)
//! # tsc_khz = 2000000                 # microvm only; read from the host when unset
//! [nydusd]
//! path = "/usr/local/bin/nydusd"
//! extra_args = []
//! [vsock]
//! path = "/usr/local/bin/vhost-device-vsock"
//! [cache]
//! # socket = "/run/lazyvm-cache.sock"  # take booted VMs from `lazyvm cache` there
//! size = 1                            # how many booted VMs `lazyvm cache` keeps
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::hypervisor::{Accel, Machine, QemuConfig};

/// Where the configuration is read from when nothing else is said.
pub const DEFAULT_PATH: &str = "/etc/lazyvm/config.toml";
/// Where `make install` puts the guest image.
pub const SHARE_DIR: &str = "/usr/local/share/lazyvm";

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading the configuration {path:?}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("the configuration {path:?} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its place.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// QEMU console and nydusd output go into the log; nydusd logs at debug level.
    pub debug: bool,
    /// The VM.
    pub hypervisor: HypervisorConfig,
    /// nydusd.
    pub nydusd: NydusdConfig,
    /// vhost-device-vsock.
    pub vsock: VsockConfig,
    /// The VM cache.
    pub cache: CacheConfig,
}

/// The `[cache]` table: booted VMs kept ready by `lazyvm cache` ([`crate::vmcache`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// The cache's socket. Set, a sandbox takes a booted VM from the cache there when it
    /// has one (else it boots its own); unset, no cache is asked.
    pub socket: Option<PathBuf>,
    /// How many booted VMs `lazyvm cache` keeps ready.
    pub size: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            socket: None,
            size: 1,
        }
    }
}

/// `accel` in the configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelSetting {
    /// KVM where it really works (not PVM), else TCG.
    #[default]
    Auto,
    /// Always KVM.
    Kvm,
    /// Always TCG.
    Tcg,
}

/// The `[hypervisor]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HypervisorConfig {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// auto, kvm or tcg.
    pub accel: AccelSetting,
    /// microvm or pc.
    pub machine: Machine,
    /// vCPUs per VM.
    pub vcpus: u32,
    /// Memory per VM, MiB.
    pub memory_mib: u32,
    /// The most vCPUs a pod may ask for (annotations, CRI limits); 0: the host's CPUs.
    pub max_vcpus: u32,
    /// The most memory (MiB) a pod may ask for; 0: the host's memory.
    pub max_memory_mib: u32,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The guest initramfs.
    pub initramfs: PathBuf,
    /// Extra kernel parameters.
    pub kernel_params: Vec<String>,
    /// The host TSC in kHz for microvm (read from the host when unset).
    pub tsc_khz: Option<u64>,
    /// Run QEMU as an unprivileged user of its own per sandbox (uid = gid in
    /// [`crate::sandbox::VM_ID_BASE`]..) instead of root.
    pub unprivileged: bool,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        HypervisorConfig {
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            accel: AccelSetting::Auto,
            machine: Machine::Microvm,
            vcpus: 1,
            memory_mib: 512,
            max_vcpus: 0,
            max_memory_mib: 0,
            kernel: Path::new(SHARE_DIR).join("vmlinux"),
            initramfs: Path::new(SHARE_DIR).join("initramfs.cpio"),
            kernel_params: Vec::new(),
            tsc_khz: None,
            unprivileged: true,
        }
    }
}

impl HypervisorConfig {
    /// `max_vcpus`, with 0 resolved to this host's CPU count.
    pub fn max_vcpus(&self) -> u32 {
        match self.max_vcpus {
            0 => std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            n => n,
        }
    }

    /// `max_memory_mib`, with 0 resolved to this host's memory.
    pub fn max_memory_mib(&self) -> u32 {
        match self.max_memory_mib {
            0 => host_memory_mib().unwrap_or(u32::MAX),
            n => n,
        }
    }
}

fn host_memory_mib() -> Option<u32> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    u32::try_from(kib / 1024).ok()
}

/// The `[nydusd]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NydusdConfig {
    /// The nydusd binary.
    pub path: PathBuf,
    /// Extra arguments for nydusd.
    pub extra_args: Vec<String>,
}

impl Default for NydusdConfig {
    fn default() -> Self {
        NydusdConfig {
            path: "/usr/local/bin/nydusd".into(),
            extra_args: Vec::new(),
        }
    }
}

/// The `[vsock]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VsockConfig {
    /// The vhost-device-vsock binary.
    pub path: PathBuf,
}

impl Default for VsockConfig {
    fn default() -> Self {
        VsockConfig {
            path: "/usr/local/bin/vhost-device-vsock".into(),
        }
    }
}

impl Config {
    /// Loads the configuration from `path`, else `$LAZYVM_CONFIG`, else the default path;
    /// a missing default file means the defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let explicit = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("LAZYVM_CONFIG").map(PathBuf::from));
        let file = explicit
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
        match std::fs::read_to_string(&file) {
            Ok(text) => Config::parse(&text).map_err(|message| ConfigError::Parse {
                path: file,
                message,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read { path: file, source }),
        }
    }

    /// What a VM is booted from (everything but the `[cache]` table), as a short stable
    /// digest: a cached VM serves only a sandbox whose configuration has the same.
    pub fn vm_fingerprint(&self) -> String {
        let what = format!(
            "{:?} {:?} {:?} {:?}",
            self.debug, self.hypervisor, self.nydusd, self.vsock
        );
        format!("{:016x}", crate::sandbox::fnv1a(&what))
    }

    /// Parses configuration text.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The QEMU settings, with `auto` resolved on this host.
    pub fn qemu(&self) -> QemuConfig {
        let h = &self.hypervisor;
        QemuConfig {
            binary: h.qemu.clone(),
            accel: match h.accel {
                AccelSetting::Kvm => Accel::Kvm,
                AccelSetting::Tcg => Accel::Tcg,
                AccelSetting::Auto if kvm_usable() => Accel::Kvm,
                AccelSetting::Auto => Accel::Tcg,
            },
            machine: h.machine,
            vcpus: h.vcpus.max(1),
            memory_mib: h.memory_mib.max(128),
            kernel: h.kernel.clone(),
            initramfs: h.initramfs.clone(),
            kernel_params: h.kernel_params.clone(),
            tsc_khz: h.tsc_khz,
            debug: self.debug,
            user: None,
        }
    }
}

/// What kind of KVM this host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// No /dev/kvm.
    Absent,
    /// PVM (`kvm_pvm`): cannot run a stock guest kernel.
    Pvm,
    /// VMX or SVM hardware virtualization.
    Hardware,
    /// /dev/kvm exists but its module is unknown.
    Unknown,
}

/// Detects the host's KVM.
pub fn kvm_kind() -> KvmKind {
    if !Path::new("/dev/kvm").exists() {
        return KvmKind::Absent;
    }
    let loaded = |m: &str| Path::new("/sys/module").join(m).exists();
    if loaded("kvm_intel") || loaded("kvm_amd") {
        KvmKind::Hardware
    } else if loaded("kvm_pvm") {
        KvmKind::Pvm
    } else {
        KvmKind::Unknown
    }
}

fn kvm_usable() -> bool {
    kvm_kind() == KvmKind::Hardware
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vm_fingerprint_ignores_the_cache_table_only() {
        let base = Config::parse("").unwrap();
        let cached = Config::parse("[cache]\nsocket = \"/run/c.sock\"\nsize = 3\n").unwrap();
        assert_eq!(
            cached.cache.socket.as_deref(),
            Some(Path::new("/run/c.sock"))
        );
        assert_eq!(cached.cache.size, 3);
        assert_eq!(base.vm_fingerprint(), cached.vm_fingerprint());
        for other in [
            "debug = true",
            "[hypervisor]\nmemory_mib = 640",
            "[hypervisor]\nkernel_params = [\"quiet\"]",
            "[nydusd]\nextra_args = [\"--x\"]",
            "[vsock]\npath = \"/opt/vsock\"",
        ] {
            let c = Config::parse(other).unwrap();
            assert_ne!(base.vm_fingerprint(), c.vm_fingerprint(), "{other}");
        }
        assert!(Config::parse("[cache]\nsockett = \"/x\"").is_err());
    }

    #[test]
    fn empty_file_means_defaults() {
        let c = Config::parse("").unwrap();
        assert!(!c.debug);
        assert_eq!(c.hypervisor.vcpus, 1);
        assert_eq!(c.hypervisor.memory_mib, 512);
        assert!(c.hypervisor.max_vcpus() >= 1);
        assert!(c.hypervisor.max_memory_mib() >= 512);
        assert_eq!(c.hypervisor.machine, Machine::Microvm);
        assert_eq!(c.hypervisor.accel, AccelSetting::Auto);
        assert_eq!(c.nydusd.path, PathBuf::from("/usr/local/bin/nydusd"));
        assert_eq!(
            c.hypervisor.kernel,
            PathBuf::from("/usr/local/share/lazyvm/vmlinux")
        );
    }

    #[test]
    fn settings_are_read() {
        let c = Config::parse(
            r#"
            debug = true
            [hypervisor]
            accel = "tcg"
            machine = "pc"
            vcpus = 2
            memory_mib = 1024
            kernel = "/k/vmlinux"
            tsc_khz = 1996249
            [nydusd]
            extra_args = ["--thread-num", "2"]
            "#,
        )
        .unwrap();
        let q = c.qemu();
        assert_eq!(q.accel, Accel::Tcg);
        assert_eq!(q.machine, Machine::Pc);
        assert_eq!((q.vcpus, q.memory_mib), (2, 1024));
        assert_eq!(q.kernel, PathBuf::from("/k/vmlinux"));
        assert_eq!(q.tsc_khz, Some(1_996_249));
        assert!(q.debug);
        assert_eq!(c.nydusd.extra_args, ["--thread-num", "2"]);
    }

    #[test]
    fn mistakes_are_named() {
        let e = Config::parse("[hypervisor]\naccel = \"xen\"\n").unwrap_err();
        assert!(e.contains("xen") || e.contains("accel"), "{e}");
        let e = Config::parse("[hypervisor]\nvcpu = 2\n").unwrap_err();
        assert!(e.contains("vcpu"), "{e}");
    }

    #[test]
    fn the_shipped_default_config_is_the_default() {
        let text = include_str!("../deploy/config.toml");
        let shipped = Config::parse(text).unwrap();
        let default = Config::default();
        assert_eq!(format!("{shipped:?}"), format!("{default:?}"));
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let e = Config::load(Some(Path::new("/no/such/config.toml"))).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    }
}
