//! What a client does over REST, as typed calls: registering and logging
//! in, and what a user does to rooms (`app.as_user(&ann).join(room)`).
//! Each call sends the body a well-behaved client sends; tests of raw,
//! malformed or unusual requests build theirs with [`TestApp::post`].

use serde_json::{Value, json};

use super::{Resp, TestApp, random_hex};

/// A registered user.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub password: String,
    pub token: String,
}

/// A user stands for their name where one is asked for (`kick(room, &bob)`).
impl AsRef<str> for User {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

impl TestApp {
    /// `POST /api/register`.
    pub async fn register(&self, name: &str, password: &str) -> Resp {
        self.post(
            "/api/register",
            None,
            json!({ "user_name": name, "password": password }),
        )
        .await
    }

    /// `POST /api/login`.
    pub async fn login(&self, name: &str, password: &str) -> Resp {
        self.post(
            "/api/login",
            None,
            json!({ "user_name": name, "password": password }),
        )
        .await
    }

    /// Registers a user with a unique name starting with `stem`.
    pub async fn user(&self, stem: &str) -> User {
        let name = format!("{stem}_{}", random_hex(3));
        let password = format!("pw-{name}");
        let res = self.register(&name, &password).await;
        assert_eq!(res.status, 201, "{res:?}");
        let token = res.body["access_token"].as_str().expect("token").to_owned();
        User {
            name,
            password,
            token,
        }
    }

    /// Registers one user per stem, in order.
    pub async fn users<const N: usize>(&self, stems: [&str; N]) -> [User; N] {
        let mut users = Vec::with_capacity(N);
        for stem in stems {
            users.push(self.user(stem).await);
        }
        users
            .try_into()
            .unwrap_or_else(|_| unreachable!("one user per stem"))
    }

    /// What `user` does, with their token.
    pub fn as_user<'a>(&'a self, user: &'a User) -> Acting<'a> {
        Acting { app: self, user }
    }

    /// `GET /api/room` for `room`, as `viewer` or anonymously.
    pub async fn get_room(&self, room: i64, viewer: Option<&User>) -> Resp {
        self.get(&format!("/api/room?room_id={room}"), token_of(viewer))
            .await
    }

    /// `GET /api/user_list` for `room`, as `viewer` or anonymously.
    pub async fn user_list(&self, room: i64, viewer: Option<&User>) -> Resp {
        self.get(&format!("/api/user_list?room_id={room}"), token_of(viewer))
            .await
    }

    /// `GET /api/chat_history?<query>`, as `viewer` or anonymously.
    pub async fn chat_history(&self, query: &str, viewer: Option<&User>) -> Resp {
        self.get(&format!("/api/chat_history?{query}"), token_of(viewer))
            .await
    }

    /// The chat ids of `room`'s history (at most the newest 1000), read anonymously.
    pub async fn history_ids(&self, room: i64) -> Vec<i64> {
        self.chat_history(&format!("room_id={room}"), None)
            .await
            .chat_ids()
    }
}

fn token_of(viewer: Option<&User>) -> Option<&str> {
    viewer.map(|u| u.token.as_str())
}

/// A user acting over REST, made by [`TestApp::as_user`]. The plain calls
/// assert the success answer; the `try_` calls return the answer, for a
/// test that expects a refusal or looks at the body. A room id is anything
/// JSON, as clients may send a number or a numeric string.
pub struct Acting<'a> {
    app: &'a TestApp,
    user: &'a User,
}

impl Acting<'_> {
    async fn post(&self, path: &str, body: Value) -> Resp {
        self.app.post(path, Some(&self.user.token), body).await
    }

    async fn get(&self, path: &str) -> Resp {
        self.app.get(path, Some(&self.user.token)).await
    }

    /// Creates a room this user owns, private when `key` is given; its id.
    pub async fn create_room(&self, name: &str, key: Option<&str>) -> i64 {
        let res = self.try_create_room(name, key).await;
        res.expect_message("Room created successfully");
        res.body["room_id"].as_i64().expect("room_id")
    }

    pub async fn try_create_room(&self, name: &str, key: Option<&str>) -> Resp {
        self.post(
            "/api/room/create",
            json!({ "room_name": name, "is_private": key.is_some(), "access_key": key }),
        )
        .await
    }

    /// Joins a public room.
    pub async fn join(&self, room: impl Into<Value>) {
        self.try_join(room)
            .await
            .expect_message("Joined room successfully");
    }

    pub async fn try_join(&self, room: impl Into<Value>) -> Resp {
        self.post("/api/room/join_public", json!({ "room_id": room.into() }))
            .await
    }

    /// Joins the private room `key` opens.
    pub async fn join_private(&self, key: &str) {
        self.try_join_private(key)
            .await
            .expect_message("Joined room successfully");
    }

    pub async fn try_join_private(&self, key: &str) -> Resp {
        self.post("/api/room/join_private", json!({ "access_key": key }))
            .await
    }

    /// Leaves a room.
    pub async fn leave(&self, room: impl Into<Value>) {
        self.try_leave(room)
            .await
            .expect_message("Left room successfully");
    }

    pub async fn try_leave(&self, room: impl Into<Value>) -> Resp {
        self.post("/api/room/leave", json!({ "room_id": room.into() }))
            .await
    }

    /// Kicks `target` (a [`User`] or a name) out of a room this user owns.
    pub async fn kick(&self, room: impl Into<Value>, target: impl AsRef<str>) {
        self.try_kick(room, target)
            .await
            .expect_message("User kicked successfully");
    }

    pub async fn try_kick(&self, room: impl Into<Value>, target: impl AsRef<str>) -> Resp {
        self.post(
            "/api/user_kick",
            json!({ "room_id": room.into(), "user_to_kick": target.as_ref() }),
        )
        .await
    }

    /// Renames a room; makes it private with `key`, public without.
    pub async fn edit_room(&self, room: impl Into<Value>, name: &str, key: Option<&str>) {
        self.try_edit_room(room, name, key)
            .await
            .expect_message("Room edited successfully");
    }

    pub async fn try_edit_room(
        &self,
        room: impl Into<Value>,
        name: &str,
        key: Option<&str>,
    ) -> Resp {
        let mut body =
            json!({ "room_id": room.into(), "new_name": name, "is_private": key.is_some() });
        if let Some(key) = key {
            body["new_access_key"] = json!(key);
        }
        self.post("/api/room/edit", body).await
    }

    /// Deletes a room this user owns.
    pub async fn delete_room(&self, room: impl Into<Value>) {
        self.try_delete_room(room)
            .await
            .expect_message("Room deleted successfully");
    }

    pub async fn try_delete_room(&self, room: impl Into<Value>) -> Resp {
        self.post("/api/room/delete", json!({ "room_id": room.into() }))
            .await
    }

    /// `POST /api/user/change_password`.
    pub async fn change_password(&self, old: &str, new: &str) -> Resp {
        self.post(
            "/api/user/change_password",
            json!({ "old_password": old, "new_password": new }),
        )
        .await
    }

    /// The rooms this user is a member of (`GET /api/user_rooms`).
    pub async fn user_rooms(&self) -> Vec<Value> {
        self.get("/api/user_rooms").await.list()
    }

    /// This user's counters (`GET /api/user/get_info`).
    pub async fn info(&self) -> Value {
        self.get("/api/user/get_info").await.body
    }

    /// The online users sharing a room with this one (`GET /api/users/online`).
    pub async fn online(&self) -> Value {
        self.get("/api/users/online").await.body
    }
}
