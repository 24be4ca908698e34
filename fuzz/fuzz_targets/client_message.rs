//! The client-message parser (`protocol::parse_client_message`) and `Channel::parse` on
//! arbitrary bytes: no panic, a result independent of the scratch buffer's earlier contents,
//! and channel names that round-trip through `Display`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use takhin_monitor::fuzz_support::{parse_client_message, ClientMessage};
use takhin_monitor::{Channel, MAX_CHANNEL_LEN};

fn check_channel(name: &str) {
    if let Ok(channel) = Channel::parse(name) {
        assert!(
            name.len() <= MAX_CHANNEL_LEN,
            "accepted an over-long channel"
        );
        assert_eq!(channel.to_string(), name, "a channel does not round-trip");
        assert_eq!(Channel::parse(&channel.to_string()), Ok(channel));
    }
}

fuzz_target!(|data: &[u8]| {
    // A fresh scratch buffer, and one dirty with an earlier (longer) message, as a shard's is.
    let mut fresh = Vec::new();
    let first = parse_client_message(data, &mut fresh);
    let mut dirty = br#"{"type":"subscribe","data":["metrics","events","topic:x"]}"#.repeat(4);
    let second = parse_client_message(data, &mut dirty);
    assert_eq!(first, second, "the result depends on the scratch buffer");

    if first.is_some() {
        assert!(std::str::from_utf8(data).is_ok(), "accepted invalid UTF-8");
    }
    match &first {
        Some(ClientMessage::Subscribe(names) | ClientMessage::Unsubscribe(names)) => {
            names.iter().for_each(|n| check_channel(n));
        }
        Some(ClientMessage::Invalid(code, text)) => {
            assert!(!code.is_empty() && !text.is_empty());
        }
        _ => {}
    }

    // Channel::parse on the raw input as a name, too.
    if let Ok(text) = std::str::from_utf8(data) {
        check_channel(text);
    }
});
