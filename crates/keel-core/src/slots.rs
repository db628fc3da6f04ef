//! Replication slot names and policy.

/// Patroni's mapping from a member name to its physical slot name: lower case, `-` and `.` become `_`, any
/// other character outside `[a-z0-9_]` becomes `u` and its code point as four decimal digits, truncated to 63.
pub fn slot_name_from_member_name(member: &str) -> String {
    let mut out = String::new();
    for c in member.to_lowercase().chars() {
        match c {
            'a'..='z' | '0'..='9' | '_' => out.push(c),
            '-' | '.' => out.push('_'),
            other => out.push_str(&format!("u{:04}", other as u32)),
        }
    }
    out.chars().take(63).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_patroni() {
        assert_eq!(slot_name_from_member_name("Node-1.example.COM/x"), "node_1_example_comu0047x");
        assert_eq!(slot_name_from_member_name("ab@c"), "abu0064c");
        assert_eq!(slot_name_from_member_name(&"a".repeat(80)).len(), 63);
    }
}
