//! A TCP proxy between clients and a broker that can lose the broker's answers: the faults an
//! idempotent producer must survive without duplicating a record. Thread per direction; test
//! code only.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Faults {
    /// Connections whose next chunk from the broker is dropped, the connection then cut.
    drop_next: AtomicUsize,
    /// While set, everything the broker sends is dropped (connections stay open).
    blackhole: AtomicBool,
    /// Chunks of the broker's answers dropped so far.
    dropped_chunks: AtomicU64,
}

pub struct Proxy {
    pub address: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    faults: Arc<Faults>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// Listens on an ephemeral loopback port and forwards every connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let proxy = Proxy {
            address: listener.local_addr().expect("proxy address"),
            upstream: Arc::new(Mutex::new(upstream)),
            faults: Arc::new(Faults::default()),
            open: Arc::new(Mutex::new(Vec::new())),
        };
        let (upstream, faults, open) = (proxy.upstream.clone(), proxy.faults.clone(), proxy.open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let target = *upstream.lock().expect("upstream");
                let Ok(broker) = TcpStream::connect(target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let mut open = open.lock().expect("open");
                open.push(client.try_clone().expect("clone"));
                open.push(broker.try_clone().expect("clone"));
                drop(open);
                pump(client.try_clone().expect("clone"), broker.try_clone().expect("clone"), None);
                pump(broker, client, Some(faults.clone()));
            }
        });
        proxy
    }

    /// Where new connections go from now on (a restarted broker's new port).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().expect("upstream") = upstream;
    }

    /// The next chunk the broker sends, on whichever connection, is lost and that connection
    /// cut: the request was served, its answer never arrives.
    pub fn drop_next_answer(&self) {
        self.faults.drop_next.fetch_add(1, Ordering::SeqCst);
    }

    pub fn blackhole(&self, on: bool) {
        self.faults.blackhole.store(on, Ordering::SeqCst);
    }

    pub fn dropped_chunks(&self) -> u64 {
        self.faults.dropped_chunks.load(Ordering::SeqCst)
    }

    /// Cuts every connection made so far.
    pub fn cut_all(&self) {
        for stream in self.open.lock().expect("open").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Copies `from` to `to` on a thread until either side closes; `faults` applies to the
/// broker-to-client direction.
fn pump(mut from: TcpStream, mut to: TcpStream, faults: Option<Arc<Faults>>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(faults) = &faults {
                let take_one = |left: usize| left.checked_sub(1);
                if faults.drop_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, take_one).is_ok() {
                    faults.dropped_chunks.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                if faults.blackhole.load(Ordering::SeqCst) {
                    faults.dropped_chunks.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}
