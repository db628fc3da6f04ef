//! Output formats of the control commands, as patronictl prints them: `pretty` (a PrettyTable-style box, with
//! the cluster title written into the top rule), `tsv`, `json` (a list of objects in column order) and `yaml`
//! (the same list, keys sorted, as PyYAML's `safe_dump` prints it).

use serde_json::Value;

/// `-f/--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Pretty,
    Tsv,
    Json,
    #[value(alias = "yml")]
    Yaml,
}

/// A table: column names, rows of cells (strings, numbers, or objects such as tags), which columns are
/// right-aligned, and an optional title for the top rule (`" Cluster: batman (7372...) "`).
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    pub right: Vec<&'static str>,
    pub title: Option<String>,
}

impl Table {
    pub fn new(columns: &[&str]) -> Table {
        Table { columns: columns.iter().map(|c| c.to_string()).collect(), ..Table::default() }
    }

    /// Renders the table; the result ends with a newline.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Json => format!("{}\n", self.json()),
            Format::Yaml => yaml(&self.objects()),
            Format::Tsv => self.tsv(),
            Format::Pretty => self.pretty(),
        }
    }

    /// Whether the table lists a cluster (first column `Cluster`), which patronictl formats specially.
    fn lists_cluster(&self) -> bool {
        self.title.is_some() && self.columns.first().map(String::as_str) == Some("Cluster")
    }

    /// Cells as objects; with a title, empty cells are left out (patronictl does the same).
    fn objects(&self) -> Value {
        let rows = self.rows.iter().map(|row| {
            let obj = self
                .columns
                .iter()
                .zip(row)
                .filter(|(_, v)| self.title.is_none() || !is_empty(v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Value::Object(obj)
        });
        Value::Array(rows.collect())
    }

    /// JSON as Python's `json.dumps` prints it: `", "` and `": "` separators, keys in column order.
    fn json(&self) -> String {
        let rows: Vec<String> = self
            .rows
            .iter()
            .map(|row| {
                let fields: Vec<String> = self
                    .columns
                    .iter()
                    .zip(row)
                    .filter(|(_, v)| self.title.is_none() || !is_empty(v))
                    .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), python_json(v)))
                    .collect();
                format!("{{{}}}", fields.join(", "))
            })
            .collect();
        format!("[{}]", rows.join(", "))
    }

    fn tsv(&self) -> String {
        let mut out = self.columns.join("\t");
        out.push('\n');
        for row in &self.rows {
            let cells: Vec<String> = row.iter().map(|v| cell_text(v, true)).collect();
            out.push_str(&cells.join("\t"));
            out.push('\n');
        }
        out
    }

    fn pretty(&self) -> String {
        let skip = usize::from(self.lists_cluster());
        let columns = &self.columns[skip.min(self.columns.len())..];
        let rows: Vec<Vec<Vec<String>>> = self
            .rows
            .iter()
            .map(|row| {
                row.iter().skip(skip).map(|v| cell_text(v, false).split('\n').map(str::to_string).collect()).collect()
            })
            .collect();
        let mut widths: Vec<usize> = columns.iter().map(|c| width(c)).collect();
        for row in &rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.iter().map(|l| width(l)).max().unwrap_or(0));
                }
            }
        }
        let right: Vec<bool> = columns.iter().map(|c| self.right.contains(&c.as_str())).collect();
        let rule = {
            let parts: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
            format!("+{}+", parts.join("+"))
        };
        let line = |cells: &[&str]| {
            let parts: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let text = cells.get(i).copied().unwrap_or("");
                    let pad = " ".repeat(w.saturating_sub(width(text)));
                    if right[i] {
                        format!(" {pad}{text} ")
                    } else {
                        format!(" {text}{pad} ")
                    }
                })
                .collect();
            format!("|{}|", parts.join("|"))
        };
        let mut out = String::new();
        let top = match &self.title {
            // patronictl writes the title over the top rule, starting after the first `+`.
            Some(title) => {
                let rest: String = rule.chars().skip(title.chars().count() + 1).collect();
                format!("+{title}{rest}")
            }
            None => rule.clone(),
        };
        out.push_str(&top);
        out.push('\n');
        let header: Vec<&str> = columns.iter().map(String::as_str).collect();
        out.push_str(&line(&header));
        out.push('\n');
        out.push_str(&rule);
        out.push('\n');
        let every_row_ruled = rows.iter().any(|r| r.iter().any(|c| c.len() > 1));
        for row in &rows {
            let height = row.iter().map(Vec::len).max().unwrap_or(1);
            for l in 0..height {
                let cells: Vec<&str> = row.iter().map(|c| c.get(l).map(String::as_str).unwrap_or("")).collect();
                out.push_str(&line(&cells));
                out.push('\n');
            }
            if every_row_ruled {
                out.push_str(&rule);
                out.push('\n');
            }
        }
        if !every_row_ruled {
            out.push_str(&rule);
            out.push('\n');
        }
        out
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// JSON with Python's separators (`", "`, `": "`).
fn python_json(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("[{}]", a.iter().map(python_json).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => {
            let fields: Vec<String> =
                m.iter().map(|(k, v)| format!("{}: {}", Value::String(k.clone()), python_json(v))).collect();
            format!("{{{}}}", fields.join(", "))
        }
        other => other.to_string(),
    }
}

/// A cell as text: strings as they are, numbers as digits, objects (tags) as YAML, block style for `pretty`
/// and flow style (`{a: 1, b: true}`) for `tsv`.
pub fn cell_text(v: &Value, flow: bool) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Object(m) if m.is_empty() => String::new(),
        other if flow => flow_yaml(other),
        other => yaml(other).trim_end().to_string(),
    }
}

/// A value as block-style YAML (keys sorted), ending with a newline.
pub fn yaml(v: &Value) -> String {
    match serde_saphyr::to_string(v) {
        Ok(s) if s.ends_with('\n') => s,
        Ok(s) => format!("{s}\n"),
        // Serialising a JSON value cannot fail in practice; fall back to JSON, which is valid YAML.
        Err(_) => format!("{v}\n"),
    }
}

/// A value as flow-style YAML, e.g. `{clonefrom: true, replicatefrom: node1}`.
pub fn flow_yaml(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let fields: Vec<String> = m.iter().map(|(k, v)| format!("{}: {}", scalar(k), flow_yaml(v))).collect();
            format!("{{{}}}", fields.join(", "))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(flow_yaml).collect::<Vec<_>>().join(", ")),
        Value::String(s) => scalar(s),
        Value::Null => "null".to_string(),
        other => other.to_string(),
    }
}

/// A string as a YAML scalar: plain when it reads back as the same string, JSON-quoted otherwise.
fn scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '@'))
        && matches!(serde_saphyr::from_str::<Value>(s), Ok(Value::String(ref back)) if back == s);
    if plain {
        s.to_string()
    } else {
        Value::String(s.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Table {
        let mut t = Table::new(&["Cluster", "Member", "Host", "Role", "State", "TL", "Lag in MB"]);
        t.right = vec!["TL", "Lag in MB"];
        t.title = Some(" Cluster: batman (7372788412164034329) ".into());
        t.rows.push(vec![
            json!("batman"),
            json!("postgresql0"),
            json!("127.0.0.1:5432"),
            json!("Leader"),
            json!("running"),
            json!(1),
            json!(""),
        ]);
        t.rows.push(vec![
            json!("batman"),
            json!("postgresql1"),
            json!("127.0.0.1:5433"),
            json!("Replica"),
            json!("streaming"),
            json!(1),
            json!(0),
        ]);
        t
    }

    #[test]
    fn pretty_table_has_title_in_top_rule_and_right_aligned_numbers() {
        let out = sample().render(Format::Pretty);
        let expected = "\
+ Cluster: batman (7372788412164034329) -+-----------+----+-----------+
| Member      | Host           | Role    | State     | TL | Lag in MB |
+-------------+----------------+---------+-----------+----+-----------+
| postgresql0 | 127.0.0.1:5432 | Leader  | running   |  1 |           |
| postgresql1 | 127.0.0.1:5433 | Replica | streaming |  1 |         0 |
+-------------+----------------+---------+-----------+----+-----------+
";
        assert_eq!(out, expected, "\n{out}");
    }

    #[test]
    fn json_and_yaml_leave_out_empty_cells() {
        let t = sample();
        assert_eq!(
            t.render(Format::Json),
            "[{\"Cluster\": \"batman\", \"Member\": \"postgresql0\", \"Host\": \"127.0.0.1:5432\", \"Role\": \"Leader\", \
             \"State\": \"running\", \"TL\": 1}, {\"Cluster\": \"batman\", \"Member\": \"postgresql1\", \"Host\": \
             \"127.0.0.1:5433\", \"Role\": \"Replica\", \"State\": \"streaming\", \"TL\": 1, \"Lag in MB\": 0}]\n"
        );
        let y = t.render(Format::Yaml);
        let back: Value = serde_saphyr::from_str(&y).unwrap();
        assert_eq!(back[0]["Member"], json!("postgresql0"));
        assert!(back[0].get("Lag in MB").is_none());
        assert_eq!(back[1]["Lag in MB"], json!(0));
        assert!(y.starts_with("- Cluster: batman\n"), "{y}");
    }

    #[test]
    fn tsv_keeps_every_column() {
        let out = sample().render(Format::Tsv);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "Cluster\tMember\tHost\tRole\tState\tTL\tLag in MB");
        assert_eq!(lines[1], "batman\tpostgresql0\t127.0.0.1:5432\tLeader\trunning\t1\t");
    }

    #[test]
    fn multi_line_cells_rule_every_row() {
        let mut t = Table::new(&["A", "Tags"]);
        t.rows.push(vec![json!("x"), json!({"nofailover": true, "clonefrom": true})]);
        t.rows.push(vec![json!("y"), json!("")]);
        let out = t.render(Format::Pretty);
        let expected = "\
+---+------------------+
| A | Tags             |
+---+------------------+
| x | clonefrom: true  |
|   | nofailover: true |
+---+------------------+
| y |                  |
+---+------------------+
";
        assert_eq!(out, expected, "\n{out}");
        assert_eq!(
            cell_text(&json!({"nofailover": true, "replicatefrom": "n1"}), true),
            "{nofailover: true, replicatefrom: n1}"
        );
    }

    #[test]
    fn long_title_overruns_the_rule() {
        let mut t = Table::new(&["Cluster", "M"]);
        t.title = Some(" Cluster: a-very-long-name (x) ".into());
        t.rows.push(vec![json!("c"), json!("m")]);
        assert!(t.render(Format::Pretty).starts_with("+ Cluster: a-very-long-name (x) \n| M |"));
    }
}
