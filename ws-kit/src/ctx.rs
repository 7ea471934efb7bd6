//! One message's context, [`Ctx`]: the typed payload, its meta and timing, the connection, the
//! router's state, and for a request its progress updates.

use crate::connection::Connection;
use crate::connection::rpc::RpcSlot;
use crate::error::WsError;
use crate::event::ErrorKind;
use crate::message::{EventMessage, Message, Meta, RpcMessage};
use crate::middleware::Incoming;
use crate::wire::{self, OutMeta};
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// The context of one message: its typed payload, meta, timing, the connection, the router's
/// state.
///
/// Dereferences to [`Connection`] for `send`, `publish`, `subscribe`, `data()` and the rest.
/// `D` is the per-connection data, `S` the router's state ([`Router::with_state`](crate::Router::with_state)).
///
/// A request's handler answers by returning its reply (`Ok(Pong { .. })`) or an error; along the
/// way it may send progress updates with [`Ctx::progress`]. It has no other way to send a
/// terminal frame, so every request gets exactly one.
pub struct Ctx<M, D = (), S = ()> {
    /// The decoded, validated payload.
    pub payload: M,
    conn: Connection<D>,
    meta: Meta,
    received_at: SystemTime,
    deadline: Option<Instant>,
    rpc: Option<Arc<RpcSlot>>,
    state: PhantomData<fn() -> S>,
}

impl<M: fmt::Debug, D, S> fmt::Debug for Ctx<M, D, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx")
            .field("payload", &self.payload)
            .field("meta", &self.meta)
            .field("client_id", &self.conn.inner.id)
            .finish_non_exhaustive()
    }
}

impl<M, D, S> Deref for Ctx<M, D, S> {
    type Target = Connection<D>;
    fn deref(&self) -> &Connection<D> {
        &self.conn
    }
}

impl<M: Message, D: Send + Sync + 'static, S: Send + Sync + 'static> Ctx<M, D, S> {
    pub(crate) fn new(
        payload: M,
        conn: Connection<D>,
        meta: Meta,
        received_at: SystemTime,
        deadline: Option<Instant>,
        rpc: Option<Arc<RpcSlot>>,
    ) -> Self {
        Ctx {
            payload,
            conn,
            meta,
            received_at,
            deadline,
            rpc,
            state: PhantomData,
        }
    }

    /// The message's type tag.
    pub fn message_type(&self) -> &'static str {
        M::TYPE
    }

    /// The envelope's standard meta (client-sent `clientId`/`receivedAt` are stripped).
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The server clock when the frame arrived: when its bytes were read from the socket (the
    /// frames of one socket read share the time of that read).
    pub fn received_at(&self) -> SystemTime {
        self.received_at
    }

    /// The RPC deadline (`received_at + meta.timeoutMs`, capped by the server), if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The connection this message came from.
    pub fn connection(&self) -> &Connection<D> {
        &self.conn
    }

    /// The router's state, as given to [`Router::with_state`](crate::Router::with_state).
    pub fn state(&self) -> &S {
        self.conn
            .inner
            .shared
            .state
            .downcast_ref::<S>()
            .expect("a handler's state type is its router's (checked by the type system)")
    }

    /// What middleware sees of this message.
    pub(crate) fn incoming(&self) -> Incoming<D> {
        Incoming {
            conn: self.conn.clone(),
            message_type: M::TYPE,
            meta: Arc::new(self.meta.clone()),
            received_at: self.received_at,
            rpc: self.rpc.is_some(),
        }
    }
}

impl<M: EventMessage, D: Send + Sync + 'static, S: Send + Sync + 'static> Ctx<M, D, S> {
    /// Sends an `ERROR` frame to the client (with the event's `correlationId` echoed, when it had
    /// one), and goes on. Returning `Err(..)` from the handler does the same and ends it.
    pub fn error(&self, err: impl Into<WsError>) {
        let cid = self.meta.correlation_id.as_deref();
        self.conn.push(wire::encode_error(false, &err.into(), cid));
    }
}

impl<M: RpcMessage, D: Send + Sync + 'static, S: Send + Sync + 'static> Ctx<M, D, S> {
    /// Sends a progress frame (`$ws:rpc-progress`) carrying a response payload. Returns false once
    /// the request has its terminal (it was aborted or timed out), when nobody listens any more.
    pub fn progress(&self, update: &M::Response) -> bool {
        let Some(slot) = &self.rpc else { return false };
        let cid = self.meta.correlation_id.as_deref();
        let meta = OutMeta {
            correlation_id: cid,
            user: None,
        };
        // `ServeOptions::progress_data_compat`: the value also under `data`, for WS-Kit clients.
        let data_too = self.conn.inner.shared.limits.progress_data_compat;
        match wire::encode_progress(update, meta, data_too) {
            Ok(frame) => slot.progress(&self.conn.inner.out, frame),
            Err(e) => {
                self.conn.report(ErrorKind::Encode, Some(M::TYPE), cid, e);
                false
            }
        }
    }

    /// Whether the request already has its terminal: it was aborted or passed its deadline (the
    /// handler's future is then dropped at its next wait).
    pub fn is_finished(&self) -> bool {
        self.rpc.as_ref().is_none_or(|s| s.is_done())
    }
}
