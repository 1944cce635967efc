//! Fleet harness: `redis-server` processes the tests start themselves (own port, own temp
//! dir, killed by their own `Child` on drop, restartable on the same port), a minimal RESP
//! client to poke at them, and `kasagi serve --redis …` instances.
//!
//! A missing `redis-server` fails the test with a message saying so: these tests never
//! skip.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Client, Enc, Event, Mirror, Server, RECV_TIMEOUT};

/// A free loopback port (bound then released: a tiny race, acceptable in tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One `redis-server` on its own port and data dir.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    aof: bool,
}

impl RedisServer {
    /// No persistence.
    pub fn start() -> RedisServer {
        RedisServer::start_with(false)
    }

    /// With `aof`: `appendonly yes`, `appendfsync always`, so a restart keeps every write.
    pub fn start_with(aof: bool) -> RedisServer {
        RedisServer::start_on(free_port(), aof)
    }

    /// On a given port (one an instance already points at).
    pub fn start_on(port: u16, aof: bool) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir().expect("temp dir for redis-server"),
            aof,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", if self.aof { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().unwrap_or_else(|error| {
            panic!(
                "cannot start redis-server ({error}): the fleet tests need `redis-server` on \
                 PATH (Debian: apt-get install redis-server; scripts/test.sh installs it)"
            )
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut conn) = RespConn::connect(self.port) {
                if conn.command(&["PING"]).is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not come up",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (SIGKILL, by its PID) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and dir (with AOF the data comes back).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs one command; panics on a connection error.
    pub fn command(&self, args: &[&str]) -> Resp {
        RespConn::connect(self.port)
            .and_then(|mut c| c.command(args))
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    pub fn as_text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Resp::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }
}

pub struct RespConn {
    reader: BufReader<TcpStream>,
}

impl RespConn {
    pub fn connect(port: u16) -> std::io::Result<RespConn> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(RespConn {
            reader: BufReader::new(stream),
        })
    }

    pub fn command(&mut self, args: &[&str]) -> std::io::Result<Resp> {
        self.send(args)?;
        self.read()
    }

    /// Sends a command without waiting for its reply (read it with [`RespConn::reply`]).
    pub fn send(&mut self, args: &[&str]) -> std::io::Result<()> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&out)
    }

    /// The reply to the oldest command sent and not read yet.
    pub fn reply(&mut self) -> std::io::Result<Resp> {
        self.read()
    }

    /// A connection subscribed to `channel`, to watch what is published on it.
    pub fn subscribe(port: u16, channel: &str) -> RespConn {
        let mut conn = RespConn::connect(port).expect("connect to redis-server");
        let reply = conn.command(&["SUBSCRIBE", channel]).expect("SUBSCRIBE");
        assert!(
            matches!(reply, Resp::Array(Some(_))),
            "SUBSCRIBE: {reply:?}"
        );
        conn
    }

    /// Waits (at most 10 s) for a message published on the subscribed channel whose
    /// payload holds `needle`; returns the payload.
    pub fn wait_for_message(&mut self, needle: &[u8]) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(
                Instant::now() < deadline,
                "no message holding {:?} was published",
                String::from_utf8_lossy(needle)
            );
            let Ok(Resp::Array(Some(parts))) = self.read() else {
                continue;
            };
            if let [_, _, Resp::Bulk(Some(payload))] = parts.as_slice() {
                if payload.windows(needle.len()).any(|w| w == needle) {
                    return payload.clone();
                }
            }
        }
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        if line.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim_end_matches("\r\n").to_owned())
    }

    fn read(&mut self) -> std::io::Result<Resp> {
        let line = self.line()?;
        let (kind, rest) = line.split_at(1);
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad RESP");
        Ok(match kind {
            "+" => Resp::Simple(rest.to_owned()),
            "-" => Resp::Error(rest.to_owned()),
            ":" => Resp::Int(rest.parse().map_err(|_| bad())?),
            "$" => {
                let len: i64 = rest.parse().map_err(|_| bad())?;
                if len < 0 {
                    Resp::Bulk(None)
                } else {
                    let mut buf = vec![0; len as usize + 2];
                    std::io::Read::read_exact(&mut self.reader, &mut buf)?;
                    buf.truncate(len as usize);
                    Resp::Bulk(Some(buf))
                }
            }
            "*" => {
                let len: i64 = rest.parse().map_err(|_| bad())?;
                if len < 0 {
                    Resp::Array(None)
                } else {
                    let mut items = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        items.push(self.read()?);
                    }
                    Resp::Array(Some(items))
                }
            }
            _ => return Err(bad()),
        })
    }
}

/// The instance holding `room`'s lease, if any.
pub fn owner_of(redis: &RedisServer, room: &str) -> Option<String> {
    redis
        .command(&["GET", &format!("kasagi:{{{room}}}:owner")])
        .as_text()
}

/// Epochs of the log entries in tick order: never going down (one history).
pub fn log_epochs(redis: &RedisServer, room: &str) -> Vec<(u64, u64)> {
    let Resp::Array(Some(entries)) =
        redis.command(&["XRANGE", &format!("kasagi:{{{room}}}:log"), "-", "+"])
    else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let Resp::Array(Some(parts)) = entry else {
                return None;
            };
            let id = parts.first()?.as_text()?;
            let tick = id.split('-').next()?.parse().ok()?;
            let Resp::Array(Some(fields)) = parts.get(1)? else {
                return None;
            };
            let epoch = fields
                .chunks(2)
                .find(|kv| kv[0].as_text().as_deref() == Some("e"))?[1]
                .as_text()?
                .parse()
                .ok()?;
            Some((tick, epoch))
        })
        .collect()
}

/// Joins until the answer is `joined` (Redis may still be coming up), at most 10 s.
pub fn join_eventually(client: &mut Client, room: &str, since: Option<(u64, u64)>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut request = json!({"t": "join", "room": room});
        if let Some((tick, epoch)) = since {
            request["since"] = json!(tick);
            request["epoch"] = json!(epoch);
        }
        client.send(request);
        let (answer, _) = client.recv_until(|v| v["t"] == "joined" || v["t"] == "error");
        if answer["t"] == "joined" {
            return answer;
        }
        assert_eq!(answer["code"], "unavailable", "{answer}");
        assert!(Instant::now() < deadline, "Redis never came back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Creates or changes the Redis user `relay` (password `relay-pw`, see [`relay_url`]).
pub fn relay_user(redis: &RedisServer, rules: &[&str]) {
    let mut args = vec!["ACL", "SETUSER", "relay"];
    args.extend_from_slice(rules);
    let reply = redis.command(&args);
    assert_eq!(
        reply.as_text().as_deref(),
        Some("OK"),
        "{args:?}: {reply:?}"
    );
}

/// The URL of [`relay_user`] (password `relay-pw`) on `redis`.
pub fn relay_url(redis: &RedisServer) -> String {
    format!("redis://relay:relay-pw@127.0.0.1:{}", redis.port)
}

/// Starts `kasagi serve --redis URL --instance-id NAME --lease-ttl 1s ARGS…`.
pub fn instance(redis: &RedisServer, name: &str, args: &[&str]) -> Server {
    instance_url(&redis.url(), name, args)
}

pub fn instance_url(url: &str, name: &str, args: &[&str]) -> Server {
    let mut full = vec!["--redis", url, "--instance-id", name];
    if !args.contains(&"--lease-ttl") {
        full.extend(["--lease-ttl", "1s"]);
    }
    full.extend_from_slice(args);
    Server::start(&full)
}

/// Brings every member to the highest tick any of them saw, checks that they hold one
/// state, and returns that tick.
pub fn converge(members: &mut [&mut Member]) -> u64 {
    let top = members.iter().map(|m| m.mirror.tick).max().unwrap_or(0);
    for m in members.iter_mut() {
        m.reach(top);
    }
    for m in &members[1..] {
        assert_eq!(
            m.mirror.state,
            members[0].mirror.state,
            "{} and {} at tick {top}",
            m.client.you(),
            members[0].client.you()
        );
    }
    top
}

/// A client of one room that keeps a mirror and checks every delta against it.
pub struct Member {
    pub client: Client,
    pub room: String,
    pub mirror: Mirror,
    next_seq: u64,
    /// Sum of the `inc` amounts acked, and the seqs still waiting for an answer.
    pub acked_sum: i64,
    pub acked: u64,
    pending: std::collections::BTreeMap<u64, i64>,
    pub unavailable: u64,
    unknown_sum: i64,
    /// Unasked `left`s (the instance could not serve the room).
    pub removed: u64,
    /// Ticks seen in deltas, in order (checked consecutive as they come).
    pub deltas: u64,
    /// Unasked snapshots (`joined` with `resync: true`).
    pub resyncs: u64,
    /// A delta came with a newer epoch than the mirror's (a take-over) and no `joined` of
    /// that epoch yet: the new owner registers every member again, so one must follow.
    resync_due: Option<u64>,
}

impl Member {
    pub fn join(addr: SocketAddr, enc: Enc, room: &str) -> Member {
        let mut client = Client::connect(addr, enc);
        let joined = client.join(room);
        Member::adopt(client, room, &joined)
    }

    /// A member from a client that just got `joined` (with the state).
    pub fn adopt(mut client: Client, room: &str, joined: &Value) -> Member {
        client.you = joined["you"].as_str().map(str::to_owned);
        Member {
            mirror: Mirror::from_joined(joined),
            client,
            room: room.to_owned(),
            next_seq: 0,
            acked_sum: 0,
            acked: 0,
            pending: Default::default(),
            unavailable: 0,
            unknown_sum: 0,
            removed: 0,
            deltas: 0,
            resyncs: 0,
            resync_due: None,
        }
    }

    /// Connects to `addr` and resumes with `since`/`epoch` of the mirror; returns the
    /// `joined`.
    pub fn reconnect(&mut self, addr: SocketAddr) -> Value {
        self.client = Client::connect(addr, self.client.enc);
        let joined = self
            .client
            .join_since(&self.room, self.mirror.tick, Some(self.mirror.epoch));
        self.absorb_joined(&joined);
        // Ops in flight on the old connection have no answer coming: their fate is unknown.
        self.pending.clear();
        joined
    }

    /// Takes a `joined`: the full state, or a resume (the deltas follow).
    pub fn absorb_joined(&mut self, joined: &Value) {
        let epoch = joined["epoch"].as_u64().expect("joined epoch");
        if self.resync_due.is_some_and(|due| epoch >= due) {
            self.resync_due = None;
        }
        if joined.get("state").is_some() {
            self.mirror.reset(joined);
        } else {
            assert_eq!(joined["resumed"], true, "joined without state: {joined}");
            self.mirror.epoch = joined["epoch"].as_u64().expect("epoch");
        }
    }

    /// Sends `inc [counter] by` (+ a `set` of a per-member key) without waiting.
    pub fn send_inc(&mut self, by: i64) -> u64 {
        self.next_seq += 1;
        let seq = self.next_seq;
        let me = self.client.you().to_owned();
        self.client.op(
            &self.room,
            seq,
            json!([["inc", ["counter"], by], ["set", ["last", me], seq]]),
        );
        self.pending.insert(seq, by);
        seq
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Gives up on the ops still unanswered (their fate is unknown); returns their sum.
    pub fn abandon_pending(&mut self) -> i64 {
        let sum = self.pending.values().sum();
        self.pending.clear();
        sum
    }

    /// Ops answered `unavailable`: their fate is unknown; the sum of their incs.
    pub fn unknown(&self) -> i64 {
        self.unknown_sum
    }

    /// Handles one message; `false` when nothing came within `timeout`.
    pub fn pump(&mut self, timeout: Duration) -> bool {
        let value = match self.client.read_event(timeout) {
            Some(Event::Msg(value)) => value,
            Some(other) => panic!("{}: connection ended: {other:?}", self.client.you()),
            None => return false,
        };
        self.handle(value);
        true
    }

    pub fn handle(&mut self, value: Value) {
        match value["t"].as_str() {
            Some("delta") => {
                let epoch = value["epoch"].as_u64().expect("delta epoch");
                if epoch != self.mirror.epoch {
                    // A take-over: the history continues under a new owner, which
                    // registers this member again and sends it an unasked `joined` of its
                    // epoch (PROTOCOL.md: an epoch change means a fresh `joined`). Until
                    // then the deltas still apply: with durable acks every one is logged.
                    assert!(
                        epoch > self.mirror.epoch,
                        "{}: the epoch went back from {}: {value}",
                        self.client.you(),
                        self.mirror.epoch
                    );
                    self.mirror.epoch = epoch;
                    self.resync_due = Some(epoch);
                }
                self.mirror
                    .apply_delta(&value)
                    .unwrap_or_else(|e| panic!("{}: {e}", self.client.you()));
                self.deltas += 1;
            }
            Some("ack") => {
                let seq = value["seq"].as_u64().expect("ack seq");
                let tick = value["tick"].as_u64().expect("ack tick");
                assert!(
                    tick <= self.mirror.tick,
                    "ack {value} before its delta (mirror at {})",
                    self.mirror.tick
                );
                if let Some(by) = self.pending.remove(&seq) {
                    self.acked_sum += by;
                    self.acked += 1;
                }
            }
            Some("error") => {
                assert_eq!(value["code"], "unavailable", "unexpected error {value}");
                if let Some(seq) = value["seq"].as_u64() {
                    if let Some(by) = self.pending.remove(&seq) {
                        self.unknown_sum += by;
                    }
                }
                self.unavailable += 1;
            }
            Some("joined") => {
                // Joins are answered in `join`/`reconnect`: this one is unasked.
                assert_eq!(
                    value["resync"],
                    true,
                    "{}: an unasked joined must say resync: {value}",
                    self.client.you()
                );
                self.resyncs += 1;
                self.absorb_joined(&value);
            }
            Some("left") => self.removed += 1,
            Some("presence" | "pong" | "msg") => {}
            _ => panic!("unexpected message {value}"),
        }
    }

    /// Pumps until every op has its answer and a new owner seen in a delta has sent its
    /// `joined`, at most `limit`.
    pub fn settle(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while (!self.pending.is_empty() || self.resync_due.is_some()) && Instant::now() < deadline {
            self.pump(Duration::from_millis(50));
        }
        assert!(
            self.pending.is_empty(),
            "{}: {} ops unanswered after {limit:?}",
            self.client.you(),
            self.pending.len()
        );
        assert_eq!(
            self.resync_due,
            None,
            "{}: deltas of a new epoch came, but no `joined` of it within {limit:?} (never \
             registered with the new owner)",
            self.client.you()
        );
    }

    /// Pumps until the mirror reaches `tick`, at most `RECV_TIMEOUT`.
    pub fn reach(&mut self, tick: u64) {
        let deadline = Instant::now() + RECV_TIMEOUT;
        while self.mirror.tick < tick {
            assert!(
                Instant::now() < deadline,
                "{}: stuck at tick {} (want {tick})",
                self.client.you(),
                self.mirror.tick
            );
            self.pump(Duration::from_millis(50));
        }
    }

    pub fn counter(&self) -> i64 {
        self.mirror.state["counter"].as_i64().unwrap_or(0)
    }
}
