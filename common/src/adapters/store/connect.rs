//! Opening the store: the pools of the engine its settings name.

use super::{Pools, Result, Store, StoreSettings, mysql, sqlite};

impl Store {
    /// Opens the store the settings name.
    pub async fn connect(settings: &StoreSettings) -> Result<Self> {
        let pools = match settings {
            StoreSettings::MySql {
                options,
                max_connections,
            } => Pools::MySql(mysql::connect(options, *max_connections).await?),
            StoreSettings::Sqlite { path } => {
                let (reader, writer) = sqlite::connect(path).await?;
                Pools::Sqlite { reader, writer }
            }
        };
        Ok(Self { pools })
    }
}
