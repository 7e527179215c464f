//! Outbound HTTP through `wasi:http/outgoing-handler`, for tiers whose table grants `http`
//! (`[tiers.T2.http] allow = [...]` in the shipped table's shape).
//!
//! The host decides every request: the URL must be on the tier's `allow` list and inside the
//! packet's `scope`; names resolving into loopback, private or metadata networks are refused;
//! bodies, time and the number of requests per run are bounded; redirects are returned, not
//! followed. A refusal is [`HttpError::Denied`] and counts against the error budget, so do
//! not retry one in a loop. The ledger's `http.request` row says why.
//!
//! ```no_run
//! use warden_sdk::http;
//!
//! # fn demo() -> Result<(), http::HttpError> {
//! let answer = http::get("https://api.github.com/repos/bytecodealliance/wasmtime")?;
//! if answer.status == 200 {
//!     let _json = answer.text();
//! }
//! let created = http::Request::post("https://api.example.com/items", br#"{"name":"x"}"#.to_vec())
//!     .header("content-type", "application/json")
//!     .send()?;
//! # let _ = created;
//! # Ok(()) }
//! ```
//!
//! Any other guest HTTP client built on `wasi:http` works as well; this is the smallest one.

use std::fmt;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use wasip2::io::streams::StreamError;

/// A request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// What came back: the whole body (the host reads it, bounded, before the guest sees it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code; a redirect (3xx) is returned as it is.
    pub status: u16,
    /// Header names (lowercase) and values, in the order received.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive), if any.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why a request did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpError {
    /// The URL or a header is malformed; nothing was sent.
    Invalid(String),
    /// The host refused it (not allowed at the tier, a blocked network, over a quota, the run
    /// revoked, or a body over the tier's limit). The ledger says why.
    Denied(String),
    /// It failed on the way: name lookup, connection, TLS, timeout, protocol.
    Failed(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Invalid(m) => write!(f, "invalid request: {m}"),
            HttpError::Denied(m) => write!(f, "denied: {m}"),
            HttpError::Failed(m) => write!(f, "failed: {m}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for crate::AgentError {
    fn from(error: HttpError) -> Self {
        crate::AgentError::from(error.to_string())
    }
}

fn from_code(code: ErrorCode) -> HttpError {
    let debug = format!("{code:?}");
    let name = debug.trim_start_matches("ErrorCode::").to_string();
    match code {
        ErrorCode::HttpRequestDenied
        | ErrorCode::DestinationIpProhibited
        | ErrorCode::HttpRequestBodySize(_)
        | ErrorCode::HttpResponseBodySize(_) => HttpError::Denied(name),
        ErrorCode::HttpRequestUriInvalid | ErrorCode::HttpRequestMethodInvalid => {
            HttpError::Invalid(name)
        }
        _ => HttpError::Failed(name),
    }
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response, HttpError> {
    Request::get(url).send()
}

impl Request {
    /// A request with `method` (`GET`, `POST`, …) to `url` (`https://host[:port]/path?query`).
    pub fn new(method: &str, url: &str) -> Request {
        Request {
            method: method.to_ascii_uppercase(),
            url: url.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// `GET url`.
    pub fn get(url: &str) -> Request {
        Request::new("GET", url)
    }

    /// `POST url` with `body`.
    pub fn post(url: &str, body: Vec<u8>) -> Request {
        Request::new("POST", url).body(body)
    }

    /// Add a header.
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Request {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// Set the body.
    pub fn body(mut self, body: Vec<u8>) -> Request {
        self.body = body;
        self
    }

    /// Send it and wait for the whole response.
    pub fn send(&self) -> Result<Response, HttpError> {
        let (scheme, authority, path) = split_url(&self.url)?;
        let headers = Fields::from_list(&self.headers)
            .map_err(|e| HttpError::Invalid(format!("a header is not accepted: {e:?}")))?;
        let request = OutgoingRequest::new(headers);
        let method = match self.method.as_str() {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_string()),
        };
        let invalid = |what: &str| HttpError::Invalid(format!("`{}`: {what}", self.url));
        request
            .set_method(&method)
            .map_err(|()| invalid("the method is not accepted"))?;
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| invalid("the scheme is not accepted"))?;
        request
            .set_authority(Some(authority))
            .map_err(|()| invalid("the host is not accepted"))?;
        request
            .set_path_with_query(Some(path))
            .map_err(|()| invalid("the path is not accepted"))?;
        let body = request
            .body()
            .map_err(|()| invalid("the body was already taken"))?;
        let pending = outgoing_handler::handle(request, None).map_err(from_code)?;
        let written = write_body(body, &self.body);
        pending.subscribe().block();
        // A request the host refused closes its body: the refusal is the answer, not the
        // closed stream.
        if let Err(error) = written {
            return Err(match pending.get() {
                Some(Ok(Err(code))) => from_code(code),
                _ => error,
            });
        }
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(from_code(code)),
            Some(Err(())) | None => {
                return Err(HttpError::Failed("the response was already taken".into()));
            }
        };
        let status = response.status();
        let headers = response.headers().entries();
        let body = response
            .consume()
            .map_err(|()| HttpError::Failed("the response body was already taken".into()))?;
        let bytes = read_body(&body)?;
        // Trailers are not read; finishing releases the body.
        drop(IncomingBody::finish(body));
        Ok(Response {
            status,
            headers,
            body: bytes,
        })
    }
}

fn write_body(body: OutgoingBody, bytes: &[u8]) -> Result<(), HttpError> {
    {
        let stream = body
            .write()
            .map_err(|()| HttpError::Failed("the request body cannot be written".into()))?;
        // `blocking-write-and-flush` takes at most 4096 bytes at a time.
        for chunk in bytes.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| HttpError::Failed(format!("writing the request body: {e:?}")))?;
        }
    }
    OutgoingBody::finish(body, None).map_err(from_code)
}

fn read_body(body: &IncomingBody) -> Result<Vec<u8>, HttpError> {
    let stream = body
        .stream()
        .map_err(|()| HttpError::Failed("the response body cannot be read".into()))?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(bytes),
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(HttpError::Failed(format!(
                    "reading the response body: {}",
                    e.to_debug_string()
                )));
            }
        }
    }
}

/// `scheme://authority/path?query` into its parts (path `/` when absent).
fn split_url(url: &str) -> Result<(Scheme, &str, &str), HttpError> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        HttpError::Invalid(format!(
            "`{url}` has no scheme: expected `https://host/path`"
        ))
    })?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => {
            return Err(HttpError::Invalid(format!(
                "`{url}`: scheme `{other}` is not `http` or `https`"
            )));
        }
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return Err(HttpError::Invalid(format!("`{url}` names no host")));
    }
    let path = if path.is_empty() { "/" } else { path };
    Ok((scheme, authority, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_host_and_path() {
        let Ok((_, authority, path)) = split_url("https://api.github.com/repos?page=2") else {
            panic!("not split");
        };
        assert_eq!((authority, path), ("api.github.com", "/repos?page=2"));
        let Ok((_, authority, path)) = split_url("http://127.0.0.1:8080") else {
            panic!("not split");
        };
        assert_eq!((authority, path), ("127.0.0.1:8080", "/"));
        assert!(matches!(split_url("ftp://x/"), Err(HttpError::Invalid(_))));
        assert!(matches!(split_url("no-scheme"), Err(HttpError::Invalid(_))));
        assert!(matches!(
            split_url("https:///x"),
            Err(HttpError::Invalid(_))
        ));
    }
}
