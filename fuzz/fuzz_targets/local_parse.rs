//! `local::parse` (the `run --local` credentials file) on arbitrary text: every document is
//! loaded, rejected with a message, or refused as a whole, and never panics.

#![no_main]

use amr_credential_operator::api::validate;
use amr_credential_operator::local::parse;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((loaded, rejected)) = parse(text, Path::new("fuzz.yaml")) else {
        return;
    };
    for cred in loaded {
        assert_eq!(
            validate(&cred.name, &cred.spec).as_ref(),
            Ok(&cred.resolved)
        );
    }
    for r in rejected {
        assert!(!r.message.is_empty(), "a rejection without a reason");
    }
});
