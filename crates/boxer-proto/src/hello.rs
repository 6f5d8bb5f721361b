//! The first frame of every stream: magic bytes and protocol version.

use serde::{Deserialize, Serialize};

/// Version of the protocol spoken by this build. Bump on any change to a message
/// that an older build would misread. 3: node states, overlay UDP (shim
/// requests and peer datagrams), `Unknown`/`Denied` shim answers. 4: per-pair
/// probe keys (`disco_public` in joins and membership). 5: rejoining after a
/// lost rendezvous connection (`JoinRequest::rejoin`), `NodeMessage::PeerLost`.
/// 6: stopping one member (`Request::StopMember`, `ServerMessage::Stop`,
/// `ServerMessage::MemberStopping`), for `boxer scale` down on Lambda.
pub const PROTOCOL_VERSION: u32 = 6;

/// Magic bytes that open every stream, so that a stray client gets "not a Boxer
/// peer" instead of a confusing decode error.
pub const MAGIC: [u8; 4] = *b"BOXR";

/// The first frame on every stream, in both directions.
///
/// Its encoding must never change: it is how two builds of different versions
/// learn about each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: [u8; 4],
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u32,
}

/// Why a [`Hello`] was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The magic bytes were wrong: the other side is not a Boxer program.
    #[error("not a Boxer peer (bad magic bytes {0:02x?})")]
    BadMagic([u8; 4]),
    /// Both sides are Boxer, but of incompatible versions.
    #[error("protocol version mismatch: peer speaks version {theirs}, this build speaks version {ours}")]
    VersionMismatch {
        /// Our [`PROTOCOL_VERSION`].
        ours: u32,
        /// The version the other side announced.
        theirs: u32,
    },
}

impl Hello {
    /// The hello of this build.
    pub const fn current() -> Self {
        Self { magic: MAGIC, version: PROTOCOL_VERSION }
    }

    /// Checks that a received hello is from a compatible Boxer program.
    pub fn check(&self) -> Result<(), HelloError> {
        if self.magic != MAGIC {
            return Err(HelloError::BadMagic(self.magic));
        }
        if self.version != PROTOCOL_VERSION {
            return Err(HelloError::VersionMismatch { ours: PROTOCOL_VERSION, theirs: self.version });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_mismatch_names_both_versions() {
        let err = Hello { magic: MAGIC, version: 99 }.check().unwrap_err();
        let text = err.to_string();
        assert!(text.contains("99") && text.contains(&PROTOCOL_VERSION.to_string()), "{text}");
        assert!(Hello::current().check().is_ok());
        assert!(matches!(Hello { magic: *b"HTTP", version: 1 }.check(), Err(HelloError::BadMagic(_))));
    }
}
