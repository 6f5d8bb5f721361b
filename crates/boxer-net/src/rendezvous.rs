//! Client side of the rendezvous protocol (see [`boxer_proto::control`]).

use std::net::SocketAddr;
use std::time::Duration;

use boxer_proto::control::{
    ClusterInfo, CreateClusterRequest, DeleteClusterRequest, JoinRequest, Joined, NodeMessage, Request, ServerMessage,
    StopMemberRequest, WatchRequest,
};
use boxer_proto::hello::HelloError;
use boxer_proto::membership::MembershipSnapshot;
use boxer_proto::{ALPN_RENDEZVOUS, Fingerprint, FrameError, Hello, frame};

use crate::endpoint::{EndpointError, NodeEndpoint};
use crate::transport;

/// How long the rendezvous may take to answer a request. Admission is a
/// table insert; anything slower than this is a dead or overloaded server.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why talking to the rendezvous failed.
#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    /// The connection could not be started.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The connection failed or was lost (a wrong fingerprint shows up here).
    #[error("connection to rendezvous {addr} failed: {source}")]
    Connection {
        /// The rendezvous address.
        addr: SocketAddr,
        /// The error.
        source: quinn::ConnectionError,
    },
    /// The rendezvous closed the connection in an orderly way (it shut down,
    /// or the cluster ended).
    #[error("the rendezvous closed the connection{}", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    Closed {
        /// What it said.
        reason: String,
    },
    /// The rendezvous refused the request and said why.
    #[error("rendezvous refused: {reason} (code {code})")]
    Refused {
        /// A [`boxer_proto::control::CloseCode`].
        code: u64,
        /// The server's explanation.
        reason: String,
    },
    /// The rendezvous speaks another protocol version or is not a rendezvous.
    #[error("rendezvous {addr}: {source}")]
    Hello {
        /// The rendezvous address.
        addr: SocketAddr,
        /// The error.
        source: HelloError,
    },
    /// A message could not be read or written.
    #[error("rendezvous {addr}: {source}")]
    Frame {
        /// The rendezvous address.
        addr: SocketAddr,
        /// The error.
        source: FrameError,
    },
    /// The rendezvous sent something that makes no sense at this point.
    #[error("rendezvous {addr} sent an unexpected message: {what}")]
    Unexpected {
        /// The rendezvous address.
        addr: SocketAddr,
        /// A description of the message.
        what: String,
    },
    /// No answer within [`ANSWER_TIMEOUT`].
    #[error("rendezvous {addr} did not answer within {ANSWER_TIMEOUT:?}")]
    Timeout {
        /// The rendezvous address.
        addr: SocketAddr,
    },
}

/// Where the rendezvous is and which certificate it must present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RendezvousAddr {
    /// UDP address.
    pub addr: SocketAddr,
    /// SHA-256 fingerprint of its certificate.
    pub fingerprint: Fingerprint,
}

/// The control stream of an open rendezvous session.
#[derive(Debug)]
pub struct Session {
    addr: SocketAddr,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

/// Sending half of a session.
#[derive(Debug)]
pub struct SessionSender {
    addr: SocketAddr,
    conn: quinn::Connection,
    send: quinn::SendStream,
}

/// Receiving half of a session.
#[derive(Debug)]
pub struct SessionReceiver {
    addr: SocketAddr,
    conn: quinn::Connection,
    recv: quinn::RecvStream,
}

/// Turns a frame error into the server's refusal if the server closed the
/// connection with a reason, which is how it reports errors.
fn frame_error(addr: SocketAddr, conn: &quinn::Connection, source: FrameError) -> RendezvousError {
    match conn.close_reason() {
        Some(reason) => connection_error(addr, reason),
        None => RendezvousError::Frame { addr, source },
    }
}

fn connection_error(addr: SocketAddr, source: quinn::ConnectionError) -> RendezvousError {
    match source {
        quinn::ConnectionError::ApplicationClosed(close) if close.error_code.into_inner() == 0 => {
            RendezvousError::Closed { reason: String::from_utf8_lossy(&close.reason).into_owned() }
        }
        quinn::ConnectionError::ApplicationClosed(close) => RendezvousError::Refused {
            code: close.error_code.into_inner(),
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        source => RendezvousError::Connection { addr, source },
    }
}

impl Session {
    /// Connects from `endpoint`, exchanges hellos and sends `request`.
    pub async fn open(
        endpoint: &NodeEndpoint,
        rendezvous: RendezvousAddr,
        request: &Request,
    ) -> Result<Self, RendezvousError> {
        let addr = rendezvous.addr;
        let connecting =
            endpoint.connect(addr, rendezvous.fingerprint, ALPN_RENDEZVOUS, transport::rendezvous_client())?;
        let conn = connecting.await.map_err(|e| connection_error(addr, e))?;
        let (mut send, recv) = conn.open_bi().await.map_err(|e| connection_error(addr, e))?;
        let mut out = Vec::new();
        frame::encode_into(&Hello::current(), &mut out)
            .and_then(|()| frame::encode_into(request, &mut out))
            .map_err(|source| RendezvousError::Frame { addr, source })?;
        send.write_all(&out).await.map_err(|e| frame_error(addr, &conn, FrameError::Io(e.into())))?;
        let mut session = Self { addr, conn, send, recv };
        let hello: Hello = session.recv_timeout().await?;
        hello.check().map_err(|source| RendezvousError::Hello { addr, source })?;
        Ok(session)
    }

    /// The QUIC connection (to observe its state or close it).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    async fn recv_timeout<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, RendezvousError> {
        let addr = self.addr;
        match tokio::time::timeout(ANSWER_TIMEOUT, frame::read(&mut self.recv)).await {
            Ok(Ok(msg)) => Ok(msg),
            Ok(Err(e)) => Err(frame_error(addr, &self.conn, e)),
            Err(_) => Err(RendezvousError::Timeout { addr }),
        }
    }

    /// Reads the first answer to the request.
    pub async fn answer(&mut self) -> Result<ServerMessage, RendezvousError> {
        self.recv_timeout().await
    }

    /// Splits into halves that can be used from different tasks.
    pub fn split(self) -> (SessionSender, SessionReceiver) {
        let Self { addr, conn, send, recv } = self;
        (SessionSender { addr, conn: conn.clone(), send }, SessionReceiver { addr, conn, recv })
    }
}

impl SessionSender {
    /// Sends a message to the rendezvous.
    pub async fn send(&mut self, msg: &NodeMessage) -> Result<(), RendezvousError> {
        let addr = self.addr;
        frame::write(&mut self.send, msg).await.map_err(|e| frame_error(addr, &self.conn, e))
    }
}

impl SessionReceiver {
    /// Waits for the next server message. Errors when the connection ends.
    pub async fn next(&mut self) -> Result<ServerMessage, RendezvousError> {
        let addr = self.addr;
        frame::read(&mut self.recv).await.map_err(|e| frame_error(addr, &self.conn, e))
    }

    /// The QUIC connection.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }
}

/// Joins a cluster. Returns the admission and the live session.
pub async fn join(
    endpoint: &NodeEndpoint,
    rendezvous: RendezvousAddr,
    request: JoinRequest,
) -> Result<(Joined, Session), RendezvousError> {
    let mut session = Session::open(endpoint, rendezvous, &Request::Join(request)).await?;
    match session.answer().await? {
        ServerMessage::Joined(joined) => Ok((joined, session)),
        other => Err(RendezvousError::Unexpected { addr: rendezvous.addr, what: format!("{other:?}") }),
    }
}

/// Subscribes to a cluster's membership: a snapshot, then events from the receiver.
pub async fn watch(
    endpoint: &NodeEndpoint,
    rendezvous: RendezvousAddr,
    request: WatchRequest,
) -> Result<(MembershipSnapshot, SessionReceiver), RendezvousError> {
    let mut session = Session::open(endpoint, rendezvous, &Request::Watch(request)).await?;
    match session.answer().await? {
        ServerMessage::Snapshot(snapshot) => Ok((snapshot, session.split().1)),
        other => Err(RendezvousError::Unexpected { addr: rendezvous.addr, what: format!("{other:?}") }),
    }
}

/// Sends an admin `request` that has one answer, and closes the connection
/// once it came.
async fn one_answer(
    endpoint: &NodeEndpoint,
    rendezvous: RendezvousAddr,
    request: &Request,
) -> Result<ServerMessage, RendezvousError> {
    let mut session = Session::open(endpoint, rendezvous, request).await?;
    let answer = session.answer().await;
    session.conn.close(0u32.into(), b"done");
    answer
}

/// Creates a cluster (admin).
pub async fn create_cluster(
    endpoint: &NodeEndpoint,
    rendezvous: RendezvousAddr,
    request: CreateClusterRequest,
) -> Result<ClusterInfo, RendezvousError> {
    match one_answer(endpoint, rendezvous, &Request::CreateCluster(request)).await? {
        ServerMessage::ClusterCreated(info) => Ok(info),
        other => Err(RendezvousError::Unexpected { addr: rendezvous.addr, what: format!("{other:?}") }),
    }
}

/// Deletes a cluster (admin); its members are disconnected.
pub async fn delete_cluster(
    endpoint: &NodeEndpoint,
    rendezvous: RendezvousAddr,
    request: DeleteClusterRequest,
) -> Result<(), RendezvousError> {
    match one_answer(endpoint, rendezvous, &Request::DeleteCluster(request)).await? {
        ServerMessage::ClusterDeleted { .. } => Ok(()),
        other => Err(RendezvousError::Unexpected { addr: rendezvous.addr, what: format!("{other:?}") }),
    }
}

/// Tells one member to stop (admin): its program gets SIGTERM and its grace,
/// then it reports its exit and leaves. Returns once the member was told,
/// not when it is gone (that shows in the membership).
pub async fn stop_member(
    endpoint: &NodeEndpoint,
    rendezvous: RendezvousAddr,
    request: StopMemberRequest,
) -> Result<(), RendezvousError> {
    match one_answer(endpoint, rendezvous, &Request::StopMember(request)).await? {
        ServerMessage::MemberStopping { .. } => Ok(()),
        other => Err(RendezvousError::Unexpected { addr: rendezvous.addr, what: format!("{other:?}") }),
    }
}
