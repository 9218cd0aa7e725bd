//! What a cross-core hop costs: a request carrying 16 KiB of `Bytes` and a reply channel, sent
//! to another pinned shard over the channel mesh and answered, against the same exchange with
//! a task on the same core. Each figure is one round trip; the cross-core one is measured with
//! idle executors sleeping at once and spinning 100 us first (`spin_before_park_us`).

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_channel::oneshot;
use ringmq::io;
use std::time::{Duration, Instant};

type Hop = (Bytes, oneshot::Sender<Bytes>);

/// `iters` round trips from shard 0 to shard 1 and back; the time shard 0 measured.
fn cross_core(iters: u64, spin: Duration) -> Duration {
    let mesh = io::mesh::<Hop>(2, 1024);
    let (report, measured) = std::sync::mpsc::channel();
    io::run_sharded(2, spin, move |_| {
        let (mesh, report) = (mesh.clone(), report.clone());
        async move {
            let mut mesh = mesh.join().await.expect("join mesh");
            if mesh.shard() == 1 {
                for (_, inbox) in mesh.take_inboxes() {
                    while let Some((payload, reply)) = inbox.recv().await {
                        let _ = reply.send(payload);
                    }
                }
                return;
            }
            let payload = Bytes::from(vec![7u8; 16 << 10]);
            let start = Instant::now();
            for _ in 0..iters {
                let (reply, answer) = oneshot::channel();
                if mesh.send_to(1, (payload.clone(), reply)).await.is_err() {
                    panic!("shard 1 is gone");
                }
                answer.await.expect("answer");
            }
            let _ = report.send(start.elapsed());
            drop(mesh); // closes shard 1's inbox, so it returns too
        }
    })
    .expect("run shards");
    measured.recv().expect("measurement")
}

/// The same exchange with a task on the same core.
fn same_core(iters: u64) -> Duration {
    io::block_on(async move {
        let payload = Bytes::from(vec![7u8; 16 << 10]);
        let start = Instant::now();
        for _ in 0..iters {
            let (reply, answer) = oneshot::channel::<Bytes>();
            let payload = payload.clone();
            io::spawn_detached(async move {
                let _ = reply.send(payload);
            });
            answer.await.expect("answer");
        }
        start.elapsed()
    })
}

fn hop(c: &mut Criterion) {
    let mut group = c.benchmark_group("shard_hop");
    group.sample_size(10);
    group.bench_function("cross_core_round_trip", |b| b.iter_custom(|n| cross_core(n, Duration::ZERO)));
    let spin = Duration::from_micros(100);
    group.bench_function("cross_core_round_trip_spin_100us", |b| b.iter_custom(|n| cross_core(n, spin)));
    group.bench_function("same_core_round_trip", |b| b.iter_custom(same_core));
    group.finish();
}

criterion_group!(benches, hop);
criterion_main!(benches);
