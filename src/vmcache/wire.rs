//! The cache's protocol on its Unix socket: the client sends one line of JSON (a
//! [`Request`]; a pod's claim with the pod's network namespace attached, `SCM_RIGHTS`); the
//! cache answers with one line of JSON (an [`Answer`]), and when it hands over a VM the
//! helpers' pidfds ride along with it (and, for a pod, the fd of the VM's tap).

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::hypervisor::qemu::VmUser;

/// The longest line either side sends.
const MAX_LINE: usize = 16 * 1024;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// A booted VM for the sandbox directory `<run_dir>/<key>`, booted from a
    /// configuration with this [`crate::config::Config::vm_fingerprint`].
    Claim {
        /// The sandbox key (the directory's name).
        key: String,
        /// The run directory.
        run_dir: PathBuf,
        /// The configuration's fingerprint.
        fingerprint: String,
        /// A pod's claim: the pod's network namespace comes with the request, and the
        /// VM's NIC is to be moved into it.
        #[serde(default)]
        netns: bool,
    },
    /// How many VMs are ready.
    Status,
}

/// What the cache answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Answer {
    /// A VM, now in directory `dir`; pidfds of nydusd, vhost-device-vsock and QEMU come
    /// with this answer, in that order.
    Vm {
        /// Its directory (the sandbox directory asked for).
        dir: PathBuf,
        /// The pids of nydusd, vhost-device-vsock and QEMU.
        pids: [u32; 3],
        /// Who QEMU runs as.
        vm_user: Option<VmUser>,
        /// For a pod's claim: the MAC the VM's NIC has; its tap, now in the pod's network
        /// namespace, comes fourth.
        #[serde(default)]
        nic_mac: Option<String>,
    },
    /// The status.
    Ready {
        /// VMs ready now.
        ready: usize,
        /// VMs the cache keeps.
        size: usize,
    },
    /// No VM: why.
    Refused {
        /// The reason.
        reason: String,
    },
}

/// The most descriptors a message carries.
const MAX_FDS: usize = 4;

/// Sends `msg` as one line on the connected socket `sock`, with `fds` attached.
pub fn send<T: Serialize>(sock: BorrowedFd<'_>, msg: &T, fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "{} descriptors (at most {MAX_FDS})",
            fds.len()
        )));
    }
    let mut line = serde_json::to_vec(msg).map_err(io::Error::other)?;
    line.push(b'\n');
    let cmsgs = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsgs };
    let mut sent = sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&line)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    // The rest (a short write: not for lines this small, in practice) without the fds.
    while sent < line.len() {
        sent += sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&line[sent..])],
            &[],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
    }
    Ok(())
}

/// Receives one line from the connected (blocking) socket `sock`, with the file
/// descriptors that came with it (close-on-exec).
pub fn recv<T: DeserializeOwned>(sock: BorrowedFd<'_>) -> io::Result<(T, Vec<OwnedFd>)> {
    let mut line = Vec::new();
    let mut fds = Vec::new();
    let mut buf = [0u8; 4096];
    while !line.ends_with(b"\n") {
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = c {
                // SAFETY: the kernel just installed these descriptors in this process;
                // nothing else owns them.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let n = msg.bytes;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed before a whole message",
            ));
        }
        line.extend_from_slice(&buf[..n]);
        if line.len() > MAX_LINE {
            return Err(io::Error::other("the message is too long"));
        }
    }
    let msg = serde_json::from_slice(&line)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("the message: {e}")))?;
    Ok((msg, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn requests_are_json_lines() {
        let r = Request::Claim {
            key: "c1".into(),
            run_dir: "/run/lazyvm".into(),
            fingerprint: "00ff".into(),
            netns: true,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""op":"claim""#), "{text}");
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"op":"steal"}"#).is_err());
    }

    #[test]
    fn an_answer_carries_its_descriptors() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        let answer = Answer::Vm {
            dir: "/run/lazyvm/c1".into(),
            pids: [1, 2, 3],
            vm_user: None,
            nic_mac: None,
        };
        let raw = file.as_raw_fd();
        send(a.as_fd(), &answer, &[raw, raw, raw]).unwrap();
        let (got, fds) = recv::<Answer>(b.as_fd()).unwrap();
        assert_eq!(got, answer);
        assert_eq!(fds.len(), 3);
        // The same open file: a write through one shows in the other's size.
        let mut f = std::fs::File::from(fds.into_iter().next().unwrap());
        f.write_all(b"x").unwrap();
        assert_eq!(file.metadata().unwrap().len(), 1);
    }

    #[test]
    fn too_many_descriptors_are_refused() {
        let (a, _b) = UnixStream::pair().unwrap();
        let raw = a.as_raw_fd();
        assert!(send(a.as_fd(), &Request::Status, &[raw; MAX_FDS + 1]).is_err());
    }

    #[test]
    fn a_closed_connection_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        let e = recv::<Answer>(b.as_fd()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
