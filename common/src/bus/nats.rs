//! The NATS adapter of the bus (core NATS subjects).

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{Bus, BusError, BusMessage, Subscription};

#[derive(Debug, Clone)]
pub struct NatsBus {
    client: async_nats::Client,
}

impl NatsBus {
    /// Connects to `url`; fails at once when the server is unreachable.
    pub async fn connect(url: &str, name: &str) -> Result<Self, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .connect(url)
            .await
            .map_err(|e| BusError::Connect(e.to_string()))?;
        Ok(Self { client })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, subject: String, payload: Bytes) -> Result<(), BusError> {
        self.client
            .publish(subject, payload)
            .await
            .map_err(|e| BusError::Publish(e.to_string()))
    }

    async fn subscribe(&self, subject: String) -> Result<Subscription, BusError> {
        let sub = self
            .client
            .subscribe(subject)
            .await
            .map_err(|e| BusError::Subscribe(e.to_string()))?;
        Ok(Box::pin(sub.map(|m| BusMessage {
            subject: m.subject.to_string(),
            payload: m.payload,
        })))
    }

    fn check_ready(&self) -> Result<(), BusError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err(BusError::NotConnected),
        }
    }
}
