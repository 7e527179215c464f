//! Chat completions over HTTP, as OpenAI, OpenRouter, Ollama and vLLM serve them.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use super::{
    ChatMessage, DEFAULT_TIMEOUT, LlmError, LlmProvider, LlmRequest, LlmResponse,
    estimate_prompt_tokens, estimate_tokens, excerpt,
};

/// The most of a response body that is read; a larger one is refused, not buffered.
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// How much of an error body is kept for the operator.
const ERROR_BODY_EXCERPT: usize = 512;

/// A provider speaking `POST {base_url}/chat/completions`.
///
/// Build with [`OpenAiCompatible::new`] and the setters; the HTTP client is created on first
/// use, so building never fails and an unusable URL is reported by the first request.
pub struct OpenAiCompatible {
    base_url: String,
    api_key: Option<String>,
    default_model: String,
    timeout: Duration,
    client: OnceCell<reqwest::Client>,
}

impl fmt::Debug for OpenAiCompatible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiCompatible")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("default_model", &self.default_model)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl OpenAiCompatible {
    /// A provider for the API rooted at `base_url` (e.g. `http://127.0.0.1:11434/v1`), without
    /// a key, without a default model, with a 60 s timeout.
    pub fn new(base_url: impl Into<String>) -> Self {
        let base_url = base_url.into();
        OpenAiCompatible {
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key: None,
            default_model: String::new(),
            timeout: DEFAULT_TIMEOUT,
            client: OnceCell::new(),
        }
    }

    /// Send `Authorization: Bearer <key>`. The key is never logged nor shown by `Debug`.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The model used when a request names none.
    pub fn default_model(mut self, model: impl Into<String>) -> Self {
        self.default_model = model.into();
        self
    }

    /// The whole-request timeout: connecting, sending, and reading the answer.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn client(&self) -> Result<&reqwest::Client, LlmError> {
        self.client
            .get_or_try_init(|| async {
                reqwest::Client::builder()
                    .connect_timeout(self.timeout)
                    .build()
                    .map_err(|error| {
                        LlmError::Config(format!("cannot build the http client: {}", chain(&error)))
                    })
            })
            .await
    }

    /// Send `request` (with the key, if any) and return the body of a 2xx answer.
    async fn send(&self, request: reqwest::RequestBuilder, url: &str) -> Result<Vec<u8>, LlmError> {
        let request = match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        };
        let fail = |error: reqwest::Error| self.classify(error, url);
        let mut response = request.timeout(self.timeout).send().await.map_err(fail)?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(fail)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                if !status.is_success() {
                    break;
                }
                return Err(LlmError::BadResponse(format!(
                    "`{url}` sent more than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(LlmError::Http {
                url: url.to_string(),
                status: status.as_u16(),
                body: excerpt(&String::from_utf8_lossy(&body), ERROR_BODY_EXCERPT),
            });
        }
        Ok(body)
    }

    fn classify(&self, error: reqwest::Error, url: &str) -> LlmError {
        if error.is_timeout() {
            LlmError::Timeout {
                url: url.to_string(),
                timeout: self.timeout,
            }
        } else if error.is_builder() {
            LlmError::Config(format!(
                "cannot request `{url}`: {}; `base_url` must be an http(s) url",
                chain(&error)
            ))
        } else {
            LlmError::Unavailable(format!("cannot reach `{url}`: {}", chain(&error)))
        }
    }
}

/// Refuse a `base_url` that is not an absolute http(s) URL, before any request is made.
pub(super) fn check_base_url(base_url: &str) -> Result<(), LlmError> {
    match reqwest::Url::parse(base_url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(()),
        Ok(_) => Err(LlmError::Config(format!(
            "`base_url = \"{base_url}\"` is not an http(s) url; use e.g. `https://openrouter.ai/api/v1`"
        ))),
        Err(error) => Err(LlmError::Config(format!(
            "`base_url = \"{base_url}\"` is not a url ({error}); use e.g. `https://openrouter.ai/api/v1`"
        ))),
    }
}

/// An error and its sources, `: `-separated; reqwest's own message alone rarely says why.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
}

#[derive(Deserialize)]
struct ChatCompletion {
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<Usage>,
    /// Some gateways (OpenRouter) answer 200 with an error object.
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: Option<u32>,
    completion_tokens: Option<u32>,
}

#[async_trait::async_trait]
impl LlmProvider for OpenAiCompatible {
    fn name(&self) -> &str {
        "openai-compatible"
    }

    fn default_model(&self) -> &str {
        &self.default_model
    }

    async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        let model = request.model.as_deref().unwrap_or(&self.default_model);
        if model.is_empty() {
            return Err(LlmError::Config(
                "the request names no model and the provider has no default; set `model` in `[llm]`"
                    .into(),
            ));
        }
        let url = format!("{}/chat/completions", self.base_url);
        let body = ChatRequest {
            model,
            messages: &request.messages,
            max_tokens: request.max_tokens,
            temperature: request.temperature,
        };
        tracing::debug!(
            url = %url,
            model,
            messages = request.messages.len(),
            "llm chat completion"
        );
        let json = serde_json::to_vec(&body).map_err(|error| {
            LlmError::Config(format!("cannot encode the request as json: {error}"))
        })?;
        let http = self
            .client()
            .await?
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json);
        let bytes = self.send(http, &url).await?;
        let completion: ChatCompletion = serde_json::from_slice(&bytes).map_err(|error| {
            LlmError::BadResponse(format!(
                "`{url}` sent invalid json ({error}): `{}`",
                excerpt(&String::from_utf8_lossy(&bytes), ERROR_BODY_EXCERPT)
            ))
        })?;
        if let Some(error) = completion.error {
            return Err(LlmError::BadResponse(format!(
                "`{url}` sent an error object: {}",
                excerpt(&error.to_string(), ERROR_BODY_EXCERPT)
            )));
        }
        let Some(choice) = completion.choices.into_iter().next() else {
            return Err(LlmError::BadResponse(format!(
                "`{url}` sent no `choices`; expected `choices[0].message.content`"
            )));
        };
        let text = choice.message.content.unwrap_or_default();
        let usage = completion.usage;
        let prompt_tokens = usage
            .as_ref()
            .and_then(|u| u.prompt_tokens)
            .unwrap_or_else(|| estimate_prompt_tokens(&request.messages));
        let completion_tokens = usage
            .as_ref()
            .and_then(|u| u.completion_tokens)
            .unwrap_or_else(|| estimate_tokens(&text));
        Ok(LlmResponse {
            text,
            model: completion.model.unwrap_or_else(|| model.to_string()),
            prompt_tokens,
            completion_tokens,
        })
    }

    /// `GET {base_url}/models`: reachable, and the key (if any) accepted.
    async fn health(&self) -> Result<(), LlmError> {
        let url = format!("{}/models", self.base_url);
        let http = self.client().await?.get(&url);
        self.send(http, &url).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    /// What the test server received.
    #[derive(Debug)]
    struct Received {
        request_line: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Received {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    /// Serve one request on 127.0.0.1 with `status` and `body`; return its address and what
    /// it received.
    async fn serve_once(status: &str, body: &str) -> (SocketAddr, JoinHandle<Received>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reply = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let handle = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut stream = BufReader::new(stream);
            let mut request_line = String::new();
            stream.read_line(&mut request_line).await.unwrap();
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                stream.read_line(&mut line).await.unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap();
                headers.push((name.trim().to_string(), value.trim().to_string()));
            }
            let length = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
            let mut body = vec![0; length];
            stream.read_exact(&mut body).await.unwrap();
            stream.write_all(reply.as_bytes()).await.unwrap();
            stream.shutdown().await.unwrap();
            Received {
                request_line: request_line.trim_end().to_string(),
                headers,
                body,
            }
        });
        (addr, handle)
    }

    fn request() -> LlmRequest {
        LlmRequest {
            model: None,
            messages: vec![
                ChatMessage::system("be brief"),
                ChatMessage::user("hello there"),
            ],
            max_tokens: Some(64),
            temperature: Some(0.25),
        }
    }

    #[tokio::test]
    async fn posts_a_chat_completion_and_parses_the_answer() {
        let (addr, server) = serve_once(
            "200 OK",
            r#"{"id":"x","model":"llama3:8b","choices":[{"index":0,"message":{"role":"assistant","content":"hi!"}}],"usage":{"prompt_tokens":12,"completion_tokens":3}}"#,
        )
        .await;
        let provider = OpenAiCompatible::new(format!("http://{addr}/v1/"))
            .api_key("sk-test")
            .default_model("llama3");
        let response = provider.complete(&request()).await.unwrap();
        assert_eq!(
            response,
            LlmResponse {
                text: "hi!".into(),
                model: "llama3:8b".into(),
                prompt_tokens: 12,
                completion_tokens: 3,
            }
        );
        let received = server.await.unwrap();
        assert_eq!(received.request_line, "POST /v1/chat/completions HTTP/1.1");
        assert_eq!(received.header("authorization"), Some("Bearer sk-test"));
        assert_eq!(
            received.json(),
            serde_json::json!({
                "model": "llama3",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hello there"},
                ],
                "max_tokens": 64,
                "temperature": 0.25,
            })
        );
    }

    #[tokio::test]
    async fn without_a_key_or_usage_nothing_is_sent_and_tokens_are_estimated() {
        let (addr, server) = serve_once(
            "200 OK",
            r#"{"choices":[{"message":{"content":"one two three"}}]}"#,
        )
        .await;
        let provider = OpenAiCompatible::new(format!("http://{addr}"));
        let mut req = request();
        req.model = Some("m1".into());
        req.max_tokens = None;
        req.temperature = None;
        let response = provider.complete(&req).await.unwrap();
        assert_eq!(response.model, "m1");
        assert_eq!(response.prompt_tokens, 4);
        assert_eq!(response.completion_tokens, 3);
        let received = server.await.unwrap();
        assert_eq!(received.header("authorization"), None);
        let json = received.json();
        assert!(json.get("max_tokens").is_none() && json.get("temperature").is_none());
    }

    #[tokio::test]
    async fn a_server_error_is_an_http_error_with_the_body() {
        let (addr, _server) = serve_once("500 Internal Server Error", "model exploded").await;
        let provider = OpenAiCompatible::new(format!("http://{addr}")).default_model("m");
        match provider.complete(&request()).await.unwrap_err() {
            LlmError::Http { status, body, .. } => {
                assert_eq!(status, 500);
                assert_eq!(body, "model exploded");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_unavailable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let provider = OpenAiCompatible::new(format!("http://{addr}")).default_model("m");
        let error = provider.complete(&request()).await.unwrap_err();
        assert!(matches!(error, LlmError::Unavailable(_)), "{error:?}");
        let error = provider.health().await.unwrap_err();
        assert!(matches!(error, LlmError::Unavailable(_)), "{error:?}");
    }

    #[tokio::test]
    async fn a_body_that_is_not_a_completion_is_a_bad_response() {
        let (addr, _server) = serve_once("200 OK", "<html>gateway</html>").await;
        let provider = OpenAiCompatible::new(format!("http://{addr}")).default_model("m");
        let error = provider.complete(&request()).await.unwrap_err();
        assert!(
            matches!(&error, LlmError::BadResponse(m) if m.contains("<html>")),
            "{error:?}"
        );

        let (addr, _server) = serve_once("200 OK", r#"{"choices":[]}"#).await;
        let provider = OpenAiCompatible::new(format!("http://{addr}")).default_model("m");
        let error = provider.complete(&request()).await.unwrap_err();
        assert!(
            matches!(&error, LlmError::BadResponse(m) if m.contains("choices")),
            "{error:?}"
        );

        let (addr, _server) = serve_once("200 OK", r#"{"error":{"message":"no credits"}}"#).await;
        let provider = OpenAiCompatible::new(format!("http://{addr}")).default_model("m");
        let error = provider.complete(&request()).await.unwrap_err();
        assert!(
            matches!(&error, LlmError::BadResponse(m) if m.contains("no credits")),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(stream);
        });
        let provider = OpenAiCompatible::new(format!("http://{addr}"))
            .default_model("m")
            .timeout(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let error = provider.complete(&request()).await.unwrap_err();
        assert!(matches!(error, LlmError::Timeout { .. }), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn health_gets_models_with_the_key() {
        let (addr, server) = serve_once("200 OK", r#"{"data":[]}"#).await;
        let provider = OpenAiCompatible::new(format!("http://{addr}/v1")).api_key("k");
        provider.health().await.unwrap();
        let received = server.await.unwrap();
        assert_eq!(received.request_line, "GET /v1/models HTTP/1.1");
        assert_eq!(received.header("authorization"), Some("Bearer k"));
    }

    #[tokio::test]
    async fn no_model_anywhere_is_a_config_error() {
        let provider = OpenAiCompatible::new("http://127.0.0.1:9");
        let error = provider.complete(&request()).await.unwrap_err();
        assert!(matches!(error, LlmError::Config(_)), "{error:?}");
    }

    #[test]
    fn debug_redacts_the_key() {
        let provider = OpenAiCompatible::new("http://x").api_key("sk-very-secret");
        let shown = format!("{provider:?}");
        assert!(!shown.contains("sk-very-secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
