//! Harness shared by Kasagi's integration tests.
//!
//! Every test drives the real `kasagi` binary over real loopback sockets, with clients that
//! share no code with the server: `tungstenite` for well-formed WebSocket traffic, and raw
//! `TcpStream`s for handcrafted HTTP requests and frames.
//!
//! Invariants the tests rely on:
//! - every wait is bounded (a read timeout or a deadline), so a missing message fails the test
//!   with a message instead of hanging it;
//! - a `Server` kills the process it spawned (by its own `Child`, never by name) when dropped,
//!   and prints the server's stderr when the test is failing;
//! - nothing sleeps to order events: sleeps appear only inside bounded polling loops for
//!   conditions that have no message (RSS, process exit).
//!
//! Binary values: MessagePack `bin` has no JSON counterpart, so in this harness a binary value
//! is written `{"$bin": [bytes…]}` (see [`bin`]) both when sending and when receiving in
//! MessagePack mode.

#![allow(dead_code)]

pub mod fleet;

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{json, Map, Value};
use tungstenite::handshake::client::Response;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

/// How long the server may take to print its `kasagi listening on` line.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(20);
/// How long a client waits for one expected message. Generous: the server under test is a
/// debug build sharing 2 cores with other test processes.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

pub const MSGPACK: &str = "kasagi.v1.msgpack";
pub const JSON: &str = "kasagi.v1.json";

static UNIQUE: AtomicU64 = AtomicU64::new(0);

fn unique() -> u64 {
    UNIQUE.fetch_add(1, Ordering::Relaxed)
}

/// Microseconds since the Unix epoch, the unit of `pong.time`.
pub fn now_micros() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(since.as_micros()).expect("time fits u64")
}

// ---------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------

/// One `kasagi serve` process listening on a free loopback port.
pub struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    stderr_path: PathBuf,
    args: Vec<String>,
}

impl Server {
    /// Starts `kasagi serve --listen 127.0.0.1:0 ARGS…`. Adds `--shards 1` unless `args` name
    /// `--shards`, so most tests run one executor (cheap, deterministic) and the shard tests
    /// choose their own count.
    pub fn start(args: &[&str]) -> Server {
        Server::start_env(args, &[])
    }

    /// `start` with `KASAGI_*` environment variables set (`--shards 1` is added unless the
    /// flags or `envs` name a shard count).
    pub fn start_env(args: &[&str], envs: &[(&str, &str)]) -> Server {
        let mut full: Vec<String> = vec!["serve".into(), "--listen".into(), "127.0.0.1:0".into()];
        if !args.contains(&"--shards") && !envs.iter().any(|(name, _)| *name == "KASAGI_SHARDS") {
            full.push("--shards".into());
            full.push("1".into());
        }
        full.extend(args.iter().map(|arg| arg.to_string()));
        Server::spawn(full, envs)
    }

    /// Starts `kasagi echo --listen 127.0.0.1:0`, the RFC 6455 echo server.
    pub fn start_echo() -> Server {
        Server::spawn(
            vec!["echo".into(), "--listen".into(), "127.0.0.1:0".into()],
            &[],
        )
    }

    fn spawn(full: Vec<String>, envs: &[(&str, &str)]) -> Server {
        let stderr_path = std::env::temp_dir().join(format!(
            "kasagi-itest-{}-{}-{}.stderr",
            std::process::id(),
            unique(),
            now_micros()
        ));
        let stderr_file = File::create(&stderr_path).expect("create the stderr capture file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_kasagi"));
        // The server sees only the configuration the test gives it.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("KASAGI_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .args(&full)
            .envs(envs.iter().copied())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_file))
            .spawn()
            .expect("spawn the kasagi binary");

        let stdout = child.stdout.take().expect("piped stdout");
        let (lines_tx, lines_rx) = mpsc::channel::<String>();
        // The reader keeps draining stdout after the listening line so the server never blocks
        // on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    // Nobody listens any more: keep draining.
                    continue;
                }
            }
        });

        let mut server = Server {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr_path,
            args: full,
        };
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.trim().strip_prefix("kasagi listening on ") {
                        server.addr = rest.trim().parse().unwrap_or_else(|err| {
                            panic!("unparsable address in {line:?}: {err}");
                        });
                        return server;
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "server {:?} printed no `kasagi listening on ADDR` line within {:?}; stdout: {:?}; stderr:\n{}",
                    server.args,
                    STARTUP_DEADLINE,
                    seen,
                    server.stderr()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = server.child.as_mut().and_then(|c| c.wait().ok());
                    panic!(
                        "server {:?} closed stdout (exit {:?}) before its listening line; stdout: {:?}; stderr:\n{}",
                        server.args,
                        status,
                        seen,
                        server.stderr()
                    )
                }
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Resident set size of the server process, from `/proc/PID/status`.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line in /proc/PID/status")
    }

    /// Sends SIGTERM to the server process (its PID, from the `Child` we spawned).
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends the signal `name` (`TERM`, `INT`…) to the server process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Polls for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("server running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A connected WebSocket client speaking `enc`.
    pub fn client(&self, enc: Enc) -> Client {
        Client::connect(self.addr, enc)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let text = self.stderr();
            let tail: String = {
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(80);
                lines[from..].join("\n")
            };
            eprintln!(
                "---- kasagi {:?} stderr (last 80 lines, full file {}) ----\n{tail}\n----",
                self.args,
                self.stderr_path.display()
            );
        } else {
            let _ = std::fs::remove_file(&self.stderr_path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Encodings
// ---------------------------------------------------------------------------------------------

/// The two subprotocols of PROTOCOL.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enc {
    Json,
    Msgpack,
}

impl Enc {
    pub const BOTH: [Enc; 2] = [Enc::Json, Enc::Msgpack];

    pub fn subprotocol(self) -> &'static str {
        match self {
            Enc::Json => JSON,
            Enc::Msgpack => MSGPACK,
        }
    }

    /// The WebSocket message carrying `value` in this encoding.
    pub fn message(self, value: &Value) -> Message {
        match self {
            Enc::Json => Message::Text(value.to_string()),
            Enc::Msgpack => Message::Binary(to_msgpack(value)),
        }
    }
}

/// The harness's spelling of a binary value (see the module doc).
pub fn bin(bytes: &[u8]) -> Value {
    json!({ "$bin": bytes })
}

fn as_bin(value: &Value) -> Option<Vec<u8>> {
    let map = value.as_object()?;
    if map.len() != 1 {
        return None;
    }
    let items = map.get("$bin")?.as_array()?;
    items
        .iter()
        .map(|item| item.as_u64().and_then(|b| u8::try_from(b).ok()))
        .collect()
}

/// Encodes a JSON value as MessagePack, with `{"$bin": [...]}` as `bin`.
pub fn to_msgpack(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_msgpack(&mut out, value);
    out
}

fn write_msgpack(out: &mut Vec<u8>, value: &Value) {
    use rmp::encode;
    const VEC: &str = "writing MessagePack to a Vec cannot fail";
    if let Some(bytes) = as_bin(value) {
        encode::write_bin(out, &bytes).expect(VEC);
        return;
    }
    match value {
        Value::Null => encode::write_nil(out).expect(VEC),
        Value::Bool(b) => encode::write_bool(out, *b).expect(VEC),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                encode::write_uint(out, u).expect(VEC);
            } else if let Some(i) = n.as_i64() {
                encode::write_sint(out, i).expect(VEC);
            } else {
                encode::write_f64(out, n.as_f64().expect("a JSON number is u64, i64 or f64"))
                    .expect(VEC);
            }
        }
        Value::String(s) => encode::write_str(out, s).expect(VEC),
        Value::Array(items) => {
            encode::write_array_len(out, u32::try_from(items.len()).expect("array len"))
                .expect(VEC);
            for item in items {
                write_msgpack(out, item);
            }
        }
        Value::Object(map) => {
            encode::write_map_len(out, u32::try_from(map.len()).expect("map len")).expect(VEC);
            for (key, item) in map {
                encode::write_str(out, key).expect(VEC);
                write_msgpack(out, item);
            }
        }
    }
}

/// A JSON value decoded from MessagePack, `bin` becoming `{"$bin": [...]}`.
struct Decoded(Value);

impl<'de> Deserialize<'de> for Decoded {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DecodedVisitor).map(Decoded)
    }
}

struct DecodedVisitor;

impl<'de> Visitor<'de> for DecodedVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a MessagePack value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("non-finite float {v}")))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(bin(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(DecodedVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Decoded(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some((key, Decoded(item))) = access.next_entry::<String, Decoded>()? {
            map.insert(key, item);
        }
        Ok(Value::Object(map))
    }
}

pub fn from_msgpack(bytes: &[u8]) -> Result<Value, String> {
    rmp_serde::from_slice::<Decoded>(bytes)
        .map(|decoded| decoded.0)
        .map_err(|err| {
            format!("undecodable MessagePack from the server: {err}; bytes {bytes:02x?}")
        })
}

/// Standard base64 with padding (RFC 4648), how JSON mode carries binary values.
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// ---------------------------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------------------------

/// What one read from a client socket produced.
#[derive(Debug)]
pub enum Event {
    Msg(Value),
    /// A close frame, with its code when it had one.
    Close(Option<u16>),
    /// The TCP connection ended (or was reset) without a close frame.
    Eof,
}

/// tungstenite's error, boxed: it is large and only ever reported.
pub type WsError = Box<tungstenite::Error>;

fn ws_error(err: io::Error) -> WsError {
    Box::new(tungstenite::Error::Io(err))
}

/// A Kasagi client over tungstenite, in either encoding.
pub struct Client {
    ws: WebSocket<TcpStream>,
    pub enc: Enc,
    /// The member id from the last `joined`.
    pub you: Option<String>,
    /// The `Sec-WebSocket-Protocol` of the 101, if any.
    pub protocol: Option<String>,
    next_ping: u64,
}

impl Client {
    /// Connects to `/ws`, offering only `enc`'s subprotocol.
    pub fn connect(addr: SocketAddr, enc: Enc) -> Client {
        let (client, _) = Client::connect_with(addr, "/ws", &[enc.subprotocol()], &[])
            .unwrap_or_else(|err| panic!("connect {addr} as {enc:?}: {err}"));
        assert_eq!(client.enc, enc, "server picked another subprotocol");
        client
    }

    /// Connects with full control of the target (path and query), the subprotocol offer (in
    /// order; empty = no header) and extra headers.
    pub fn connect_with(
        addr: SocketAddr,
        target: &str,
        offer: &[&str],
        headers: &[(&str, &str)],
    ) -> Result<(Client, Response), WsError> {
        let stream = TcpStream::connect_timeout(&addr, RECV_TIMEOUT).map_err(ws_error)?;
        Client::connect_stream(stream, addr, target, offer, headers)
    }

    /// Like [`Client::connect_with`] over a stream the caller prepared (e.g. a small receive
    /// buffer).
    pub fn connect_stream(
        stream: TcpStream,
        addr: SocketAddr,
        target: &str,
        offer: &[&str],
        headers: &[(&str, &str)],
    ) -> Result<(Client, Response), WsError> {
        use tungstenite::client::IntoClientRequest;
        use tungstenite::http::HeaderValue;

        stream.set_nodelay(true).map_err(ws_error)?;
        stream
            .set_read_timeout(Some(RECV_TIMEOUT))
            .map_err(ws_error)?;
        stream
            .set_write_timeout(Some(RECV_TIMEOUT))
            .map_err(ws_error)?;
        let mut request = format!("ws://{addr}{target}").into_client_request()?;
        if !offer.is_empty() {
            // No space after the commas: tungstenite 0.24 matches the server's answer against
            // the offer split on "," without trimming.
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(&offer.join(",")).expect("header value"),
            );
        }
        for (name, value) in headers {
            request.headers_mut().append(
                tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        let (ws, response) = match tungstenite::client(request, stream) {
            Ok(done) => done,
            Err(tungstenite::HandshakeError::Failure(err)) => return Err(Box::new(err)),
            Err(tungstenite::HandshakeError::Interrupted(_)) => {
                return Err(ws_error(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "handshake interrupted",
                )))
            }
        };
        let protocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap_or("<non-ascii>").to_owned());
        let enc = match protocol.as_deref() {
            Some(JSON) => Enc::Json,
            _ => Enc::Msgpack,
        };
        let client = Client {
            ws,
            enc,
            you: None,
            protocol,
            next_ping: 0,
        };
        Ok((client, response))
    }

    pub fn stream(&self) -> &TcpStream {
        self.ws.get_ref()
    }

    /// Sends one message in this client's encoding.
    pub fn send(&mut self, value: Value) {
        let message = self.enc.message(&value);
        self.send_message(message);
    }

    /// Sends `values` in one TCP write (tungstenite buffers them until the flush).
    pub fn send_batch(&mut self, values: impl IntoIterator<Item = Value>) {
        for value in values {
            let message = self.enc.message(&value);
            self.ws
                .write(message)
                .unwrap_or_else(|err| panic!("buffer on a {:?} client: {err}", self.enc));
        }
        self.ws
            .flush()
            .unwrap_or_else(|err| panic!("flush on a {:?} client: {err}", self.enc));
    }

    /// Sends a raw WebSocket message (e.g. a frame of the wrong type).
    pub fn send_message(&mut self, message: Message) {
        self.ws
            .send(message)
            .unwrap_or_else(|err| panic!("send on a {:?} client: {err}", self.enc));
    }

    /// Like [`Client::send_message`], reporting failure (the server may already have closed).
    pub fn try_send_message(&mut self, message: Message) -> Result<(), WsError> {
        self.ws.send(message).map_err(Box::new)
    }

    /// The next event within `timeout`; `None` when nothing came.
    pub fn read_event(&mut self, timeout: Duration) -> Option<Event> {
        // A zero timeout means "block forever" to the socket API.
        let timeout = timeout.max(Duration::from_millis(1));
        self.ws
            .get_ref()
            .set_read_timeout(Some(timeout))
            .expect("set_read_timeout");
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    assert_eq!(
                        self.enc,
                        Enc::Json,
                        "server sent a text frame on a MessagePack connection: {text}"
                    );
                    let value = serde_json::from_str(&text).unwrap_or_else(|err| {
                        panic!("undecodable JSON from the server ({err}): {text}")
                    });
                    return Some(Event::Msg(value));
                }
                Ok(Message::Binary(bytes)) => {
                    assert_eq!(
                        self.enc,
                        Enc::Msgpack,
                        "server sent a binary frame on a JSON connection: {bytes:02x?}"
                    );
                    return Some(Event::Msg(
                        from_msgpack(&bytes).unwrap_or_else(|e| panic!("{e}")),
                    ));
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(Message::Close(frame)) => {
                    return Some(Event::Close(frame.map(|f| u16::from(f.code))));
                }
                Err(tungstenite::Error::Io(err))
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Some(Event::Eof)
                }
                Err(tungstenite::Error::Io(_)) => return Some(Event::Eof),
                Err(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => return Some(Event::Eof),
                Err(err) => panic!("reading from the server: {err}"),
            }
        }
    }

    /// The next data message as tungstenite gives it, whatever its type (echo mode).
    pub fn recv_raw(&mut self) -> Message {
        loop {
            match self.ws.read() {
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(message) => return message,
                Err(err) => panic!("reading from the server: {err}"),
            }
        }
    }

    /// Reads raw messages until the close frame; returns its code (echo mode).
    pub fn expect_close_raw(&mut self) -> Option<u16> {
        loop {
            match self.recv_raw() {
                Message::Close(frame) => return frame.map(|f| u16::from(f.code)),
                _ => continue,
            }
        }
    }

    /// The next message; fails the test on close or after [`RECV_TIMEOUT`].
    pub fn recv(&mut self) -> Value {
        match self.read_event(RECV_TIMEOUT) {
            Some(Event::Msg(value)) => value,
            Some(other) => panic!("expected a message, got {other:?}"),
            None => panic!("no message within {RECV_TIMEOUT:?}"),
        }
    }

    /// The next message if one comes within `timeout`.
    pub fn try_recv(&mut self, timeout: Duration) -> Option<Value> {
        match self.read_event(timeout) {
            Some(Event::Msg(value)) => Some(value),
            Some(other) => panic!("expected a message, got {other:?}"),
            None => None,
        }
    }

    /// The next message, which must be of type `t`.
    pub fn expect(&mut self, t: &str) -> Value {
        let value = self.recv();
        assert_eq!(value["t"], t, "expected a `{t}`, got {value}");
        value
    }

    /// Reads until a message matches `pred`; returns it and the messages skipped before it.
    pub fn recv_until(&mut self, mut pred: impl FnMut(&Value) -> bool) -> (Value, Vec<Value>) {
        let mut skipped = Vec::new();
        loop {
            let value = match self.read_event(RECV_TIMEOUT) {
                Some(Event::Msg(value)) => value,
                Some(other) => {
                    panic!("expected a message, got {other:?}; skipped so far: {skipped:?}")
                }
                None => panic!(
                    "no matching message within {RECV_TIMEOUT:?}; skipped so far: {skipped:?}"
                ),
            };
            if pred(&value) {
                return (value, skipped);
            }
            skipped.push(value);
        }
    }

    /// The next message of type `t`, skipping others.
    pub fn next_of(&mut self, t: &str) -> Value {
        self.recv_until(|v| v["t"] == t).0
    }

    /// Sends a `ping` with a fresh id; returns every message received before its `pong`.
    pub fn sync(&mut self) -> Vec<Value> {
        self.next_ping += 1;
        let id = format!("sync-{}", self.next_ping);
        self.send(json!({"t": "ping", "id": id}));
        let (_, before) = self.recv_until(|v| v["t"] == "pong" && v["id"] == id.as_str());
        before
    }

    /// Asserts that nothing is pending: a ping's `pong` is the very next message.
    pub fn assert_quiet(&mut self, context: &str) {
        let before = self.sync();
        assert!(
            before.is_empty(),
            "{context}: expected no message before the pong, got {before:?}"
        );
    }

    /// Joins `room`; returns the `joined` (the next message but for `presence`).
    pub fn join(&mut self, room: &str) -> Value {
        self.send(json!({"t": "join", "room": room}));
        self.joined(room)
    }

    /// Joins with `since` (and `epoch` when given).
    pub fn join_since(&mut self, room: &str, since: u64, epoch: Option<u64>) -> Value {
        let mut request = json!({"t": "join", "room": room, "since": since});
        if let Some(epoch) = epoch {
            request["epoch"] = json!(epoch);
        }
        self.send(request);
        self.joined(room)
    }

    /// The `joined` answer; `presence` of other members coming and going may arrive first
    /// (their timing is theirs), anything else may not.
    fn joined(&mut self, room: &str) -> Value {
        let (joined, skipped) = self.recv_until(|v| v["t"] != "presence");
        assert_eq!(
            joined["t"], "joined",
            "expected a `joined`, got {joined} (after {skipped:?})"
        );
        assert_eq!(joined["room"], room, "joined for another room: {joined}");
        let you = joined["you"]
            .as_str()
            .unwrap_or_else(|| panic!("joined without a string `you`: {joined}"));
        self.you = Some(you.to_owned());
        joined
    }

    pub fn you(&self) -> &str {
        self.you.as_deref().expect("joined at least once")
    }

    /// Sends an `op` message.
    pub fn op(&mut self, room: &str, seq: u64, ops: Value) {
        self.send(json!({"t": "op", "room": room, "seq": seq, "ops": ops}));
    }

    /// Sends an `op` and reads up to its `ack`; returns the messages before the ack and the
    /// ack. Fails on an `error` for it.
    pub fn op_acked(&mut self, room: &str, seq: u64, ops: Value) -> (Vec<Value>, Value) {
        self.op(room, seq, ops);
        let (answer, before) = self.recv_until(|v| {
            (v["t"] == "ack" || v["t"] == "error") && v["seq"] == seq && v["room"] == room
        });
        assert_eq!(answer["t"], "ack", "op {seq} in {room} failed: {answer}");
        (before, answer)
    }

    /// Sends an `op` whose answer must be an `error`, the next message other than presence
    /// (other clients may come and go meanwhile); returns it.
    pub fn op_error(&mut self, room: &str, seq: u64, ops: Value) -> Value {
        self.op(room, seq, ops.clone());
        let (answer, _) = self.recv_until(|m| m["t"] != "presence");
        assert_eq!(answer["t"], "error", "ops {ops} should fail, got {answer}");
        answer
    }

    /// Reads until the server's close frame; returns its code (fails on EOF without one).
    pub fn expect_close(&mut self) -> Option<u16> {
        let mut skipped = Vec::new();
        loop {
            match self.read_event(RECV_TIMEOUT) {
                Some(Event::Msg(value)) => skipped.push(value),
                Some(Event::Close(code)) => return code,
                Some(Event::Eof) => {
                    panic!("connection ended without a close frame; messages before: {skipped:?}")
                }
                None => {
                    panic!("no close frame within {RECV_TIMEOUT:?}; messages before: {skipped:?}")
                }
            }
        }
    }

    /// Starts the close handshake with `code`.
    pub fn close(&mut self, code: u16) {
        let _ = self.ws.close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        }));
        let _ = self.ws.flush();
    }
}

/// `true` when `id` has the `s{SHARD}c{N}` form of the contract.
pub fn is_member_id(id: &str) -> bool {
    member_shard(id).is_some()
}

/// The shard of an `s{SHARD}c{N}` member id.
pub fn member_shard(id: &str) -> Option<usize> {
    let rest = id.strip_prefix('s')?;
    let (shard, n) = rest.split_once('c')?;
    if shard.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    shard.parse().ok()
}

/// A connection with a small receive buffer, so the kernel cannot absorb a flood for a
/// client that stops reading (autotuning could otherwise buffer several MiB).
pub fn small_buffer_stream(addr: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
    socket
        .connect_timeout(&addr.into(), RECV_TIMEOUT)
        .expect("connect");
    socket.into()
}

/// The shard that owns `room` on a server with `shards` shards.
pub fn owner_shard(room: &str, shards: usize) -> usize {
    kasagi_shards::shard_of(room.as_bytes(), shards)
}

// ---------------------------------------------------------------------------------------------
// Client-side state mirror
// ---------------------------------------------------------------------------------------------

/// A client's copy of one room: the `joined` snapshot plus every delta, in tick order.
#[derive(Clone, Debug)]
pub struct Mirror {
    pub state: Value,
    pub tick: u64,
    pub epoch: u64,
    pub deltas: u64,
}

impl Mirror {
    /// Starts from a `joined` that carries `state`.
    pub fn from_joined(joined: &Value) -> Mirror {
        assert!(
            joined.get("state").is_some(),
            "a joined without state cannot seed a mirror: {joined}"
        );
        Mirror {
            state: joined["state"].clone(),
            tick: joined["tick"].as_u64().expect("joined.tick is a u64"),
            epoch: joined["epoch"].as_u64().expect("joined.epoch is a u64"),
            deltas: 0,
        }
    }

    /// Replaces the copy with a (resync) snapshot.
    pub fn reset(&mut self, joined: &Value) {
        let deltas = self.deltas;
        *self = Mirror::from_joined(joined);
        self.deltas = deltas;
    }

    /// Applies one delta; fails on a tick gap, an epoch change or an op that does not apply.
    pub fn apply_delta(&mut self, delta: &Value) -> Result<(), String> {
        let tick = delta["tick"]
            .as_u64()
            .ok_or_else(|| format!("delta without a u64 tick: {delta}"))?;
        if tick != self.tick + 1 {
            return Err(format!("tick gap: held {}, got delta {delta}", self.tick));
        }
        if delta["epoch"].as_u64() != Some(self.epoch) {
            return Err(format!("epoch changed from {}: {delta}", self.epoch));
        }
        apply_ops(&mut self.state, &delta["ops"])?;
        self.tick = tick;
        self.deltas += 1;
        Ok(())
    }
}

/// Applies state-based delta ops (`set`, `del`, `push`) with PROTOCOL.md's semantics.
pub fn apply_ops(state: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or_else(|| format!("delta ops is not an array: {ops}"))?;
    for op in ops {
        apply_op(state, op)?;
    }
    Ok(())
}

fn apply_op(state: &mut Value, op: &Value) -> Result<(), String> {
    let parts = op
        .as_array()
        .ok_or_else(|| format!("op is not an array: {op}"))?;
    let name = parts.first().and_then(Value::as_str).unwrap_or("");
    let path = parts
        .get(1)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("op without a path: {op}"))?;
    match (name, parts.len()) {
        ("set", 3) => {
            let value = parts[2].clone();
            let Some((last, parents)) = path.split_last() else {
                if !value.is_object() {
                    return Err(format!("set [] with a non-map: {op}"));
                }
                *state = value;
                return Ok(());
            };
            let parent = walk(state, parents, true)?
                .ok_or_else(|| format!("set through a missing path: {op}"))?;
            put(parent, last, value).map_err(|e| format!("{e}: {op}"))
        }
        ("del", 2) => {
            let Some((last, parents)) = path.split_last() else {
                *state = json!({});
                return Ok(());
            };
            if let Ok(Some(parent)) = walk(state, parents, false) {
                match (parent, last) {
                    (Value::Object(map), Value::String(key)) => {
                        map.remove(key);
                    }
                    (Value::Array(items), Value::Number(n)) => {
                        if let Some(i) = n.as_u64().and_then(|i| usize::try_from(i).ok()) {
                            if i < items.len() {
                                items.remove(i);
                            }
                        }
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        ("push", 3) => {
            let value = parts[2].clone();
            let Some((last, parents)) = path.split_last() else {
                return Err(format!("push on []: {op}"));
            };
            let parent = walk(state, parents, true)?
                .ok_or_else(|| format!("push through a missing path: {op}"))?;
            match child_mut(parent, last)? {
                Some(Value::Array(items)) => {
                    items.push(value);
                    Ok(())
                }
                Some(other) => Err(format!("push on a non-array {other}: {op}")),
                None => put(parent, last, json!([value])).map_err(|e| format!("{e}: {op}")),
            }
        }
        _ => Err(format!("not a state-based delta op: {op}")),
    }
}

fn index(segment: &Value) -> Option<usize> {
    segment.as_u64().and_then(|i| usize::try_from(i).ok())
}

/// The child of `parent` at `segment`, `None` when absent.
fn child_mut<'a>(parent: &'a mut Value, segment: &Value) -> Result<Option<&'a mut Value>, String> {
    match (parent, segment) {
        (Value::Object(map), Value::String(key)) => Ok(map.get_mut(key)),
        (Value::Array(items), Value::Number(_)) => {
            let i = index(segment).ok_or_else(|| format!("bad index {segment}"))?;
            Ok(items.get_mut(i))
        }
        (parent, segment) => Err(format!("segment {segment} into {parent}")),
    }
}

/// Puts `value` at `segment` of `parent` (an array index may equal the length: append).
fn put(parent: &mut Value, segment: &Value, value: Value) -> Result<(), String> {
    match (parent, segment) {
        (Value::Object(map), Value::String(key)) => {
            map.insert(key.clone(), value);
            Ok(())
        }
        (Value::Array(items), Value::Number(_)) => {
            let i = index(segment).ok_or_else(|| format!("bad index {segment}"))?;
            if i < items.len() {
                items[i] = value;
            } else if i == items.len() {
                items.push(value);
            } else {
                return Err(format!("index {i} beyond length {}", items.len()));
            }
            Ok(())
        }
        (parent, segment) => Err(format!("cannot put at {segment} in {parent}")),
    }
}

/// Walks `path` from `root`; with `create`, missing map entries become `{}`.
fn walk<'a>(
    root: &'a mut Value,
    path: &[Value],
    create: bool,
) -> Result<Option<&'a mut Value>, String> {
    let mut current = root;
    for segment in path {
        current = match (current, segment) {
            (Value::Object(map), Value::String(key)) => {
                if create {
                    map.entry(key.clone()).or_insert_with(|| json!({}))
                } else {
                    match map.get_mut(key) {
                        Some(child) => child,
                        None => return Ok(None),
                    }
                }
            }
            (Value::Array(items), Value::Number(_)) => {
                let i = index(segment).ok_or_else(|| format!("bad index {segment}"))?;
                match items.get_mut(i) {
                    Some(child) => child,
                    None if create => return Err(format!("index {i} beyond the array")),
                    None => return Ok(None),
                }
            }
            (node, segment) => {
                if create {
                    return Err(format!("segment {segment} through {node}"));
                }
                return Ok(None);
            }
        };
    }
    Ok(Some(current))
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP and raw frames
// ---------------------------------------------------------------------------------------------

/// An HTTP response read off a raw socket.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Every sample of metric `name` in a `/metrics` body (one per shard).
pub fn metric_samples(body: &str, name: &str) -> Vec<f64> {
    body.lines()
        .filter(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .collect()
}

/// `GET path` over a fresh connection: `(status, headers, body)`.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, Vec<(String, String)>, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut raw = Raw::connect(addr);
    raw.write_all(request.as_bytes());
    let response = raw.read_response(true);
    let body = response.body_text();
    (response.status, response.headers, body)
}

/// A handcrafted upgrade request: valid by default, every part can be changed.
#[derive(Clone, Debug)]
pub struct UpgradeRequest {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
}

/// The RFC 6455 example key; its accept value is `s3pPLMBiTxaQ9kYGzzhZRbK+xOo=`.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

impl Default for UpgradeRequest {
    fn default() -> Self {
        UpgradeRequest {
            method: "GET".into(),
            target: "/ws".into(),
            version: "HTTP/1.1".into(),
            headers: vec![
                ("Host".into(), "localhost".into()),
                ("Upgrade".into(), "websocket".into()),
                ("Connection".into(), "Upgrade".into()),
                ("Sec-WebSocket-Key".into(), SAMPLE_KEY.into()),
                ("Sec-WebSocket-Version".into(), "13".into()),
            ],
        }
    }
}

impl UpgradeRequest {
    pub fn method(mut self, method: &str) -> Self {
        self.method = method.into();
        self
    }
    pub fn target(mut self, target: &str) -> Self {
        self.target = target.into();
        self
    }
    pub fn version(mut self, version: &str) -> Self {
        self.version = version.into();
        self
    }
    /// Replaces every header named `name` (case-insensitive) with one `name: value`.
    pub fn set(self, name: &str, value: &str) -> Self {
        let mut this = self.without(name);
        this.headers.push((name.into(), value.into()));
        this
    }
    /// Adds a header, keeping others of the same name.
    pub fn add(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    pub fn without(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} {}\r\n", self.method, self.target, self.version);
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    /// Sends the request on a fresh connection and reads the answer's head (and body, unless
    /// it is a 101).
    pub fn send(&self, addr: SocketAddr) -> (Raw, HttpResponse) {
        let mut raw = Raw::connect(addr);
        // The server may answer and close before reading everything: a failed write is fine,
        // the response (or its absence) is what the test checks.
        let _ = raw.stream.write_all(&self.to_bytes());
        let response = raw.read_response(false);
        (raw, response)
    }

    /// The status the server answers this request with.
    pub fn status(&self, addr: SocketAddr) -> u16 {
        self.send(addr).1.status
    }
}

/// One frame read from the server.
#[derive(Clone, Debug)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The close code of a close frame (`None` for an empty close payload).
    pub fn close_code(&self) -> Option<u16> {
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A fixed mask key: its bytes are all distinct and non-zero, so a server that forgets to
/// unmask sees garbage.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Encodes a frame: `rsv` is the 3 RSV bits (0..=7), `mask` the key when masked.
pub fn frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | ((rsv & 7) << 4) | (opcode & 0x0f)];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | u8::try_from(len).expect("small"));
    } else if let Ok(len16) = u16::try_from(len) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&len16.to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A final, masked frame: what a well-behaved client sends.
pub fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, 0, opcode, payload, Some(MASK))
}

/// A close frame payload: the code, big endian, then the reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut out = code.to_be_bytes().to_vec();
    out.extend_from_slice(reason.as_bytes());
    out
}

/// A raw TCP connection to the server, for bytes no WebSocket library would send.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect_timeout(&addr, RECV_TIMEOUT)
            .unwrap_or_else(|err| panic!("connect {addr}: {err}"));
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(RECV_TIMEOUT))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(RECV_TIMEOUT))
            .expect("write timeout");
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects and upgrades by hand (offering `subprotocol` when given); asserts the 101.
    pub fn upgrade(addr: SocketAddr, subprotocol: Option<&str>) -> Raw {
        let mut request = UpgradeRequest::default();
        if let Some(protocol) = subprotocol {
            request = request.set("Sec-WebSocket-Protocol", protocol);
        }
        let (raw, response) = request.send(addr);
        assert_eq!(response.status, 101, "upgrade refused: {response:?}");
        assert_eq!(response.header("Sec-WebSocket-Accept"), Some(SAMPLE_ACCEPT));
        raw
    }

    pub fn write_all(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|err| panic!("write {} bytes: {err}", bytes.len()));
    }

    /// Writes, tolerating a server that already closed (it may stop reading at the error).
    pub fn write_lossy(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Reads more bytes into the buffer; `false` on EOF (or reset).
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return true;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!(
                        "no data from the server within {RECV_TIMEOUT:?} (buffered: {:02x?})",
                        self.buf
                    )
                }
                Err(_) => return false,
            }
        }
    }

    /// Reads an HTTP response head; with `body_to_eof` and no Content-Length, the body runs
    /// to EOF. A 101 leaves what follows the head buffered for [`Raw::read_frame`].
    pub fn read_response(&mut self, body_to_eof: bool) -> HttpResponse {
        let head_end = loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                break pos + 4;
            }
            if !self.fill() {
                panic!(
                    "connection closed before a full response head; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        assert!(
            status_line.starts_with("HTTP/1.1 "),
            "status line {status_line:?} is not HTTP/1.1"
        );
        let headers: Vec<(String, String)> = lines
            .filter(|line| !line.is_empty())
            .filter_map(|line| {
                let (name, value) = line.split_once(':')?;
                Some((name.trim().to_owned(), value.trim().to_owned()))
            })
            .collect();
        let mut response = HttpResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if status == 101 {
            return response;
        }
        if let Some(len) = response
            .header("Content-Length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            while self.buf.len() < len {
                if !self.fill() {
                    break;
                }
            }
            let take = len.min(self.buf.len());
            response.body = self.buf.drain(..take).collect();
        } else if body_to_eof {
            while self.fill() {}
            response.body = std::mem::take(&mut self.buf);
        }
        response
    }

    /// The next frame from the server; `None` on EOF.
    pub fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// Reads frames until a close frame; returns its code. Fails on EOF before one.
    pub fn expect_close(&mut self) -> Option<u16> {
        let mut before = Vec::new();
        loop {
            match self.read_frame() {
                Some(frame) if frame.opcode == OP_CLOSE => {
                    assert!(!frame.masked, "server frames must not be masked");
                    return frame.close_code();
                }
                Some(frame) => before.push(frame),
                None => panic!(
                    "connection ended without a close frame; frames before: {before:?}; trailing bytes {:02x?}",
                    self.buf
                ),
            }
        }
    }

    /// After the server's close frame: `true` when it closes the TCP connection in time.
    pub fn reaches_eof(&mut self) -> bool {
        loop {
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn parse_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut len = [0u8; 8];
            len.copy_from_slice(&buf[2..10]);
            (
                usize::try_from(u64::from_be_bytes(len)).expect("frame length fits usize"),
                10,
            )
        }
        n => (usize::from(n), 2),
    };
    let mut key = None;
    if masked {
        if buf.len() < at + 4 {
            return None;
        }
        key = Some([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        at += 4;
    }
    if buf.len() < at + len {
        return None;
    }
    let mut payload = buf[at..at + len].to_vec();
    if let Some(key) = key {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Some((
        RawFrame {
            fin,
            opcode,
            masked,
            payload,
        },
        at + len,
    ))
}
