use bytes::Bytes;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// A TCP listener of this core. Every core binds the same address with SO_REUSEPORT and the
/// kernel spreads new connections across them.
pub struct Listener(glommio::net::TcpListener);

impl Listener {
    pub fn bind(address: SocketAddr) -> io::Result<Listener> {
        glommio::net::TcpListener::bind(address).map(Listener).map_err(io::Error::from)
    }

    pub async fn accept(&self) -> io::Result<Stream> {
        let stream = self.0.accept().await.map_err(io::Error::from)?;
        stream.set_nodelay(true).map_err(io::Error::from)?;
        Ok(Stream(stream))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr().map_err(io::Error::from)
    }
}

/// Reserves `address` (resolving port 0) with SO_REUSEPORT so that every core can then bind
/// the same concrete address. The reservation neither listens nor accepts; drop it once the
/// cores are listening.
pub fn reserve_address(address: SocketAddr) -> io::Result<(socket2::Socket, SocketAddr)> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None)?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    let bound = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))?;
    Ok((socket, bound))
}

/// One `sendmsg` of as many of `slices` as the kernel takes without waiting.
fn send_now(fd: std::os::fd::RawFd, slices: &[io::IoSlice<'_>]) -> io::Result<usize> {
    const IOV_MAX: usize = 1024;
    let count = slices.len().min(IOV_MAX);
    // SAFETY: an all-zero msghdr is valid (no name, no control data); `IoSlice` is
    // ABI-compatible with `iovec` and the slices outlive the call.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = slices.as_ptr().cast_mut().cast::<libc::iovec>();
    message.msg_iovlen = count;
    // SAFETY: `fd` is this stream's open socket and `message` points at `count` valid iovecs.
    let sent = unsafe { libc::sendmsg(fd, &message, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// One client connection, owned by the core that accepted it.
pub struct Stream(glommio::net::TcpStream);

impl Stream {
    /// Connects to another broker, with Nagle off.
    pub async fn connect(address: SocketAddr) -> io::Result<Stream> {
        let stream = glommio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Stream(stream))
    }

    /// Fills `buf` entirely; an end of stream before that is `UnexpectedEof`.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact(buf).await
    }

    /// Appends to `buf` up to `want` bytes that have arrived (at least one), received straight
    /// into its spare capacity: request bodies are never zero-filled before being read into.
    /// The end of the stream is `UnexpectedEof`.
    pub async fn read_into(&mut self, buf: &mut bytes::BytesMut, want: usize) -> io::Result<()> {
        buf.reserve(want);
        loop {
            let spare = buf.spare_capacity_mut();
            let len = want.min(spare.len());
            // SAFETY: recv(2) writes at most `len` bytes into the spare capacity, which is
            // allocated, uniquely borrowed and at least `len` bytes long.
            let got =
                unsafe { libc::recv(self.0.as_raw_fd(), spare.as_mut_ptr().cast(), len, libc::MSG_DONTWAIT) };
            if got > 0 {
                // SAFETY: recv initialised the first `got` bytes of the spare capacity.
                unsafe { buf.set_len(buf.len() + got as usize) };
                return Ok(());
            }
            if got == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                // Nothing yet: wait until something arrives (a peek leaves it in the socket).
                io::ErrorKind::WouldBlock => {
                    if self.0.peek(&mut [0u8; 1]).await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                io::ErrorKind::Interrupted => {}
                _ => return Err(error),
            }
        }
    }

    /// Reads what has arrived (at least one byte, or 0 at the end of the stream).
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).await
    }

    /// Writes every chunk in order, as one vectored stream of bytes: record batches go to the
    /// socket from the buffers they live in, without being copied into a response buffer.
    ///
    /// glommio's stream has no vectored write (its `write_vectored` sends the first slice
    /// only: a 48 MB cached fetch went out as thousands of 61-byte and 16 KiB sends, at ~300
    /// MB/s of a core). So the chunks go to the kernel in one non-blocking `sendmsg` of up to
    /// `IOV_MAX` slices; only when the socket buffer is full does glommio's write wait for room.
    ///
    /// io_uring's zero-copy send (SENDMSG_ZC) is not used: over loopback it lost to this copy
    /// into the socket (`benches/send_zc.rs`, a 1 MiB answer of 16 KiB chunks: 446 us against
    /// 345 us for `sendmsg`, 0.77x), since loopback delivery copies anyway and the pages must be
    /// pinned and their release awaited. It also reports twice per send (sent, then buffers
    /// released), which glommio's reactor cannot await; it would need a ring of our own. It
    /// is the thing to measure again on a real NIC with large answers.
    pub async fn write_chunks(&mut self, chunks: &[Bytes]) -> io::Result<()> {
        let mut slices: Vec<io::IoSlice<'_>> =
            chunks.iter().filter(|chunk| !chunk.is_empty()).map(|chunk| io::IoSlice::new(chunk)).collect();
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            let written = match send_now(self.0.as_raw_fd(), slices) {
                Ok(written) => written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => self.0.write(&slices[0]).await?,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            io::IoSlice::advance_slices(&mut slices, written);
        }
        Ok(())
    }

    /// Bounds how long a read may wait for bytes (slow or stalled clients).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.0.set_read_timeout(timeout).map_err(io::Error::from)
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.peer_addr().map_err(io::Error::from)
    }
}
