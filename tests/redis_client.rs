//! The shard's Redis client against real `redis-server` processes that each test starts
//! itself: its own free port, its own temp dir, no persistence, killed by PID on drop.
//! A missing `redis-server` fails the tests with a message saying so.

use std::cell::RefCell;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::timer::Timer;
use glommio::LocalExecutorBuilder;
use kasagi::redis::resp::{self, Limits};
use kasagi::redis::{Client, ClientOptions, Error, Script, Subscriber, SubscriberEvent};
use redis::Value;

// --- harness -----------------------------------------------------------------------

struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    password: Option<String>,
}

impl RedisServer {
    fn start(password: Option<&str>) -> RedisServer {
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            password: password.map(str::to_owned),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "yes"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command.spawn().unwrap_or_else(|error| {
            panic!(
                "cannot start redis-server ({error}): these tests need `redis-server` on PATH \
                 (Debian: apt-get install redis-server)"
            )
        });
        self.child = Some(child);
        self.wait_until_up();
    }

    /// Polls with PING until the server answers (any reply, NOAUTH included), bounded.
    fn wait_until_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("redis-server on port {} exited: {status}", self.port);
                }
            }
            if raw_command(self.port, None, &["PING"]).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not come up in 10 s", self.port);
    }

    /// SIGKILL, and wait for the process to be gone.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// A command on a fresh blocking connection, outside the client under test.
    fn command(&self, db: i64, args: &[&str]) -> Value {
        let mut setup: Vec<Vec<String>> = Vec::new();
        if let Some(password) = &self.password {
            setup.push(vec!["AUTH".into(), password.clone()]);
        }
        setup.push(vec!["SELECT".into(), db.to_string()]);
        raw_command(self.port, Some(&setup), args).expect("raw command")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// Sends `setup` commands then `args` over a blocking socket; returns the last reply.
fn raw_command(port: u16, setup: Option<&[Vec<String>]>, args: &[&str]) -> std::io::Result<Value> {
    let address = format!("127.0.0.1:{port}").parse().expect("address");
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut packed = Vec::new();
    let mut replies = 1;
    for command in setup.unwrap_or_default() {
        packed.extend(
            redis::cmd(&command[0])
                .arg(&command[1..])
                .get_packed_command(),
        );
        replies += 1;
    }
    packed.extend(redis::cmd(args[0]).arg(&args[1..]).get_packed_command());
    stream.write_all(&packed)?;
    let mut buffer = Vec::new();
    let mut last = Value::Nil;
    while replies > 0 {
        match resp::decode(&buffer, &Limits::default()) {
            Ok(Some((value, used))) => {
                buffer.drain(..used);
                replies -= 1;
                last = value;
            }
            Ok(None) => {
                let mut chunk = [0u8; 4096];
                // glommio executors on other test threads deliver signals: retry EINTR.
                let read = match stream.read(&mut chunk) {
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                    other => other?,
                };
                if read == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buffer.extend_from_slice(&chunk[..read]);
            }
            Err(error) => return Err(std::io::Error::other(error)),
        }
    }
    Ok(last)
}

/// Runs `test` on a fresh glommio executor on this thread.
fn run<F: Future<Output = ()> + 'static>(test: impl FnOnce() -> F + 'static) {
    LocalExecutorBuilder::default()
        .io_memory(256 * 1024)
        .make()
        .expect("glommio executor")
        .run(async move { test().await });
}

/// Polls `condition` every 5 ms, for at most `limit`.
async fn eventually(limit: Duration, what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        Timer::new(Duration::from_millis(5)).await;
    }
}

fn quick_options() -> ClientOptions {
    ClientOptions {
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        ..ClientOptions::default()
    }
}

async fn connected_client(url: &str, options: ClientOptions) -> Rc<Client> {
    let client = Client::new(url, options).expect("valid url");
    let probe = Rc::clone(&client);
    eventually(Duration::from_secs(5), "the client to connect", move || {
        probe.is_connected()
    })
    .await;
    client
}

fn int(value: &Value) -> i64 {
    match value {
        Value::Int(n) => *n,
        other => panic!("expected an integer, got {other:?}"),
    }
}

// --- command client ----------------------------------------------------------------

#[test]
fn concurrent_incrs_are_pipelined_in_submission_order() {
    let server = RedisServer::start(None);
    let url = server.url();
    run(move || async move {
        let client = connected_client(&url, quick_options()).await;
        let writes_before = client.writes();
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let client = Rc::clone(&client);
                glommio::spawn_local(async move {
                    client.query(redis::cmd("INCR").arg("counter")).await
                })
            })
            .collect();
        for (submitted, task) in tasks.into_iter().enumerate() {
            let reply = task.await.expect("INCR succeeds");
            assert_eq!(int(&reply), submitted as i64 + 1);
        }
        assert_eq!(client.in_flight(), 0);
        // Queued in one executor turn, so they left together.
        let writes = client.writes() - writes_before;
        assert!(writes <= 2, "1000 INCRs took {writes} writes");
    });
    assert_eq!(
        server.command(0, &["GET", "counter"]),
        Value::BulkString(b"1000".to_vec())
    );
}

#[test]
fn pipelines_and_transactions() {
    let server = RedisServer::start(None);
    let url = server.url();
    run(move || async move {
        let client = connected_client(&url, quick_options()).await;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg("a")
            .arg(1)
            .cmd("INCR")
            .arg("a")
            .cmd("LPUSH")
            .arg("a")
            .arg("x");
        let replies = client.pipeline(&pipe).await.expect("pipeline");
        assert_eq!(replies.len(), 3);
        assert_eq!(replies[0], Value::Okay);
        assert_eq!(replies[1], Value::Int(2));
        assert!(matches!(replies[2], Value::ServerError(ref e) if e.code() == "WRONGTYPE"));

        let mut transaction = redis::pipe();
        transaction
            .atomic()
            .cmd("INCR")
            .arg("a")
            .cmd("GET")
            .arg("a");
        let replies = client.pipeline(&transaction).await.expect("transaction");
        assert_eq!(
            replies,
            vec![Value::Int(3), Value::BulkString(b"3".to_vec())]
        );

        assert_eq!(client.pipeline(&redis::pipe()).await, Ok(Vec::new()));

        let error = client.query(redis::cmd("LPUSH").arg("a").arg("x")).await;
        assert!(matches!(error, Err(Error::Server { ref code, .. }) if code == "WRONGTYPE"));
        let typed: i64 = client
            .query_as(redis::cmd("GET").arg("a"))
            .await
            .expect("GET as i64");
        assert_eq!(typed, 3);
    });
}

#[test]
fn url_password_and_db_are_used() {
    let server = RedisServer::start(Some("s3cret"));
    let url = format!("redis://:s3cret@127.0.0.1:{}/3", server.port);
    let wrong = format!("redis://:wrong@127.0.0.1:{}/3", server.port);
    run(move || async move {
        let client = connected_client(&url, quick_options()).await;
        let reply = client
            .query(redis::cmd("SET").arg("where").arg("db3"))
            .await;
        assert_eq!(reply, Ok(Value::Okay));

        // A wrong password never gets a usable connection: requests fail fast.
        let rejected = Client::new(&wrong, quick_options()).expect("valid url");
        Timer::new(Duration::from_millis(100)).await;
        assert!(!rejected.is_connected());
        assert_eq!(
            rejected.query(&redis::cmd("PING")).await,
            Err(Error::Unavailable)
        );
    });
    assert_eq!(
        server.command(3, &["GET", "where"]),
        Value::BulkString(b"db3".to_vec())
    );
    assert_eq!(server.command(0, &["GET", "where"]), Value::Nil);
}

#[test]
fn host_names_are_resolved() {
    let server = RedisServer::start(None);
    let url = format!("redis://localhost:{}/2", server.port);
    run(move || async move {
        let client = connected_client(&url, quick_options()).await;
        assert_eq!(
            client.query(&redis::cmd("PING")).await,
            Ok(Value::SimpleString("PONG".into()))
        );
    });
}

#[test]
fn a_slow_redis_times_out_and_never_blocks_the_executor() {
    let server = RedisServer::start(None);
    let url = server.url();
    run(move || async move {
        let options = ClientOptions {
            request_timeout: Duration::from_millis(200),
            ..quick_options()
        };
        let client = connected_client(&url, options).await;
        let ticks = Rc::new(RefCell::new(0u32));
        let ticker = {
            let ticks = Rc::clone(&ticks);
            glommio::spawn_local(async move {
                loop {
                    Timer::new(Duration::from_millis(10)).await;
                    *ticks.borrow_mut() += 1;
                }
            })
        };
        let started = Instant::now();
        let reply = client.query(redis::cmd("DEBUG").arg("SLEEP").arg(2)).await;
        let waited = started.elapsed();
        assert_eq!(reply, Err(Error::Timeout(Duration::from_millis(200))));
        assert!(waited < Duration::from_millis(800), "waited {waited:?}");
        assert!(
            *ticks.borrow() >= 10,
            "only {} ticks in {waited:?}",
            ticks.borrow()
        );

        // The timed-out connection was dropped; a new one serves once Redis wakes up.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if client.query(&redis::cmd("PING")).await.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "no recovery after DEBUG SLEEP");
            Timer::new(Duration::from_millis(20)).await;
        }
        assert!(client.reconnects() >= 1);
        drop(ticker);
    });
}

#[test]
fn in_flight_requests_are_bounded() {
    let server = RedisServer::start(None);
    let url = server.url();
    run(move || async move {
        let options = ClientOptions {
            max_in_flight: 10,
            request_timeout: Duration::from_secs(5),
            ..quick_options()
        };
        let client = connected_client(&url, options).await;
        let sleeper = {
            let client = Rc::clone(&client);
            glommio::spawn_local(async move {
                client
                    .query(redis::cmd("DEBUG").arg("SLEEP").arg("0.3"))
                    .await
            })
        };
        let pings: Vec<_> = (0..9)
            .map(|_| {
                let client = Rc::clone(&client);
                glommio::spawn_local(async move { client.query(&redis::cmd("PING")).await })
            })
            .collect();
        let probe = Rc::clone(&client);
        eventually(Duration::from_secs(2), "10 requests in flight", move || {
            probe.in_flight() == 10
        })
        .await;
        let started = Instant::now();
        assert_eq!(
            client.query(&redis::cmd("PING")).await,
            Err(Error::Overloaded { limit: 10 })
        );
        assert!(started.elapsed() < Duration::from_millis(50));
        assert_eq!(sleeper.await, Ok(Value::Okay));
        for ping in pings {
            assert_eq!(ping.await, Ok(Value::SimpleString("PONG".into())));
        }
    });
}

#[test]
fn killed_redis_fails_fast_and_the_client_reconnects_by_itself() {
    let server = Rc::new(RefCell::new(RedisServer::start(None)));
    let url = server.borrow().url();
    let handle = Rc::clone(&server);
    run(move || async move {
        let client = connected_client(&url, quick_options()).await;
        assert!(client
            .query(redis::cmd("SET").arg("k").arg("v"))
            .await
            .is_ok());

        handle.borrow_mut().kill();
        let probe = Rc::clone(&client);
        eventually(Duration::from_secs(5), "the client to notice", move || {
            !probe.is_connected()
        })
        .await;
        for _ in 0..20 {
            let started = Instant::now();
            assert_eq!(
                client.query(&redis::cmd("PING")).await,
                Err(Error::Unavailable)
            );
            assert!(started.elapsed() < Duration::from_millis(20));
        }

        handle.borrow_mut().restart();
        let probe = Rc::clone(&client);
        eventually(
            Duration::from_secs(5),
            "the client to reconnect",
            move || probe.is_connected(),
        )
        .await;
        assert_eq!(
            client.query(&redis::cmd("PING")).await,
            Ok(Value::SimpleString("PONG".into()))
        );
        assert_eq!(client.reconnects(), 1);
    });
}

#[test]
fn scripts_fall_back_to_script_load_after_noscript() {
    let server = RedisServer::start(None);
    let url = server.url();
    run(move || async move {
        let client = connected_client(&url, quick_options()).await;
        let script = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
        let exists = client
            .query(redis::cmd("SCRIPT").arg("EXISTS").arg(script.hash()))
            .await;
        assert_eq!(exists, Ok(Value::Array(vec![Value::Int(0)])));

        assert_eq!(client.eval(&script, "n", 5).await, Ok(Value::Int(5)));
        assert_eq!(client.eval(&script, "n", 5).await, Ok(Value::Int(10)));
        assert_eq!(
            client.query(redis::cmd("SCRIPT").arg("FLUSH")).await,
            Ok(Value::Okay)
        );
        assert_eq!(client.eval(&script, "n", 1).await, Ok(Value::Int(11)));

        let failing = Script::new("return redis.error_reply('EPOCH stale owner')");
        let error = client.eval(&failing, &[] as &[&str], &[] as &[&str]).await;
        assert_eq!(
            error,
            Err(Error::Server {
                code: "EPOCH".into(),
                detail: "stale owner".into()
            })
        );
    });
}

// --- subscriber --------------------------------------------------------------------

type Events = Rc<RefCell<Vec<SubscriberEvent>>>;

/// A subscriber that records its events, once it is connected.
async fn recording_subscriber(url: &str) -> (Rc<Subscriber>, Events) {
    let events: Events = Rc::default();
    let sink = Rc::clone(&events);
    let subscriber = Subscriber::new(url, quick_options(), move |event| {
        sink.borrow_mut().push(event)
    })
    .expect("valid url");
    let probe = Rc::clone(&subscriber);
    eventually(
        Duration::from_secs(5),
        "the subscriber to connect",
        move || probe.is_connected(),
    )
    .await;
    (subscriber, events)
}

fn messages(events: &Events) -> Vec<(Vec<u8>, Vec<u8>)> {
    events
        .borrow()
        .iter()
        .filter_map(|event| match event {
            SubscriberEvent::Message { channel, payload } => {
                Some((channel.to_vec(), payload.to_vec()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn subscriber_receives_published_messages_in_order() {
    let server = RedisServer::start(None);
    let url = server.url();
    run(move || async move {
        let client = connected_client(&url, quick_options()).await;
        let (subscriber, events) = recording_subscriber(&url).await;
        subscriber
            .subscribe("kasagi:{r1}:out")
            .await
            .expect("subscribe");
        subscriber
            .psubscribe("kasagi:{p*}:out")
            .await
            .expect("psubscribe");

        for i in 0..100 {
            let publish = client
                .query(
                    redis::cmd("PUBLISH")
                        .arg("kasagi:{r1}:out")
                        .arg(format!("delta {i}")),
                )
                .await;
            assert_eq!(publish, Ok(Value::Int(1)));
        }
        let publish = client
            .query(
                redis::cmd("PUBLISH")
                    .arg("kasagi:{p7}:out")
                    .arg(b"\x00\xffbinary".as_slice()),
            )
            .await;
        assert_eq!(publish, Ok(Value::Int(1)));

        let seen = Rc::clone(&events);
        eventually(Duration::from_secs(5), "101 messages", move || {
            seen.borrow().len() >= 101
        })
        .await;
        let expected: Vec<_> = (0..100)
            .map(|i| {
                (
                    b"kasagi:{r1}:out".to_vec(),
                    format!("delta {i}").into_bytes(),
                )
            })
            .collect();
        assert_eq!(messages(&events), expected);
        assert_eq!(
            events.borrow().last(),
            Some(&SubscriberEvent::PatternMessage {
                pattern: "kasagi:{p*}:out".into(),
                channel: "kasagi:{p7}:out".into(),
                payload: b"\x00\xffbinary".as_slice().into(),
            })
        );

        subscriber
            .unsubscribe("kasagi:{r1}:out")
            .await
            .expect("unsubscribe");
        let publish = client
            .query(redis::cmd("PUBLISH").arg("kasagi:{r1}:out").arg("late"))
            .await;
        assert_eq!(publish, Ok(Value::Int(0)));
        assert!(subscriber.channels().is_empty());
    });
}

#[test]
fn subscriber_resubscribes_and_reports_reconnected_after_client_kill() {
    let server = RedisServer::start(None);
    let url = server.url();
    run(move || async move {
        let client = connected_client(&url, quick_options()).await;
        let (subscriber, events) = recording_subscriber(&url).await;
        subscriber.subscribe("a").await.expect("subscribe a");
        subscriber.subscribe("b").await.expect("subscribe b");

        let killed = client
            .query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"))
            .await;
        assert_eq!(killed, Ok(Value::Int(1)));

        let seen = Rc::clone(&events);
        eventually(Duration::from_secs(5), "Reconnected", move || {
            seen.borrow().contains(&SubscriberEvent::Reconnected)
        })
        .await;
        assert_eq!(
            *events.borrow(),
            [SubscriberEvent::Disconnected, SubscriberEvent::Reconnected]
        );
        assert_eq!(subscriber.reconnects(), 1);

        for channel in ["a", "b"] {
            let publish = client
                .query(redis::cmd("PUBLISH").arg(channel).arg("after"))
                .await;
            assert_eq!(publish, Ok(Value::Int(1)), "{channel} is subscribed again");
        }
        let seen = Rc::clone(&events);
        eventually(Duration::from_secs(5), "two messages", move || {
            seen.borrow().len() == 4
        })
        .await;
        assert_eq!(
            messages(&events),
            [
                (b"a".to_vec(), b"after".to_vec()),
                (b"b".to_vec(), b"after".to_vec())
            ]
        );
    });
}

#[test]
fn subscriber_survives_a_redis_restart_and_subscribes_while_down() {
    let server = Rc::new(RefCell::new(RedisServer::start(None)));
    let url = server.borrow().url();
    let handle = Rc::clone(&server);
    run(move || async move {
        let (subscriber, events) = recording_subscriber(&url).await;
        handle.borrow_mut().kill();
        let probe = Rc::clone(&subscriber);
        eventually(
            Duration::from_secs(5),
            "the subscriber to notice",
            move || !probe.is_connected(),
        )
        .await;
        // Recorded now, subscribed when Redis is back.
        assert_eq!(subscriber.subscribe("room").await, Err(Error::Unavailable));

        handle.borrow_mut().restart();
        let seen = Rc::clone(&events);
        eventually(Duration::from_secs(5), "Reconnected", move || {
            seen.borrow().contains(&SubscriberEvent::Reconnected)
        })
        .await;
        let client = connected_client(&url, quick_options()).await;
        assert_eq!(
            client
                .query(redis::cmd("PUBLISH").arg("room").arg("hi"))
                .await,
            Ok(Value::Int(1))
        );
    });
}
