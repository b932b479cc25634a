//! Tap devices: `TUNSETIFF` on `/dev/net/tun` (the kernel refuses tap creation over
//! rtnetlink). A tap is created in the network namespace of the calling thread and lives
//! as long as a file descriptor of it is open (it is not made persistent), so a crashed
//! shim and QEMU leave no tap behind.

use std::fs::OpenOptions;

use nix::libc;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::NetworkError;

const TUN_DEVICE: &str = "/dev/net/tun";
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

nix::ioctl_write_int!(tunsetiff, b'T', 202);

/// Whether `name` can name a network interface (1 to 15 bytes, no `/`, no whitespace).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// Creates tap device `name` (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) in the calling thread's
/// network namespace and returns its queue file descriptor (close-on-exec).
pub fn create(name: &str) -> Result<OwnedFd, NetworkError> {
    if !valid_ifname(name) {
        return Err(NetworkError::Tap {
            name: name.to_string(),
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    let err = |source| NetworkError::Tap {
        name: name.to_string(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(TUN_DEVICE)
        .map_err(err)?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `req` is a valid `struct ifreq` prefix of the size the kernel reads, and it
    // lives across the call.
    unsafe { tunsetiff(file.as_raw_fd(), &mut req as *mut IfReq as libc::c_ulong) }
        .map_err(|e| err(e.into()))?;
    Ok(file.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        assert!(valid_ifname("tap0_lazyvm"));
        assert!(valid_ifname("eth0"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a-very-long-name-x"));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname(".."));
        assert!(!valid_ifname("a b"));
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}
