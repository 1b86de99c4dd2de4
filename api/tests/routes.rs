//! The API in process: [`api::routes`] over SQLite and the in-process bus,
//! called with `tower::ServiceExt::oneshot`, no server, no socket. The
//! black-box suite (`komunikator/tests/api`) runs the binaries; this tier
//! checks the routes' rules in milliseconds, one request at a time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use common::accounts::password::Passwords;
use common::accounts::tokens::Tokens;
use common::adapters::bus::LocalBus;
use common::adapters::chat_log::ChatLog;
use common::adapters::chat_log::EmbeddedChatLog;
use common::adapters::counter::LocalCounter;
use common::adapters::presence::LocalPresence;
use common::adapters::store::{Store, StoreSettings};
use common::adapters::throttle::{Limit, LocalThrottle};
use common::domain::ChatDraft;
use common::domain::events::Events;
use common::domain::subjects::Subjects;
use serde_json::{Value, json};
use tower::ServiceExt;

/// The routes over a fresh SQLite database, and where it lives.
struct Api {
    routes: Router,
    /// Where chat messages are stored, as the gateway appends them.
    chat_log: Arc<EmbeddedChatLog>,
    dir: std::path::PathBuf,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Api {
    async fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "komunikator-api-{}",
            common::support::random_hex(8)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let settings = StoreSettings::Sqlite {
            path: dir.join("api.sqlite3"),
        };
        let store = Store::connect(&settings).await.expect("SQLite");
        store.migrate().await.expect("migrated");
        let bus = LocalBus::new();
        let subjects = Subjects::new("test");
        let chat_log = Arc::new(EmbeddedChatLog::new(
            store.clone(),
            bus.clone(),
            subjects.clone(),
        ));
        let limit = Limit {
            max: 10,
            window: Duration::from_secs(60),
        };
        let routes = api::routes(api::Deps {
            store,
            events: Events::new(Arc::new(bus), subjects),
            chat_log: chat_log.clone(),
            presence: Arc::new(LocalPresence::new(Duration::from_secs(5))),
            tokens: Tokens::new(&[7; 32], Duration::from_secs(900)),
            passwords: Passwords::new(1, 16),
            room_list: api::room_list::RoomList::new(Arc::new(LocalCounter::default())),
            throttle: Arc::new(LocalThrottle::new(limit)),
            registrations: Arc::new(LocalThrottle::new(limit)),
            trusted_proxies: Vec::new(),
            refresh_ttl: Duration::from_secs(3600),
        });
        Self {
            routes,
            chat_log,
            dir,
        }
    }

    /// Stores a chat message of `user` in `room`, as a gateway does; its id.
    async fn send(&self, room_id: i64, user: &str, message: &str) -> i64 {
        let draft = ChatDraft {
            room_id,
            user_name: user.to_owned(),
            message: message.to_owned(),
            create_date: common::domain::now(),
        };
        self.chat_log.append(&draft).await.expect("stored")
    }

    /// One request, as a client at 127.0.0.1 sends it: the status and the
    /// JSON body (`Null` when there is none).
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 50_000))));
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .expect("request");
        let response = self
            .routes
            .clone()
            .oneshot(request)
            .await
            .expect("answered");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON body")
        };
        (status, body)
    }

    /// Ann and Bob registered (their tokens), and Ann's public room.
    async fn ann_bob_and_a_lobby() -> (Self, String, String, i64) {
        let api = Self::new().await;
        let ann = api.register("ann").await;
        let bob = api.register("bob").await;
        let room = api.create_room(&ann, "lobby", None).await;
        (api, ann, bob, room)
    }

    /// Registers `name`; its access token.
    async fn register(&self, name: &str) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/api/register",
                None,
                Some(json!({ "user_name": name, "password": "secret-1" })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["access_token"].as_str().expect("token").to_owned()
    }

    /// Creates a room as the bearer of `token`; its id.
    async fn create_room(&self, token: &str, name: &str, key: Option<&str>) -> i64 {
        let request = json!({ "room_name": name, "is_private": key.is_some(), "access_key": key });
        let (status, body) = self
            .call("POST", "/api/room/create", Some(token), Some(request))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["room_id"].as_i64().expect("room_id")
    }
}

/// An answer refusing a request: `status`, and the error's message.
fn refused(status: StatusCode, message: &str) -> (StatusCode, Value) {
    (status, json!({ "error": message }))
}

#[tokio::test]
async fn register_then_login_with_the_same_password_only() {
    let api = Api::new().await;
    api.register("ann").await;
    let login = |password: &'static str| {
        api.call(
            "POST",
            "/api/login",
            None,
            Some(json!({ "user_name": "ann", "password": password })),
        )
    };
    let (status, body) = login("secret-1").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["access_token"].is_string(), "{body}");
    assert_eq!(
        login("wrong").await,
        refused(StatusCode::UNAUTHORIZED, "Invalid user credentials")
    );
    let (status, body) = api
        .call(
            "POST",
            "/api/register",
            None,
            Some(json!({ "user_name": "ann", "password": "x-other" })),
        )
        .await;
    assert_eq!((status, body), refused(StatusCode::CONFLICT, "User Exists"));
}

#[tokio::test]
async fn a_private_rooms_key_is_shown_to_its_owner_only() {
    let api = Api::new().await;
    let ann = api.register("ann").await;
    let bob = api.register("bob").await;
    let room = api.create_room(&ann, "vault", Some("k3y")).await;
    let uri = format!("/api/room?room_id={room}");
    let (status, owner_view) = api.call("GET", &uri, Some(&ann), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(owner_view["access_key"], "k3y");
    // Not a member: as if it did not exist.
    let (status, body) = api.call("GET", &uri, Some(&bob), None).await;
    assert_eq!(
        (status, body),
        refused(StatusCode::NOT_FOUND, "Room not found")
    );
    let (status, _) = api
        .call(
            "POST",
            "/api/room/join_private",
            Some(&bob),
            Some(json!({ "access_key": "k3y" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, member_view) = api.call("GET", &uri, Some(&bob), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(member_view["access_key"], Value::Null, "{member_view}");
    // And the public list never shows it.
    let (_, rooms) = api.call("GET", "/api/rooms", None, None).await;
    assert_eq!(rooms, json!([]));
}

#[tokio::test]
async fn only_the_owner_kicks_and_only_members_are_kicked() {
    let (api, ann, bob, room) = Api::ann_bob_and_a_lobby().await;
    let join = json!({ "room_id": room });
    let (status, _) = api
        .call("POST", "/api/room/join_public", Some(&bob), Some(join))
        .await;
    assert_eq!(status, StatusCode::OK);
    let kick = async |token: &str, user: &str| {
        let body = json!({ "room_id": room, "user_to_kick": user });
        api.call("POST", "/api/user_kick", Some(token), Some(body))
            .await
    };
    assert_eq!(
        kick(&bob, "ann").await,
        refused(StatusCode::FORBIDDEN, "You are not the owner of this room")
    );
    assert_eq!(kick(&ann, "bob").await.0, StatusCode::OK);
    assert_eq!(
        kick(&ann, "bob").await,
        refused(StatusCode::NOT_FOUND, "User not in room")
    );
    let (_, members) = api
        .call("GET", &format!("/api/user_list?room_id={room}"), None, None)
        .await;
    assert_eq!(members, json!([{ "user_name": "ann", "room_id": room }]));
}

#[tokio::test]
async fn missing_parameters_and_bad_tokens_are_4xx() {
    let api = Api::new().await;
    let ann = api.register("ann").await;
    assert_eq!(
        api.call("GET", "/api/room", None, None).await,
        refused(StatusCode::BAD_REQUEST, "Missing room_id parameter")
    );
    let (status, _) = api
        .call("GET", "/api/user/get_info", Some("not-a-token"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, info) = api
        .call("GET", "/api/user/get_info", Some(&ann), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["message_count"], 0);
    let (status, body) = api
        .call(
            "POST",
            "/api/register",
            None,
            Some(json!({ "user_name": "bob" })),
        )
        .await;
    assert_eq!(
        (status, body),
        refused(StatusCode::BAD_REQUEST, "Missing Login or password")
    );
}

#[tokio::test]
async fn history_pages_back_from_the_newest_and_private_rooms_keep_theirs() {
    let (api, ann, bob, room) = Api::ann_bob_and_a_lobby().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(api.send(room, "ann", &format!("m{i}")).await);
    }
    let chat_ids = |body: &Value| -> Vec<i64> {
        body.as_array()
            .expect("a list")
            .iter()
            .map(|m| m["chat_id"].as_i64().expect("chat_id"))
            .collect()
    };
    // Anonymous readers may read a public room: oldest first.
    let (status, all) = api
        .call(
            "GET",
            &format!("/api/chat_history?room_id={room}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(chat_ids(&all), ids);
    assert_eq!(all[0]["message"], "m0");
    assert_eq!(all[0]["user_name"], "ann");
    // The newest two, then the two before them.
    let uri = format!("/api/chat_history?room_id={room}&limit=2");
    let (_, newest) = api.call("GET", &uri, None, None).await;
    assert_eq!(chat_ids(&newest), ids[3..]);
    let uri = format!("/api/chat_history?room_id={room}&limit=2&before={}", ids[3]);
    let (_, before) = api.call("GET", &uri, None, None).await;
    assert_eq!(chat_ids(&before), ids[1..3]);
    // A private room's history is its members' only.
    let private = api.create_room(&ann, "vault", Some("k")).await;
    api.send(private, "ann", "secret").await;
    let uri = format!("/api/chat_history?room_id={private}");
    assert_eq!(
        api.call("GET", &uri, Some(&ann), None).await.0,
        StatusCode::OK
    );
    for token in [None, Some(bob.as_str())] {
        assert_eq!(
            api.call("GET", &uri, token, None).await,
            refused(StatusCode::NOT_FOUND, "Room not found")
        );
    }
}

#[tokio::test]
async fn only_the_owner_edits_and_deletes_and_a_deleted_room_is_gone() {
    let (api, ann, bob, room) = Api::ann_bob_and_a_lobby().await;
    let edit = async |token: &str, body: Value| {
        api.call("POST", "/api/room/edit", Some(token), Some(body))
            .await
    };
    assert_eq!(
        edit(&bob, json!({ "room_id": room, "new_name": "mine" })).await,
        refused(StatusCode::FORBIDDEN, "You are not the owner of this room")
    );
    assert_eq!(
        edit(&ann, json!({ "room_id": room, "new_name": " " })).await,
        refused(StatusCode::BAD_REQUEST, "Room name cannot be empty")
    );
    assert_eq!(
        edit(
            &ann,
            json!({ "room_id": room, "new_name": "x", "is_private": true })
        )
        .await,
        refused(
            StatusCode::BAD_REQUEST,
            "Missing new_access_key parameter for private room"
        )
    );
    assert_eq!(
        edit(&ann, json!({ "room_id": room, "new_name": "renamed" }))
            .await
            .0,
        StatusCode::OK
    );
    let (_, rooms) = api.call("GET", "/api/rooms", None, None).await;
    assert_eq!(rooms[0]["room_name"], "renamed");
    api.send(room, "ann", "before the end").await;
    let delete = json!({ "room_id": room });
    assert_eq!(
        api.call("POST", "/api/room/delete", Some(&bob), Some(delete.clone()))
            .await,
        refused(StatusCode::NOT_FOUND, "Room not found"),
        "not the owner: as if it did not exist"
    );
    assert_eq!(
        api.call("POST", "/api/room/delete", Some(&ann), Some(delete))
            .await
            .0,
        StatusCode::OK
    );
    let uri = format!("/api/chat_history?room_id={room}");
    assert_eq!(
        api.call("GET", &uri, None, None).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, rooms) = api.call("GET", "/api/rooms", None, None).await;
    assert_eq!(rooms, json!([]));
}

#[tokio::test]
async fn joining_twice_and_leaving_a_room_one_is_not_in_are_refused() {
    let (api, _, bob, room) = Api::ann_bob_and_a_lobby().await;
    let body = json!({ "room_id": room });
    let call = async |path: &str| api.call("POST", path, Some(&bob), Some(body.clone())).await;
    assert_eq!(
        call("/api/room/leave").await,
        refused(StatusCode::NOT_FOUND, "User not in room")
    );
    assert_eq!(call("/api/room/join_public").await.0, StatusCode::OK);
    assert_eq!(
        call("/api/room/join_public").await,
        refused(StatusCode::BAD_REQUEST, "User already in room")
    );
    let (_, mine) = api.call("GET", "/api/user_rooms", Some(&bob), None).await;
    assert_eq!(mine.as_array().map(Vec::len), Some(1), "{mine}");
    assert_eq!(call("/api/room/leave").await.0, StatusCode::OK);
    let (_, mine) = api.call("GET", "/api/user_rooms", Some(&bob), None).await;
    assert_eq!(mine, json!([]));
}
