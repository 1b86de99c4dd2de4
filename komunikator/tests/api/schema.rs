//! Migrations: a fresh install and an upgraded older database end in the same
//! schema without losing a row; the API refuses a schema it does not know;
//! every query shape the API makes has an index.

use serde_json::json;
use sqlx::{AssertSqlSafe, MySqlConnection, Row};

use crate::harness::{Backend, Options, TestApp, TestDb, random_hex, run_to_end, service_env};

/// The schema older Komunikator servers created (MySQL 8, utf8mb4), as in docs/architecture.md.
const LEGACY_SCHEMA: &str = "
CREATE TABLE users (user_name VARCHAR(48) PRIMARY KEY, password VARCHAR(128) NOT NULL)
    DEFAULT CHARSET = utf8mb4;
CREATE TABLE rooms (
    room_id INT AUTO_INCREMENT PRIMARY KEY,
    room_name VARCHAR(64) NOT NULL,
    room_owner VARCHAR(48),
    create_date DATETIME DEFAULT CURRENT_TIMESTAMP,
    is_private TINYINT(1) DEFAULT 0,
    access_key VARCHAR(64) UNIQUE,
    FOREIGN KEY (room_owner) REFERENCES users (user_name),
    CHECK (is_private = 1 AND access_key IS NOT NULL OR is_private = 0 AND access_key IS NULL)
) DEFAULT CHARSET = utf8mb4;
CREATE TABLE users_room (
    room_id INT, user_name VARCHAR(48), PRIMARY KEY (room_id, user_name),
    FOREIGN KEY (room_id) REFERENCES rooms (room_id),
    FOREIGN KEY (user_name) REFERENCES users (user_name)
) DEFAULT CHARSET = utf8mb4;
CREATE TABLE chat_history (
    message_id INT AUTO_INCREMENT PRIMARY KEY,
    room_id INT, user_name VARCHAR(48), message VARCHAR(1000),
    message_date DATETIME DEFAULT CURRENT_TIMESTAMP,
    FOREIGN KEY (room_id) REFERENCES rooms (room_id),
    FOREIGN KEY (user_name) REFERENCES users (user_name)
) DEFAULT CHARSET = utf8mb4;
";

const LEGACY_ROWS: &str = "
INSERT INTO users VALUES ('alice', 'alice-plain'), ('bob', 'bob-plain');
INSERT INTO rooms (room_id, room_name, room_owner, create_date, is_private, access_key) VALUES
    (7, 'lobby', 'alice', '2024-01-02 03:04:05', 0, NULL),
    (9, 'secret', 'alice', '2024-01-02 03:04:06', 1, 'sesame');
INSERT INTO users_room VALUES (7, 'alice'), (7, 'bob'), (9, 'alice');
INSERT INTO chat_history (message_id, room_id, user_name, message, message_date) VALUES
    (100, 7, 'alice', 'hello from 2024', '2024-01-02 03:05:00'),
    (205, 7, 'bob', 'zażółć 😀', '2024-01-02 03:06:00'),
    (300, 9, 'alice', 'private words', '2024-01-02 03:07:00');
";

async fn exec(conn: &mut MySqlConnection, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(conn)
        .await
        .expect("sql");
}

/// Columns and indexes of the Komunikator tables, comparable across databases.
async fn schema_of(conn: &mut MySqlConnection) -> Vec<String> {
    let columns = sqlx::query(
        "SELECT CONCAT_WS(' ', TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, \
         IFNULL(COLUMN_DEFAULT, '-'), EXTRA, IFNULL(CHARACTER_SET_NAME, '-')) AS d \
         FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
         AND TABLE_NAME <> '_sqlx_migrations'",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("columns");
    let indexes = sqlx::query(
        "SELECT CONCAT_WS(' ', TABLE_NAME, INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COLUMN_NAME) AS d \
         FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() \
         AND TABLE_NAME <> '_sqlx_migrations'",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("indexes");
    let mut all: Vec<String> = columns
        .iter()
        .chain(&indexes)
        .map(|r| r.get::<String, _>("d"))
        .collect();
    all.sort();
    all
}

async fn migrate(db: &TestDb) {
    let (code, out) = run_to_end(&["migrate"], &[("DATABASE_URL", db.url())]).await;
    assert_eq!(code, Some(0), "{out}");
}

/// A database as an older server left it, with its rows, then migrated;
/// and a connection to it.
async fn upgraded_legacy_database() -> (TestDb, MySqlConnection) {
    let legacy = TestDb::create().await;
    let mut conn = legacy.connect().await;
    exec(&mut conn, LEGACY_SCHEMA).await;
    exec(&mut conn, LEGACY_ROWS).await;
    migrate(&legacy).await;
    (legacy, conn)
}

#[tokio::test]
async fn an_upgraded_legacy_database_matches_a_fresh_one_and_keeps_every_row() {
    let (legacy, mut conn) = upgraded_legacy_database().await;
    migrate(&legacy).await; // a second run has nothing to do

    let fresh = TestDb::create().await;
    migrate(&fresh).await;
    let upgraded_schema = schema_of(&mut conn).await;
    assert_eq!(upgraded_schema, schema_of(&mut fresh.connect().await).await);
    assert!(
        upgraded_schema
            .iter()
            .any(|c| c == "chat_history message_id bigint(20) NO - auto_increment -"),
        "{upgraded_schema:#?}"
    );

    for (table, rows) in [
        ("users", 2i64),
        ("rooms", 2),
        ("users_room", 3),
        ("chat_history", 3),
    ] {
        let count: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(&mut conn)
            .await
            .expect("count");
        assert_eq!(count, rows, "{table}");
    }
}

#[tokio::test]
async fn the_api_serves_an_upgraded_legacy_database() {
    let (legacy, mut conn) = upgraded_legacy_database().await;
    let options = Options::default().with("DATABASE_URL", legacy.url());
    let app = TestApp::start_with(Backend::MySql, options).await;

    // Old plaintext passwords log in once and are rehashed.
    let res = app.login("alice", "alice-plain").await;
    assert_eq!(res.status, 200, "{res:?}");
    let alice = res.body["access_token"].as_str().expect("token").to_owned();
    let stored: String = sqlx::query_scalar("SELECT password FROM users WHERE user_name = 'alice'")
        .fetch_one(&mut conn)
        .await
        .expect("password");
    assert!(stored.starts_with("$argon2id$"), "{stored}");

    // Old rooms, memberships and messages keep their ids and contents.
    let rooms = app.get("/api/rooms", None).await;
    assert_eq!(
        rooms.body,
        json!([{ "room_id": 7, "room_name": "lobby", "room_owner": "alice",
                 "create_date": "2024-01-02T03:04:05.000Z", "is_private": false, "access_key": null }])
    );
    let history = app.get("/api/chat_history?room_id=7", None).await;
    assert_eq!(
        history.body,
        json!([
            { "chat_id": 100, "room_id": 7, "user_name": "alice", "message": "hello from 2024",
              "create_date": "2024-01-02T03:05:00.000Z" },
            { "chat_id": 205, "room_id": 7, "user_name": "bob", "message": "zażółć 😀",
              "create_date": "2024-01-02T03:06:00.000Z" }
        ])
    );
    let secret = app.get("/api/room?room_id=9", Some(&alice)).await;
    assert_eq!(secret.body["access_key"], "sesame");
    app.get("/api/chat_history?room_id=9", None)
        .await
        .expect(404, "Room not found");

    // New rooms continue after the old ids.
    let res = app
        .post(
            "/api/room/create",
            Some(&alice),
            json!({ "room_name": "new", "is_private": false }),
        )
        .await;
    assert!(res.body["room_id"].as_i64().expect("room_id") > 9);
}

#[tokio::test]
async fn the_api_refuses_to_start_without_the_schema() {
    let db = TestDb::create().await;
    let env = service_env(&db, &random_hex(32));
    let (code, out) = run_to_end(&["api", "--listen", "127.0.0.1:0"], &env).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("run `komunikator migrate`"), "{out}");
}

#[tokio::test]
async fn the_api_refuses_a_schema_newer_than_it_knows() {
    let db = TestDb::create().await;
    migrate(&db).await;
    exec(
        &mut db.connect().await,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from the future', 1, x'00', 0)",
    )
    .await;
    let env = service_env(&db, &random_hex(32));
    let (code, out) = run_to_end(&["api", "--listen", "127.0.0.1:0"], &env).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("migration 99990101000000"), "{out}");
}

/// The query shapes of the store, each of which must be able to use an index.
const QUERY_SHAPES: &[&str] = &[
    "SELECT message_id FROM chat_history WHERE room_id = 1 AND message_id < 5 ORDER BY message_id DESC LIMIT 10",
    "SELECT COUNT(*) FROM chat_history WHERE user_name = 'a'",
    "SELECT room_id FROM users_room WHERE user_name = 'a'",
    "SELECT user_name FROM users_room WHERE room_id = 1",
    "SELECT COUNT(*) FROM rooms WHERE room_owner = 'a' AND is_private = 1",
    "SELECT room_id FROM rooms WHERE is_private = 0 ORDER BY room_id",
    "SELECT room_id FROM rooms WHERE access_key = 'k' AND is_private = 1",
    "SELECT password FROM users WHERE user_name = 'a'",
];

const SAMPLE_ROWS: &str = "
INSERT INTO users VALUES ('a', 'x'), ('b', 'x'), ('c', 'x');
INSERT INTO rooms (room_id, room_name, room_owner, is_private, access_key) VALUES
    (1, 'one', 'a', 0, NULL), (2, 'two', 'a', 1, 'k'), (3, 'three', 'b', 1, 'j');
INSERT INTO users_room VALUES (1, 'a'), (1, 'b'), (2, 'a'), (3, 'b'), (3, 'c');
INSERT INTO chat_history (room_id, user_name, message) VALUES
    (1, 'a', 'm'), (1, 'b', 'm'), (2, 'a', 'm'), (3, 'c', 'm');
";

#[tokio::test]
async fn every_query_shape_has_an_index_on_mysql() {
    let db = TestDb::create().await;
    migrate(&db).await;
    let mut conn = db.connect().await;
    // Plans on empty tables are degenerate ("impossible WHERE"): give them rows.
    exec(&mut conn, SAMPLE_ROWS).await;
    for query in QUERY_SHAPES {
        let plan = sqlx::query(AssertSqlSafe(format!("EXPLAIN {query}")))
            .fetch_all(&mut conn)
            .await
            .expect("explain");
        for row in plan {
            let keys: Option<String> = row.try_get("possible_keys").expect("possible_keys");
            assert!(keys.is_some(), "no index for: {query}");
        }
    }
}

#[tokio::test]
async fn every_query_shape_has_an_index_on_sqlite() {
    let app = TestApp::start(Backend::Embedded).await;
    let path = app
        .data_dir
        .as_ref()
        .expect("data dir")
        .join("komunikator.sqlite3");
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
        "sqlite://{}",
        path.display()
    ))
    .await
    .expect("sqlite");
    sqlx::raw_sql(SAMPLE_ROWS)
        .execute(&mut conn)
        .await
        .expect("sample rows");
    for query in QUERY_SHAPES {
        let plan = sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {query}")))
            .fetch_all(&mut conn)
            .await
            .expect("explain");
        for row in plan {
            let detail: String = row.get("detail");
            assert!(
                !detail.starts_with("SCAN") || detail.contains("INDEX"),
                "{query}: {detail}"
            );
        }
    }
}

#[tokio::test]
async fn embedded_data_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("kom-test-{}", random_hex(6)));
    let options = Options {
        data_dir: Some(dir.clone()),
        ..Options::default()
    };
    let mut app = TestApp::start_with(Backend::Embedded, options.clone()).await;
    let ann = app.user("ann").await;
    let room = app.as_user(&ann).create_room("kept", None).await;
    assert_eq!(app.terminate().await, Some(0));
    let secret = app.secret.clone();
    drop(app);

    let app = TestApp::start_with(Backend::Embedded, options).await;
    assert_eq!(app.secret, secret, "the generated JWT secret is kept");
    // The token issued before the restart still works.
    let rooms = app.get("/api/user_rooms", Some(&ann.token)).await;
    assert_eq!(rooms.body[0]["room_id"], room);
    let res = app.login(&ann.name, &ann.password).await;
    assert_eq!(res.status, 200);
    drop(app);
    std::fs::remove_dir_all(dir).expect("cleanup");
}
