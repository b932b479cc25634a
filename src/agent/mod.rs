//! The host side of the guest agent protocol (`proto/agent.proto`): a ttrpc client over
//! hybrid vsock.

pub mod client;

pub use client::{AgentClient, AgentError, ProcessExit, ReadySignal};
pub use lazyvm_proto::agent::Storage;
