//! Any payload: `parse` must not panic, and any answer must fit in one
//! NOTIFY payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use powa_fleet_actors::protocol::{parse, MAX_CHANNEL, MAX_PAYLOAD};

fuzz_target!(|data: &[u8]| {
    let payload = String::from_utf8_lossy(data);
    match parse(&payload) {
        Ok(request) => {
            if let Some(channel) = request.reply_to.channel() {
                assert!(!channel.is_empty() && channel.len() <= MAX_CHANNEL);
            }
        }
        Err(rejection) => {
            if let Some((channel, answer)) = &rejection.reply {
                assert!(!channel.is_empty() && channel.len() <= MAX_CHANNEL);
                let encoded = answer.encode();
                assert!(encoded.len() <= MAX_PAYLOAD);
                assert!(!encoded.contains('\0'));
            }
        }
    }
});
