//! A registration flood costs bounded memory: argon2's 19 MiB of working
//! memory is reused by a fixed pool of hashing threads, not allocated per
//! hash and kept by the allocator once per thread that ever hashed.

use futures_util::StreamExt;

use crate::harness::{Backend, TestApp, random_hex};

/// The contract's bound: a pod with a 256 MiB limit survives a flood.
const RSS_MAX_MIB: u64 = 128;

async fn a_registration_flood_costs_bounded_memory(backend: Backend) {
    let app = TestApp::start(backend).await;
    let before = app.main.rss_kib();
    let stem = random_hex(3);
    let answered: Vec<u16> = futures_util::stream::iter(0..400)
        .map(|i| {
            let app = &app;
            let stem = &stem;
            async move {
                app.register(&format!("flood{stem}{i}"), "correct horse battery")
                    .await
                    .status
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    // Every registration succeeded or was told to come back (the hashing
    // queue's bound): none failed.
    assert!(
        answered.iter().all(|s| *s == 201 || *s == 429),
        "{answered:?}"
    );
    assert!(answered.iter().filter(|s| **s == 201).count() >= 200);
    let after = app.main.rss_kib();
    eprintln!(
        "RSS before {} MiB, after 400 registrations {} MiB",
        before / 1024,
        after / 1024
    );
    assert!(
        after <= RSS_MAX_MIB * 1024,
        "RSS {} MiB after the flood (before: {} MiB)",
        after / 1024,
        before / 1024
    );
}

crate::on_both_stores!(a_registration_flood_costs_bounded_memory);
