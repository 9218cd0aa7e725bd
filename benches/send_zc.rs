//! What io_uring's zero-copy send (IORING_OP_SENDMSG_ZC) would buy the Fetch path against the
//! vectored `sendmsg` it uses (`io::Stream::write_chunks`): one 1 MiB Fetch answer made of 64
//! record chunks of 16 KiB, sent over loopback TCP to a thread that drains it. The zero-copy
//! send pins the pages instead of copying them into the socket, and reports twice: once sent,
//! once the kernel let go of the buffers.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use io_uring::{IoUring, cqueue, opcode, types};
use std::io::{IoSlice, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

const CHUNK: usize = 16 << 10;
const CHUNKS: usize = 64;

/// A connected loopback socket whose peer a thread drains until it closes.
fn drained_socket() -> TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let sender = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
    let (mut receiver, _) = listener.accept().expect("accept");
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        while receiver.read(&mut buf).is_ok_and(|n| n > 0) {}
    });
    sender.set_nodelay(true).expect("nodelay");
    sender
}

fn message(slices: &[IoSlice<'_>]) -> libc::msghdr {
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = slices.as_ptr().cast_mut().cast::<libc::iovec>();
    message.msg_iovlen = slices.len();
    message
}

/// Blocking vectored `sendmsg` calls until every chunk is sent.
fn send_copied(socket: &TcpStream, chunks: &[Vec<u8>]) {
    let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let message = message(slices);
        // SAFETY: the socket is open and `message` points at live iovecs.
        let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &message, libc::MSG_NOSIGNAL) };
        assert!(sent > 0, "sendmsg: {}", std::io::Error::last_os_error());
        IoSlice::advance_slices(&mut slices, sent as usize);
    }
}

/// SENDMSG_ZC operations until every chunk is sent, each waited for until its buffers are
/// released (a Fetch answer's `Bytes` would be held that long).
fn send_zero_copy(ring: &mut IoUring, socket: &TcpStream, chunks: &[Vec<u8>]) {
    let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let message = message(slices);
        let send = opcode::SendMsgZc::new(types::Fd(socket.as_raw_fd()), &message).build();
        // SAFETY: `message` and the chunks it points at outlive the operation: this function
        // waits below for its completion and for the notification that releases them.
        unsafe { ring.submission().push(&send).expect("submission queue full") };
        let (mut sent, mut pending_notification) = (None, false);
        while sent.is_none() || pending_notification {
            ring.submit_and_wait(1).expect("io_uring_enter");
            for completion in ring.completion() {
                if cqueue::notif(completion.flags()) {
                    pending_notification = false;
                } else {
                    assert!(completion.result() > 0, "SENDMSG_ZC: {}", completion.result());
                    sent = Some(completion.result() as usize);
                    pending_notification = cqueue::more(completion.flags());
                }
            }
        }
        IoSlice::advance_slices(&mut slices, sent.unwrap_or(0));
    }
}

fn fetch_answer_send(c: &mut Criterion) {
    let chunks: Vec<Vec<u8>> = (0..CHUNKS).map(|i| vec![i as u8; CHUNK]).collect();
    let mut group = c.benchmark_group("fetch_answer_send_1MiB_loopback");
    group.throughput(Throughput::Bytes((CHUNK * CHUNKS) as u64));
    let socket = drained_socket();
    group.bench_function("sendmsg_vectored", |b| b.iter(|| send_copied(&socket, &chunks)));
    let socket = drained_socket();
    let mut ring = IoUring::new(8).expect("io_uring");
    group.bench_function("io_uring_sendmsg_zc", |b| b.iter(|| send_zero_copy(&mut ring, &socket, &chunks)));
    group.finish();
}

criterion_group!(benches, fetch_answer_send);
criterion_main!(benches);
