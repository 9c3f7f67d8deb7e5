//! The signing items' old crate-root paths (deprecated in 0.2.0, hidden)
//! still compile and agree with `hookbus::signing`.
#![allow(deprecated)]

use std::time::Duration;

use hookbus::signing;

#[test]
fn old_root_signing_paths_still_work_and_agree_with_hookbus_signing() {
    let body = br#"{"text":"I said hello"}"#;
    assert_eq!(
        hookbus::sign_sha1(b"shh", body),
        signing::sign_sha1(b"shh", body)
    );
    assert_eq!(
        hookbus::sign_sha256(b"shh", body),
        signing::sign_sha256(b"shh", body)
    );
    let header = signing::sign_sha256(b"shh", body);
    assert!(hookbus::verify_signature(b"shh", body, &header));
    assert!(!hookbus::verify_signature(b"wrong", body, &header));

    let old: Duration = hookbus::DEFAULT_TOLERANCE;
    assert_eq!(old, signing::DEFAULT_TOLERANCE);

    let secret = hookbus::generate_secret();
    let key = hookbus::decode_standard_secret(&secret).unwrap();
    assert_eq!(key, signing::decode_standard_secret(&secret).unwrap());
    let ts = 1_700_000_000;
    let sig = hookbus::sign_standard(&key, "msg_1", ts, body);
    assert_eq!(sig, signing::sign_standard(&key, "msg_1", ts, body));
    let ts_s = ts.to_string();
    let headers = [
        ("webhook-id", "msg_1"),
        ("webhook-timestamp", ts_s.as_str()),
        ("webhook-signature", sig.as_str()),
    ];
    let tolerance = hookbus::DEFAULT_TOLERANCE;
    assert_eq!(
        hookbus::verify_standard_at(&secret, headers, body, tolerance, ts),
        Ok(())
    );
    assert_eq!(
        hookbus::verify_standard(&secret, headers, body, Duration::MAX),
        signing::verify_standard(&secret, headers, body, Duration::MAX)
    );

    // The old error type is the new one: values, variants and `?` mix.
    let old_err: hookbus::VerifyError = signing::VerifyError::Stale;
    assert_eq!(old_err, hookbus::VerifyError::Stale);
    assert_eq!(
        hookbus::verify_standard_at(&secret, headers, body, tolerance, ts + 301),
        Err(signing::VerifyError::Stale)
    );
    let bad: Result<(), signing::VerifyError> = hookbus::decode_standard_secret("whsec_!!!")
        .map(drop)
        .map_err(|e: hookbus::VerifyError| e);
    assert_eq!(bad, Err(signing::VerifyError::BadSecret));
}
