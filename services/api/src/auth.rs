//! Who may do what: credentials, scopes and namespaces.
//!
//! Every request but `GET /healthz` and `GET /readyz` carries a credential, which an [`Authenticator`] turns into
//! a [`Principal`]: a name, the [`Scope`]s it holds and the namespaces it is limited to. Today
//! the credential is a bearer token listed in a tokens file; other kinds (OIDC/JWT) become
//! further variants of [`Authenticator`] that yield the same [`Principal`].
//!
//! Tokens are high-entropy random strings ([`new_token`]); the file keeps only their SHA-256,
//! which is compared in constant time. The file is YAML (or JSON, which is YAML too):
//!
//! ```yaml
//! tokens:
//!   - name: ci
//!     sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//!     scopes: [submit, read]
//!     namespaces: [analytics]     # absent: every namespace
//! ```
//!
//! It is read again when it changes, so a token is added or revoked without a restart.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::http::{HeaderMap, header};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};
use crate::reload::Stamp;

pub use ferry_event::payload::DEFAULT_NAMESPACE;

/// What every token starts with, so that secret scanners and people recognise one.
pub const TOKEN_PREFIX: &str = "ferry_";

/// The tokens file `ferry up` creates in its data directory when given none.
pub const TOKENS_FILE: &str = "tokens.yaml";
/// Where `ferry up` writes the admin token it generated, readable by its owner only.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Submit jobs (`dev.ferry.job.submitted`) and post events of one's own.
    Submit,
    /// Read jobs, their changes and their logs.
    Read,
    /// Cancel and retry jobs.
    Cancel,
    /// Everything.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Submit, Scope::Read, Scope::Cancel, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Submit => "submit",
            Scope::Read => "read",
            Scope::Cancel => "cancel",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| format!("unknown scope {s:?}; scopes are submit, read, cancel and admin"))
    }
}

/// Who is asking, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name (for logs and error messages, never a secret).
    pub name: String,
    pub scopes: BTreeSet<Scope>,
    /// The namespaces it may act in; `None`: every namespace.
    pub namespaces: Option<BTreeSet<String>>,
}

impl Principal {
    /// Everything, everywhere: the principal of an api that asks for no credential.
    pub fn unrestricted(name: impl Into<String>) -> Principal {
        Principal {
            name: name.into(),
            scopes: BTreeSet::from([Scope::Admin]),
            namespaces: None,
        }
    }

    /// Whether it holds `scope` (`admin` holds every scope).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }

    /// Whether it may act in `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> bool {
        self.namespaces.as_ref().is_none_or(|ns| ns.contains(namespace))
    }

    /// The namespaces it is limited to, or `None` for every namespace.
    pub fn namespaces(&self) -> Option<Vec<String>> {
        self.namespaces.as_ref().map(|ns| ns.iter().cloned().collect())
    }

    /// `submit, read`, for messages.
    pub fn scope_list(&self) -> String {
        self.scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `analytics, billing` or `every namespace`, for messages.
    pub fn namespace_list(&self) -> String {
        match &self.namespaces {
            None => "every namespace".into(),
            Some(ns) if ns.is_empty() => "no namespace".into(),
            Some(ns) => ns.iter().map(String::as_str).collect::<Vec<_>>().join(", "),
        }
    }
}

/// Why a request has no principal: answered 401 with `WWW-Authenticate: Bearer`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    #[error(
        "this api needs a bearer token (Authorization: Bearer TOKEN): set FERRY_TOKEN or pass --token to ferry"
    )]
    Missing,
    #[error("the Authorization header is not `Bearer TOKEN`: set FERRY_TOKEN or pass --token to ferry")]
    Malformed,
    #[error(
        "the bearer token is not valid here (unknown or revoked): check FERRY_TOKEN or --token, or ask for a token of this api"
    )]
    Unknown,
}

impl Unauthenticated {
    /// The `error` parameter of `WWW-Authenticate` (RFC 6750 §3.1).
    pub fn bearer_error(&self) -> Option<&'static str> {
        match self {
            Unauthenticated::Missing => None,
            Unauthenticated::Malformed => Some("invalid_request"),
            Unauthenticated::Unknown => Some("invalid_token"),
        }
    }
}

/// Turns a request's credential into a [`Principal`].
#[derive(Debug, Clone)]
pub enum Authenticator {
    /// Bearer tokens of a tokens file.
    Tokens(Arc<TokenTable>),
    /// No credential is asked for; every request is unrestricted. Only allowed on loopback.
    Open,
}

impl Authenticator {
    pub async fn authenticate(&self, headers: &HeaderMap) -> std::result::Result<Principal, Unauthenticated> {
        match self {
            Authenticator::Open => Ok(Principal::unrestricted("anonymous")),
            Authenticator::Tokens(table) => {
                let token = bearer(headers)?;
                table.find(token).ok_or(Unauthenticated::Unknown)
            }
        }
    }
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer(headers: &HeaderMap) -> std::result::Result<&str, Unauthenticated> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(Unauthenticated::Missing);
    };
    let value = value.to_str().map_err(|_| Unauthenticated::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(Unauthenticated::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(Unauthenticated::Malformed);
    }
    Ok(token)
}

/// One entry of a tokens file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    /// SHA-256 of the token, 64 hex digits.
    pub sha256: String,
    pub scopes: Vec<Scope>,
    /// The namespaces the token may act in; absent: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
}

impl TokenEntry {
    /// The entry as one line of YAML flow style, to add under `tokens:`.
    pub fn yaml_line(&self) -> String {
        let scopes: Vec<&str> = self.scopes.iter().map(|s| s.as_str()).collect();
        let mut line = format!(
            "- {{ name: {}, sha256: {}, scopes: [{}]",
            self.name,
            self.sha256,
            scopes.join(", ")
        );
        if let Some(ns) = &self.namespaces {
            line.push_str(&format!(", namespaces: [{}]", ns.join(", ")));
        }
        line.push_str(" }");
        line
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenEntry>,
}

/// A token as the table keeps it.
#[derive(Debug)]
struct Known {
    sha256: [u8; 32],
    principal: Principal,
}

/// The tokens of a file, read again when the file changes.
#[derive(Debug)]
pub struct TokenTable {
    path: PathBuf,
    known: RwLock<Arc<Vec<Known>>>,
    stamp: std::sync::Mutex<Stamp>,
}

impl TokenTable {
    /// Reads the tokens file; fails when it is missing or not valid.
    pub fn open(path: &Path) -> Result<TokenTable> {
        let stamp = Stamp::of(&[path]);
        let known = read_tokens(path)?;
        Ok(TokenTable {
            path: path.to_path_buf(),
            known: RwLock::new(Arc::new(known)),
            stamp: std::sync::Mutex::new(stamp),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many tokens are known.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn current(&self) -> Arc<Vec<Known>> {
        self.known.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The principal of `token`, comparing its hash with every known one in constant time.
    pub fn find(&self, token: &str) -> Option<Principal> {
        let hash = sha256(token);
        let mut found = None;
        for k in self.current().iter() {
            if bool::from(k.sha256.ct_eq(&hash)) {
                found = Some(k.principal.clone());
            }
        }
        found
    }

    /// Reads the file again if it changed since it was last read. A file that no longer reads
    /// leaves the tokens as they were, and says why.
    pub fn reload_if_changed(&self) -> Option<Result<usize>> {
        let stamp = Stamp::of(&[&self.path]);
        {
            let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
            if *last == stamp {
                return None;
            }
            *last = stamp;
        }
        Some(read_tokens(&self.path).map(|known| {
            let n = known.len();
            *self.known.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(known);
            n
        }))
    }
}

fn read_tokens(path: &Path) -> Result<Vec<Known>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read the tokens file {}: {e}", path.display())))?;
    let entries =
        parse_tokens(&text).map_err(|e| Error::Config(format!("tokens file {}: {e}", path.display())))?;
    Ok(entries
        .into_iter()
        .map(|e| {
            let mut sha = [0u8; 32];
            // Checked by parse_tokens.
            if let Ok(bytes) = hex_decode(&e.sha256) {
                sha.copy_from_slice(&bytes);
            }
            Known {
                sha256: sha,
                principal: Principal {
                    name: e.name,
                    scopes: e.scopes.into_iter().collect(),
                    namespaces: e.namespaces.map(|ns| ns.into_iter().collect()),
                },
            }
        })
        .collect())
}

/// Parses and checks a tokens file (YAML or JSON).
pub fn parse_tokens(text: &str) -> std::result::Result<Vec<TokenEntry>, String> {
    let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    let value = docs.first().map(yaml_to_json).unwrap_or(Value::Null);
    if value.is_null() {
        return Err("the file is empty; it needs `tokens:` with a list of tokens".into());
    }
    let file: TokensFile = serde_json::from_value(value).map_err(|e| {
        format!("{e} (expected `tokens:` with entries of name, sha256, scopes and optionally namespaces)")
    })?;
    let mut names = BTreeSet::new();
    let mut hashes = BTreeSet::new();
    for (i, t) in file.tokens.iter().enumerate() {
        let at = format!("tokens[{i}]");
        if t.name.trim().is_empty() {
            return Err(format!("{at}.name is empty"));
        }
        if !names.insert(t.name.as_str()) {
            return Err(format!("{at}.name: {:?} is used by two tokens", t.name));
        }
        if t.sha256.len() != 64 || hex_decode(&t.sha256).is_err() {
            return Err(format!(
                "{at}.sha256 is not 64 hex digits (the SHA-256 of the token, as `ferry token create` prints it)"
            ));
        }
        if !hashes.insert(t.sha256.to_ascii_lowercase()) {
            return Err(format!("{at}.sha256: two tokens have the same hash"));
        }
        if t.scopes.is_empty() {
            return Err(format!(
                "{at}.scopes is empty; give at least one of submit, read, cancel, admin"
            ));
        }
        if let Some(ns) = &t.namespaces
            && let Some(bad) = ns.iter().find(|n| ferry_flow::check_job_id(n).is_err())
        {
            return Err(format!("{at}.namespaces: {bad:?} is not a namespace name"));
        }
    }
    Ok(file.tokens)
}

fn yaml_to_json(y: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Real(s) => s
            .parse::<f64>()
            .map(Value::from)
            .unwrap_or(Value::String(s.clone())),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        other => format!("{other:?}"),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Yaml::Null | Yaml::BadValue | Yaml::Alias(_) => Value::Null,
    }
}

fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The SHA-256 of a token, as the tokens file keeps it.
pub fn token_hash(token: &str) -> String {
    hex_encode(&sha256(token))
}

/// A new token (`ferry_` and 256 random bits) and its SHA-256.
pub fn new_token() -> Result<(String, String)> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Config(format!("no random numbers from the operating system: {e}")))?;
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = token_hash(&token);
    Ok((token, hash))
}

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> std::result::Result<Vec<u8>, ()> {
    if !s.len().is_multiple_of(2) {
        return Err(());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(())
        })
        .collect()
}

/// What [`bootstrap`] found or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    pub tokens_file: PathBuf,
    /// The admin token's file, when there is one in the data directory.
    pub admin_token_file: Option<PathBuf>,
    /// Whether they were created just now.
    pub created: bool,
}

/// The tokens file of a data directory: `DIR/tokens.yaml`, created on first use with one
/// admin token whose secret is written to `DIR/admin.token` (both readable by their owner only).
pub fn bootstrap(dir: &Path) -> Result<Bootstrap> {
    let tokens_file = dir.join(TOKENS_FILE);
    let admin = dir.join(ADMIN_TOKEN_FILE);
    if tokens_file.exists() {
        return Ok(Bootstrap {
            tokens_file,
            admin_token_file: admin.exists().then_some(admin),
            created: false,
        });
    }
    let (token, hash) = new_token()?;
    let entry = TokenEntry {
        name: "admin".into(),
        sha256: hash,
        scopes: vec![Scope::Admin],
        namespaces: None,
    };
    let cannot =
        |path: &Path, e: std::io::Error| Error::Config(format!("cannot write {}: {e}", path.display()));
    write_private(&admin, format!("{token}\n").as_bytes()).map_err(|e| cannot(&admin, e))?;
    let text = format!(
        "# Bearer tokens of this ferry api: SHA-256 hashes, never the tokens themselves.\n\
         # Add one with the line `ferry token create` prints; the file is read again when it changes.\n\
         tokens:\n  {}\n",
        entry.yaml_line()
    );
    // Written under another name and renamed, so the api never reads half a file.
    let partial = dir.join(format!("{TOKENS_FILE}.new"));
    write_private(&partial, text.as_bytes()).map_err(|e| cannot(&partial, e))?;
    std::fs::rename(&partial, &tokens_file).map_err(|e| cannot(&tokens_file, e))?;
    Ok(Bootstrap {
        tokens_file,
        admin_token_file: Some(admin),
        created: true,
    })
}

/// Writes a file only its owner can read (0600), replacing what was there.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(contents)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, ha) = new_token().unwrap();
        let (b, hb) = new_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 43);
        assert_eq!(ha, token_hash(&a));
        assert_ne!(ha, hb);
        assert_eq!(
            token_hash("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn tokens_files_are_checked_with_the_entry_named() {
        let good = format!(
            "tokens:\n  - {{ name: ci, sha256: {}, scopes: [submit, read], namespaces: [a] }}\n",
            token_hash("x")
        );
        let t = parse_tokens(&good).unwrap();
        assert_eq!(t[0].scopes, [Scope::Submit, Scope::Read]);
        assert_eq!(t[0].namespaces, Some(vec!["a".to_string()]));
        // JSON is YAML too.
        let json = format!(
            r#"{{"tokens": [{{"name": "ci", "sha256": "{}", "scopes": ["admin"]}}]}}"#,
            token_hash("x")
        );
        assert_eq!(parse_tokens(&json).unwrap()[0].namespaces, None);

        let bad = |text: &str, want: &str| {
            let e = parse_tokens(text).unwrap_err();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        };
        bad("", "empty");
        bad(
            "tokens:\n  - { name: ci, sha256: abc, scopes: [read] }",
            "tokens[0].sha256",
        );
        bad(
            &format!(
                "tokens:\n  - {{ name: ci, sha256: {}, scopes: [write] }}",
                token_hash("x")
            ),
            "write",
        );
        bad(
            &format!(
                "tokens:\n  - {{ name: ci, sha256: {}, scopes: [] }}",
                token_hash("x")
            ),
            "scopes is empty",
        );
        bad(
            &format!(
                "tokens:\n  - {{ name: a, sha256: {}, scopes: [read] }}\n  - {{ name: a, sha256: {}, scopes: [read] }}",
                token_hash("x"),
                token_hash("y")
            ),
            "used by two tokens",
        );
        bad(
            &format!(
                "tokens:\n  - {{ name: a, sha256: {}, scopes: [read], size: 1 }}",
                token_hash("x")
            ),
            "size",
        );
    }

    #[tokio::test]
    async fn bearer_tokens_name_their_principal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.yaml");
        let (token, hash) = new_token().unwrap();
        let entry = TokenEntry {
            name: "ci".into(),
            sha256: hash,
            scopes: vec![Scope::Read],
            namespaces: Some(vec!["a".into()]),
        };
        std::fs::write(&path, format!("tokens:\n  {}\n", entry.yaml_line())).unwrap();
        let auth = Authenticator::Tokens(Arc::new(TokenTable::open(&path).unwrap()));
        let p = auth
            .authenticate(&headers(&format!("Bearer {token}")))
            .await
            .unwrap();
        assert_eq!(p.name, "ci");
        assert!(p.has(Scope::Read) && !p.has(Scope::Submit));
        assert!(p.in_namespace("a") && !p.in_namespace("b"));
        assert_eq!(
            auth.authenticate(&HeaderMap::new()).await,
            Err(Unauthenticated::Missing)
        );
        assert_eq!(
            auth.authenticate(&headers(&format!("Basic {token}"))).await,
            Err(Unauthenticated::Malformed)
        );
        assert_eq!(
            auth.authenticate(&headers("Bearer ferry_nope")).await,
            Err(Unauthenticated::Unknown)
        );
    }

    #[test]
    fn the_data_directory_gets_an_admin_token_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = bootstrap(dir.path()).unwrap();
        assert!(first.created);
        let admin = first.admin_token_file.clone().unwrap();
        let token = std::fs::read_to_string(&admin).unwrap();
        let table = TokenTable::open(&first.tokens_file).unwrap();
        assert!(table.find(token.trim()).unwrap().has(Scope::Admin));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [&admin, &first.tokens_file] {
                let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", f.display());
            }
        }
        let again = bootstrap(dir.path()).unwrap();
        assert!(!again.created);
        assert_eq!(std::fs::read_to_string(&admin).unwrap(), token);
    }
}
