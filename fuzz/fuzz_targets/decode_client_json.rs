#![no_main]
//! Any bytes decode to a client message or an error, never a panic.
use libfuzzer_sys::fuzz_target;
use plaza_shared::ClientMessage;
use plaza_shared::codec::json;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = json::decode::<ClientMessage>(data) {
        let _ = msg.validate();
        let _ = json::encode(&msg);
    }
});
