//! Many clients, two shards, colliding random ops: every client's copy converges to the
//! server's state, ticks are gapless, and counters equal the sum of the acked `inc`s.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{Client, Enc, Mirror, Server};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// One convergence run: who sends what where.
#[derive(Clone, Copy)]
struct Scenario {
    clients: usize,
    /// Client `i` joins `rooms[i % len]` and `rooms[(i + 1) % len]` (one room when there is
    /// one).
    rooms: &'static [&'static str],
    messages_per_client: u64,
    /// Op messages in flight per client: enough to make the server coalesce, small enough
    /// to stay far from the rate limit and the outbound queue bound.
    window: usize,
    random_op: OpGenerator,
}

/// Draws one op and the counter it increments, if any.
type OpGenerator = fn(&mut StdRng) -> (Value, Option<(String, i64)>);
const SEED: u64 = 0x6b61_7361_6769;
const DEADLINE: Duration = Duration::from_secs(60);

/// Final ticks per room, published once every client is done sending.
type Targets = Arc<(Mutex<Option<BTreeMap<String, u64>>>, Condvar)>;

struct Outcome {
    index: usize,
    mirrors: BTreeMap<String, Mirror>,
    /// Per room, per counter: the sum of this client's acked `inc`s.
    counters: BTreeMap<String, BTreeMap<String, i64>>,
    acked: u64,
    conflicts: u64,
}

/// Ops on one short array and the maps inside it: index shifts from `del` and appends at
/// `set [len]` are where coalesced state-based deltas go wrong.
fn random_array_op(rng: &mut StdRng) -> (Value, Option<(String, i64)>) {
    let index = rng.gen_range(0..4u64);
    let value = rng.gen_range(0..100);
    let op = match rng.gen_range(0..10) {
        0..=2 => json!(["push", ["l"], {"v": value}]),
        3 | 4 => json!(["del", ["l", index]]),
        5 => json!(["set", ["l", index], {"v": value}]),
        6 => json!(["set", ["l", index, "v"], value]),
        7 => json!(["push", ["l", index, "tags"], value]),
        8 => json!(["del", ["l", index, "tags", 0]]),
        _ => {
            let by = rng.gen_range(-3..=3i64);
            return (json!(["inc", ["n", "c0"], by]), Some(("c0".to_owned(), by)));
        }
    };
    (op, None)
}

const KEYS: [&str; 4] = ["a", "b", "c", "d"];
const SUBKEYS: [&str; 2] = ["p", "q"];
const COUNTERS: [&str; 3] = ["c0", "c1", "c2"];

fn random_value(rng: &mut StdRng) -> Value {
    match rng.gen_range(0..4) {
        0 => json!(rng.gen_range(-100..100)),
        1 => json!({"p": rng.gen_range(0..10)}),
        2 => json!([rng.gen_range(0..10)]),
        _ => json!(format!("s{}", rng.gen_range(0..10))),
    }
}

/// One random op over a small path alphabet (so ops collide and conflict), and the counter
/// it increments, if any. Counters live under `n`, which only `inc` touches.
fn random_op(rng: &mut StdRng) -> (Value, Option<(String, i64)>) {
    let key = KEYS[rng.gen_range(0..KEYS.len())];
    let sub = SUBKEYS[rng.gen_range(0..SUBKEYS.len())];
    let index = rng.gen_range(0..3u64);
    match rng.gen_range(0..10) {
        0 | 1 => (json!(["set", ["x", key], random_value(rng)]), None),
        2 => (json!(["set", ["x", key, sub], rng.gen_range(0..50)]), None),
        3 => (
            json!(["set", ["x", key, index], rng.gen_range(0..50)]),
            None,
        ),
        4 => (json!(["del", ["x", key]]), None),
        5 => {
            if rng.gen_bool(0.5) {
                (json!(["del", ["x", key, sub]]), None)
            } else {
                (json!(["del", ["x", key, index]]), None)
            }
        }
        6 | 7 => (json!(["push", ["x", key], rng.gen_range(0..50)]), None),
        _ => {
            let counter = COUNTERS[rng.gen_range(0..COUNTERS.len())];
            let by = rng.gen_range(-5..=5i64);
            (
                json!(["inc", ["n", counter], by]),
                Some((counter.to_owned(), by)),
            )
        }
    }
}

struct Runner {
    client: Client,
    index: usize,
    mirrors: BTreeMap<String, Mirror>,
    /// (room, seq) -> the incs of that message.
    pending: HashMap<(String, u64), Vec<(String, i64)>>,
    last_acked: BTreeMap<String, u64>,
    counters: BTreeMap<String, BTreeMap<String, i64>>,
    acked: u64,
    conflicts: u64,
}

impl Runner {
    fn handle(&mut self, message: Value) {
        let index = self.index;
        let room = message["room"].as_str().unwrap_or("").to_owned();
        match message["t"].as_str() {
            Some("joined") => {
                assert!(
                    message.get("resync").is_none_or(|r| r == false),
                    "client {index}: unexpected resync (a reading client never overflows): {message}"
                );
                self.mirrors.insert(room, Mirror::from_joined(&message));
            }
            Some("delta") => {
                let mirror = self
                    .mirrors
                    .get_mut(&room)
                    .unwrap_or_else(|| panic!("client {index}: delta before joined: {message}"));
                mirror
                    .apply_delta(&message)
                    .unwrap_or_else(|err| panic!("client {index}: {err}"));
            }
            Some("ack") => {
                let seq = message["seq"].as_u64().expect("ack.seq");
                let tick = message["tick"].as_u64().expect("ack.tick");
                let incs = self
                    .pending
                    .remove(&(room.clone(), seq))
                    .unwrap_or_else(|| {
                        panic!("client {index}: ack for nothing pending: {message}")
                    });
                let held = self.mirrors.get(&room).map_or(0, |m| m.tick);
                assert!(
                    tick <= held,
                    "client {index}: ack at tick {tick} before its delta (holding {held}): {message}"
                );
                let last = self.last_acked.entry(room.clone()).or_insert(0);
                assert!(
                    *last < seq,
                    "client {index}: acks out of order in {room}: {seq} after {last}"
                );
                *last = seq;
                let counters = self.counters.entry(room).or_default();
                for (counter, by) in incs {
                    *counters.entry(counter).or_insert(0) += by;
                }
                self.acked += 1;
            }
            Some("error") => {
                assert_eq!(message["code"], "conflict", "client {index}: {message}");
                let seq = message["seq"].as_u64().expect("error.seq");
                self.pending.remove(&(room, seq)).unwrap_or_else(|| {
                    panic!("client {index}: error for nothing pending: {message}")
                });
                self.conflicts += 1;
            }
            Some("presence") => {}
            _ => panic!("client {index}: unexpected message {message}"),
        }
    }
}

fn run_client(
    scenario: Scenario,
    addr: SocketAddr,
    index: usize,
    start: Arc<Barrier>,
    done: mpsc::Sender<usize>,
    targets: Targets,
) -> Outcome {
    let enc = if index % 2 == 0 {
        Enc::Json
    } else {
        Enc::Msgpack
    };
    let all = scenario.rooms;
    let mut rooms: Vec<String> = vec![all[index % all.len()].to_owned()];
    if all.len() > 1 {
        rooms.push(all[(index + 1) % all.len()].to_owned());
    }
    let mut runner = Runner {
        client: Client::connect(addr, enc),
        index,
        mirrors: BTreeMap::new(),
        pending: HashMap::new(),
        last_acked: BTreeMap::new(),
        counters: BTreeMap::new(),
        acked: 0,
        conflicts: 0,
    };
    for room in &rooms {
        runner.client.send(json!({"t": "join", "room": room}));
    }
    while runner.mirrors.len() < rooms.len() {
        let message = runner.client.recv();
        runner.handle(message);
    }
    start.wait();

    let mut rng = StdRng::seed_from_u64(SEED + index as u64);
    let mut sent = 0u64;
    while sent < scenario.messages_per_client || !runner.pending.is_empty() {
        while runner.pending.len() < scenario.window && sent < scenario.messages_per_client {
            sent += 1;
            let room = rooms[rng.gen_range(0..rooms.len())].clone();
            let count = rng.gen_range(1..=3);
            let mut ops = Vec::new();
            let mut incs = Vec::new();
            for _ in 0..count {
                let (op, inc) = (scenario.random_op)(&mut rng);
                ops.push(op);
                incs.extend(inc);
            }
            runner.pending.insert((room.clone(), sent), incs);
            runner.client.op(&room, sent, Value::Array(ops));
        }
        let message = runner.client.recv();
        runner.handle(message);
    }
    done.send(index).expect("main thread waits");

    // Keep reading until every room reaches the final tick the main thread saw.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let reached = {
            let (lock, _) = &*targets;
            let guard = lock.lock().expect("targets lock");
            guard.as_ref().is_some_and(|targets| {
                rooms
                    .iter()
                    .all(|room| runner.mirrors[room].tick >= targets[room])
            })
        };
        if reached {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "client {index}: final ticks never reached; holding {:?}",
            runner
                .mirrors
                .iter()
                .map(|(r, m)| (r.clone(), m.tick))
                .collect::<Vec<_>>()
        );
        if let Some(message) = runner.client.try_recv(Duration::from_millis(100)) {
            runner.handle(message);
        }
    }
    Outcome {
        index,
        mirrors: runner.mirrors,
        counters: runner.counters,
        acked: runner.acked,
        conflicts: runner.conflicts,
    }
}

#[test]
fn many_clients_converge_on_two_shards() {
    converge(Scenario {
        clients: 24,
        rooms: &["conv-a", "conv-b", "conv-c"],
        messages_per_client: 300,
        window: 6,
        random_op,
    });
}

#[test]
fn pipelined_array_ops_converge() {
    converge(Scenario {
        clients: 8,
        rooms: &["arrays"],
        messages_per_client: 250,
        window: 16,
        random_op: random_array_op,
    });
}

fn converge(scenario: Scenario) {
    let clients = scenario.clients;
    let server = Server::start(&[
        "--shards",
        "2",
        "--rate-limit",
        "100000",
        "--rate-burst",
        "100000",
    ]);
    let addr = server.addr();
    let start = Arc::new(Barrier::new(clients));
    let targets: Targets = Arc::new((Mutex::new(None), Condvar::new()));
    let (done_tx, done_rx) = mpsc::channel();
    let began = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|index| {
            let (start, done, targets) = (start.clone(), done_tx.clone(), targets.clone());
            std::thread::Builder::new()
                .name(format!("client-{index}"))
                .spawn(move || run_client(scenario, addr, index, start, done, targets))
                .expect("spawn a client thread")
        })
        .collect();
    drop(done_tx);

    let deadline = Instant::now() + DEADLINE;
    for _ in 0..clients {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            // A client thread panicked (its message is in the join below) or is stuck.
            for handle in handles {
                if let Err(panic) = handle.join() {
                    std::panic::resume_unwind(panic);
                }
            }
            panic!("clients did not finish sending within {DEADLINE:?}");
        }
    }

    // Every op is answered, so the room states are final: read them with fresh joins.
    let mut snapshots = BTreeMap::new();
    for &room in scenario.rooms {
        let json_view = Client::connect(addr, Enc::Json).join(room);
        let msgpack_view = Client::connect(addr, Enc::Msgpack).join(room);
        assert_eq!(
            json_view["state"], msgpack_view["state"],
            "both encodings agree on {room}"
        );
        assert_eq!(json_view["tick"], msgpack_view["tick"]);
        snapshots.insert(room.to_owned(), json_view);
    }
    {
        let (lock, _) = &*targets;
        let ticks = snapshots
            .iter()
            .map(|(room, joined)| (room.clone(), joined["tick"].as_u64().expect("tick")))
            .collect();
        *lock.lock().expect("targets lock") = Some(ticks);
    }

    let mut outcomes = Vec::new();
    for handle in handles {
        match handle.join() {
            Ok(outcome) => outcomes.push(outcome),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    let (mut acked, mut conflicts) = (0, 0);
    let mut sums: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for outcome in &outcomes {
        acked += outcome.acked;
        conflicts += outcome.conflicts;
        for (room, mirror) in &outcome.mirrors {
            let snapshot = &snapshots[room];
            assert_eq!(
                Some(mirror.tick),
                snapshot["tick"].as_u64(),
                "client {} in {room}",
                outcome.index
            );
            assert_eq!(
                mirror.state, snapshot["state"],
                "client {} diverged in {room}",
                outcome.index
            );
        }
        for (room, counters) in &outcome.counters {
            for (counter, sum) in counters {
                *sums
                    .entry(room.clone())
                    .or_default()
                    .entry(counter.clone())
                    .or_insert(0) += sum;
            }
        }
    }
    for &room in scenario.rooms {
        for counter in COUNTERS {
            let expected = sums
                .get(room)
                .and_then(|c| c.get(counter))
                .copied()
                .unwrap_or(0);
            let actual = snapshots[room]["state"]["n"][counter].as_i64().unwrap_or(0);
            assert_eq!(actual, expected, "counter {counter} of {room}");
        }
    }
    assert_eq!(
        acked + conflicts,
        clients as u64 * scenario.messages_per_client,
        "every message answered once"
    );
    assert!(
        acked > conflicts,
        "mostly applied: {acked} acked, {conflicts} conflicts"
    );
    assert!(conflicts > 0, "the alphabet is small enough to collide");
    eprintln!(
        "convergence: {clients} clients, {acked} acked, {conflicts} conflicts, ticks {:?}, {:?}",
        snapshots
            .iter()
            .map(|(room, j)| (room.clone(), j["tick"].clone()))
            .collect::<Vec<_>>(),
        began.elapsed()
    );
}
