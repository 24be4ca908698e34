//! The reader: client frames are read into the shard's scratch buffer and decoded there
//! ([`decoder`](super::decoder)); each message is acted on here (subscribe, unsubscribe, ping),
//! and a bad one fails the connection with its close code. Nothing is held per connection
//! between frames.

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{ready, Context, Poll};

use tracing::trace;

use super::decoder::{self, Decoder, Fault, Msg};
use super::inflate::INFLATE_SLICE;
use super::{Conn, ConnShard};
use crate::hub::fanout::Subscribed;
use crate::hub::shard::Phase;
use crate::protocol::{
    close_code, error_frame, parse_client_message, reply_frame, Channel, ChannelError,
    ClientMessage, FrameBuf, Number, OP_BINARY, OP_TEXT,
};

#[derive(Debug)]
enum End {
    /// The close handshake completed (or was started by the peer).
    PeerClosed,
    /// We are failing the connection with a close code already queued.
    Failed,
    /// The socket ended without a close handshake.
    Gone,
}

/// Bytes one poll decodes before it lets the shard's other tasks run: a client that floods
/// its socket is served in turns like everyone else.
const READ_BUDGET: usize = 256 * 1024;

/// The connection task's reading half: client messages until the connection ends, then, when
/// the client was failed, whatever it still sends is read and thrown away until it closes (so
/// unread input never turns our close into a reset that loses the close frame). Written by
/// hand rather than as an `async fn`: every open connection carries this state, so it holds
/// only the decoder and two flags.
pub(super) struct ReadHalf<'a> {
    shard: &'a ConnShard,
    conn: &'a Conn,
    key: usize,
    decoder: Decoder,
    /// Bytes that came with the request head are decoded before the first read.
    early: bool,
    /// Failed: input is thrown away until EOF.
    discarding: bool,
}

impl<'a> ReadHalf<'a> {
    /// `tail`: the bytes the client sent right behind its request head; `deflate`: whether
    /// permessage-deflate was negotiated (its messages may come compressed).
    pub(super) fn new(
        shard: &'a ConnShard,
        conn: &'a Conn,
        key: usize,
        tail: Vec<u8>,
        deflate: bool,
    ) -> Self {
        let mut decoder = Decoder::with_pending(tail);
        if deflate {
            decoder.set_deflate();
        }
        Self {
            shard,
            conn,
            key,
            early: decoder.has_pending(),
            decoder,
            discarding: false,
        }
    }

    /// Reads and acts on client messages until the reader is done.
    fn poll_messages(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        let (shard, conn) = (self.shard, self.conn);
        let max = shard.config.max_message();
        if std::mem::take(&mut self.early) {
            let (end, inflated) = decode(shard, conn, self.key, &mut self.decoder, &mut [], max);
            if let Some(end) = end {
                return Poll::Ready(end);
            }
            if inflated >= INFLATE_SLICE {
                return self.later(cx);
            }
        }
        let mut budget = READ_BUDGET;
        loop {
            let mut scratch = shard.local.read.borrow_mut();
            let n = match conn.poll_read(cx, &mut scratch) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(End::Gone),
                Poll::Ready(Ok(n)) => n,
            };
            let fresh = &mut scratch[..n];
            let (end, inflated) = decode(shard, conn, self.key, &mut self.decoder, fresh, max);
            if let Some(end) = end {
                return Poll::Ready(end);
            }
            if inflated >= INFLATE_SLICE {
                // Compressed messages came to a slice of work: the rest of what was read
                // waits in the decoder for the next turn.
                drop(scratch);
                return self.later(cx);
            }
            // Inflated bytes count like bytes read.
            budget = budget.saturating_sub(n.max(inflated as usize));
            if budget == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }

    /// Lets the shard's other tasks run, then goes on with the bytes the decoder kept.
    fn later(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        self.early = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Reads and throws away until EOF (bounded by the close timeout of the sweep).
    fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut budget = READ_BUDGET;
        loop {
            let mut sink = self.shard.local.read.borrow_mut();
            match self.conn.poll_read(cx, &mut sink) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(n)) if n > 0 => budget = budget.saturating_sub(n),
                Poll::Ready(_) => return Poll::Ready(()),
            }
            if budget == 0 {
                // In turns with everyone else, as when reading messages.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }
}

impl Future for ReadHalf<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if !this.discarding {
            let end = ready!(this.poll_messages(cx));
            trace!(shard = this.shard.id, ?end, "reader ended");
            match end {
                End::PeerClosed => {}
                End::Failed => this.discarding = true,
                End::Gone => this.conn.kill(),
            }
        }
        if this.discarding {
            ready!(this.poll_discard(cx));
        }
        this.conn.reader_done.set(true);
        this.conn.link.wake_writer();
        Poll::Ready(())
    }
}

/// Decodes `fresh` and acts on every message in it. `Some`: the reader is done.
fn decode(
    shard: &ConnShard,
    conn: &Conn,
    key: usize,
    decoder: &mut Decoder,
    fresh: &mut [u8],
    max: usize,
) -> (Option<End>, u64) {
    // The shard's inflater, for compressed messages (borrowed for this call only).
    let mut inflater = shard.local.inflater.borrow_mut();
    let flow = decoder.feed(fresh, max, &mut inflater, |msg| {
        on_message(shard, conn, key, msg)
    });
    let (messages, inflated) = inflater.take_count();
    drop(inflater);
    if messages > 0 {
        shard
            .stats()
            .inflated_messages_total
            .fetch_add(messages, Relaxed);
    }
    let failure = match flow {
        Ok(ControlFlow::Continue(())) => return (None, inflated),
        Ok(ControlFlow::Break(Ok(end))) => return (Some(end), inflated),
        Ok(ControlFlow::Break(Err(failure))) => failure,
        Err(Fault::Protocol) => (close_code::PROTOCOL_ERROR, "protocol error"),
        Err(Fault::TooBig) => (close_code::TOO_BIG, "message too big"),
        Err(Fault::Utf8) => (close_code::INVALID_PAYLOAD, "invalid UTF-8"),
        Err(Fault::Deflate) => (close_code::INVALID_PAYLOAD, "invalid compressed data"),
    };
    let (code, reason) = failure;
    shard.stats().protocol_errors_total.fetch_add(1, Relaxed);
    if code == close_code::POLICY {
        // Its replies are what it does not read: they go.
        conn.close(code, reason);
    } else {
        // Answers to the valid messages before the bad one still go out first.
        conn.fail(code, reason);
    }
    (Some(End::Failed), inflated)
}

/// What one message leads to: go on, the reader is done, or the client is failed with a code.
type Step = ControlFlow<Result<End, (u16, &'static str)>>;

fn on_message(shard: &ConnShard, conn: &Conn, key: usize, msg: Msg<'_>) -> Step {
    conn.last_seen.set(super::Millis::now());
    let failure = match msg {
        Msg::Text(text) if shard.config.echo => echo(shard, conn, OP_TEXT, text),
        Msg::Binary(data) if shard.config.echo => echo(shard, conn, OP_BINARY, data),
        Msg::Text(text) => on_text(shard, conn, key, text),
        Msg::Binary(_) => {
            let stamp = shard.shared.stamp();
            let reply = error_frame(
                "unsupported_message",
                "binary messages are not part of the protocol",
                &stamp,
            );
            queue_reply(shard, conn, reply)
        }
        Msg::Close(payload) => {
            // Our close frame answers theirs, after the replies already queued.
            let mut out = conn.link.out.borrow_mut();
            out.push_control(&decoder::close_reply(payload));
            out.close_with_control();
            drop(out);
            conn.set_phase(Phase::Closing);
            conn.link.wake_writer();
            return ControlFlow::Break(Ok(End::PeerClosed));
        }
        Msg::Ping(payload) => {
            conn.link
                .out
                .borrow_mut()
                .push_control(&decoder::pong(payload));
            conn.link.wake_writer();
            // A client that sends pings and reads nothing must not grow them without bound.
            let waiting = conn.link.out.borrow().reply_backlog();
            (waiting > shard.config.max_reply_backlog)
                .then_some((close_code::POLICY, "replies not read"))
        }
        Msg::Pong => None,
    };
    match failure {
        Some(failure) => ControlFlow::Break(Err(failure)),
        None => ControlFlow::Continue(()),
    }
}

/// Conformance mode ([`crate::HubConfig::echo`]): sends the message back as it came.
/// Compressed like a broadcast when the client takes compressed frames (so the Autobahn
/// suite checks our deflate output too).
fn echo(shard: &ConnShard, conn: &Conn, opcode: u8, payload: &[u8]) -> Option<(u16, &'static str)> {
    if conn.link.out.borrow().deflate() {
        let deflater = shard.fanout.borrow().deflater();
        if let Some(frame) = deflater
            .filter(|d| d.wants(payload.len()))
            .and_then(|d| d.frame(opcode, payload))
        {
            return queue_reply(shard, conn, frame);
        }
    }
    let mut frame = FrameBuf::with_capacity(payload.len());
    frame.payload().extend_from_slice(payload);
    queue_reply(shard, conn, frame.finish_compact(opcode))
}

/// Acts on one text message. Returns a close code when the client must be failed.
fn on_text(shard: &ConnShard, conn: &Conn, key: usize, text: &[u8]) -> Option<(u16, &'static str)> {
    if shard.config.fault_injection && text == b"__panic__" {
        panic!("injected fault");
    }
    let parsed = parse_client_message(text, &mut shard.local.bytes.borrow_mut());
    let stamp = shard.shared.stamp();
    let msg = match parsed {
        Ok(msg) => msg,
        Err(()) => {
            shard.stats().invalid_messages_total.fetch_add(1, Relaxed);
            shard.warn_limited("invalid JSON from a client (ignored)");
            return None;
        }
    };
    match msg {
        ClientMessage::Ping(ts) => {
            let reply = reply_frame::<()>(
                "pong",
                None,
                ts.or(Some(Number::Int(stamp.unix_s as i64))),
                &stamp,
            );
            queue_reply(shard, conn, reply)
        }
        ClientMessage::Subscribe(names) => {
            let failure = change(shard, conn, key, names, true);
            shard.publish_interest();
            failure
        }
        ClientMessage::Unsubscribe(names) => {
            let failure = change(shard, conn, key, names, false);
            shard.publish_interest();
            failure
        }
        ClientMessage::Invalid(code, message) => {
            queue_reply(shard, conn, error_frame(code, &message, &stamp))
        }
        ClientMessage::Unknown => None,
    }
}

/// Subscribes or unsubscribes, answers `subscribed`/`unsubscribed` with the names now in
/// effect, an `error` per refused name, then the last values of newly subscribed channels.
fn change(
    shard: &ConnShard,
    conn: &Conn,
    key: usize,
    names: Vec<String>,
    subscribe: bool,
) -> Option<(u16, &'static str)> {
    let stamp = shard.shared.stamp();
    let limit = shard.config.max_subscriptions;
    if names.len() > limit {
        let msg = format!("at most {limit} channels per connection");
        return queue_reply(
            shard,
            conn,
            error_frame("too_many_subscriptions", &msg, &stamp),
        );
    }
    let mut in_effect = Vec::with_capacity(names.len());
    let mut added = Vec::new();
    let mut errors = Vec::new();
    {
        let mut fanout = shard.fanout.borrow_mut();
        for name in names {
            let channel = match Channel::parse(&name) {
                Ok(c) => c,
                Err(e) => {
                    let code = match e {
                        ChannelError::Unknown => "unknown_channel",
                        ChannelError::Invalid => "invalid_channel",
                    };
                    let shown: String = name.chars().take(64).collect();
                    errors.push(error_frame(
                        code,
                        &format!("no such channel: {shown}"),
                        &stamp,
                    ));
                    continue;
                }
            };
            if !subscribe {
                fanout.unsubscribe(key, &channel);
                in_effect.push(name);
                continue;
            }
            match fanout.subscribe(key, channel.clone()) {
                Subscribed::Added => {
                    added.push(channel);
                    in_effect.push(name);
                }
                Subscribed::Already => in_effect.push(name),
                Subscribed::Limit => {
                    let msg = format!("at most {limit} channels per connection");
                    errors.push(error_frame("too_many_subscriptions", &msg, &stamp));
                }
            }
        }
    }
    let kind = if subscribe {
        "subscribed"
    } else {
        "unsubscribed"
    };
    // Always answered, with `[]` when every name was refused.
    let reply = reply_frame(kind, Some(&in_effect), None, &stamp);
    let mut failure = queue_reply(shard, conn, reply);
    for e in errors {
        failure = failure.or(queue_reply(shard, conn, e));
    }
    let fanout = shard.fanout.borrow();
    // During a replay the channels' state comes with it, in order.
    let replaying = conn.link.replaying();
    for channel in &added {
        fanout.greet(key, channel);
        if !replaying {
            fanout.greet_state(key, channel);
        }
    }
    failure
}

fn queue_reply(shard: &ConnShard, conn: &Conn, reply: Box<[u8]>) -> Option<(u16, &'static str)> {
    let waiting = conn.link.out.borrow_mut().push_reply(reply);
    conn.link.wake_writer();
    (waiting > shard.config.max_reply_backlog).then_some((close_code::POLICY, "replies not read"))
}
