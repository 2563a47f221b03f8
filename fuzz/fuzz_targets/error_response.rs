//! `identity::transport::parse_error_body` on arbitrary status, Retry-After and body: the
//! description stays one short line and Retry-After is read only when it is whole seconds.
//!
//! Input layout: two bytes of status, then the Retry-After value up to the first newline,
//! then the body.

#![no_main]

use amr_credential_operator::identity::transport::parse_error_body;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [hi, lo, rest @ ..] = data else {
        return;
    };
    let status = u16::from_be_bytes([*hi, *lo]);
    let split = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
    let (header, body) = rest.split_at(split);
    let header = String::from_utf8_lossy(header);

    for retry_after in [None, Some(header.as_ref())] {
        let parsed = parse_error_body(status, retry_after, body);
        assert_eq!(parsed.status, status);
        assert!(!parsed.description.contains('\n'));
        assert!(parsed.description.chars().count() <= 200);
        let expected = retry_after.and_then(|v| v.trim().parse::<u64>().ok());
        assert_eq!(parsed.retry_after.map(|d| d.as_secs()), expected);
    }
});
