//! The cache's protocol on its Unix socket: the client sends one line of JSON (a
//! [`Request`]); the cache answers with one line of JSON (an [`Answer`]), and when it hands
//! over a VM the helpers' pidfds ride along with it (`SCM_RIGHTS`).

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use crate::hypervisor::qemu::VmUser;

/// The longest line either side sends.
pub const MAX_LINE: usize = 16 * 1024;

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

/// Sends `answer` on the connected socket `sock`, with `fds` attached.
pub fn send(sock: BorrowedFd<'_>, answer: &Answer, fds: &[RawFd]) -> io::Result<()> {
    let mut line = serde_json::to_vec(answer).map_err(io::Error::other)?;
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

/// Receives one answer line from the connected (blocking) socket `sock`, with the file
/// descriptors that came with it (close-on-exec).
pub fn recv(sock: BorrowedFd<'_>) -> io::Result<(Answer, Vec<OwnedFd>)> {
    let mut line = Vec::new();
    let mut fds = Vec::new();
    let mut buf = [0u8; 4096];
    while !line.ends_with(b"\n") {
        let mut cmsg = nix::cmsg_space!([RawFd; 3]);
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
                "the cache closed the connection without an answer",
            ));
        }
        line.extend_from_slice(&buf[..n]);
        if line.len() > MAX_LINE {
            return Err(io::Error::other("the cache's answer is too long"));
        }
    }
    let answer = serde_json::from_slice(&line).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the cache's answer: {e}"),
        )
    })?;
    Ok((answer, fds))
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
        };
        let raw = file.as_raw_fd();
        send(a.as_fd(), &answer, &[raw, raw, raw]).unwrap();
        let (got, fds) = recv(b.as_fd()).unwrap();
        assert_eq!(got, answer);
        assert_eq!(fds.len(), 3);
        // The same open file: a write through one shows in the other's size.
        let mut f = std::fs::File::from(fds.into_iter().next().unwrap());
        f.write_all(b"x").unwrap();
        assert_eq!(file.metadata().unwrap().len(), 1);
    }

    #[test]
    fn a_closed_connection_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        let e = recv(b.as_fd()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
