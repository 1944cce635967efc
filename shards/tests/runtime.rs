//! The runtime end to end: real executors, a real mesh, 2 shards (this machine
//! has 2 cores and `ulimit -l` = 8 MiB; the default config must start there).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use glommio::channels::local_channel;
use kasagi_shards::{run, RuntimeConfig, RuntimeError, ShardId};

fn two_shards() -> RuntimeConfig {
    RuntimeConfig {
        shards: 2,
        ..RuntimeConfig::default()
    }
}

#[test]
fn returns_each_shards_output_in_shard_order() {
    let outputs = run(
        two_shards(),
        |ctx: kasagi_shards::ShardContext<()>| async move {
            assert_eq!(ctx.id, ctx.mesh.id());
            assert_eq!(ctx.shards, ctx.mesh.shards());
            let name = std::thread::current().name().map(str::to_owned);
            (ctx.id, ctx.shards, name)
        },
    )
    .unwrap();
    assert_eq!(
        outputs,
        vec![
            (0, 2, Some("shard-0".to_owned())),
            (1, 2, Some("shard-1".to_owned()))
        ]
    );
}

/// What one shard saw in the ordering test.
#[derive(Debug, PartialEq, Eq)]
struct Report {
    received: u64,
    out_of_order: u64,
    wrong_sender: u64,
    outboxed_some: bool,
    backlog_after_flush: usize,
    undeliverable: u64,
}

#[test]
fn ten_thousand_messages_each_way_through_a_tiny_channel_arrive_in_order() {
    const COUNT: u64 = 10_000;
    let config = RuntimeConfig {
        shards: 2,
        channel_capacity: 4,
        ..RuntimeConfig::default()
    };
    let reports = run(config, |ctx| async move {
        let (mesh, inbox) = ctx.split();
        let peer: ShardId = 1 - mesh.id();
        let next_expected = Rc::new(Cell::new(0u64));
        let out_of_order = Rc::new(Cell::new(0u64));
        let wrong_sender = Rc::new(Cell::new(0u64));
        let (done_tx, done_rx) = local_channel::new_bounded(1);
        {
            let next_expected = next_expected.clone();
            let out_of_order = out_of_order.clone();
            let wrong_sender = wrong_sender.clone();
            inbox.spawn(move |from, n: u64| {
                if from != peer {
                    wrong_sender.set(wrong_sender.get() + 1);
                }
                if n != next_expected.get() {
                    out_of_order.set(out_of_order.get() + 1);
                }
                next_expected.set(n + 1);
                if n + 1 == COUNT {
                    let _ = done_tx.try_send(());
                }
            });
        }
        for n in 0..COUNT {
            mesh.send(peer, n);
        }
        // The channel holds 4: nearly everything went through the outbox.
        let outboxed_some = mesh.stats().outboxed > COUNT / 2;
        assert!(mesh.backlog(peer) > 0);
        mesh.flush().await;
        let backlog_after_flush = mesh.backlog(peer);
        done_rx.recv().await;
        Report {
            received: next_expected.get(),
            out_of_order: out_of_order.get(),
            wrong_sender: wrong_sender.get(),
            outboxed_some,
            backlog_after_flush,
            undeliverable: mesh.stats().undeliverable,
        }
    })
    .unwrap();
    for report in reports {
        assert_eq!(
            report,
            Report {
                received: COUNT,
                out_of_order: 0,
                wrong_sender: 0,
                outboxed_some: true,
                backlog_after_flush: 0,
                undeliverable: 0,
            }
        );
    }
}

#[test]
fn handlers_can_reply_through_the_mesh() {
    // Shard 0 pings, shard 1 answers from inside its handler: the handler may
    // call `send`, and the answers come back in order.
    const PINGS: u32 = 500;
    let outputs = run(two_shards(), |ctx| async move {
        let (mesh, inbox) = ctx.split();
        let (done_tx, done_rx) = local_channel::new_bounded(1);
        let pongs = Rc::new(RefCell::new(Vec::new()));
        {
            let mesh = mesh.clone();
            let pongs = pongs.clone();
            inbox.spawn(move |from, msg: (bool, u32)| match msg {
                (true, n) => mesh.send(from, (false, n)),
                (false, n) => {
                    pongs.borrow_mut().push(n);
                    if n + 1 == PINGS {
                        let _ = done_tx.try_send(());
                    }
                }
            });
        }
        if mesh.id() == 0 {
            for n in 0..PINGS {
                mesh.send(1, (true, n));
            }
            done_rx.recv().await;
            // Tell shard 1 it may stop: a pong it never asked for.
            mesh.send(1, (false, PINGS - 1));
            mesh.flush().await;
        } else {
            done_rx.recv().await;
        }
        let pongs = pongs.borrow().clone();
        pongs
    })
    .unwrap();
    assert_eq!(outputs[0], (0..PINGS).collect::<Vec<_>>());
    assert_eq!(outputs[1], vec![PINGS - 1]);
}

#[test]
fn a_panicking_shard_is_reported_by_id() {
    let result = run(
        two_shards(),
        |ctx: kasagi_shards::ShardContext<()>| async move {
            if ctx.id == 1 {
                panic!("boom on purpose");
            }
        },
    );
    match result {
        Err(RuntimeError::ShardPanicked { shard, message }) => {
            assert_eq!(shard, 1);
            assert!(message.contains("boom on purpose"), "{message}");
        }
        other => panic!("expected a panic report, got {other:?}"),
    }
}

#[test]
fn invalid_configs_are_rejected_before_anything_starts() {
    let start = |_ctx: kasagi_shards::ShardContext<()>| async {};
    let err = run(
        RuntimeConfig {
            shards: 0,
            ..RuntimeConfig::default()
        },
        start,
    )
    .unwrap_err();
    assert!(matches!(err, RuntimeError::NoShards), "{err}");

    let err = run(
        RuntimeConfig {
            shards: 2,
            cpus: Some(Vec::new()),
            ..RuntimeConfig::default()
        },
        start,
    )
    .unwrap_err();
    assert!(matches!(err, RuntimeError::EmptyCpuList), "{err}");

    let err = run(
        RuntimeConfig {
            shards: 2,
            channel_capacity: 0,
            ..RuntimeConfig::default()
        },
        start,
    )
    .unwrap_err();
    assert!(matches!(err, RuntimeError::ZeroChannelCapacity), "{err}");
}

#[test]
fn a_cpu_that_does_not_exist_fails_startup_naming_the_shard() {
    let config = RuntimeConfig {
        shards: 2,
        cpus: Some(vec![0, 8191]),
        ..RuntimeConfig::default()
    };
    let err = run(config, |_ctx: kasagi_shards::ShardContext<()>| async {
        unreachable!("no shard may start when one cannot")
    })
    .unwrap_err();
    match err {
        RuntimeError::ExecutorStart { shard, cpu, .. } => {
            assert_eq!((shard, cpu), (1, Some(8191)));
        }
        other => panic!("expected ExecutorStart, got {other}"),
    }
}

#[test]
fn more_shards_than_cpus_share_the_cpu_list() {
    let config = RuntimeConfig {
        shards: 3,
        cpus: Some(vec![0]),
        ..RuntimeConfig::default()
    };
    let outputs = run(config, |ctx: kasagi_shards::ShardContext<()>| async move {
        ctx.id
    })
    .unwrap();
    assert_eq!(outputs, vec![0, 1, 2]);
}
