//! Limits set per namespace (`NAME=N`, `*=N` for every namespace not named): the bytes of log
//! text or of output files a namespace's jobs may keep.

use std::collections::HashMap;

/// A limit for some namespaces, and one for every other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceLimits {
    /// By namespace.
    pub named: HashMap<String, u64>,
    /// For every namespace not named (`*=N`); `None`: no limit.
    pub others: Option<u64>,
}

impl NamespaceLimits {
    /// From `NAME=N` pairs, `*` for every namespace not named.
    pub fn new(pairs: impl IntoIterator<Item = (String, u64)>) -> Self {
        let mut q = NamespaceLimits::default();
        for (name, n) in pairs {
            if name == "*" {
                q.others = Some(n);
            } else {
                q.named.insert(name, n);
            }
        }
        q
    }

    /// The limit of `namespace`, if it has one.
    pub fn of(&self, namespace: &str) -> Option<u64> {
        self.named.get(namespace).copied().or(self.others)
    }

    pub fn is_empty(&self) -> bool {
        self.named.is_empty() && self.others.is_none()
    }
}

/// Parses `NAME=N`, N a whole number of `unit` (`tasks`, `bytes`): a flag's value parser.
/// `example` shows a valid value, e.g. `analytics=20 or *=50`.
pub fn parse<N: std::str::FromStr>(s: &str, unit: &str, example: &str) -> Result<(String, N), String> {
    let (name, n) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected NAME=N, e.g. {example}"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!(
            "`{s}`: the namespace is missing (NAME=N, or *=N for every namespace)"
        ));
    }
    let n = n
        .trim()
        .parse()
        .map_err(|_| format!("`{s}`: {n:?} is not a whole number of {unit}"))?;
    Ok((name.to_string(), n))
}

/// Parses `NAME=BYTES`, BYTES a whole number: a flag's value parser.
pub fn parse_bytes(s: &str) -> Result<(String, u64), String> {
    parse(s, "bytes", "analytics=1000000000 or *=100000000")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_limit_comes_before_the_star() {
        let q = NamespaceLimits::new([parse_bytes("a=10").unwrap(), parse_bytes("*=5").unwrap()]);
        assert_eq!((q.of("a"), q.of("b")), (Some(10), Some(5)));
        assert_eq!(NamespaceLimits::new([parse_bytes("a=10").unwrap()]).of("b"), None);
        assert!(parse_bytes("=3").unwrap_err().contains("namespace is missing"));
        assert!(parse_bytes("a=lots").unwrap_err().contains("whole number"));
        assert!(parse_bytes("a").unwrap_err().contains("NAME=N"));
    }
}
