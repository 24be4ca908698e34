//! One broker connection: a blocking socket (TLS over it when configured) with Kafka's 4-byte
//! size framing, request and response headers of the versions each API asks for, correlation
//! ids checked, every request bounded by the request timeout and every response by
//! [`MAX_RESPONSE`], the API versions negotiated once, at connect, with ApiVersions, then SASL
//! authentication when configured (`sasl.rs`).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    DescribeLogDirsRequest, DescribeLogDirsResponse, FetchRequest, FetchResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, ListGroupsRequest, ListGroupsResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
    ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

use super::security::{Dial, Socket, Stream};
use super::ClientError;

/// The largest response accepted (64 MiB): a peer announcing more is not answering what we
/// asked, and we will not allocate for it. (A Metadata response of 100,000 partitions on
/// three replicas is about 10 MiB.)
pub(crate) const MAX_RESPONSE: usize = 64 << 20;

/// The first read buffer for a response; it grows as bytes arrive, never ahead of them by more
/// than what has arrived, so an announced size costs nothing until it is sent.
const FIRST_READ: usize = 64 << 10;

/// The ApiVersions version tried first: flexible (v3+) carries the client's software name,
/// and every broker since Kafka 2.4 speaks it. Older brokers answer `UNSUPPORTED_VERSION`
/// with their versions in v0 format, and the request is sent again in a version they speak.
const API_VERSIONS_FIRST: i16 = 3;

/// A request this client sends: its API key, the versions it implements (the fields it sets
/// and reads exist in all of them) and its response type.
pub(crate) trait Api: Encodable + HeaderVersion {
    /// The request's API key.
    const KEY: ApiKey;
    /// The lowest version this client speaks.
    const MIN: i16;
    /// The highest version this client implements.
    const MAX: i16;
    /// The response to it.
    type Response: Decodable + HeaderVersion;
}

macro_rules! apis {
    ($($req:ident => $resp:ident: $key:ident $min:literal ..= $max:literal;)*) => {
        $(
            impl Api for $req {
                const KEY: ApiKey = ApiKey::$key;
                const MIN: i16 = $min;
                const MAX: i16 = $max;
                type Response = $resp;
            }
        )*

        /// Every API this client sends, with the versions it speaks (lowest, highest).
        pub(crate) const APIS: &[(ApiKey, i16, i16)] = &[$((ApiKey::$key, $min, $max)),*];
    };
}

// The lowest versions are kafka-protocol's (Kafka 4's) or the first whose semantics we need:
// Metadata v1 (null = all topics, controller, internal flag), OffsetFetch v2 (null topics =
// every committed partition). The highest are the last before a version that names topics by
// id only (OffsetFetch v10, OffsetCommit v10, Produce v13, Fetch v13). Fetch v4 is the first
// that reads record batches v2. SaslHandshake v1 is the one whose tokens then travel in
// SaslAuthenticate requests (v0 sent them bare); SaslAuthenticate v1 adds the session lifetime.
apis! {
    ApiVersionsRequest => ApiVersionsResponse: ApiVersions 0..=3;
    MetadataRequest => MetadataResponse: Metadata 1..=13;
    ListOffsetsRequest => ListOffsetsResponse: ListOffsets 1..=10;
    ListGroupsRequest => ListGroupsResponse: ListGroups 0..=5;
    FindCoordinatorRequest => FindCoordinatorResponse: FindCoordinator 0..=6;
    DescribeGroupsRequest => DescribeGroupsResponse: DescribeGroups 0..=6;
    OffsetFetchRequest => OffsetFetchResponse: OffsetFetch 2..=9;
    DescribeLogDirsRequest => DescribeLogDirsResponse: DescribeLogDirs 1..=4;
    CreateTopicsRequest => CreateTopicsResponse: CreateTopics 2..=7;
    DeleteTopicsRequest => DeleteTopicsResponse: DeleteTopics 1..=6;
    ProduceRequest => ProduceResponse: Produce 3..=12;
    FetchRequest => FetchResponse: Fetch 4..=12;
    OffsetCommitRequest => OffsetCommitResponse: OffsetCommit 2..=9;
    SaslHandshakeRequest => SaslHandshakeResponse: SaslHandshake 1..=1;
    SaslAuthenticateRequest => SaslAuthenticateResponse: SaslAuthenticate 0..=2;
}

/// The version of each API both sides speak: for each API this client uses, the broker's
/// highest capped at ours, or nothing when the ranges do not meet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Versions {
    /// The broker's (lowest, highest) by API key, as ApiVersions listed them.
    broker: BTreeMap<i16, (i16, i16)>,
    /// The version chosen, by API key (only APIs of [`APIS`] both sides speak).
    chosen: BTreeMap<i16, i16>,
}

impl Versions {
    /// Chooses from the broker's ranges (API key, lowest, highest).
    pub(crate) fn negotiate(broker: impl IntoIterator<Item = (i16, i16, i16)>) -> Self {
        let broker: BTreeMap<i16, (i16, i16)> = broker
            .into_iter()
            .map(|(k, lo, hi)| (k, (lo, hi)))
            .collect();
        let chosen = APIS
            .iter()
            .filter_map(|&(key, min, max)| {
                let &(lo, hi) = broker.get(&(key as i16))?;
                let v = hi.min(max);
                (v >= lo.max(min)).then_some((key as i16, v))
            })
            .collect();
        Self { broker, chosen }
    }

    /// The version to send `R` in, or why there is none.
    pub(crate) fn of<R: Api>(&self, addr: &str) -> Result<i16, ClientError> {
        self.chosen
            .get(&(R::KEY as i16))
            .copied()
            .ok_or_else(|| ClientError::Unsupported {
                addr: addr.to_owned(),
                api: R::KEY,
                broker: self.broker.get(&(R::KEY as i16)).copied(),
                ours: (R::MIN, R::MAX),
            })
    }

    #[cfg(test)]
    /// Whether the broker speaks `R` in a version we implement.
    pub(crate) fn has<R: Api>(&self) -> bool {
        self.chosen.contains_key(&(R::KEY as i16))
    }
}

/// One open connection to one broker.
#[derive(Debug)]
pub(crate) struct Conn {
    /// HOST:PORT as given or advertised, for errors.
    pub(super) addr: String,
    stream: Stream,
    client_id: StrBytes,
    timeout: Duration,
    correlation: i32,
    versions: Versions,
    /// The request being written (reused).
    out: BytesMut,
    /// Whether SASL is configured, and whether the broker has answered a request other than
    /// ApiVersions here: until then, a broker that hangs up may be one that requires what this
    /// connection lacks, and the error says so.
    pub(super) sasl: bool,
    served: bool,
    /// When the broker ends the authenticated session (SaslAuthenticate's session lifetime,
    /// KIP-368), less a margin: the connection is replaced before then.
    pub(super) session_ends: Option<Instant>,
}

impl Conn {
    /// Connects to `addr` (HOST:PORT, each resolved address tried in turn, each within the
    /// timeout), does the TLS handshake when configured, negotiates versions and authenticates
    /// when SASL is configured. Fails with [`ClientError::Unsupported`] for Metadata when the
    /// broker speaks no version of it we implement: nothing else can work then.
    pub(crate) fn connect(addr: &str, dial: &Dial) -> Result<Self, ClientError> {
        let tcp = open(addr, dial.timeout)?;
        tcp.set_nodelay(true)
            .map_err(|source| ClientError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        let stream = dial.wrap(addr, Socket::new(tcp, dial.timeout))?;
        let mut conn = Self {
            addr: addr.to_owned(),
            stream,
            client_id: StrBytes::from_string(dial.client_id.clone()),
            timeout: dial.timeout,
            correlation: 0,
            versions: Versions::default(),
            out: BytesMut::with_capacity(4096),
            sasl: dial.sasl.is_some(),
            served: false,
            session_ends: None,
        };
        conn.versions = conn.api_versions()?;
        conn.versions.of::<MetadataRequest>(addr)?;
        if let Some(sasl) = &dial.sasl {
            conn.authenticate(sasl)?;
        }
        Ok(conn)
    }

    /// Whether the broker's authenticated session is over, or nearly: the connection must be
    /// replaced before its next request, which the broker would otherwise refuse.
    pub(crate) fn session_ended(&self, now: Instant) -> bool {
        self.session_ends.is_some_and(|end| now >= end)
    }

    /// HOST:PORT of the broker.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// The version `R` is sent in on this connection, or [`ClientError::Unsupported`].
    pub(crate) fn version<R: Api>(&self) -> Result<i16, ClientError> {
        self.versions.of::<R>(&self.addr)
    }

    /// Sends `req` in the negotiated version and waits for its response.
    pub(crate) fn send<R: Api>(&mut self, req: &R) -> Result<R::Response, ClientError> {
        let version = self.version::<R>()?;
        self.send_in(req, version)
    }

    /// Sends `req` in `version` and decodes the response in the same version. After an I/O
    /// error, a timeout, a bad size or correlation id the connection is out of step (the
    /// caller drops it); after an answer that does not decode it is not (it was read whole).
    fn send_in<R: Api>(&mut self, req: &R, version: i16) -> Result<R::Response, ClientError> {
        let body = self.round_trip(req, version)?;
        self.decode::<R>(body, version)
    }

    /// Writes the request and reads the response's body (its header checked and skipped).
    fn round_trip<R: Api>(&mut self, req: &R, version: i16) -> Result<Bytes, ClientError> {
        self.correlation = self.correlation.wrapping_add(1);
        let correlation = self.correlation;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(self.client_id.clone()));
        let encode = |source| ClientError::Encode {
            api: R::KEY,
            version,
            source,
        };
        self.out.clear();
        self.out.put_i32(0);
        header
            .encode(&mut self.out, R::header_version(version))
            .map_err(encode)?;
        req.encode(&mut self.out, version).map_err(encode)?;
        let size = i32::try_from(self.out.len() - 4)
            .map_err(|_| encode(anyhow::anyhow!("request too large")))?;
        self.out[..4].copy_from_slice(&size.to_be_bytes());

        // Every read and write of this request ends by then, TLS's included.
        self.stream.set_deadline(Instant::now() + self.timeout);
        if let Err(e) = self
            .stream
            .write_all(&self.out)
            .and_then(|()| self.stream.flush())
        {
            return Err(match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.timeout_error(R::KEY),
                _ => self.io_error(R::KEY, "sending", e),
            });
        }
        let mut size = [0u8; 4];
        self.read_full(&mut size, R::KEY)?;
        // A TLS record (an alert or a handshake, version 3.x) where a size should be: the port
        // speaks TLS and we do not. No valid size starts so (it would be over 350 MB).
        if matches!(self.stream, Stream::Plain(_)) && matches!(size, [0x15 | 0x16, 0x03, ..]) {
            return Err(ClientError::TlsListener {
                addr: self.addr.clone(),
            });
        }
        let size = i32::from_be_bytes(size);
        let size = usize::try_from(size)
            .ok()
            .filter(|&s| (4..=MAX_RESPONSE).contains(&s))
            .ok_or_else(|| ClientError::BadResponseSize {
                addr: self.addr.clone(),
                api: R::KEY,
                size: i64::from(size),
                limit: MAX_RESPONSE,
            })?;
        let mut body = self.read_body(size, R::KEY)?;
        let header = ResponseHeader::decode(&mut body, R::Response::header_version(version))
            .map_err(|source| self.decode_error(R::KEY, version, source))?;
        if header.correlation_id != correlation {
            return Err(ClientError::OutOfStep {
                addr: self.addr.clone(),
                api: R::KEY,
                expected: correlation,
                got: header.correlation_id,
            });
        }
        self.served |= R::KEY != ApiKey::ApiVersions;
        Ok(body)
    }

    fn decode<R: Api>(&self, mut body: Bytes, version: i16) -> Result<R::Response, ClientError> {
        R::Response::decode(&mut body, version)
            .map_err(|source| self.decode_error(R::KEY, version, source))
    }

    /// Reads `size` bytes, growing the buffer only as they arrive.
    fn read_body(&mut self, size: usize, api: ApiKey) -> Result<Bytes, ClientError> {
        let mut buf = vec![0u8; size.min(FIRST_READ)];
        let mut filled = 0;
        while filled < size {
            if filled == buf.len() {
                buf.resize(size.min(buf.len() * 2), 0);
            }
            let end = buf.len();
            self.read_full(&mut buf[filled..end], api)?;
            filled = end;
        }
        Ok(Bytes::from(buf))
    }

    /// Fills `buf`, failing with [`ClientError::Timeout`] past the request's deadline.
    fn read_full(&mut self, mut buf: &mut [u8], api: ApiKey) -> Result<(), ClientError> {
        while !buf.is_empty() {
            match self.stream.read(buf) {
                // TLS reports a peer that closed without close_notify as an error: the same.
                Ok(0) => return Err(self.eof(api)),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(self.eof(api)),
                Ok(n) => buf = &mut buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(self.timeout_error(api));
                }
                Err(e) => return Err(self.io_error(api, "reading", e)),
            }
        }
        Ok(())
    }

    /// ApiVersions: first in [`API_VERSIONS_FIRST`], then, if the broker refuses it, in the
    /// highest version it lists (Kafka answers a version it does not speak in v0's format).
    fn api_versions(&mut self) -> Result<Versions, ClientError> {
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str(env!("CARGO_PKG_NAME")))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let body = self.round_trip(&req, API_VERSIONS_FIRST)?;
        let first = self.decode::<ApiVersionsRequest>(body.clone(), API_VERSIONS_FIRST);
        let resp = match first {
            Ok(resp) if resp.error_code != ResponseError::UnsupportedVersion.code() => resp,
            _ => {
                let v0 = self.decode::<ApiVersionsRequest>(body, 0)?;
                let theirs = v0
                    .api_keys
                    .iter()
                    .find(|k| k.api_key == ApiKey::ApiVersions as i16)
                    .map_or(0, |k| k.max_version)
                    .clamp(0, API_VERSIONS_FIRST - 1);
                let req = if theirs >= 3 {
                    req
                } else {
                    ApiVersionsRequest::default()
                };
                self.send_in(&req, theirs)?
            }
        };
        if let Some(error) = ResponseError::try_from_code(resp.error_code) {
            return Err(ClientError::Refused {
                addr: self.addr.clone(),
                api: ApiKey::ApiVersions,
                error,
                what: String::new(),
            });
        }
        Ok(Versions::negotiate(
            resp.api_keys
                .iter()
                .map(|k| (k.api_key, k.min_version, k.max_version)),
        ))
    }

    /// What a broker closing the connection may mean. Kafka hangs up on a request it cannot
    /// take from a connection that has not authenticated (after ApiVersions), and a TLS
    /// listener on a request in plain text.
    fn hung_up(&self) -> &'static str {
        match (&self.stream, self.sasl || self.served) {
            (Stream::Plain(_), false) => {
                "the broker closed the connection (does it require SASL or TLS? See \
                 --kafka-security-protocol)"
            }
            (Stream::Tls(_), false) => {
                "the broker closed the connection (does it require SASL? See \
                 --kafka-security-protocol)"
            }
            (_, true) => "the broker closed the connection",
        }
    }

    fn eof(&self, api: ApiKey) -> ClientError {
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, self.hung_up());
        self.io_error(api, "reading", eof)
    }

    fn io_error(&self, api: ApiKey, doing: &'static str, source: io::Error) -> ClientError {
        ClientError::Io {
            addr: self.addr.clone(),
            api,
            doing,
            source,
        }
    }

    fn timeout_error(&self, api: ApiKey) -> ClientError {
        ClientError::Timeout {
            addr: self.addr.clone(),
            api,
            timeout: self.timeout,
        }
    }

    fn decode_error(&self, api: ApiKey, version: i16, source: anyhow::Error) -> ClientError {
        ClientError::Decode {
            addr: self.addr.clone(),
            api,
            version,
            source,
        }
    }
}

#[cfg(test)]
impl Conn {
    /// Lowers the version `key` is sent in to at most `max`, as an older broker would.
    pub(crate) fn cap(&mut self, key: ApiKey, max: i16) {
        if let Some(v) = self.versions.chosen.get_mut(&(key as i16)) {
            *v = (*v).min(max);
        }
    }
}

/// Resolves HOST:PORT and connects to the first address that accepts within `timeout`.
fn open(addr: &str, timeout: Duration) -> Result<TcpStream, ClientError> {
    let error = |source| ClientError::Connect {
        addr: addr.to_owned(),
        source,
    };
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(error)?.collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(error(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_the_highest_common_version() {
        let v = Versions::negotiate([
            (ApiKey::Metadata as i16, 0, 20),
            (ApiKey::ListOffsets as i16, 0, 5),
            (ApiKey::OffsetFetch as i16, 10, 12),
            (ApiKey::ListGroups as i16, 0, 0),
        ]);
        assert_eq!(v.of::<MetadataRequest>("b:1").unwrap(), 13);
        assert_eq!(v.of::<ListOffsetsRequest>("b:1").unwrap(), 5);
        assert_eq!(v.of::<ListGroupsRequest>("b:1").unwrap(), 0);
        assert!(v.has::<ListGroupsRequest>());
        // The broker speaks only versions above ours.
        let e = v.of::<OffsetFetchRequest>("b:1").unwrap_err();
        assert!(matches!(
            e,
            ClientError::Unsupported {
                broker: Some((10, 12)),
                ours: (2, 9),
                ..
            }
        ));
        // Not listed at all.
        let e = v.of::<DescribeLogDirsRequest>("b:1").unwrap_err();
        assert!(
            matches!(e, ClientError::Unsupported { broker: None, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("DescribeLogDirs"), "{e}");
    }

    #[test]
    fn a_broker_below_our_lowest_version_is_refused() {
        let v = Versions::negotiate([(ApiKey::Metadata as i16, 0, 0)]);
        let e = v.of::<MetadataRequest>("old:9092").unwrap_err();
        assert!(matches!(
            e,
            ClientError::Unsupported {
                broker: Some((0, 0)),
                ours: (1, 13),
                ..
            }
        ));
    }

    /// A peer that answers with a huge size is refused before anything is allocated, and one
    /// that answers another request's correlation id is out of step.
    #[test]
    fn bad_peers() {
        use std::net::TcpListener;
        use std::thread;

        fn serve(answer: impl FnOnce(&mut TcpStream, i32) + Send + 'static) -> String {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap().to_string();
            thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let mut head = [0u8; 12];
                s.read_exact(&mut head).unwrap();
                let correlation = i32::from_be_bytes(head[8..12].try_into().unwrap());
                answer(&mut s, correlation);
                let mut rest = [0u8; 256];
                while matches!(s.read(&mut rest), Ok(n) if n > 0) {}
            });
            addr
        }
        let t = Duration::from_secs(5);

        let addr = serve(|s, _| s.write_all(&(1i32 << 30).to_be_bytes()).unwrap());
        let e = Conn::connect(&addr, &Dial::plain("t", t)).unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::BadResponseSize {
                    size: 1073741824,
                    ..
                }
            ),
            "{e}"
        );

        let addr = serve(|s, c| {
            s.write_all(&8i32.to_be_bytes()).unwrap();
            s.write_all(&(c + 7).to_be_bytes()).unwrap();
            s.write_all(&[0; 4]).unwrap();
        });
        let e = Conn::connect(&addr, &Dial::plain("t", t)).unwrap_err();
        assert!(matches!(e, ClientError::OutOfStep { .. }), "{e}");

        // Silence: a timeout, within the request timeout.
        let addr = serve(|_, _| thread::sleep(Duration::from_secs(3)));
        let started = Instant::now();
        let e = Conn::connect(&addr, &Dial::plain("t", Duration::from_millis(300))).unwrap_err();
        assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
