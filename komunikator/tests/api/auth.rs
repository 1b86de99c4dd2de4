//! Registration, login, tokens and password changes.

use serde_json::json;

use crate::harness::{Backend, TestApp};

async fn register_answers_201_with_a_token_naming_the_user(backend: Backend) {
    let app = TestApp::start(backend).await;
    let res = app
        .post(
            "/api/register",
            None,
            json!({ "user_name": "ann", "password": "pw" }),
        )
        .await;
    assert_eq!(res.status, 201, "{res:?}");
    let token = res.body["access_token"].as_str().expect("token");
    let claims = decode_claims(token);
    assert_eq!(claims["sub"], "ann");
    assert_eq!(claims["type"], "access");
    let iat = claims["iat"].as_i64().expect("iat");
    assert_eq!(
        claims["exp"].as_i64(),
        Some(iat + 900),
        "15 minutes by default"
    );
    assert_eq!(claims["nbf"].as_i64(), Some(iat));
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
}

/// The claims part of a JWT, decoded without checking the signature (as web clients do).
fn decode_claims(token: &str) -> serde_json::Value {
    let part = token.split('.').nth(1).expect("claims");
    let mut padded = part.replace('-', "+").replace('_', "/");
    while padded.len() % 4 != 0 {
        padded.push('=');
    }
    let bytes = base64_decode(&padded);
    serde_json::from_slice(&bytes).expect("claims JSON")
}

fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    out
}

crate::on_both_stores!(register_answers_201_with_a_token_naming_the_user);
