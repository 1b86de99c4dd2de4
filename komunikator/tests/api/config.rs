//! Startup configuration: documented in `--help`, validated with every
//! problem reported at once, secrets only from the environment and never logged.

use crate::harness::{
    Backend, CONFIG_VARS, Options, TestApp, TestDb, nats_url, random_hex, redis_url, run_to_end,
};

#[tokio::test]
async fn help_documents_every_option_and_environment_variable() {
    let (code, top) = run_to_end(&["--help"], &[]).await;
    assert_eq!(code, Some(0));
    for command in ["api", "all", "migrate"] {
        assert!(top.contains(command), "{top}");
    }
    let (_, api) = run_to_end(&["api", "--help"], &[]).await;
    let (_, gateway) = run_to_end(&["gateway", "--help"], &[]).await;
    let (_, all) = run_to_end(&["all", "--help"], &[]).await;
    // Every variable the harness controls, in `all` and in the service it
    // configures; DATA_DIR is `all`'s alone, and the OpenTelemetry SDK's
    // standard variables are documented in the README.
    const GATEWAY_VARS: [&str; 3] = [
        "MAX_SOCKETS_PER_USER",
        "SOCKET_CONNECT_TIMEOUT_SECS",
        "PER_USER_EVENTS_MAX_SOCKETS",
    ];
    for var in CONFIG_VARS
        .iter()
        .filter(|v| **v != "DATA_DIR" && !v.starts_with("OTEL_"))
    {
        let (name, service) = if GATEWAY_VARS.contains(var) {
            ("gateway", &gateway)
        } else {
            ("api", &api)
        };
        assert!(
            service.contains(&format!("env: {var}")),
            "{name} --help lacks {var}:\n{service}"
        );
        assert!(
            all.contains(&format!("env: {var}")),
            "all --help lacks {var}:\n{all}"
        );
    }
    assert!(all.contains("env: DATA_DIR"), "{all}");
    // The contract's abuse limits are the defaults ("Accounts and abuse"):
    // the tests that exercise them shorten the timeouts, so the defaults
    // are pinned here.
    for (var, default) in [
        ("HEADER_READ_TIMEOUT_SECS", "10"),
        ("BODY_READ_TIMEOUT_SECS", "30"),
        ("LOGIN_ATTEMPTS_MAX", "10"),
        ("LOGIN_ATTEMPTS_WINDOW_SECS", "300"),
        ("REGISTRATIONS_PER_ADDRESS", "10"),
        ("REGISTRATIONS_WINDOW_SECS", "3600"),
        ("MAX_PENDING_CONNECTIONS_PER_ADDRESS", "256"),
    ] {
        let documented = format!("[env: {var}=] [default: {default}]");
        assert!(api.contains(&documented), "api --help lacks {documented}");
    }
    for (var, default) in [
        ("SOCKET_CONNECT_TIMEOUT_SECS", "10"),
        ("MAX_SOCKETS_PER_USER", "32"),
        ("PER_USER_EVENTS_MAX_SOCKETS", "200"),
    ] {
        let documented = format!("[env: {var}=] [default: {default}]");
        assert!(
            gateway.contains(&documented),
            "gateway --help lacks {documented}"
        );
    }
}

/// A short HS256 secret is recovered offline from one token; no service
/// starts with one, `all` included when the secret is given (only the one
/// `all` generates for itself is its own to choose).
#[tokio::test]
async fn a_jwt_secret_under_32_bytes_is_refused_at_startup() {
    let db = TestDb::create().await;
    let short = "x".repeat(31);
    for command in ["api", "gateway", "all"] {
        let env = [
            ("DATABASE_URL", db.url()),
            ("NATS_URL", nats_url()),
            ("REDIS_URL", redis_url()),
            ("JWT_SECRET_KEY", short.clone()),
        ];
        let (code, out) = run_to_end(&[command], &env).await;
        assert_eq!(code, Some(2), "{command}: {out}");
        assert!(
            out.contains("JWT_SECRET_KEY must be at least 32 bytes"),
            "{command}: {out}"
        );
        assert!(!out.contains(&short), "{command} echoed the secret: {out}");
    }
}

/// A setting whose least sensible value is 1 (a timeout, a limit, a
/// count) refuses 0 at startup, naming it, rather than taking 1 silently.
#[tokio::test]
async fn zero_is_refused_where_one_is_the_least() {
    for (command, variable) in [
        ("api", "LOGIN_ATTEMPTS_MAX"),
        ("api", "REGISTRATIONS_WINDOW_SECS"),
        ("api", "HEADER_READ_TIMEOUT_SECS"),
        ("gateway", "PING_INTERVAL_SECS"),
        ("gateway", "MESSAGE_RATE_BURST"),
        ("gateway", "NATS_STREAM_REPLICAS"),
        ("persister", "PERSIST_BATCH_MAX"),
        ("all", "DB_MAX_CONNECTIONS"),
    ] {
        let (code, out) = run_to_end(&[command], &[(variable, "0".into())]).await;
        assert_eq!(code, Some(2), "{command} {variable}=0: {out}");
        assert!(
            out.contains(&format!("<{variable}>")) && out.contains("0 is not in 1.."),
            "{command} {variable}=0: {out}"
        );
    }
}

#[tokio::test]
async fn api_without_configuration_reports_every_problem_at_once() {
    let (code, out) = run_to_end(&["api"], &[("PRESENCE_TIMEOUT_MS", "5".into())]).await;
    assert_eq!(code, Some(2), "{out}");
    for problem in [
        "JWT_SECRET_KEY is required",
        "DB_HOST or DATABASE_URL is required",
        "NATS_URL is required",
        "REDIS_URL is required",
        "PRESENCE_TIMEOUT_MS must be at least 100",
    ] {
        assert!(out.contains(problem), "missing `{problem}` in:\n{out}");
    }
}

#[tokio::test]
async fn secrets_on_the_command_line_are_refused() {
    let (code, out) = run_to_end(&["api", "--jwt-secret-key", "s3cr3t-value"], &[]).await;
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("set it in the environment (JWT_SECRET_KEY)"),
        "{out}"
    );
    assert!(!out.contains("s3cr3t-value"), "{out}");
    let (code, out) = run_to_end(&["migrate", "--db-password", "hunter2"], &[]).await;
    assert_eq!(code, Some(2), "{out}");
    assert!(!out.contains("hunter2"), "{out}");
}

#[tokio::test]
async fn all_on_mysql_requires_a_jwt_secret() {
    let (code, out) = run_to_end(&["all"], &[("DB_HOST", "127.0.0.1".into())]).await;
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("JWT_SECRET_KEY is required"), "{out}");
}

#[tokio::test]
async fn legacy_db_variables_configure_the_database() {
    let db = TestDb::create().await;
    let (code, out) = run_to_end(
        &["migrate"],
        &[
            ("DB_HOST", "127.0.0.1".into()),
            ("DB_USER", "root".into()),
            ("DB_NAME", db.name.clone()),
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    let secret = random_hex(32);
    let options = Options {
        env: vec![
            ("DATABASE_URL", String::new()),
            ("DB_HOST", "127.0.0.1".into()),
            ("DB_PORT", "3306".into()),
            ("DB_USER", "root".into()),
            ("DB_PASSWORD", String::new()),
            ("DB_NAME", db.name.clone()),
            ("JWT_SECRET_KEY", secret),
            ("NATS_URL", nats_url()),
            ("REDIS_URL", redis_url()),
        ],
        ..Options::default()
    };
    let app = TestApp::start_with(Backend::MySql, options).await;
    app.user("ann").await;
    // The user landed in the database named by DB_NAME.
    let mut conn = db.connect().await;
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(count, 1);
}

#[tokio::test]
async fn secrets_never_appear_in_the_logs() {
    let app = TestApp::start(Backend::MySql).await;
    let ann = app.user("ann").await;
    app.login(&ann.name, &ann.password).await;
    app.login(&ann.name, "wrong-pw-xyz").await;
    let logs = app.logs();
    for secret in [
        app.secret.as_str(),
        ann.password.as_str(),
        "wrong-pw-xyz",
        ann.token.as_str(),
    ] {
        assert!(!logs.contains(secret), "a secret was logged:\n{logs}");
    }
    let embedded = TestApp::start(Backend::Embedded).await;
    embedded.user("bob").await;
    assert!(
        !embedded.logs().contains(&embedded.secret),
        "{}",
        embedded.logs()
    );
    assert!(
        embedded.logs().contains("\"store\":\"SQLite at "),
        "{}",
        embedded.logs()
    );
}
