//! Outbound HTTP for agents, below the capability that governs it (`capabilities/http.rs`):
//! which addresses are never dialled unless an operator names them, and a connector that
//! dials only addresses it was handed (already checked), keeps the host name for TLS, and
//! reads a bounded response whole.
//!
//! The capability resolves a name once, checks every address, and passes the survivors here,
//! so there is no second lookup for a rebinding name server to answer differently.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;

/// Why an address is not dialled unless an operator names it: the networks a request from
/// inside the host's network could reach that the public internet cannot.
pub fn blocked_network(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

/// An IPv6 address that carries an IPv4 one (mapped `::ffff:a.b.c.d`, compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) is judged as that IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let segments = v6.segments();
    let embedded = Ipv4Addr::new(
        (segments[6] >> 8) as u8,
        segments[6] as u8,
        (segments[7] >> 8) as u8,
        segments[7] as u8,
    );
    // `::a.b.c.d` (deprecated, but still routed by some stacks); `::` and `::1` are IPv6's own.
    if segments[..6] == [0; 6] && u32::from(embedded) > 1 {
        return IpAddr::V4(embedded);
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return IpAddr::V4(embedded);
    }
    ip
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (169, 254, _) if ip == Ipv4Addr::new(169, 254, 169, 254) => "cloud metadata",
        (169, 254, _) => "link-local",
        (0, _, _) => "this network (0.0.0.0/8)",
        (10, _, _) => "private (10.0.0.0/8)",
        (100, 64..=127, _) => "carrier-grade NAT (100.64.0.0/10)",
        (127, _, _) => "loopback",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 168, _) => "private (192.168.0.0/16)",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved (240.0.0.0/4)",
        _ => return None,
    })
}

fn blocked_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(if ip.is_unspecified() {
        "unspecified (::)"
    } else if ip.is_loopback() {
        "loopback"
    } else if first & 0xfe00 == 0xfc00 {
        // fd00:ec2::254, the IPv6 metadata address of one cloud, is in here.
        "unique-local (fc00::/7)"
    } else if first & 0xffc0 == 0xfe80 {
        "link-local"
    } else if first & 0xff00 == 0xff00 {
        "multicast"
    } else {
        return None;
    })
}

/// How one request may run: set by the capability from the tier's grant and the phase.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of the response body read; past it the request fails.
    pub max_response_bytes: u64,
    /// From the first connection attempt to the last byte of the body.
    pub timeout: Duration,
}

/// What came back, read whole.
#[derive(Debug)]
pub struct Fetched {
    pub response: http::Response<Bytes>,
    /// The address the request went to.
    pub peer: SocketAddr,
}

/// Why a request did not complete.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("cannot connect to `{host}` ({tried}): {source}")]
    Connect {
        host: String,
        tried: String,
        source: std::io::Error,
    },
    #[error("`{0}` is not a name TLS can verify")]
    ServerName(String),
    #[error("tls with `{host}` failed: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("http exchange with `{host}` failed: {source}")]
    Http { host: String, source: hyper::Error },
    #[error("no response from `{host}` within {:?}", .timeout)]
    Timeout { host: String, timeout: Duration },
    #[error("the response of `{host}` is larger than {limit} bytes")]
    ResponseTooLarge { host: String, limit: u64 },
    #[error("the response of `{host}` broke off: {message}")]
    Body { host: String, message: String },
}

/// Dials checked addresses and speaks HTTP/1.1 over TCP or TLS. One per host process: the
/// TLS configuration (its roots) is built once.
#[derive(Debug, Clone)]
pub struct Connector {
    tls: Arc<rustls::ClientConfig>,
}

impl Connector {
    /// A connector trusting the Mozilla roots (`webpki-roots`) and `extra` roots (an
    /// operator's own CA; tests' self-signed ones).
    pub fn new(extra: &[CertificateDer<'static>]) -> Result<Connector, rustls::Error> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for cert in extra {
            roots.add(cert.clone())?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Connector { tls: Arc::new(tls) })
    }

    /// Send `request` to the first of `addrs` that answers (addresses already checked; the
    /// request's URI names the host, which TLS verifies). The whole exchange, body included,
    /// is bounded by `limits`.
    pub async fn send(
        &self,
        host: &str,
        addrs: &[SocketAddr],
        tls: bool,
        request: http::Request<Full<Bytes>>,
        limits: Limits,
    ) -> Result<Fetched, EgressError> {
        let deadline = Instant::now() + limits.timeout;
        let timeout = || EgressError::Timeout {
            host: host.to_string(),
            timeout: limits.timeout,
        };
        tokio::time::timeout_at(
            deadline.into(),
            self.exchange(host, addrs, tls, request, limits),
        )
        .await
        .map_err(|_| timeout())?
    }

    async fn exchange(
        &self,
        host: &str,
        addrs: &[SocketAddr],
        tls: bool,
        mut request: http::Request<Full<Bytes>>,
        limits: Limits,
    ) -> Result<Fetched, EgressError> {
        let (stream, peer) = connect(host, addrs).await?;
        // The request line names the path only; the Host header names the host.
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        *request.uri_mut() = path.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
        let http_error = |source| EgressError::Http {
            host: host.to_string(),
            source,
        };
        let response = if tls {
            let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
                .map_err(|_| EgressError::ServerName(host.to_string()))?
                .to_owned();
            let stream = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, stream)
                .await
                .map_err(|source| EgressError::Tls {
                    host: host.to_string(),
                    source,
                })?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(http_error)?;
            tokio::spawn(conn);
            sender.send_request(request).await.map_err(http_error)?
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(http_error)?;
            tokio::spawn(conn);
            sender.send_request(request).await.map_err(http_error)?
        };
        let (parts, body) = response.into_parts();
        let limit = usize::try_from(limits.max_response_bytes).unwrap_or(usize::MAX);
        let body = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|error| {
                if error.is::<http_body_util::LengthLimitError>() {
                    EgressError::ResponseTooLarge {
                        host: host.to_string(),
                        limit: limits.max_response_bytes,
                    }
                } else {
                    EgressError::Body {
                        host: host.to_string(),
                        message: error.to_string(),
                    }
                }
            })?
            .to_bytes();
        Ok(Fetched {
            response: http::Response::from_parts(parts, body),
            peer,
        })
    }
}

/// The first of `addrs` that accepts a connection.
async fn connect(host: &str, addrs: &[SocketAddr]) -> Result<(TcpStream, SocketAddr), EgressError> {
    let mut last = None;
    for &addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                // Small requests and answers: no waiting to fill a segment.
                let _ = stream.set_nodelay(true);
                return Ok((stream, addr));
            }
            Err(error) => last = Some(error),
        }
    }
    let tried = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    Err(EgressError::Connect {
        host: host.to_string(),
        tried,
        source: last.unwrap_or_else(|| std::io::Error::other("no address to connect to")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn internal_networks_are_blocked_and_public_ones_are_not() {
        for (address, class) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.1.2.3", "private (10.0.0.0/8)"),
            ("172.16.0.1", "private (172.16.0.0/12)"),
            ("172.31.255.255", "private (172.16.0.0/12)"),
            ("192.168.1.1", "private (192.168.0.0/16)"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "carrier-grade NAT (100.64.0.0/10)"),
            ("0.0.0.0", "this network (0.0.0.0/8)"),
            ("::1", "loopback"),
            ("::", "unspecified (::)"),
            ("fd00:ec2::254", "unique-local (fc00::/7)"),
            ("fe80::1", "link-local"),
            // IPv4 inside IPv6 is judged as the IPv4 address it carries.
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "cloud metadata"),
            ("::127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private (10.0.0.0/8)"),
            ("64:ff9b::a9fe:a9fe", "cloud metadata"),
        ] {
            assert_eq!(blocked_network(ip(address)), Some(class), "{address}");
        }
        for address in [
            "140.82.112.3",
            "172.32.0.1",
            "100.128.0.1",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(blocked_network(ip(address)), None, "{address}");
        }
    }
}
