//! Secrets the launcher can fill into templates, and the masking of their values.
//!
//! Secrets are read once, when the launcher starts: from its `FERRY_SECRET_<NAME>` variables
//! and from a secrets file. They live in the launcher's memory from then on; a task receives a
//! secret's value only where one of its templates names it (`{{ secret('NAME') }}`), never as
//! a variable of its own environment.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use serde::Deserialize;

use crate::{Error, Result};

/// Prefix of the environment variables that hold secrets: `FERRY_SECRET_TOKEN` is the secret
/// `TOKEN`.
pub const ENV_PREFIX: &str = "FERRY_SECRET_";

/// The shortest secret value accepted, in bytes. Every occurrence of a secret's value is
/// masked in everything the launcher sends; a value shorter than this (`abc`, `1234`) would
/// mask ordinary text everywhere and hide little, so the launcher refuses to start with one.
pub const MIN_SECRET_BYTES: usize = 8;

/// The largest secrets file read.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Which tasks may use a secret: those of one of `namespaces` (when given) and of one of
/// `flows` (when given). A secret without either is for every task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub namespaces: Option<BTreeSet<String>>,
    pub flows: Option<BTreeSet<String>>,
}

impl Scope {
    /// Whether a task of namespace `ns` and flow `flow` may use the secret. A task whose
    /// namespace or flow is not known is outside every scope that names some.
    pub fn admits(&self, task: &TaskScope<'_>) -> bool {
        let fits = |allowed: &Option<BTreeSet<String>>, what: Option<&str>| match allowed {
            None => true,
            Some(set) => what.is_some_and(|w| set.contains(w)),
        };
        fits(&self.namespaces, task.namespace) && fits(&self.flows, task.flow)
    }

    fn is_open(&self) -> bool {
        self.namespaces.is_none() && self.flows.is_none()
    }
}

/// What the launcher knows of the task asking for a secret.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskScope<'a> {
    pub namespace: Option<&'a str>,
    pub flow: Option<&'a str>,
}

#[derive(Clone)]
struct Secret {
    value: String,
    scope: Scope,
}

/// Secret values by name. `Debug` shows the names only.
#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, Secret>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One entry of a secrets file: a value, or a value with a scope.
#[derive(Deserialize)]
#[serde(untagged)]
enum FileEntry {
    Plain(String),
    Scoped(ScopedEntry),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopedEntry {
    value: String,
    #[serde(default)]
    namespaces: Option<BTreeSet<String>>,
    #[serde(default)]
    flows: Option<BTreeSet<String>>,
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

    /// Reads a secrets file, which only its owner may read (a file group or others can read
    /// is refused: its secrets are no longer secret). Three forms are accepted:
    ///
    /// - `NAME=value` lines (blank lines and lines starting with `#` are ignored; the value is
    ///   taken verbatim up to the end of the line);
    /// - a YAML or JSON map of names to values, where a value may instead be a map
    ///   `{value: …, namespaces: [..], flows: [..]}` limiting which tasks may use it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let io = |source| Error::Io {
            what: format!("cannot read secrets file {}", path.display()),
            source,
        };
        let refuse = |message: String| Error::SecretsFile {
            path: path.to_path_buf(),
            message,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(refuse("it is not a regular file".into()));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(refuse(format!(
                "it can be read or changed by users other than its owner (mode {:o}); make it private with `chmod 600 {}`",
                meta.mode() & 0o777,
                path.display()
            )));
        }
        let mut text = String::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(refuse(format!("it is larger than {MAX_FILE_BYTES} bytes")));
        }
        Self::parse(&text).map_err(refuse)
    }

    fn parse(text: &str) -> std::result::Result<Self, String> {
        let first = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'));
        let Some(first) = first else {
            return Ok(Secrets::new());
        };
        // `NAME=value` lines: the first line has its `=` before any `:` (names have neither).
        let is_lines = match (first.find('='), first.find(':')) {
            (Some(eq), Some(colon)) => eq < colon,
            (Some(_), None) => true,
            _ => false,
        };
        if is_lines && !first.starts_with('{') {
            return Self::parse_lines(text);
        }
        let value = if first.starts_with('{') {
            serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?
        } else {
            yaml_to_json(text)?
        };
        let map: BTreeMap<String, FileEntry> = serde_json::from_value(value).map_err(|e| {
            format!(
                "expected a map of names to values, each a string or {{value: \"…\", namespaces: [..], flows: [..]}} ({e})"
            )
        })?;
        let mut secrets = Secrets::new();
        for (name, entry) in map {
            check_name(&name)?;
            let secret = match entry {
                FileEntry::Plain(value) => Secret {
                    value,
                    scope: Scope::default(),
                },
                FileEntry::Scoped(e) => Secret {
                    value: e.value,
                    scope: Scope {
                        namespaces: e.namespaces,
                        flows: e.flows,
                    },
                },
            };
            secrets.values.insert(name, secret);
        }
        Ok(secrets)
    }

    fn parse_lines(text: &str) -> std::result::Result<Self, String> {
        let mut secrets = Secrets::new();
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
            check_name(name).map_err(|e| format!("line {}: {e}", i + 1))?;
            secrets.insert(name, value);
        }
        Ok(secrets)
    }

    /// Adds or replaces one secret, for every task.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.insert_scoped(name, value, Scope::default());
    }

    /// Adds or replaces one secret, for the tasks `scope` admits.
    pub fn insert_scoped(&mut self, name: impl Into<String>, value: impl Into<String>, scope: Scope) {
        self.values.insert(
            name.into(),
            Secret {
                value: value.into(),
                scope,
            },
        );
    }

    /// Adds `other`'s secrets; on a name in both, `other` wins.
    pub fn extend(&mut self, other: Secrets) {
        self.values.extend(other.values);
    }

    /// The value of a secret open to every task.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .filter(|s| s.scope.is_open())
            .map(|s| s.value.as_str())
    }

    /// The value of `name` for a task of `task`'s namespace and flow. A secret that exists but
    /// is not for this task is `None`, like one that does not exist: the answer never tells
    /// which names exist.
    pub fn get_for(&self, name: &str, task: &TaskScope<'_>) -> Option<&str> {
        self.values
            .get(name)
            .filter(|s| s.scope.admits(task))
            .map(|s| s.value.as_str())
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Refuses secrets shorter than [`MIN_SECRET_BYTES`], naming the first (never its value).
    pub fn check(&self) -> std::result::Result<(), String> {
        for (name, s) in &self.values {
            if s.value.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "secret {name:?} is {} bytes long; secrets must be at least {MIN_SECRET_BYTES} bytes, \
                     since every occurrence of a secret's value is masked in task output and a short value \
                     would mask ordinary text (use a longer value, or do not keep this value as a secret)",
                    s.value.len()
                ));
            }
        }
        Ok(())
    }

    /// A masker for every value held.
    pub fn masker(&self) -> Masker {
        Masker::new(self.values.values().map(|s| s.value.as_str()))
    }
}

/// A secret's name: what `{{ secret('NAME') }}` can name.
fn check_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a secret name: use ASCII letters, digits, '_', '-' and '.'"
        ))
    }
}

/// A YAML document as JSON, keeping strings (numbers and booleans become their text, so that
/// `PIN: 12345678` is the string it looks like).
fn yaml_to_json(text: &str) -> std::result::Result<serde_json::Value, String> {
    use yaml_rust2::{Yaml, YamlLoader};
    fn convert(y: &Yaml) -> std::result::Result<serde_json::Value, String> {
        use serde_json::Value;
        Ok(match y {
            Yaml::String(s) | Yaml::Real(s) => Value::String(s.clone()),
            Yaml::Integer(i) => Value::String(i.to_string()),
            Yaml::Boolean(b) => Value::String(b.to_string()),
            Yaml::Array(a) => Value::Array(a.iter().map(convert).collect::<std::result::Result<_, _>>()?),
            Yaml::Hash(h) => {
                let mut map = serde_json::Map::new();
                for (k, v) in h {
                    let key = match k {
                        Yaml::String(s) | Yaml::Real(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        _ => return Err("a key is not a plain name".into()),
                    };
                    map.insert(key, convert(v)?);
                }
                Value::Object(map)
            }
            Yaml::Null => Value::Null,
            _ => return Err("it holds YAML that is neither a map, a list nor a plain value".into()),
        })
    }
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    match docs.as_slice() {
        [doc] => convert(doc),
        [] => Ok(serde_json::Value::Object(Default::default())),
        _ => Err("it holds several YAML documents; write one map".into()),
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
    fn secrets_files_accept_lines_json_and_yaml() {
        let s = Secrets::parse("# comment\nA=1\n\nB = two=2:3\n").unwrap();
        assert_eq!(s.get("A"), Some("1"));
        assert_eq!(s.get("B"), Some(" two=2:3"));
        let s = Secrets::parse(r#"{"X": "y"}"#).unwrap();
        assert_eq!(s.get("X"), Some("y"));
        let err = Secrets::parse("A=1\nnonsense\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(Secrets::parse(r#"{"X": 1}"#).is_err());
        let s = Secrets::parse("# yaml\nTOKEN: abc=def\nPIN: 12345678\n").unwrap();
        assert_eq!(s.get("TOKEN"), Some("abc=def"));
        assert_eq!(s.get("PIN"), Some("12345678"));
        assert!(
            Secrets::parse("A B=1\n")
                .unwrap_err()
                .contains("not a secret name")
        );
    }

    #[test]
    fn a_scoped_secret_is_only_for_the_tasks_it_names() {
        let s = Secrets::parse(
            "DB:\n  value: db-password-1\n  namespaces: [analytics]\n  flows: [nightly]\nOPEN: open-value\n",
        )
        .unwrap();
        let task = |namespace, flow| TaskScope { namespace, flow };
        assert_eq!(
            s.get_for("DB", &task(Some("analytics"), Some("nightly"))),
            Some("db-password-1")
        );
        for outside in [
            task(Some("analytics"), Some("other")),
            task(Some("other"), Some("nightly")),
            task(None, None),
        ] {
            assert_eq!(s.get_for("DB", &outside), None, "{outside:?}");
        }
        assert_eq!(s.get("DB"), None);
        assert_eq!(s.get_for("OPEN", &task(None, None)), Some("open-value"));
        assert!(Secrets::parse("DB: {value: x, namespace: [a]}\n").is_err());
    }

    #[test]
    fn short_secrets_are_refused_by_name_not_value() {
        let mut s = Secrets::new();
        s.insert("LONG_ENOUGH", "12345678");
        assert!(s.check().is_ok());
        s.insert("PIN", "4711");
        let err = s.check().unwrap_err();
        assert!(err.contains("\"PIN\"") && err.contains("8 bytes"), "{err}");
        assert!(!err.contains("4711"), "{err}");
    }

    #[test]
    fn a_secrets_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("secrets");
        std::fs::write(&path, "TOKEN=abcdefgh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = Secrets::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600") && err.contains("640"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Secrets::from_file(&path).unwrap().get("TOKEN"), Some("abcdefgh"));
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(
            Secrets::from_file(&link).is_err(),
            "a symbolic link is not followed"
        );
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
