//! `lazyvm check`: what the host has and lacks, in the spirit of `kata-runtime check`.

use std::path::Path;
use std::process::{Command, ExitCode};

use lazyvm::config::{kvm_kind, Config, KvmKind};
use lazyvm::hypervisor::{Accel, Machine};

struct Report {
    missing: usize,
}

impl Report {
    fn line(&mut self, ok: bool, required: bool, what: &str, detail: impl AsRef<str>) {
        let mark = match (ok, required) {
            (true, _) => "ok  ",
            (false, true) => "FAIL",
            (false, false) => "warn",
        };
        if !ok && required {
            self.missing += 1;
        }
        println!("{mark} {what:<20} {}", detail.as_ref());
    }
}

fn first_line(cmd: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some(text.lines().next().unwrap_or("").trim().to_string())
}

fn file(report: &mut Report, required: bool, what: &str, path: &Path) {
    match std::fs::metadata(path) {
        Ok(m) => report.line(
            true,
            required,
            what,
            format!("{} ({} bytes)", path.display(), m.len()),
        ),
        Err(_) => report.line(
            false,
            required,
            what,
            format!("{} is missing", path.display()),
        ),
    }
}

pub fn check(config: &Config) -> ExitCode {
    let mut r = Report { missing: 0 };
    let qemu = config.qemu();

    match first_line(&qemu.binary, &["--version"]) {
        Some(v) => r.line(
            true,
            true,
            "qemu",
            format!("{} ({v})", qemu.binary.display()),
        ),
        None => r.line(
            false,
            true,
            "qemu",
            format!("{} is missing or broken", qemu.binary.display()),
        ),
    }

    let kvm = kvm_kind();
    let kvm_text = match kvm {
        KvmKind::Absent => "no /dev/kvm",
        KvmKind::Pvm => "/dev/kvm is PVM (kvm_pvm): it cannot run a stock guest kernel",
        KvmKind::Hardware => "/dev/kvm with hardware virtualization (VMX/SVM)",
        KvmKind::Unknown => "/dev/kvm present, module unknown",
    };
    r.line(kvm == KvmKind::Hardware, false, "kvm", kvm_text);
    let accel = match qemu.accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg (software emulation: slower)",
    };
    r.line(
        qemu.accel == Accel::Tcg || kvm == KvmKind::Hardware,
        true,
        "accel",
        format!("{accel} (configured: {:?})", config.hypervisor.accel),
    );
    let machine = match qemu.machine {
        Machine::Microvm => "microvm,pit=on,pcie=off (virtio-mmio)",
        Machine::Pc => "pc",
    };
    r.line(true, true, "machine", machine);
    if qemu.machine == Machine::Microvm {
        match qemu.tsc_khz.or_else(lazyvm::hypervisor::host_tsc_khz) {
            Some(khz) => r.line(true, true, "tsc", format!("{khz} kHz (tsc_early_khz)")),
            None => r.line(false, true, "tsc", "unknown: set hypervisor.tsc_khz"),
        }
    }

    file(&mut r, true, "kernel", &qemu.kernel);
    file(&mut r, true, "initramfs", &qemu.initramfs);

    let nydusd = &config.nydusd.path;
    match first_line(nydusd, &["virtiofs", "--help"]) {
        Some(_) => r.line(
            true,
            true,
            "nydusd",
            format!("{} (virtiofs supported)", nydusd.display()),
        ),
        None if nydusd.exists() => r.line(
            false,
            true,
            "nydusd",
            format!("{} has no virtiofs support", nydusd.display()),
        ),
        None => r.line(
            false,
            true,
            "nydusd",
            format!("{} is missing (make deps)", nydusd.display()),
        ),
    }
    match first_line(&config.vsock.path, &["--version"]) {
        Some(v) => r.line(
            true,
            true,
            "vhost-device-vsock",
            format!("{} ({v})", config.vsock.path.display()),
        ),
        None => r.line(
            false,
            true,
            "vhost-device-vsock",
            format!("{} is missing (make deps)", config.vsock.path.display()),
        ),
    }
    match first_line(Path::new("containerd"), &["--version"]) {
        Some(v) => r.line(true, false, "containerd", v),
        None => r.line(
            false,
            false,
            "containerd",
            "not found (needed for the shim only)",
        ),
    }

    if let Some(socket) = &config.cache.socket {
        let status = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| {
                rt.block_on(lazyvm::vmcache::status(socket))
                    .map_err(|e| e.to_string())
            });
        match status {
            Ok((ready, size)) => r.line(
                true,
                false,
                "vm cache",
                format!("{}: {ready} of {size} VMs ready", socket.display()),
            ),
            Err(e) => r.line(
                false,
                false,
                "vm cache",
                format!("{e}: sandboxes boot their own VMs (is `lazyvm cache` running?)"),
            ),
        }
    }

    if r.missing > 0 {
        println!("{} required item(s) missing", r.missing);
        ExitCode::FAILURE
    } else {
        println!("this host can run lazyvm");
        ExitCode::SUCCESS
    }
}
