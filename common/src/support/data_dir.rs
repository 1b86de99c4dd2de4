//! The data directory of single-node mode (the SQLite database, the
//! generated JWT secret), private to the server's user and synced so that
//! what it holds survives a power loss.

use std::path::{Path, PathBuf};

use clap::Args;

/// The data directory of single-node mode.
#[derive(Debug, Clone, Args)]
pub struct DataDirArgs {
    /// Directory for the embedded defaults: the SQLite database and the
    /// generated JWT secret.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

impl DataDirArgs {
    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("komunikator.sqlite3")
    }

    /// The JWT secret kept in the data directory, created on first use.
    pub fn jwt_secret(&self) -> std::io::Result<String> {
        ensure_dir(&self.data_dir)?;
        let path = self.data_dir.join("jwt_secret");
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                }
                return Ok(s.trim().to_owned());
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let secret = crate::support::random_hex(32);
        write_private(&path, secret.as_bytes())?;
        sync_dir(&self.data_dir)?;
        Ok(secret)
    }

    pub fn ensure(&self) -> std::io::Result<()> {
        ensure_dir(&self.data_dir)
    }
}

fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    private_dir(dir)
}

/// Creates `dir` if missing, readable by the server's user only (0700),
/// and tightens it if it exists: it holds the database and the JWT secret.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{:o}", mode & 0o777),
                "data directory open to other users: made 0700"
            );
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Writes a file only its owner may read, and syncs it: a secret lost to
/// a power cut would log every user out. A file left empty by such a cut
/// (its creation kept, its data not) is written over.
#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Syncs a directory, so that a file just created in it survives a power loss.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    let _ = dir;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}
