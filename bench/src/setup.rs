//! Users, rooms and tokens for the scenarios: through the REST API like a
//! client (argon2 cost included), or, for the tens of thousands of idle
//! users, written straight to the deployment's store and given tokens
//! signed with its secret.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use common::accounts::config::AuthArgs;
use common::adapters::store::config::DbArgs;
use common::adapters::store::{Store, StoreSettings};
use common::domain::NewRoom;
use common::support::data_dir::DataDirArgs;
use common::support::problems::Problems;
use futures_util::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

/// Registrations in flight at once (the API queues argon2 work and answers
/// 429 beyond its queue, which is retried).
const REGISTER_CONCURRENCY: usize = 8;

#[derive(Clone)]
pub struct User {
    pub name: String,
    pub token: String,
}

/// A short random tag, so that runs against one deployment never collide.
pub fn run_tag() -> String {
    let mut b = [0u8; 3];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

pub fn http() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// Registers `names` through `POST /api/register`, a few at a time.
pub async fn register_all(
    http: &reqwest::Client,
    api: &str,
    names: Vec<String>,
) -> anyhow::Result<Vec<User>> {
    futures_util::stream::iter(names)
        .map(|name| register(http, api, name))
        .buffered(REGISTER_CONCURRENCY)
        .try_collect()
        .await
}

pub async fn register(http: &reqwest::Client, api: &str, name: String) -> anyhow::Result<User> {
    loop {
        let res = http
            .post(format!("{api}/api/register"))
            .json(&json!({ "user_name": name, "password": "bench-password" }))
            .send()
            .await?;
        if res.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let status = res.status();
        let body: Value = res.json().await?;
        let token = body["access_token"]
            .as_str()
            .with_context(|| format!("register {name}: {status} {body}"))?
            .to_owned();
        return Ok(User { name, token });
    }
}

/// A POST with the user's token; the JSON answer, or an error naming the status.
pub async fn post(
    http: &reqwest::Client,
    api: &str,
    path: &str,
    token: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let res = http
        .post(format!("{api}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    let status = res.status();
    let body: Value = res.json().await?;
    if !status.is_success() {
        bail!("{path}: {status} {body}");
    }
    Ok(body)
}

/// Creates a public room owned by `owner` and makes `members` join it.
pub async fn room_with(
    http: &reqwest::Client,
    api: &str,
    name: &str,
    owner: &User,
    members: &[User],
) -> anyhow::Result<i64> {
    let created = post(
        http,
        api,
        "/api/room/create",
        &owner.token,
        json!({ "room_name": name }),
    )
    .await?;
    let room = created["room_id"].as_i64().context("room_id")?;
    futures_util::stream::iter(members.iter().filter(|m| m.name != owner.name))
        .map(|m| {
            post(
                http,
                api,
                "/api/room/join_public",
                &m.token,
                json!({ "room_id": room }),
            )
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(room)
}

/// Where the deployment keeps its users and which secret signs its tokens:
/// the same settings, read from the same environment, as `komunikator`.
#[derive(Args, Clone, Debug)]
pub struct Direct {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub data: DataDirArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
}

impl Direct {
    /// The deployment's store and its token secret.
    async fn open(&self) -> anyhow::Result<(Store, String)> {
        let mut problems = Problems::default();
        let settings = self
            .db
            .mysql(&mut problems)
            .unwrap_or(StoreSettings::Sqlite {
                path: self.data.sqlite_path(),
            });
        problems.into_result().map_err(anyhow::Error::msg)?;
        let secret = match &self.auth.jwt_secret_key {
            Some(secret) => secret.clone(),
            None if !self.db.is_set() => self.data.jwt_secret()?,
            None => bail!("JWT_SECRET_KEY is needed to sign tokens for a MySQL deployment"),
        };
        Ok((Store::connect(&settings).await?, secret))
    }

    /// `n` more public rooms owned by `owner`.
    pub async fn rooms(&self, owner: &str, n: usize) -> anyhow::Result<Vec<i64>> {
        let (store, _) = self.open().await?;
        let mut rooms = Vec::with_capacity(n);
        for i in 0..n {
            let room = NewRoom {
                name: format!("{owner} room {i}"),
                owner: owner.to_owned(),
                access_key: None,
            };
            rooms.push(
                store
                    .create_room(&room, chrono::Utc::now().naive_utc())
                    .await?,
            );
        }
        Ok(rooms)
    }

    /// Writes `names` to the store (each with the same argon2id hash of
    /// "bench-password"), all members of one new public room owned by the
    /// first, and signs a token for each. Returns the users and the room.
    pub async fn seed(&self, names: Vec<String>) -> anyhow::Result<(Vec<User>, i64)> {
        anyhow::ensure!(!names.is_empty(), "nobody to seed");
        let (store, secret) = self.open().await?;
        let hash = common::accounts::password::Passwords::new(1, 1)
            .hash("bench-password".to_owned())
            .await?;
        let tokens =
            common::accounts::tokens::Tokens::new(secret.as_bytes(), self.auth.token_ttl());
        futures_util::stream::iter(names.iter())
            .map(|name| store.create_user(name, &hash))
            .buffer_unordered(8)
            .try_collect::<Vec<_>>()
            .await?;
        let room = NewRoom {
            name: format!("{} and others", names[0]),
            owner: names[0].clone(),
            access_key: None,
        };
        let room = store
            .create_room(&room, chrono::Utc::now().naive_utc())
            .await?;
        futures_util::stream::iter(names.iter().skip(1))
            .map(|name| store.add_member(room, name))
            .buffer_unordered(8)
            .try_collect::<Vec<_>>()
            .await?;
        let users = names
            .into_iter()
            .map(|name| User {
                token: tokens.issue(&name, &hash, None),
                name,
            })
            .collect();
        Ok((users, room))
    }
}
