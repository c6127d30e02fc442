#![no_main]
//! Any bytes decode to a client message or an error, never a panic; whatever
//! decodes re-encodes to bytes that decode again.
use libfuzzer_sys::fuzz_target;
use plaza_shared::codec::binary;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = binary::decode_client(data) {
        let again = binary::encode_client(&msg);
        assert!(binary::decode_client(&again).is_ok(), "re-encoded {msg:?} does not decode");
    }
});
