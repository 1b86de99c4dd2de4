//! The schema: migrations, and the check that a service's database holds
//! exactly the migrations this build knows.

use super::{Result, Store, StoreError, migrator};

impl Store {
    /// Applies every pending migration.
    pub async fn migrate(&self) -> Result<()> {
        on_writer!(self, "migrate", |pool| migrator(pool).run(pool).await)?;
        Ok(())
    }

    /// Fails unless the database holds exactly the migrations this build knows.
    pub async fn check_schema(&self) -> Result<()> {
        let sql = "SELECT version, checksum FROM _sqlx_migrations WHERE success = 1 \
                   ORDER BY version";
        let (known, applied) = on_reader!(self, "check_schema", |pool| (
            migrator(pool),
            sqlx::query_as::<_, (i64, Vec<u8>)>(sql)
                .fetch_all(pool)
                .await
        ));
        let applied = applied.map_err(|e| {
            StoreError::Schema(format!(
                "cannot read the migration table ({e}); run `komunikator migrate` first"
            ))
        })?;
        compare_migrations(&known, &applied)
    }

    /// Answers when the database does.
    pub async fn ping(&self) -> Result<()> {
        on_reader!(self, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(drop))?;
        Ok(())
    }
}

/// Compares the migrations a database records with those this build embeds.
fn compare_migrations(known: &sqlx::migrate::Migrator, applied: &[(i64, Vec<u8>)]) -> Result<()> {
    let expected: Vec<(i64, &[u8])> = known
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| (m.version, m.checksum.as_ref()))
        .collect();
    if applied.is_empty() {
        return Err(StoreError::Schema(
            "the database has no Komunikator schema; run `komunikator migrate` first".into(),
        ));
    }
    for (version, checksum) in applied {
        match expected.iter().find(|(v, _)| v == version) {
            None => {
                return Err(StoreError::Schema(format!(
                    "the database has migration {version}, which this build does not know; \
                     upgrade Komunikator"
                )));
            }
            Some((_, c)) if *c != checksum.as_slice() => {
                return Err(StoreError::Schema(format!(
                    "migration {version} in the database differs from this build's"
                )));
            }
            Some(_) => {}
        }
    }
    if applied.len() < expected.len() {
        return Err(StoreError::Schema(
            "the database schema is older than this build; run `komunikator migrate`".into(),
        ));
    }
    Ok(())
}
