//! `keel history`: the store's `history` key as a table (TL, LSN, Reason, Timestamp, New Leader).

use clap::Args;
use keel_core::view::ClusterView;
use serde_json::json;

use crate::cli::ctl::{Ctl, CtlResult};
use crate::cli::output::{Format, Table};

#[derive(Debug, Args, Default)]
pub struct HistoryArgs {
    /// Cluster name (default: the configuration's scope).
    pub cluster_name: Option<String>,
    /// Output format.
    #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Pretty)]
    pub format: Format,
}

/// One row per history line; missing timestamp and new leader are empty cells.
pub fn history_table(view: &ClusterView) -> Table {
    let mut t = Table::new(&["TL", "LSN", "Reason", "Timestamp", "New Leader"]);
    t.right = vec!["TL", "LSN"];
    for h in &view.history {
        t.rows.push(vec![
            json!(h.timeline),
            json!(h.lsn.0),
            json!(h.reason),
            json!(h.timestamp.clone().unwrap_or_default()),
            json!(h.new_leader.clone().unwrap_or_default()),
        ]);
    }
    t
}

pub async fn history(ctl: &Ctl, args: &HistoryArgs) -> CtlResult {
    let view = ctl.load().await?;
    print!("{}", history_table(&view).render(args.format));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::view::RawEntry;

    #[test]
    fn history_rows() {
        let v = ClusterView::from_entries([RawEntry {
            key: "history".into(),
            value: r#"[[1,25165984,"no recovery target specified","2026-01-01T00:00:00+00:00","n2"],[2,50331648,"x"]]"#
                .into(),
            mod_revision: 1,
            lease: 0,
        }]);
        let out = history_table(&v).render(Format::Pretty);
        let expected = "\
+----+----------+------------------------------+---------------------------+------------+
| TL |      LSN | Reason                       | Timestamp                 | New Leader |
+----+----------+------------------------------+---------------------------+------------+
|  1 | 25165984 | no recovery target specified | 2026-01-01T00:00:00+00:00 | n2         |
|  2 | 50331648 | x                            |                           |            |
+----+----------+------------------------------+---------------------------+------------+
";
        assert_eq!(out, expected, "\n{out}");
        assert_eq!(
            history_table(&v).render(Format::Json),
            "[{\"TL\": 1, \"LSN\": 25165984, \"Reason\": \"no recovery target specified\", \"Timestamp\": \
             \"2026-01-01T00:00:00+00:00\", \"New Leader\": \"n2\"}, {\"TL\": 2, \"LSN\": 50331648, \"Reason\": \"x\", \
             \"Timestamp\": \"\", \"New Leader\": \"\"}]\n"
        );
    }
}
