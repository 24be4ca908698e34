//! The relay's two threads: the publisher (frames and forwarded commands out to Redis, the
//! origin's REST state with them) and the subscriber (relayed frames, state and commands in),
//! each reconnecting with backoff when Redis goes away.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::resp::{Conn, Pipeline, Refused, Reply};
use super::wire::{decode, encode};
use super::{api, Here, Outgoing, RelayLink, RelayRole, POLL};
use crate::http::rest::Api;
use crate::http::routes::ApiRequest;
use crate::protocol::Channel;

/// The origin republishes its REST state this often (and after every event).
const STATE_EVERY: Duration = Duration::from_secs(1);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Silence on the subscription after which Redis is pinged (and twice that: reconnect).
const KEEPALIVE: Duration = Duration::from_secs(3);

/// Sleeps `d` in short steps; false when asked to stop meanwhile.
fn pause(link: &RelayLink, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if link.stop.load(Relaxed) {
            return false;
        }
        std::thread::sleep(POLL.min(end.saturating_duration_since(Instant::now())));
    }
    !link.stop.load(Relaxed)
}

/// Logs a failure at most once per 5 s per thread, counting the rest. Redis refusing the
/// credentials is said so, with the user (never the password), and counted apart too.
struct Complaints {
    /// 0: the publisher thread, 1: the subscriber thread.
    thread: usize,
    last: Option<Instant>,
    held: u64,
}

impl Complaints {
    fn new(thread: usize) -> Self {
        Self {
            thread,
            last: None,
            held: 0,
        }
    }

    fn complain(&mut self, link: &RelayLink, what: &str, e: &std::io::Error) {
        link.stats.errors_total.fetch_add(1, Relaxed);
        let auth = Refused::is_auth(e);
        if auth {
            link.stats.auth_failures_total.fetch_add(1, Relaxed);
        }
        link.set_up(self.thread, false);
        let now = Instant::now();
        if self
            .last
            .map_or(true, |t| now.duration_since(t) >= Duration::from_secs(5))
        {
            let relay = link.config.redacted();
            if auth {
                let thread = ["publishing", "subscribing"][self.thread];
                let user = link.config.user().unwrap_or("default");
                warn!(%relay, user, error = %e, held_back = self.held,
                    "relay: Redis refused the relay's credentials or their permissions ({thread}); \
                     check the user and password in the relay URL and the user's ACL");
            } else {
                warn!(%relay, error = %e, held_back = self.held, "{what}");
            }
            self.last = Some(now);
            self.held = 0;
        } else {
            self.held += 1;
        }
    }
}

pub(super) fn publisher_loop(link: &RelayLink, here: &Here) {
    let frames = format!("{}:frames", link.config.prefix);
    let last = format!("{}:last", link.config.prefix);
    let state = format!("{}:state", link.config.prefix);
    let commands = format!("{}:commands", link.config.prefix);
    let mut complaints = Complaints::new(0);
    let mut backoff = BACKOFF_FIRST;
    // An origin starting clears the last values (and group states) an earlier run left.
    let mut stale = link.role == RelayRole::Origin;
    while !link.stop.load(Relaxed) {
        let opened = Conn::open(&link.dialer, link.config.auth()).and_then(|mut c| {
            if stale {
                let mut out = Vec::new();
                Conn::command(&mut out, &[b"DEL", last.as_bytes()]);
                c.send(&out)?;
                c.wait_reply(Duration::from_secs(5))?.ok()?;
            }
            Ok(c)
        });
        let mut conn = match opened {
            Ok(c) => c,
            Err(e) => {
                complaints.complain(link, "relay: cannot reach Redis (publishing)", &e);
                if !pause(link, backoff) {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        stale = false;
        link.set_up(0, true);
        backoff = BACKOFF_FIRST;
        let mut last_state: Option<Instant> = None;
        let mut pipe = Pipeline::default();
        loop {
            if link.stop.load(Relaxed) {
                return;
            }
            pipe.clear();
            let mut frames_sent = 0u64;
            let mut events = false;
            while let Some(item) = link.out.pop() {
                match item {
                    Outgoing::Frame(frame) => {
                        let msg = encode(&frame, here.broadcaster.epoch());
                        pipe.command(&[b"PUBLISH", frames.as_bytes(), &msg]);
                        let key = frame.channel().to_string();
                        if frame.forget() {
                            pipe.command(&[b"HDEL", last.as_bytes(), key.as_bytes()]);
                        } else if frame.retain() {
                            pipe.command(&[b"HSET", last.as_bytes(), key.as_bytes(), &msg]);
                        }
                        if let (true, Some(also)) = (frame.clears(), frame.also()) {
                            let also = also.to_string();
                            pipe.command(&[b"HDEL", last.as_bytes(), also.as_bytes()]);
                        }
                        // A group's current state, under `state:<group channel>`.
                        if let Some(also) = frame.also() {
                            let key = format!("state:{also}");
                            if frame.sets_state() {
                                pipe.command(&[b"HSET", last.as_bytes(), key.as_bytes(), &msg]);
                            } else if frame.ends_state() {
                                pipe.command(&[b"HDEL", last.as_bytes(), key.as_bytes()]);
                            }
                        }
                        events |= *frame.channel() == Channel::Events;
                        frames_sent += 1;
                    }
                    Outgoing::Command(cmd) => {
                        pipe.command(&[b"PUBLISH", commands.as_bytes(), cmd.as_bytes()]);
                        link.stats.commands_total.fetch_add(1, Relaxed);
                    }
                }
                if pipe.commands >= 512 {
                    break;
                }
            }
            // The origin's REST state, for relay-only instances' reads: after every event
            // (a topic or group changed) and once a second.
            let due = last_state.map_or(true, |t| t.elapsed() >= STATE_EVERY);
            if link.role == RelayRole::Origin && (events || due) {
                if let Some(doc) = state_document(&*here.web.api()) {
                    pipe.command(&[b"PUBLISH", state.as_bytes(), doc.as_bytes()]);
                    pipe.command(&[b"SET", state.as_bytes(), doc.as_bytes()]);
                }
                last_state = Some(Instant::now());
            }
            if pipe.commands == 0 {
                std::thread::park_timeout(POLL);
                continue;
            }
            match pipe.run(&mut conn) {
                Ok(()) => {
                    link.stats.published_total.fetch_add(frames_sent, Relaxed);
                }
                Err(e) => {
                    link.stats.dropped_total.fetch_add(frames_sent, Relaxed);
                    complaints.complain(link, "relay: lost Redis (publishing)", &e);
                    break;
                }
            }
        }
    }
}

/// `{"topics":[..],"groups":[..]}`, the origin's REST state, as its API lists it (`None`
/// without topic and group services).
fn state_document(api: &dyn Api) -> Option<String> {
    let topics = api.call(ApiRequest::ListTopics);
    let groups = api.call(ApiRequest::ListGroups);
    if !(topics.ok() && groups.ok()) {
        return None;
    }
    let (topics, groups) = (topics.body, groups.body);
    let mut doc = Vec::with_capacity(topics.len() + groups.len() + 24);
    doc.extend_from_slice(b"{\"topics\":");
    doc.extend_from_slice(&topics);
    doc.extend_from_slice(b",\"groups\":");
    doc.extend_from_slice(&groups);
    doc.push(b'}');
    String::from_utf8(doc).ok()
}

pub(super) fn subscriber_loop(link: &RelayLink, here: &Here) {
    let prefix = &link.config.prefix;
    let frames = format!("{prefix}:frames");
    let state = format!("{prefix}:state");
    let commands = format!("{prefix}:commands");
    let last = format!("{prefix}:last");
    let mut complaints = Complaints::new(1);
    let mut backoff = BACKOFF_FIRST;
    while !link.stop.load(Relaxed) {
        let result = (|| -> std::io::Result<()> {
            // Subscribe first, then read the stored values: nothing falls in between.
            let mut sub = Conn::open(&link.dialer, link.config.auth())?;
            let mut out = Vec::new();
            let mut channels: Vec<&[u8]> = vec![b"SUBSCRIBE", frames.as_bytes()];
            match link.role {
                RelayRole::Origin => channels.push(commands.as_bytes()),
                RelayRole::RelayOnly => channels.push(state.as_bytes()),
            }
            Conn::command(&mut out, &channels);
            sub.send(&out)?;
            // One confirmation per channel, or one error (no credentials, no permission).
            for _ in 1..channels.len() {
                sub.wait_reply(Duration::from_secs(5))?.ok()?;
            }
            let mut kv = Conn::open(&link.dialer, link.config.auth())?;
            let mut out = Vec::new();
            Conn::command(&mut out, &[b"HGETALL", last.as_bytes()]);
            Conn::command(&mut out, &[b"GET", state.as_bytes()]);
            kv.send(&out)?;
            let values = kv.wait_reply(Duration::from_secs(5))?.ok()?;
            let doc = kv.wait_reply(Duration::from_secs(5))?.ok()?;
            drop(kv);
            if let Reply::Array(Some(items)) = values {
                // Field, value, field, value: the values are relayed frames.
                for v in items.iter().skip(1).step_by(2) {
                    if let Reply::Bulk(Some(msg)) = v {
                        if let Some(r) = decode(msg) {
                            if r.epoch != here.broadcaster.epoch() {
                                here.broadcaster
                                    .inject(r.payload, r.epoch, r.seq, r.route(true));
                            }
                        }
                    }
                }
            }
            if let (RelayRole::RelayOnly, Reply::Bulk(Some(doc))) = (link.role, doc) {
                set_state(link, &doc);
            }
            link.set_up(1, true);
            info!(relay = %link.config.redacted(), "relay: subscribed");
            backoff = BACKOFF_FIRST;
            // A quiet channel and a Redis that stopped answering look alike: after KEEPALIVE
            // of silence, PING; no answer within another KEEPALIVE means reconnect.
            let mut heard = Instant::now();
            let mut pinged = false;
            loop {
                if link.stop.load(Relaxed) {
                    return Ok(());
                }
                let Some(reply) = sub.reply()? else {
                    if heard.elapsed() >= 2 * KEEPALIVE && pinged {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "Redis stopped answering",
                        ));
                    }
                    if heard.elapsed() >= KEEPALIVE && !pinged {
                        let mut ping = Vec::new();
                        Conn::command(&mut ping, &[b"PING"]);
                        sub.send(&ping)?;
                        pinged = true;
                    }
                    continue;
                };
                heard = Instant::now();
                pinged = false;
                // An error here answers the keepalive PING (an ACL without +ping, say).
                let Reply::Array(Some(parts)) = reply.ok()? else {
                    continue;
                };
                let [Reply::Bulk(Some(kind)), Reply::Bulk(Some(chan)), Reply::Bulk(Some(msg))] =
                    &parts[..]
                else {
                    continue;
                };
                if kind != b"message" {
                    continue;
                }
                if chan == frames.as_bytes() {
                    if let Some(r) = decode(msg) {
                        if r.epoch != here.broadcaster.epoch() {
                            here.broadcaster
                                .inject(r.payload, r.epoch, r.seq, r.route(false));
                            link.stats.received_total.fetch_add(1, Relaxed);
                        }
                    }
                } else if chan == state.as_bytes() {
                    set_state(link, msg);
                } else if chan == commands.as_bytes() {
                    link.stats.commands_total.fetch_add(1, Relaxed);
                    api::run_forwarded(&*here.web.api(), msg);
                }
            }
        })();
        if let Err(e) = result {
            complaints.complain(link, "relay: lost Redis (subscribing)", &e);
            if !pause(link, backoff) {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

fn set_state(link: &RelayLink, doc: &[u8]) {
    #[derive(serde::Deserialize)]
    struct Doc<'a> {
        #[serde(borrow)]
        topics: &'a serde_json::value::RawValue,
        #[serde(borrow)]
        groups: &'a serde_json::value::RawValue,
    }
    if let Ok(d) = serde_json::from_slice::<Doc<'_>>(doc) {
        let mut s = link.state.lock().unwrap_or_else(|e| e.into_inner());
        s.topics = Some(d.topics.get().to_owned());
        s.groups = Some(d.groups.get().to_owned());
    }
}
