//! The smaller holes of the second security pass (docs/protocol.md, "Accounts
//! and abuse"): proxy error codes believed only from proxies, stored
//! password hashes that are trusted no further than their bounds, tokens
//! of earlier versions that expire, user names that cannot imitate one
//! another, private data files, and a web client that no other page can
//! frame or inject into.

use serde_json::json;

use crate::harness::{Backend, Options, TestApp, claims_for};
use crate::sio::{Auth, Socket};

/// An argon2 PHC string of `password` with the given variant and costs
/// (what an older server, or another tool, may have stored).
fn argon2_hash(algorithm: argon2::Algorithm, m_kib: u32, t: u32, password: &str) -> String {
    use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
    let params = argon2::Params::new(m_kib, t, 1, None).expect("params");
    let salt = [9u8; 16];
    let mut out = [0u8; 32];
    argon2::Argon2::new(algorithm, argon2::Version::V0x13, params.clone())
        .hash_password_into(password.as_bytes(), &salt, &mut out)
        .expect("hash");
    PasswordHash {
        algorithm: algorithm.ident(),
        version: Some(argon2::Version::V0x13.into()),
        params: ParamsString::try_from(&params).expect("params"),
        salt: Some(Salt::new(&salt).expect("salt")),
        hash: Some(Output::new(&out).expect("output")),
    }
    .to_string()
}

async fn set_password(app: &TestApp, user: &str, stored: &str) {
    app.sql(format!(
        "UPDATE users SET password = '{stored}' WHERE user_name = '{user}'"
    ))
    .await;
}

/// A row naming `m=4294967295` once made a login allocate 4 TiB and abort
/// the process. Costs beyond bounds are refused before any work: the login
/// fails like a wrong password and the server serves on.
async fn stored_hashes_beyond_the_cost_bounds_are_refused_unread(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [ann, bob] = app.users(["ann", "bob"]).await;
    let stored = app.stored_password(&ann.name).await;
    for (from, to) in [
        ("m=19456", "m=4294967295"),
        ("t=2", "t=4294967295"),
        ("p=1", "p=255"),
    ] {
        set_password(&app, &ann.name, &stored.replace(from, to)).await;
        let res = app.login(&ann.name, &ann.password).await;
        res.expect(401, "Invalid user credentials");
    }
    assert_eq!(app.get("/healthz", None).await.status, 200);
    assert_eq!(app.login(&bob.name, &bob.password).await.status, 200);
}

/// Hashes weaker than today's (argon2i, fewer costs) verify, and are
/// replaced by an argon2id hash at today's parameters on that login.
async fn weaker_stored_hashes_are_rehashed_on_login(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    for weak in [
        argon2_hash(argon2::Algorithm::Argon2i, 19456, 2, &ann.password),
        argon2_hash(argon2::Algorithm::Argon2id, 4096, 1, &ann.password),
    ] {
        set_password(&app, &ann.name, &weak).await;
        app.login(&ann.name, "wrong")
            .await
            .expect(401, "Invalid user credentials");
        assert_eq!(app.stored_password(&ann.name).await, weak);
        let res = app.login(&ann.name, &ann.password).await;
        assert_eq!(res.status, 200, "{res:?}");
        let stored = app.stored_password(&ann.name).await;
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "not rehashed: {stored}"
        );
        assert_eq!(app.login(&ann.name, &ann.password).await.status, 200);
    }
}

/// Only a value that is not a `$`-prefixed hash string is legacy plaintext:
/// a hash this build cannot verify matches nothing, least of all itself.
async fn a_stored_hash_of_another_scheme_is_never_compared_as_plaintext(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let pbkdf2 = "$pbkdf2-sha256$29000$N2ZMrqbFmXCx$9kbz8SgBUWpIwCvd8eGIwg";
    set_password(&app, &ann.name, pbkdf2).await;
    app.login(&ann.name, pbkdf2)
        .await
        .expect(401, "Invalid user credentials");
    assert_eq!(app.stored_password(&ann.name).await, pbkdf2);
}

/// Tokens of a version before password stamps cannot be revoked: each is
/// accepted for one access-token lifetime (900 s by default) from its
/// issue, whatever expiry it names.
async fn unstamped_tokens_last_one_lifetime_from_their_issue(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let now = chrono::Utc::now().timestamp();
    let issued = |ago: i64| {
        let mut claims = claims_for(&ann.name, 30 * 86_400);
        claims["iat"] = json!(now - ago);
        claims["nbf"] = json!(now - ago);
        app.sign(&claims)
    };
    let recent = issued(60);
    let old = issued(901);
    assert_eq!(
        app.get("/api/user/get_info", Some(&recent)).await.status,
        200
    );
    Socket::connect(app.gateway_url(0), Auth::Payload(&recent))
        .await
        .expect("a recent unstamped token connects");
    app.get("/api/user/get_info", Some(&old))
        .await
        .expect(401, "Token has expired");
    let refused = Socket::connect(app.gateway_url(0), Auth::Payload(&old)).await;
    assert_eq!(refused.err().as_deref(), Some("Unauthorized"));
}

/// Zero-width, bidirectional and other invisible format characters (Unicode
/// Cf) would let one name pass for another; compatibility spellings (full
/// width, ligatures) are the same name in NFKC, in which names are stored.
async fn user_names_cannot_imitate_one_another(backend: Backend) {
    let app = TestApp::start(backend).await;
    let stem = crate::harness::random_hex(3);
    let alice = format!("alice{stem}");
    assert_eq!(app.register(&alice, "pw-alice").await.status, 201);
    for invisible in [
        format!("alice{stem}\u{200b}"),
        format!("\u{202e}alice{stem}"),
        format!("ali\u{200d}ce{stem}"),
        format!("\u{feff}alice{stem}"),
        format!("alice\u{2066}{stem}"),
    ] {
        app.register(&invisible, "pw").await.expect(
            400,
            "user_name must not contain invisible formatting characters",
        );
    }
    // Full-width "ａｌｉｃｅ" is "alice" in NFKC: taken.
    let full_width: String = alice
        .chars()
        .map(|c| match c {
            'a'..='z' => char::from_u32(c as u32 - 'a' as u32 + 0xff41).expect("char"),
            c => c,
        })
        .collect();
    app.register(&full_width, "pw")
        .await
        .expect(409, "User Exists");
    // The compatibility spelling logs in as the stored name.
    let res = app.login(&full_width, "pw-alice").await;
    assert_eq!(res.status, 200, "{res:?}");
    // A new name in a compatibility spelling is registered in NFKC.
    let ligature = format!("\u{fb01}ona{stem}");
    let res = app.register(&ligature, "pw-fiona").await;
    assert_eq!(res.status, 201, "{res:?}");
    assert_eq!(
        app.scalar::<i64>(format!(
            "SELECT COUNT(*) FROM users WHERE user_name = 'fiona{stem}'"
        ))
        .await,
        1
    );
}

/// The client's page and the API reference may run only their own scripts
/// and talk only to their own origin, and no other site may frame them;
/// only the reference may style inline (Redoc's components do).
async fn the_web_client_is_served_with_a_strict_content_security_policy(backend: Backend) {
    let app = TestApp::start(backend).await;
    let reference = [
        "/api/docs",
        "/api/docs/init.js",
        "/api/docs/redoc.standalone.js",
    ];
    for path in ["/", "/app.js", "/style.css"].into_iter().chain(reference) {
        let res = app.get(path, None).await;
        assert_eq!(res.status, 200, "{path}");
        let header = |name: &str| {
            res.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let csp = header("content-security-policy");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        let relaxed = if reference.contains(&path) {
            csp.replace("style-src 'self' 'unsafe-inline'", "")
        } else {
            csp.clone()
        };
        assert!(!relaxed.contains("unsafe"), "{path}: {csp}");
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
    }
    // The reference page loads its scripts from this origin only (the
    // bundle compiled in, no CDN) and the document from next to itself.
    let text = |path: &'static str| {
        let url = format!("{}{path}", app.base);
        async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client");
            let res = client.get(url).send().await.expect(path);
            res.text().await.expect(path)
        }
    };
    let html = text("/api/docs").await;
    assert!(!html.contains("//"), "{html}");
    for src in ["docs/redoc.standalone.js?v=", "docs/init.js"] {
        assert!(html.contains(&format!("src=\"{src}")), "{html}");
    }
    assert!(text("/api/docs/init.js").await.contains("'openapi.json'"));
    assert!(
        text("/api/docs/redoc.standalone.js")
            .await
            .contains("Redoc")
    );
}

/// The SQLite file holds every password hash and message, and the JWT
/// secret signs every token: 0600 files in a 0700 directory, created so
/// and tightened when an older install left them open.
#[tokio::test]
async fn embedded_data_files_are_readable_by_the_server_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let dir = std::env::temp_dir().join(format!("kom-perm-{}", crate::harness::random_hex(4)));
    let options = Options {
        data_dir: Some(dir.clone()),
        ..Options::default()
    };
    let check = |when: &str| {
        assert_eq!(mode(&dir), 0o700, "{when}: data directory");
        for file in [
            "komunikator.sqlite3",
            "komunikator.sqlite3-wal",
            "jwt_secret",
        ] {
            assert_eq!(mode(&dir.join(file)), 0o600, "{when}: {file}");
        }
    };
    let mut app = TestApp::start_with(Backend::Embedded, options.clone()).await;
    app.user("ann").await;
    check("a fresh install");
    assert_eq!(app.terminate().await, Some(0));
    drop(app);
    // An older install's permissions are tightened at the next start.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for file in ["komunikator.sqlite3", "jwt_secret"] {
        std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
    }
    let app = TestApp::start_with(Backend::Embedded, options).await;
    app.user("bob").await;
    check("an older install, restarted");
    drop(app);
    let _ = std::fs::remove_dir_all(&dir);
}

crate::on_both_stores!(
    stored_hashes_beyond_the_cost_bounds_are_refused_unread,
    weaker_stored_hashes_are_rehashed_on_login,
    a_stored_hash_of_another_scheme_is_never_compared_as_plaintext,
    unstamped_tokens_last_one_lifetime_from_their_issue,
    user_names_cannot_imitate_one_another,
    the_web_client_is_served_with_a_strict_content_security_policy,
);
