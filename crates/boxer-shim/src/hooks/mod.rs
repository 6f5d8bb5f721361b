//! The exported libc replacements, by area.

pub mod files;
pub mod ifaddrs;
pub mod net;
pub mod resolve;
pub mod udp;
