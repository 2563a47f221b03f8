//! `identity::claims::decode` on any text, and on any bytes as the payload of a JWT, so that
//! the JSON claims parser is reached as often as the splitting and base64 steps.

#![no_main]

use amr_credential_operator::identity::claims::decode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
    let payload = URL_SAFE_NO_PAD.encode(data);
    check(&format!("eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln"));
});

fn check(token: &str) {
    match decode(token) {
        Ok(claims) => {
            assert!(!claims.oid.is_empty(), "accepted a token without oid");
            assert!(claims.issued_at <= claims.expires_at, "issued after expiry");
        }
        // Messages are fixed sentences: a long token can never appear in one.
        Err(e) if token.len() > 80 => assert!(!e.to_string().contains(token)),
        Err(_) => {}
    }
}
