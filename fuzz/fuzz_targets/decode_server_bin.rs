#![no_main]
//! Any bytes decode to a server message or an error, never a panic; whatever
//! decodes re-encodes to bytes that decode again.
use libfuzzer_sys::fuzz_target;
use plaza_shared::codec::binary;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = binary::decode_server(data) {
        let again = binary::encode_server(&msg);
        assert!(binary::decode_server(&again).is_ok(), "re-encoded {msg:?} does not decode");
    }
});
