//! SO_REUSEPORT end to end: two shards accept on one port, std clients connect.
//!
//! Each accepted connection gets one request byte and answers with the id of
//! the shard that accepted it: `h` (hello) keeps the shard accepting, `q`
//! (quit) makes the receiving shard tell the other one through the mesh, and
//! both stop. Loops are bounded by attempt counts; read timeouts only turn a
//! hang into a failure, nothing waits on time.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream as StdStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use futures_lite::future;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use kasagi_shards::{bind_reuseport, into_listener, run, RuntimeConfig};

const ATTEMPTS: usize = 2_000;

/// One request: connect, send `request`, read the accepting shard's id.
fn ask(addr: SocketAddr, request: u8) -> std::io::Result<u8> {
    let mut stream = StdStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(&[request])?;
    let mut shard = [0u8; 1];
    stream.read_exact(&mut shard)?;
    Ok(shard[0])
}

/// Answers one connection; returns the request byte.
async fn serve(stream: TcpStream, id: u8) -> std::io::Result<u8> {
    let mut stream = stream;
    // Inherited from the listener.
    assert!(stream.nodelay()?);
    let mut request = [0u8; 1];
    stream.read_exact(&mut request).await?;
    stream.write_all(&[id]).await?;
    stream.flush().await?;
    Ok(request[0])
}

#[test]
fn two_shards_share_one_port_and_both_accept() {
    let (addr, sockets) =
        bind_reuseport(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), 2, 128).expect("bind");
    assert_ne!(addr.port(), 0);
    for socket in &sockets {
        assert_eq!(socket.local_addr().unwrap().as_socket(), Some(addr));
    }
    let slots = Arc::new(Mutex::new(
        sockets.into_iter().map(Some).collect::<Vec<_>>(),
    ));

    let client = thread::spawn(move || {
        let mut seen = BTreeSet::new();
        for _ in 0..ATTEMPTS {
            seen.insert(ask(addr, b'h').expect("hello"));
            if seen.len() == 2 {
                break;
            }
        }
        ask(addr, b'q').expect("quit");
        seen
    });

    let accepted = run(
        RuntimeConfig {
            shards: 2,
            ..RuntimeConfig::default()
        },
        move |ctx| {
            let slots = slots.clone();
            async move {
                let socket = slots.lock().unwrap()[ctx.id]
                    .take()
                    .expect("one socket per shard");
                let listener = into_listener(socket);
                let (mesh, inbox) = ctx.split();
                let (stop_tx, stop_rx) = local_channel::new_bounded(1);
                inbox.spawn(move |_from, ()| {
                    let _ = stop_tx.try_send(());
                });
                let id = u8::try_from(mesh.id()).unwrap();
                let accept_loop = async {
                    let mut accepted = 0usize;
                    loop {
                        let stream = listener.accept().await.expect("accept");
                        accepted += 1;
                        if serve(stream, id).await.expect("serve") == b'q' {
                            mesh.send(1 - mesh.id(), ());
                            mesh.flush().await;
                            return accepted;
                        }
                    }
                };
                let stopped = async {
                    stop_rx.recv().await;
                    usize::MAX
                };
                match future::or(accept_loop, stopped).await {
                    usize::MAX => None,
                    accepted => Some(accepted),
                }
            }
        },
    )
    .expect("runtime");

    let seen = client.join().expect("client thread");
    assert_eq!(seen, BTreeSet::from([0, 1]), "both shards accepted");
    // Exactly one shard got the quit; the other was stopped through the mesh.
    assert_eq!(
        accepted.iter().filter(|a| a.is_some()).count(),
        1,
        "{accepted:?}"
    );
}
