//! Secrets the launcher can fill into templates, and the masking of their values.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::Path;

use crate::{Error, Result};

/// Prefix of the environment variables that hold secrets: `FERRY_SECRET_TOKEN` is the secret
/// `TOKEN`.
pub const ENV_PREFIX: &str = "FERRY_SECRET_";

/// Secret values by name. `Debug` shows the names only.
#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Secrets {
    /// No secrets.
    pub fn new() -> Self {
        Self::default()
    }

    /// The secrets in this process's environment (`FERRY_SECRET_<NAME>`).
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars_os())
    }

    /// The secrets among `vars` (`FERRY_SECRET_<NAME>=value`); variables that are not valid
    /// UTF-8 are skipped.
    pub fn from_vars(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Self {
        let mut secrets = Secrets::new();
        for (k, v) in vars {
            let (Some(k), Some(v)) = (k.to_str(), v.to_str()) else {
                continue;
            };
            if let Some(name) = k.strip_prefix(ENV_PREFIX).filter(|n| !n.is_empty()) {
                secrets.insert(name, v);
            }
        }
        secrets
    }

    /// Reads a secrets file: either a JSON object of strings (`{"TOKEN": "…"}`) or `NAME=value`
    /// lines (blank lines and lines starting with `#` are ignored; the value is taken verbatim
    /// up to the end of the line).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: format!("cannot read secrets file {}", path.display()),
            source,
        })?;
        Self::parse(&text).map_err(|message| Error::SecretsFile {
            path: path.to_path_buf(),
            message,
        })
    }

    fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut secrets = Secrets::new();
        if text.trim_start().starts_with('{') {
            let map: BTreeMap<String, String> = serde_json::from_str(text).map_err(|e| {
                format!("not a JSON object of string values ({e}); expected {{\"NAME\": \"value\"}}")
            })?;
            for (k, v) in map {
                secrets.insert(k, v);
            }
            return Ok(secrets);
        }
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                return Err(format!("line {}: expected NAME=value", i + 1));
            };
            let name = name.trim();
            if name.is_empty() {
                return Err(format!("line {}: the secret has no name", i + 1));
            }
            secrets.insert(name, value);
        }
        Ok(secrets)
    }

    /// Adds or replaces one secret.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.values.insert(name.into(), value.into());
    }

    /// Adds `other`'s secrets; on a name in both, `other` wins.
    pub fn extend(&mut self, other: Secrets) {
        self.values.extend(other.values);
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// A masker for every value held.
    pub fn masker(&self) -> Masker {
        Masker::new(self.values.values().map(String::as_str))
    }
}

/// What a masked secret value is replaced with.
pub const MASK: &str = "****";

/// The largest cut ≤ `at` that does not split a UTF-8 character (or `at` if the bytes are not
/// UTF-8 there).
pub fn char_boundary(bytes: &[u8], at: usize) -> usize {
    (at.saturating_sub(3)..=at)
        .rev()
        .find(|&i| i == 0 || i >= bytes.len() || (bytes[i] & 0xC0) != 0x80)
        .filter(|&i| i > 0)
        .unwrap_or(at)
}

/// Replaces every occurrence of known secret values with [`MASK`].
#[derive(Clone, Default)]
pub struct Masker {
    /// Longest first, so that a secret containing another is masked whole.
    values: Vec<Vec<u8>>,
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Masker({} values)", self.values.len())
    }
}

/// Shortest line of a multi-line secret that is masked on its own: shorter ones (a lone `}`
/// or `==`) would mask ordinary output everywhere.
pub const MIN_LINE_MASKED: usize = 4;

impl Masker {
    /// Masks every value whole. A task's output is masked line by line, so a value of several
    /// lines (a PEM key, a JSON credential) can never be found whole in it: each of its lines of
    /// at least [`MIN_LINE_MASKED`] bytes (surrounding blanks apart) is masked on its own too.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut masked: Vec<Vec<u8>> = Vec::new();
        for v in values.into_iter().filter(|v| !v.is_empty()) {
            masked.push(v.as_bytes().to_vec());
            if v.contains('\n') {
                masked.extend(
                    v.lines()
                        .map(str::trim)
                        .filter(|l| l.len() >= MIN_LINE_MASKED)
                        .map(|l| l.as_bytes().to_vec()),
                );
            }
        }
        let mut values = masked;
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Masker { values }
    }

    /// Length in bytes of the longest value (0 when there is none).
    pub fn max_len(&self) -> usize {
        self.values.first().map(Vec::len).unwrap_or(0)
    }

    pub fn mask_bytes(&self, input: &[u8]) -> Vec<u8> {
        if self.values.is_empty() {
            return input.to_vec();
        }
        let mut out = Vec::with_capacity(input.len());
        let mut i = 0;
        'outer: while i < input.len() {
            for v in &self.values {
                if input[i..].starts_with(v) {
                    out.extend_from_slice(MASK.as_bytes());
                    i += v.len();
                    continue 'outer;
                }
            }
            out.push(input[i]);
            i += 1;
        }
        out
    }

    /// Where to cut `input` at or before `at` (at a character boundary) so that no secret
    /// masking would find spans the cut: before the first occurrence that would, or after it
    /// when it starts at 0. Looks at most [`Self::max_len`] bytes past `at`.
    pub fn safe_cut(&self, input: &[u8], at: usize) -> usize {
        let mut i = 0;
        // The end of the last occurrence before the cut: stepping back to a character boundary
        // must not go into it.
        let mut matched = 0;
        'outer: while i < at.min(input.len()) {
            for v in &self.values {
                if input[i..].starts_with(v) {
                    if i + v.len() > at {
                        return if i > 0 { i } else { v.len() };
                    }
                    i += v.len();
                    matched = i;
                    continue 'outer;
                }
            }
            i += 1;
        }
        char_boundary(input, at).max(matched)
    }

    pub fn mask(&self, input: &str) -> String {
        if self.values.is_empty() {
            return input.to_string();
        }
        // Secrets are whole UTF-8 strings, so masking cannot split a character.
        String::from_utf8_lossy(&self.mask_bytes(input.as_bytes())).into_owned()
    }

    /// Masks every string in a JSON value, object keys included.
    pub fn mask_json(&self, value: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        if self.values.is_empty() {
            return value;
        }
        match value {
            Value::String(s) => Value::String(self.mask(&s)),
            Value::Array(a) => Value::Array(a.into_iter().map(|v| self.mask_json(v)).collect()),
            Value::Object(o) => Value::Object(
                o.into_iter()
                    .map(|(k, v)| (self.mask(&k), self.mask_json(v)))
                    .collect(),
            ),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_never_steps_back_into_a_secret() {
        let m = Masker::new(["SECRET"]);
        // Continuation bytes after the secret would move a cut at 8 back to 6, inside it.
        let input = b"SECRET\x80\x80\x80\x80";
        let cut = m.safe_cut(input, 8);
        assert!(cut >= 6, "{cut}");
        // A secret across the cut: cut before it.
        assert_eq!(m.safe_cut(b"0123SECRET", 6), 4);
    }

    #[test]
    fn secrets_come_from_prefixed_variables_only() {
        let s = Secrets::from_vars([
            ("FERRY_SECRET_TOKEN".into(), "abc".into()),
            ("FERRY_SECRET_".into(), "nameless".into()),
            ("PATH".into(), "/bin".into()),
        ]);
        assert_eq!(s.get("TOKEN"), Some("abc"));
        assert_eq!(s.len(), 1);
        assert!(!format!("{s:?}").contains("abc"));
    }

    #[test]
    fn secrets_files_accept_lines_and_json() {
        let s = Secrets::parse("# comment\nA=1\n\nB = two=2\n").unwrap();
        assert_eq!(s.get("A"), Some("1"));
        assert_eq!(s.get("B"), Some(" two=2"));
        let s = Secrets::parse(r#"{"X": "y"}"#).unwrap();
        assert_eq!(s.get("X"), Some("y"));
        let err = Secrets::parse("A=1\nnonsense\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(Secrets::parse(r#"{"X": 1}"#).is_err());
    }

    #[test]
    fn each_line_of_a_multi_line_secret_is_masked_on_its_own() {
        let key = "-----BEGIN KEY-----\r\n  MIIBOgIBAAJBAKj34  \n}\nAB\n-----END KEY-----\n";
        let m = Masker::new([key]);
        assert_eq!(m.mask(key), "****");
        assert_eq!(m.mask("  MIIBOgIBAAJBAKj34"), "  ****");
        assert_eq!(m.mask("-----END KEY-----"), "****");
        // Lines too short to be told from ordinary output are left.
        assert_eq!(m.mask("{ AB }"), "{ AB }");
        // A one-line secret is masked whole only.
        assert_eq!(Masker::new(["abcdef"]).mask("abc abcdef"), "abc ****");
    }

    #[test]
    fn every_occurrence_is_masked_longest_first() {
        let m = Masker::new(["abc", "abcdef", ""]);
        assert_eq!(m.mask("x abcdef abc abcabc"), "x **** **** ********");
        assert_eq!(m.max_len(), 6);
        let v = m.mask_json(serde_json::json!({"k-abc": ["abc", 1, {"n": "zabcz"}]}));
        assert_eq!(v, serde_json::json!({"k-****": ["****", 1, {"n": "z****z"}]}));
        assert_eq!(Masker::default().mask("abc"), "abc");
    }
}
