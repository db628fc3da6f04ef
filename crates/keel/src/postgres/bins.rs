//! Finding PostgreSQL's programs and the major version they belong to.

use std::path::{Path, PathBuf};

/// The programs Keel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Postgres,
    Initdb,
    PgCtl,
    PgControldata,
    PgBasebackup,
    PgRewind,
}

impl Tool {
    pub const ALL: [Tool; 6] =
        [Tool::Postgres, Tool::Initdb, Tool::PgCtl, Tool::PgControldata, Tool::PgBasebackup, Tool::PgRewind];

    pub fn file_name(self) -> &'static str {
        match self {
            Tool::Postgres => "postgres",
            Tool::Initdb => "initdb",
            Tool::PgCtl => "pg_ctl",
            Tool::PgControldata => "pg_controldata",
            Tool::PgBasebackup => "pg_basebackup",
            Tool::PgRewind => "pg_rewind",
        }
    }
}

/// Why the binaries could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BinError {
    #[error("PostgreSQL binary {tool} not found in {dir}: set postgresql.bin_dir to the directory holding PostgreSQL's programs")]
    NotFound { tool: &'static str, dir: String },
    #[error("PostgreSQL binary {tool} not found in PATH: set postgresql.bin_dir to the directory holding PostgreSQL's programs")]
    NotInPath { tool: &'static str },
    #[error("could not run {path} --version: {source}; check postgresql.bin_dir")]
    Version { path: PathBuf, source: std::io::Error },
    #[error("{path} --version printed {output:?}, not a PostgreSQL version; check postgresql.bin_dir")]
    BadVersion { path: PathBuf, output: String },
    #[error("PostgreSQL {major} is not supported (Keel needs 13 or newer): point postgresql.bin_dir at a newer installation")]
    Unsupported { major: u32 },
}

/// PostgreSQL's programs in one installation, and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    /// The directory they came from.
    pub dir: PathBuf,
    /// Major version (`15`, `18`).
    pub major: u32,
    /// The full version text (`15.18 (Debian 15.18-0+deb12u1)`).
    pub version: String,
}

impl PgBinaries {
    /// Finds every [`Tool`] in `bin_dir` (or, when `None`, the first `PATH` directory holding `postgres`), and reads
    /// the version from `postgres --version`.
    pub fn find(bin_dir: Option<&Path>) -> Result<PgBinaries, BinError> {
        let dir = match bin_dir {
            Some(dir) => dir.to_path_buf(),
            None => find_in_path(Tool::Postgres.file_name())
                .ok_or(BinError::NotInPath { tool: Tool::Postgres.file_name() })?,
        };
        for tool in Tool::ALL {
            if !is_executable(&dir.join(tool.file_name())) {
                return Err(match bin_dir {
                    Some(_) => BinError::NotFound { tool: tool.file_name(), dir: dir.display().to_string() },
                    None => BinError::NotInPath { tool: tool.file_name() },
                });
            }
        }
        let postgres = dir.join(Tool::Postgres.file_name());
        let output = std::process::Command::new(&postgres)
            .arg("--version")
            .env_remove("LC_ALL")
            .env("LC_MESSAGES", "C")
            .output()
            .map_err(|source| BinError::Version { path: postgres.clone(), source })?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (major, version) = parse_version(&text)
            .ok_or_else(|| BinError::BadVersion { path: postgres.clone(), output: text.clone() })?;
        if major < 13 {
            return Err(BinError::Unsupported { major });
        }
        Ok(PgBinaries { dir, major, version })
    }

    /// The path of one program.
    pub fn path(&self, tool: Tool) -> PathBuf {
        self.dir.join(tool.file_name())
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|dir| is_executable(&dir.join(program)))
}

/// Reads `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` or `postgres (PostgreSQL) 18beta1`: the major
/// version and the version text after `(PostgreSQL) `.
pub fn parse_version(output: &str) -> Option<(u32, String)> {
    let line = output.lines().next()?.trim();
    let version = line
        .split_once("(PostgreSQL)")
        .map(|(_, v)| v.trim())
        .unwrap_or_else(|| line.split_whitespace().last().unwrap_or_default());
    let digits: String = version.chars().take_while(|c| c.is_ascii_digit()).collect();
    let major: u32 = digits.parse().ok()?;
    Some((major, version.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_versions() {
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some((15, "15.18 (Debian 15.18-0+deb12u1)".to_string()))
        );
        assert_eq!(parse_version("postgres (PostgreSQL) 18.6"), Some((18, "18.6".to_string())));
        assert_eq!(parse_version("postgres (PostgreSQL) 19beta1"), Some((19, "19beta1".to_string())));
        assert_eq!(parse_version("hello"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn missing_binaries_name_the_program_and_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let err = PgBinaries::find(Some(dir.path())).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "PostgreSQL binary postgres not found in {}: set postgresql.bin_dir to the directory holding \
                 PostgreSQL's programs",
                dir.path().display()
            )
        );
    }
}
