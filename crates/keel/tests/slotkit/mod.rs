//! What the slot tests share. Here: logical decoding plugins for consumers, the same with either: test_decoding
//! (text) where the build has it, pgoutput through a publication where it does not (PostgreSQL 16 from the
//! pgserver wheel). Both decode to the ids inserted into a table, so the same continuity checks run on every
//! major. `pgoutput` reads pgoutput's binary messages, `cdc` runs consumers and writers on a cluster, `cluster`
//! holds the cluster-level waits.
#![allow(dead_code)] // each test binary uses a different subset

pub mod cdc;
pub mod cluster;
pub mod pgoutput;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A logical decoding output plugin, with what a consumer needs to use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plugin {
    TestDecoding,
    /// pgoutput, protocol version 1, through this publication (which must exist before the first change that is
    /// decoded: PostgreSQL 16 and older look it up as of each change).
    PgOutput {
        publication: String,
    },
}

impl Plugin {
    /// test_decoding when the PostgreSQL in `bin_dir` has it, else pgoutput through `publication` (printing why).
    pub fn text_or_pgoutput(bin_dir: &Path, publication: &str) -> Plugin {
        if has_test_decoding(bin_dir) {
            Plugin::TestDecoding
        } else {
            eprintln!(
                "the PostgreSQL in {} has no test_decoding: using pgoutput with publication {publication}",
                bin_dir.display()
            );
            Plugin::PgOutput { publication: publication.to_string() }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Plugin::TestDecoding => "test_decoding",
            Plugin::PgOutput { .. } => "pgoutput",
        }
    }

    /// `SELECT count(*)` of the changes consumed from `slot` in the current database.
    pub fn consume_sql(&self, slot: &str) -> String {
        match self {
            Plugin::TestDecoding => format!("SELECT count(*) FROM pg_logical_slot_get_changes('{slot}', NULL, NULL)"),
            Plugin::PgOutput { publication } => format!(
                "SELECT count(*) FROM pg_logical_slot_get_binary_changes('{slot}', NULL, NULL, \
                 'proto_version', '1', 'publication_names', '{publication}')"
            ),
        }
    }

    /// The `CREATE PUBLICATION` pgoutput needs, over `tables` (e.g. `TABLE acked` or `ALL TABLES`).
    pub fn publication_sql(&self, tables: &str) -> Option<String> {
        match self {
            Plugin::TestDecoding => None,
            Plugin::PgOutput { publication } => Some(format!("CREATE PUBLICATION {publication} FOR {tables}")),
        }
    }

    /// The plugin options for `pg_recvlogical`.
    pub fn recvlogical_args(&self) -> Vec<String> {
        match self {
            Plugin::TestDecoding => Vec::new(),
            Plugin::PgOutput { publication } => {
                ["-o", "proto_version=1", "-o", &format!("publication_names={publication}")].map(String::from).to_vec()
            }
        }
    }

    /// The integer first column of each row inserted into `public.<table>`, in the order of a consumer's output.
    pub fn inserted_ids(&self, output: &[u8], table: &str) -> Result<Vec<i32>, String> {
        match self {
            Plugin::TestDecoding => {
                let prefix = format!("table public.{table}: INSERT: ");
                Ok(String::from_utf8_lossy(output)
                    .lines()
                    .filter_map(|l| l.strip_prefix(&prefix))
                    .filter_map(|cols| cols.split_once("]:").and_then(|(_, v)| v.split(' ').next()))
                    .filter_map(|v| v.parse().ok())
                    .collect())
            }
            Plugin::PgOutput { .. } => {
                let relation = format!("public.{table}");
                Ok(pgoutput::inserts(output)?
                    .into_iter()
                    .filter(|i| i.relation == relation)
                    .filter_map(|i| i.values.first().cloned().flatten().and_then(|v| v.parse().ok()))
                    .collect())
            }
        }
    }
}

/// Whether the PostgreSQL in `bin_dir` ships test_decoding (in `pg_config --pkglibdir`).
pub fn has_test_decoding(bin_dir: &Path) -> bool {
    let out = Command::new(bin_dir.join("pg_config"))
        .arg("--pkglibdir")
        .output()
        .unwrap_or_else(|e| panic!("run {}/pg_config: {e}", bin_dir.display()));
    assert!(out.status.success(), "pg_config --pkglibdir: {}", String::from_utf8_lossy(&out.stderr));
    Path::new(String::from_utf8_lossy(&out.stdout).trim()).join("test_decoding.so").exists()
}

/// A permanent logical slot and how to consume it.
#[derive(Debug, Clone)]
pub struct Stream {
    pub slot: String,
    pub database: String,
    pub plugin: Plugin,
}

/// How often each id inserted into `table` appears in the consumer output `files`.
pub fn decoded_ids(files: &[PathBuf], plugin: &Plugin, table: &str) -> BTreeMap<i32, usize> {
    let mut seen = BTreeMap::new();
    for f in files {
        let bytes = std::fs::read(f).unwrap_or_default();
        let ids = plugin.inserted_ids(&bytes, table).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for id in ids {
            *seen.entry(id).or_insert(0) += 1;
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_decoding_lines_give_the_first_column() {
        let out = b"BEGIN 750\ntable public.acked: INSERT: id[integer]:7\ntable public.other: INSERT: id[integer]:8\n\
                    table public.acked: INSERT: id[integer]:9 v[text]:'x'\nCOMMIT 750\n";
        assert_eq!(Plugin::TestDecoding.inserted_ids(out, "acked").unwrap(), [7, 9]);
    }
}
