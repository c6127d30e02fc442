#![no_main]
//! Any bytes decode to a server message or an error, never a panic.
use libfuzzer_sys::fuzz_target;
use plaza_shared::ServerMessage;
use plaza_shared::codec::json;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = json::decode::<ServerMessage>(data) {
        let _ = json::encode(&msg);
    }
});
