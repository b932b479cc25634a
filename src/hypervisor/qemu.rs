//! QEMU: the command line, start, QMP stop, and an early exit's report.
//!
//! The VM gets its memory from a shared memfd (vhost-user devices need it), the virtio-fs
//! device `vhost-user-fs` (tag `lazyvm`) on nydusd's socket, the vsock device
//! `vhost-user-vsock` on vhost-device-vsock's socket, one `virtio-net` per pod NIC (each
//! on microvm's virtio-mmio transports, on PCI with `pc`), its serial console in a file,
//! and a QMP socket. `-no-reboot` plus `panic=-1` turn a guest panic into a QEMU exit.

use std::ffi::OsString;
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::Command;

use crate::process::{OnExit, ProcessError, Supervised};

/// The virtio-fs tag the guest mounts.
pub const FS_TAG: &str = "lazyvm";
const QMP_TIMEOUT: Duration = Duration::from_secs(2);
const QUIT_WAIT: Duration = Duration::from_secs(5);
const KILL_GRACE: Duration = Duration::from_secs(1);
const CONSOLE_TAIL_BYTES: u64 = 4096;
/// TCG with one host thread per vCPU and a 256 MiB translation cache (QEMU's default of
/// 1 GiB would be resident in every VM after a while).
const TCG_ACCEL: &str = "tcg,thread=multi,tb-size=256";
/// The clock of QEMU's emulated local APIC timer (1 GHz), for the guest kernel's
/// `lapic_bus_khz=` (deploy/guest/kernel-patches): it skips calibrating the timer, which
/// took 100-170 ms of every boot under TCG. KVM's CPUs have the TSC deadline timer and
/// never calibrate; a kernel without the patch ignores the parameter. A `lapic_bus_khz=`
/// in the configured kernel parameters replaces this one (`lapic_bus_khz=0`: calibrate).
const QEMU_APIC_BUS_KHZ: u64 = 1_000_000;

/// How QEMU runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization (real KVM hosts).
    Kvm,
    /// Software emulation (works everywhere; what runs on PVM hosts).
    Tcg,
}

/// The QEMU machine type (`microvm` or `pc` in the configuration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// `microvm,pit=on,pcie=off`: the fast one, its devices on virtio-mmio (at most
    /// [`MICROVM_MAX_NICS`] NICs); needs `tsc_early_khz` on the kernel command line.
    #[default]
    Microvm,
    /// `pc`: the fallback.
    Pc,
}

/// What VM to run.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// The QEMU binary.
    pub binary: PathBuf,
    /// KVM or TCG.
    pub accel: Accel,
    /// microvm or pc.
    pub machine: Machine,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// The guest kernel (an uncompressed `vmlinux` boots fastest under TCG).
    pub kernel: PathBuf,
    /// The initramfs holding the agent as `/init`.
    pub initramfs: PathBuf,
    /// Extra kernel command line parameters.
    pub kernel_params: Vec<String>,
    /// The host TSC in kHz for microvm's `tsc_early_khz=`; `None` reads it from the host.
    pub tsc_khz: Option<u64>,
    /// Show the kernel's boot messages on the console (no `quiet`).
    pub debug: bool,
    /// The user QEMU runs as (`None`: as the caller, i.e. root).
    pub user: Option<VmUser>,
}

/// An unprivileged identity for QEMU: it gets these ids before it execs, with no other
/// group than those listed, so an escape from the VM lands in a user that owns nothing
/// but its own sandbox's VM files.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmUser {
    /// The user id.
    pub uid: u32,
    /// The group id.
    pub gid: u32,
    /// Supplementary groups (e.g. `/dev/kvm`'s group under KVM).
    pub groups: Vec<u32>,
}

/// The host files of one VM.
#[derive(Debug, Clone)]
pub struct VmFiles {
    /// nydusd's vhost-user-fs socket.
    pub vhost_fs: PathBuf,
    /// vhost-device-vsock's vhost-user socket.
    pub vhost_vsock: PathBuf,
    /// The QMP socket QEMU creates.
    pub qmp: PathBuf,
    /// The console log file.
    pub console: PathBuf,
    /// The guest's network cards (the pod's taps).
    pub nics: Vec<NetDevice>,
}

/// A guest network card backed by a tap device the caller opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDevice {
    /// The tap's queue file descriptor, open in this process; QEMU inherits it.
    pub fd: RawFd,
    /// The card's MAC address (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
}

/// Why QEMU could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// The QEMU binary is missing.
    #[error("QEMU binary {0:?} does not exist (install qemu-system-x86: `make deps`)")]
    Binary(PathBuf),
    /// The guest kernel is missing.
    #[error("guest kernel {0:?} does not exist (build it with `make guest`)")]
    Kernel(PathBuf),
    /// The initramfs is missing.
    #[error("guest initramfs {0:?} does not exist (build it with `make guest`)")]
    Initramfs(PathBuf),
    /// microvm needs the TSC frequency and it could not be read.
    #[error("cannot read the host TSC frequency for microvm's tsc_early_khz: set it in the configuration or use machine = \"pc\"")]
    TscUnknown,
    /// More NICs than microvm has virtio-mmio transports for.
    #[error("{0} network interfaces: a microvm has room for {MICROVM_MAX_NICS} (use machine = \"pc\" for more)")]
    TooManyNics(usize),
    /// Spawning or killing failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// QEMU exited on its own.
    #[error("QEMU exited ({status}); its last output:\n{output}\nthe guest console's last lines:\n{console}")]
    Exited {
        /// How it exited.
        status: ExitStatus,
        /// QEMU's own last output lines.
        output: String,
        /// The end of the guest console log.
        console: String,
    },
}

impl QemuConfig {
    fn validate(&self) -> Result<(), QemuError> {
        if !self.binary.is_file() {
            return Err(QemuError::Binary(self.binary.clone()));
        }
        if !self.kernel.is_file() {
            return Err(QemuError::Kernel(self.kernel.clone()));
        }
        if !self.initramfs.is_file() {
            return Err(QemuError::Initramfs(self.initramfs.clone()));
        }
        Ok(())
    }

    /// The kernel command line.
    pub fn kernel_cmdline(&self, tsc_khz: Option<u64>) -> String {
        let mut params = vec![
            "console=ttyS0".to_string(),
            "reboot=t".into(),
            "panic=-1".into(),
            "nomodeset".into(),
            // The initramfs unpacked into ramfs, not tmpfs: crun re-executes itself from a
            // sealed memfd (twice, under TCG about 80 ms per call) unless its binary is on
            // a read-only mount that is not shmem, and the agent's root is then one (see
            // the agent's `rootfs`).
            "rootfstype=ramfs".into(),
        ];
        if !self.debug {
            params.push("quiet".into());
        }
        if let Some(khz) = tsc_khz {
            params.push(format!("tsc_early_khz={khz}"));
        }
        let own_lapic = self
            .kernel_params
            .iter()
            .any(|p| p.starts_with("lapic_bus_khz="));
        if self.accel == Accel::Tcg && !own_lapic {
            params.push(format!("lapic_bus_khz={QEMU_APIC_BUS_KHZ}"));
        }
        params.extend(self.kernel_params.iter().cloned());
        params.join(" ")
    }

    /// QEMU's arguments for a VM using `files`.
    pub fn args(&self, files: &VmFiles, tsc_khz: Option<u64>) -> Vec<OsString> {
        let mem = self.memory_mib;
        // microvm's devices sit on its virtio-mmio transports, which its ACPI tables
        // describe to the guest (a modular kernel's virtio_mmio finds them once loaded):
        // no PCIe host bridge to enumerate at boot (70 ms under TCG).
        let (machine, bus) = match self.machine {
            Machine::Microvm => (
                "microvm,pit=on,pcie=off,rtc=on,memory-backend=mem",
                "device",
            ),
            Machine::Pc => ("pc,memory-backend=mem", "pci"),
        };
        let (accel, cpu) = match self.accel {
            Accel::Kvm => ("kvm", "host"),
            // QEMU's default translation cache is 1 GiB per VM, and a busy guest fills it
            // (measured: 305 MB -> 1.3 GB of QEMU RSS over 200 execs): bound it.
            Accel::Tcg => (TCG_ACCEL, "max"),
        };
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
        push(&[
            "-name",
            "lazyvm",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
        ]);
        push(&["-no-reboot", "-display", "none"]);
        // QEMU's seccomp filter: no obsolete system calls, no set*id, no fork/exec, no
        // scheduler or affinity changes.
        push(&["-sandbox", SECCOMP]);
        push(&["-machine", machine, "-accel", accel, "-cpu", cpu]);
        push(&["-smp", &self.vcpus.to_string(), "-m", &format!("{mem}M")]);
        push(&[
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
        ]);
        let path = |p: &Path| p.to_string_lossy().into_owned();
        push(&[
            "-kernel",
            &path(&self.kernel),
            "-initrd",
            &path(&self.initramfs),
        ]);
        push(&["-append", &self.kernel_cmdline(tsc_khz)]);
        push(&[
            "-chardev",
            &format!("socket,id=fs0,path={}", path(&files.vhost_fs)),
            "-device",
            &format!("vhost-user-fs-{bus},chardev=fs0,tag={FS_TAG}"),
        ]);
        push(&[
            "-chardev",
            &format!("socket,id=vsock0,path={}", path(&files.vhost_vsock)),
            "-device",
            &format!("vhost-user-vsock-{bus},chardev=vsock0"),
        ]);
        for (i, nic) in files.nics.iter().enumerate() {
            // No vhost: there is no /dev/vhost-net here, and TCG would not use it.
            push(&[
                "-netdev",
                &format!("tap,id=net{i},fd={}", nic.fd),
                "-device",
                &format!("virtio-net-{bus},netdev=net{i},mac={}", nic.mac),
            ]);
        }
        push(&[
            "-chardev",
            &format!("file,id=console0,path={}", path(&files.console)),
            "-serial",
            "chardev:console0",
        ]);
        push(&[
            "-qmp",
            &format!("unix:{},server=on,wait=off", path(&files.qmp)),
        ]);
        args
    }
}

/// How many NICs a microvm can have: QEMU's microvm has 24 virtio-mmio transports (with
/// its second IOAPIC, on by default), and the virtio-fs and vsock devices take two.
pub const MICROVM_MAX_NICS: usize = 22;

/// QEMU's `-sandbox` (seccomp) setting.
pub const SECCOMP: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// A running QEMU.
#[derive(Debug)]
pub struct Qemu {
    process: Supervised,
    files: VmFiles,
}

impl Qemu {
    /// Starts QEMU. nydusd's and vhost-device-vsock's sockets must be listening.
    pub async fn start(
        config: &QemuConfig,
        files: VmFiles,
        on_exit: Option<OnExit>,
    ) -> Result<Self, QemuError> {
        config.validate()?;
        if config.machine == Machine::Microvm && files.nics.len() > MICROVM_MAX_NICS {
            return Err(QemuError::TooManyNics(files.nics.len()));
        }
        let tsc_khz = match config.machine {
            Machine::Microvm => Some(
                config
                    .tsc_khz
                    .or_else(super::host_tsc_khz)
                    .ok_or(QemuError::TscUnknown)?,
            ),
            Machine::Pc => None,
        };
        let mut cmd = Command::new(&config.binary);
        cmd.args(config.args(&files, tsc_khz));
        let fds: Vec<RawFd> = files.nics.iter().map(|n| n.fd).collect();
        let user = config.user.clone();
        // SAFETY: between fork and exec the closure only calls async-signal-safe system
        // calls (fcntl, umask, setgroups, setgid, setuid) on memory allocated before the
        // fork.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &fds {
                    // The child keeps the tap open under the same number.
                    if nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                // What QEMU creates (its QMP socket, the console log) is its own only.
                nix::libc::umask(0o077);
                if let Some(u) = &user {
                    let rc = nix::libc::setgroups(u.groups.len(), u.groups.as_ptr());
                    if rc < 0 || nix::libc::setgid(u.gid) < 0 || nix::libc::setuid(u.uid) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let process = Supervised::spawn("qemu", &mut cmd, on_exit)?;
        Ok(Qemu { process, files })
    }

    /// Takes over a running QEMU another process started with `files` (the VM cache):
    /// `process` is it, adopted.
    pub fn adopt(process: Supervised, files: VmFiles) -> Self {
        Qemu { process, files }
    }

    /// Lets QEMU run on for another owner; returns a pidfd of it.
    pub fn release(mut self) -> io::Result<std::os::fd::OwnedFd> {
        self.process.release()
    }

    /// A handle that SIGKILLs the process by its pidfd (see
    /// [`crate::process::Supervised::kill_handle`]).
    pub fn kill_handle(&self) -> Option<crate::process::KillHandle> {
        self.process.kill_handle()
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The error describing QEMU's exit, if it has exited.
    pub fn exit_error(&self) -> Option<QemuError> {
        self.process.exit_status().map(|status| QemuError::Exited {
            status,
            output: self.process.output_tail(),
            console: self.console_tail(),
        })
    }

    /// The end of the guest console log.
    pub fn console_tail(&self) -> String {
        console_tail(&self.files.console).unwrap_or_default()
    }

    /// Stops the VM: QMP `quit`, then SIGTERM/SIGKILL if QEMU lingers; waits until it is
    /// reaped and removes the QMP socket.
    pub async fn stop(mut self) -> Result<ExitStatus, QemuError> {
        self.process.set_stopping();
        if self.process.exit_status().is_none() {
            match tokio::time::timeout(QMP_TIMEOUT, qmp_quit(&self.files.qmp)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::warn!("QMP quit: {e}"),
                Err(_) => log::warn!("QMP quit timed out after {QMP_TIMEOUT:?}"),
            }
        }
        let status = match self.process.wait_timeout(QUIT_WAIT).await {
            Some(status) => Ok(status),
            None => self.process.terminate(KILL_GRACE).await,
        };
        self.remove_qmp_socket();
        Ok(status?)
    }

    /// Ends the VM at once (SIGKILL), for when nothing in it needs saving: the guest has
    /// synced and let go of the share, it has no disk, and its memory is discarded
    /// either way. Saves the QMP round trips and QEMU's own shutdown.
    pub async fn kill(mut self) -> Result<ExitStatus, QemuError> {
        let status = self.process.kill().await;
        self.remove_qmp_socket();
        Ok(status?)
    }

    fn remove_qmp_socket(&self) {
        match std::fs::remove_file(&self.files.qmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("removing {}: {e}", self.files.qmp.display()),
        }
    }
}

async fn qmp_quit(sock: &Path) -> io::Result<()> {
    let qmp = qapi::futures::QmpStreamTokio::open_uds(sock)
        .await?
        .negotiate()
        .await?;
    let mut qmp = qmp;
    match qmp.execute(qapi::qmp::quit {}).await {
        Ok(_) => Ok(()),
        // QEMU may close the socket as it quits, before answering.
        Err(qapi::ExecuteError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(()),
        Err(e) => Err(io::Error::other(e.to_string())),
    }
}

/// Opens the console log for reading. The file is in QEMU's directory (QEMU may run as
/// another user): a link there is not followed, and nothing but a regular file is opened.
pub fn open_console(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(f)
}

/// The last few KiB of a console log (see [`open_console`]).
pub fn console_tail(path: &Path) -> io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = open_console(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(CONSOLE_TAIL_BYTES)))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> QemuConfig {
        QemuConfig {
            binary: "/usr/bin/qemu-system-x86_64".into(),
            accel: Accel::Tcg,
            machine: Machine::Microvm,
            vcpus: 2,
            memory_mib: 512,
            kernel: "/k/vmlinux".into(),
            initramfs: "/k/initramfs.cpio".into(),
            kernel_params: vec!["lazyvm.debug=1".into()],
            tsc_khz: None,
            debug: false,
            user: None,
        }
    }

    fn files() -> VmFiles {
        VmFiles {
            vhost_fs: "/run/lazyvm/s/vhost-fs.sock".into(),
            vhost_vsock: "/run/lazyvm/s/vhost-vsock.sock".into(),
            qmp: "/run/lazyvm/s/qmp.sock".into(),
            console: "/run/lazyvm/s/console.log".into(),
            nics: vec![],
        }
    }

    fn args(c: &QemuConfig, tsc: Option<u64>) -> Vec<String> {
        c.args(&files(), tsc)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn microvm_tcg_command_line() {
        let a = args(&config(), Some(1_996_249));
        assert_eq!(
            after(&a, "-machine"),
            ["microvm,pit=on,pcie=off,rtc=on,memory-backend=mem"]
        );
        assert_eq!(after(&a, "-accel"), ["tcg,thread=multi,tb-size=256"]);
        assert_eq!(after(&a, "-smp"), ["2"]);
        assert_eq!(after(&a, "-m"), ["512M"]);
        assert_eq!(
            after(&a, "-object"),
            ["memory-backend-memfd,id=mem,size=512M,share=on"]
        );
        assert_eq!(
            after(&a, "-device"),
            [
                "vhost-user-fs-device,chardev=fs0,tag=lazyvm",
                "vhost-user-vsock-device,chardev=vsock0"
            ]
        );
        assert_eq!(
            after(&a, "-chardev"),
            [
                "socket,id=fs0,path=/run/lazyvm/s/vhost-fs.sock",
                "socket,id=vsock0,path=/run/lazyvm/s/vhost-vsock.sock",
                "file,id=console0,path=/run/lazyvm/s/console.log"
            ]
        );
        assert_eq!(
            after(&a, "-qmp"),
            ["unix:/run/lazyvm/s/qmp.sock,server=on,wait=off"]
        );
        let cmdline = after(&a, "-append")[0];
        assert!(cmdline.contains("tsc_early_khz=1996249"), "{cmdline}");
        assert!(cmdline.contains("lapic_bus_khz=1000000"), "{cmdline}");
        assert!(cmdline.contains("panic=-1") && cmdline.contains("quiet"));
        assert!(cmdline.ends_with("lazyvm.debug=1"), "{cmdline}");
        assert!(a.contains(&"-no-reboot".to_string()));
        assert_eq!(after(&a, "-sandbox"), [SECCOMP]);
    }

    #[test]
    fn configured_lapic_bus_khz_replaces_qemus() {
        let mut c = config();
        c.kernel_params = vec!["lapic_bus_khz=0".into()];
        let a = args(&c, None);
        let cmdline = after(&a, "-append")[0];
        assert_eq!(cmdline.matches("lapic_bus_khz=").count(), 1, "{cmdline}");
        assert!(cmdline.ends_with("lapic_bus_khz=0"), "{cmdline}");
    }

    #[test]
    fn nics_get_their_tap_fd_and_mac() {
        let mut f = files();
        f.nics = vec![NetDevice {
            fd: 7,
            mac: "02:42:0a:58:00:05".into(),
        }];
        let a: Vec<String> = config()
            .args(&f, None)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(after(&a, "-netdev"), ["tap,id=net0,fd=7"]);
        assert!(
            after(&a, "-device").contains(&"virtio-net-device,netdev=net0,mac=02:42:0a:58:00:05")
        );
        let mut c = config();
        c.machine = Machine::Pc;
        let a: Vec<String> = c
            .args(&f, None)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            after(&a, "-device"),
            [
                "vhost-user-fs-pci,chardev=fs0,tag=lazyvm",
                "vhost-user-vsock-pci,chardev=vsock0",
                "virtio-net-pci,netdev=net0,mac=02:42:0a:58:00:05"
            ]
        );
    }

    #[tokio::test]
    async fn more_nics_than_microvm_has_transports_is_an_error() {
        let mut c = config();
        c.binary = "/bin/true".into();
        c.kernel = "/bin/true".into();
        c.initramfs = "/bin/true".into();
        let mut f = files();
        f.nics = (0..=MICROVM_MAX_NICS)
            .map(|i| NetDevice {
                fd: 100 + i as RawFd,
                mac: format!("02:42:0a:58:00:{i:02x}"),
            })
            .collect();
        let err = Qemu::start(&c, f, None).await.unwrap_err();
        assert!(matches!(err, QemuError::TooManyNics(23)), "{err}");
        assert!(err.to_string().contains("machine = \"pc\""), "{err}");
    }

    #[test]
    fn kvm_pc_command_line() {
        let mut c = config();
        c.accel = Accel::Kvm;
        c.machine = Machine::Pc;
        c.debug = true;
        let a = args(&c, None);
        assert_eq!(after(&a, "-machine"), ["pc,memory-backend=mem"]);
        assert_eq!(after(&a, "-accel"), ["kvm"]);
        assert_eq!(after(&a, "-cpu"), ["host"]);
        let cmdline = after(&a, "-append")[0];
        assert!(!cmdline.contains("tsc_early_khz") && !cmdline.contains("quiet"));
        assert!(!cmdline.contains("lapic_bus_khz"), "{cmdline}");
    }

    #[tokio::test]
    async fn missing_kernel_and_initramfs_are_named() {
        let mut c = config();
        c.binary = "/bin/true".into();
        let err = Qemu::start(&c, files(), None).await.unwrap_err();
        assert!(matches!(&err, QemuError::Kernel(p) if p == Path::new("/k/vmlinux")));
        assert!(err.to_string().contains("/k/vmlinux"));
        c.kernel = "/bin/true".into();
        let err = Qemu::start(&c, files(), None).await.unwrap_err();
        assert!(matches!(err, QemuError::Initramfs(_)), "{err}");
    }
}
