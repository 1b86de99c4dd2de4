//! Ready-made situations several tests start from: sockets of registered
//! users, and a room with a joined socket per user.

use super::{Backend, TestApp, User};
use crate::sio::{Auth, Socket};

/// A public room (`.0`) owned by the first of `N` users (`.1`), with one
/// socket per user (`.2`, in the same order) joined to it: destructure it
/// as `let Chat(room, [ann, bob], [mut a, mut b]) = app.chat(..).await;`.
pub struct Chat<const N: usize>(pub i64, pub [User; N], pub [Socket; N]);

impl TestApp {
    /// A socket of `user` on the first gateway, authenticated by its token.
    pub async fn socket(&self, user: &User) -> Socket {
        self.socket_on(0, user).await
    }

    /// A socket of `user` that takes presence in batches.
    pub async fn batched_socket(&self, user: &User) -> Socket {
        Socket::connect(self.gateway_url(0), Auth::Batched(&user.token))
            .await
            .expect("socket connects")
    }

    /// A socket of `user` on gateway `i`.
    pub async fn socket_on(&self, i: usize, user: &User) -> Socket {
        Socket::connect(self.gateway_url(i), Auth::Payload(&user.token))
            .await
            .expect("socket connects")
    }

    /// Users registered from `stems`, a public room `name` of the first,
    /// and a socket of each (spread over the gateways in turn: socket `i`
    /// on gateway `i % gateways`) that joined the room, one after the other.
    pub async fn chat<const N: usize>(&self, name: &str, stems: [&str; N]) -> Chat<N> {
        let users = self.users(stems).await;
        let room = self.as_user(&users[0]).create_room(name, None).await;
        self.joined_sockets(room, users).await
    }

    /// [`TestApp::chat`], the other users members of the room (joined over
    /// REST) before any socket connects.
    pub async fn chat_of_members<const N: usize>(&self, name: &str, stems: [&str; N]) -> Chat<N> {
        let users = self.users(stems).await;
        let room = self.as_user(&users[0]).create_room(name, None).await;
        for member in &users[1..] {
            self.as_user(member).join(room).await;
        }
        self.joined_sockets(room, users).await
    }

    async fn joined_sockets<const N: usize>(&self, room: i64, users: [User; N]) -> Chat<N> {
        let gateways = match self.backend {
            Backend::MySql => self.gateways.len(),
            Backend::Embedded => 1,
        };
        let mut sockets = Vec::with_capacity(N);
        for (i, user) in users.iter().enumerate() {
            sockets.push(self.socket_on(i % gateways, user).await);
        }
        for socket in &mut sockets {
            socket.join(room).await;
        }
        let sockets = sockets
            .try_into()
            .unwrap_or_else(|_| unreachable!("one socket per user"));
        Chat(room, users, sockets)
    }
}
