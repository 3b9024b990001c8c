//! A Cloud Storage bucket over its JSON API: objects written (in one request, or in a resumable
//! upload of parts for a large file), read, listed and deleted.
//!
//! `object_store` speaks Cloud Storage's XML API, which the emulators ferry is tested on do not
//! serve; the JSON API is the one Google documents first and every emulator serves. Credentials
//! are `object_store`'s (the same chain, the same refreshed tokens); its store is kept for what
//! only it does, signing URLs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::gcp::GcpCredentialProvider;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

/// The endpoint of Google's own service.
pub(crate) const GOOGLE: &str = "https://storage.googleapis.com";

/// A resumable upload sends parts of this size (a multiple of 256 KiB, as Cloud Storage asks).
pub(crate) const CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// How long a call that carries no object may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// One bucket. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Gcs {
    http: reqwest::Client,
    /// The service's endpoint, without a trailing `/`.
    endpoint: String,
    bucket: String,
    /// Where tokens come from; `None` sends none (an emulator).
    credentials: Option<GcpCredentialProvider>,
}

impl std::fmt::Debug for Gcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gcs")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("anonymous", &self.credentials.is_none())
            .finish()
    }
}

/// What the service answered when it refused a call.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub(crate) struct Refusal {
    status: StatusCode,
    message: String,
}

type Result<T> = std::result::Result<T, object_store::Error>;

impl Gcs {
    pub(crate) fn new(
        endpoint: &str,
        bucket: &str,
        credentials: Option<GcpCredentialProvider>,
    ) -> std::result::Result<Gcs, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // A transfer may last as long as its object is large, but never stalls this long.
            .read_timeout(CALL_TIMEOUT)
            // A resumable upload's "308 Resume Incomplete" is no redirect.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        Ok(Gcs {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            bucket: bucket.to_string(),
            credentials,
        })
    }

    async fn request(&self, method: Method, url: &str, name: &str) -> Result<reqwest::RequestBuilder> {
        let req = self.http.request(method, url);
        let Some(credentials) = &self.credentials else {
            return Ok(req);
        };
        let token =
            credentials
                .get_credential()
                .await
                .map_err(|source| object_store::Error::Unauthenticated {
                    path: name.to_string(),
                    source: Box::new(source),
                })?;
        Ok(if token.bearer.is_empty() {
            req
        } else {
            req.bearer_auth(&token.bearer)
        })
    }

    /// Sends `req`; a refusal becomes the `object_store` error of its kind, naming `name`.
    async fn send(req: reqwest::RequestBuilder, name: &str) -> Result<reqwest::Response> {
        let response = req.send().await.map_err(|e| generic(transport(&e)))?;
        let status = response.status();
        if status.is_success() || status == StatusCode::PERMANENT_REDIRECT {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(refused(status, &body, name))
    }

    fn object_url(&self, name: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.endpoint,
            utf8_percent_encode(&self.bucket, NON_ALPHANUMERIC),
            utf8_percent_encode(name, NON_ALPHANUMERIC)
        )
    }

    fn upload_url(&self) -> String {
        format!(
            "{}/upload/storage/v1/b/{}/o",
            self.endpoint,
            utf8_percent_encode(&self.bucket, NON_ALPHANUMERIC)
        )
    }

    /// Writes object `name` in one request, replacing what was there.
    pub(crate) async fn put(&self, name: &str, bytes: Bytes) -> Result<()> {
        let req = self
            .request(Method::POST, &self.upload_url(), name)
            .await?
            .query(&[("uploadType", "media"), ("name", name)])
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes);
        Self::send(req, name).await.map(drop)
    }

    /// Starts a resumable upload of object `name`: the parts then go to the session's URL.
    pub(crate) async fn start_upload(&self, name: &str) -> Result<Upload> {
        let req = self
            .request(Method::POST, &self.upload_url(), name)
            .await?
            .timeout(CALL_TIMEOUT)
            .query(&[("uploadType", "resumable"), ("name", name)])
            .json(&serde_json::json!({}));
        let response = Self::send(req, name).await?;
        let session = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| generic(format!("the upload of {name} was given no session URL")))?
            .to_string();
        Ok(Upload {
            gcs: self.clone(),
            name: name.to_string(),
            session,
            sent: 0,
        })
    }

    /// Object `name`: its size and its bytes as they come.
    pub(crate) async fn get(&self, name: &str) -> Result<(u64, BoxStream<'static, Result<Bytes>>)> {
        let req = self
            .request(Method::GET, &self.object_url(name), name)
            .await?
            .query(&[("alt", "media")]);
        let response = Self::send(req, name).await?;
        // The size as stored: a body served decompressed has no length of its own.
        let stored = response
            .headers()
            .get("x-goog-stored-content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let size = match stored.or(response.content_length()) {
            Some(size) => size,
            None => self.size(name).await?,
        };
        let stream = response
            .bytes_stream()
            .map_err(|e| generic(transport(&e)))
            .boxed();
        Ok((size, stream))
    }

    /// The size of object `name`, from its metadata.
    async fn size(&self, name: &str) -> Result<u64> {
        #[derive(Deserialize)]
        struct Meta {
            size: String,
        }
        let req = self
            .request(Method::GET, &self.object_url(name), name)
            .await?
            .timeout(CALL_TIMEOUT);
        let meta: Meta = Self::send(req, name)
            .await?
            .json()
            .await
            .map_err(|e| generic(format!("the metadata of {name} cannot be read: {e}")))?;
        meta.size
            .parse()
            .map_err(|_| generic(format!("{name} has no size: {:?}", meta.size)))
    }

    /// The names of the objects under `prefix`.
    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Page {
            #[serde(default)]
            items: Vec<Item>,
            #[serde(default)]
            next_page_token: Option<String>,
        }
        #[derive(Deserialize)]
        struct Item {
            name: String,
        }
        let url = format!(
            "{}/storage/v1/b/{}/o",
            self.endpoint,
            utf8_percent_encode(&self.bucket, NON_ALPHANUMERIC)
        );
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("prefix", prefix.to_string())];
            if let Some(t) = &token {
                query.push(("pageToken", t.clone()));
            }
            let req = self
                .request(Method::GET, &url, prefix)
                .await?
                .timeout(CALL_TIMEOUT)
                .query(&query);
            let page: Page = Self::send(req, prefix)
                .await?
                .json()
                .await
                .map_err(|e| generic(format!("the listing of {prefix} cannot be read: {e}")))?;
            names.extend(page.items.into_iter().map(|i| i.name));
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => return Ok(names),
            }
        }
    }

    /// Deletes object `name`.
    pub(crate) async fn delete(&self, name: &str) -> Result<()> {
        let req = self
            .request(Method::DELETE, &self.object_url(name), name)
            .await?
            .timeout(CALL_TIMEOUT);
        Self::send(req, name).await.map(drop)
    }
}

/// A resumable upload under way: parts of [`CHUNK_BYTES`] sent in order, the last one closing
/// it. An upload never finished is dropped by the service after a week.
pub(crate) struct Upload {
    gcs: Gcs,
    name: String,
    session: String,
    sent: u64,
}

impl Upload {
    /// Sends the next part: `last` says it is the end of the object (and may be short, or
    /// empty); any other part is [`CHUNK_BYTES`] long.
    pub(crate) async fn send(&mut self, part: Bytes, last: bool) -> Result<()> {
        let n = part.len() as u64;
        let range = match (n, last) {
            (0, true) => format!("bytes */{}", self.sent),
            (_, true) => format!("bytes {}-{}/{}", self.sent, self.sent + n - 1, self.sent + n),
            (_, false) => format!("bytes {}-{}/*", self.sent, self.sent + n - 1),
        };
        // The session's URL is the credential of the upload: no token goes with it.
        let req = self
            .gcs
            .http
            .put(&self.session)
            .header(reqwest::header::CONTENT_RANGE, range)
            .body(part);
        let response = Gcs::send(req, &self.name).await?;
        let status = response.status();
        if last != (status != StatusCode::PERMANENT_REDIRECT) {
            return Err(generic(format!(
                "the upload of {} answered {status} after {} bytes",
                self.name,
                self.sent + n
            )));
        }
        // Cloud Storage may keep less of a part than was sent: say so rather than leave a hole.
        if !last {
            let kept = response
                .headers()
                .get(reqwest::header::RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|r| r.strip_prefix("bytes=0-"))
                .and_then(|end| end.parse::<u64>().ok())
                .map_or(0, |end| end + 1);
            if kept != self.sent + n {
                return Err(generic(format!(
                    "the upload of {} kept {kept} of {} bytes",
                    self.name,
                    self.sent + n
                )));
            }
        }
        self.sent += n;
        Ok(())
    }

    /// Gives the upload up: the service forgets what was sent.
    pub(crate) async fn abort(self) {
        let _ = self.gcs.http.delete(&self.session).send().await;
    }
}

fn generic(why: impl Into<String>) -> object_store::Error {
    object_store::Error::Generic {
        store: "GCS",
        source: why.into().into(),
    }
}

/// A transport error with its causes, which `reqwest` keeps apart.
fn transport(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// The error of kind `status`: the message of Google's error body, else the body itself.
fn refused(status: StatusCode, body: &str, name: &str) -> object_store::Error {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().chars().take(500).collect());
    let path = name.to_string();
    let source = Box::new(Refusal { status, message });
    match status {
        StatusCode::NOT_FOUND => object_store::Error::NotFound { path, source },
        StatusCode::UNAUTHORIZED => object_store::Error::Unauthenticated { path, source },
        StatusCode::FORBIDDEN => object_store::Error::PermissionDenied { path, source },
        StatusCode::PRECONDITION_FAILED => object_store::Error::Precondition { path, source },
        _ => object_store::Error::Generic { store: "GCS", source },
    }
}

/// The endpoint and credentials of a `gs://` store: `base_url` when set, else the emulator
/// named by `STORAGE_EMULATOR_HOST` (as Google's client libraries read it: no token is sent to
/// it), else Google's own; no token with `skip_signature`.
pub(crate) fn endpoint(
    base_url: Option<String>,
    skip_signature: bool,
    emulator: Option<String>,
    credentials: &GcpCredentialProvider,
) -> (String, Option<GcpCredentialProvider>) {
    let token = |anonymous: bool| (!anonymous).then(|| Arc::clone(credentials));
    match (base_url, emulator.filter(|e| !e.is_empty())) {
        (Some(url), _) => (url, token(skip_signature)),
        (None, Some(host)) if host.contains("://") => (host, None),
        (None, Some(host)) => (format!("http://{host}"), None),
        (None, None) => (GOOGLE.to_string(), token(skip_signature)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_become_errors_of_their_kind_with_googles_message() {
        let body = r#"{"error":{"code":404,"message":"No such object: b/x"}}"#;
        let e = refused(StatusCode::NOT_FOUND, body, "x");
        assert!(matches!(e, object_store::Error::NotFound { .. }), "{e}");
        assert!(e.to_string().contains("No such object: b/x"), "{e}");
        let e = refused(StatusCode::FORBIDDEN, "denied", "x");
        assert!(matches!(e, object_store::Error::PermissionDenied { .. }), "{e}");
        let e = refused(StatusCode::SERVICE_UNAVAILABLE, "busy", "x");
        assert!(matches!(e, object_store::Error::Generic { .. }), "{e}");
    }

    #[test]
    fn an_emulator_is_reached_without_a_token_and_a_base_url_comes_first() {
        let credentials: GcpCredentialProvider = Arc::new(object_store::StaticCredentialProvider::new(
            object_store::gcp::GcpCredential { bearer: "t".into() },
        ));
        let (url, token) = endpoint(None, false, None, &credentials);
        assert_eq!((url.as_str(), token.is_some()), (GOOGLE, true));
        let (url, token) = endpoint(None, false, Some("localhost:4443".into()), &credentials);
        assert_eq!((url.as_str(), token.is_some()), ("http://localhost:4443", false));
        let (url, token) = endpoint(None, false, Some("https://gcs.test".into()), &credentials);
        assert_eq!((url.as_str(), token.is_some()), ("https://gcs.test", false));
        let (url, token) = endpoint(
            Some("https://eu.test".into()),
            false,
            Some("x:1".into()),
            &credentials,
        );
        assert_eq!((url.as_str(), token.is_some()), ("https://eu.test", true));
        let (_, token) = endpoint(None, true, None, &credentials);
        assert!(token.is_none());
    }
}
