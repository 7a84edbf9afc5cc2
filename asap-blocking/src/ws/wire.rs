//! The byte path of one WebSocket connection: [`Wire`].

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::{sync_channel, SyncSender};

/// Bytes read from the socket per chunk.
const CHUNK: usize = 16 * 1024;

/// The stream tungstenite reads and writes: reads come from the chunks the
/// reader thread forwarded ([`feed`](Self::feed); `WouldBlock` when none is
/// left), writes go straight to the socket. Before the reader starts (a
/// client's handshake) it reads the socket itself.
#[derive(Debug)]
pub(crate) struct Wire {
    tcp: TcpStream,
    inbox: Vec<u8>,
    at: usize,
    eof: bool,
    direct: bool,
    /// Lets the reader thread read one more chunk.
    credit: Option<SyncSender<()>>,
    credit_out: bool,
}

impl Wire {
    /// A wire whose first bytes (read past an HTTP head) are `buffered`.
    pub(crate) fn new(tcp: TcpStream, buffered: Vec<u8>) -> Self {
        Self {
            tcp,
            inbox: buffered,
            at: 0,
            eof: false,
            direct: false,
            credit: None,
            credit_out: false,
        }
    }

    /// A wire that reads the socket itself until [`start_reader`](Self::start_reader).
    pub(crate) fn direct(tcp: TcpStream) -> Self {
        Self {
            direct: true,
            ..Self::new(tcp, Vec::new())
        }
    }

    /// Starts the reader thread: each chunk the socket yields goes to
    /// `deliver` (`None` at the end of the stream), one per
    /// [`want_more`](Self::want_more); it stops when `deliver` returns
    /// `false`, the socket closes, or this wire is dropped.
    pub(crate) fn start_reader(
        &mut self,
        mut deliver: impl FnMut(Option<Vec<u8>>) -> bool + Send + 'static,
    ) -> io::Result<()> {
        let mut tcp = self.tcp.try_clone()?;
        // Waiting for the peer is the connection loop's business (its deadlines).
        tcp.set_read_timeout(None)?;
        let (tx, credits) = sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("asap-ws-read".into())
            .spawn(move || {
                while credits.recv().is_ok() {
                    let mut buf = vec![0u8; CHUNK];
                    let n = loop {
                        match tcp.read(&mut buf) {
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            r => break r.unwrap_or(0),
                        }
                    };
                    if n == 0 {
                        let _ = deliver(None);
                        return;
                    }
                    buf.truncate(n);
                    if !deliver(Some(buf)) {
                        return;
                    }
                }
            })?;
        self.direct = false;
        self.credit = Some(tx);
        self.credit_out = false;
        Ok(())
    }

    /// Input: a chunk from the reader (`None`: the peer closed).
    pub(crate) fn feed(&mut self, chunk: Option<Vec<u8>>) {
        self.credit_out = false;
        match chunk {
            Some(bytes) if self.at == self.inbox.len() => {
                self.inbox = bytes;
                self.at = 0;
            }
            Some(bytes) => self.inbox.extend_from_slice(&bytes),
            None => self.eof = true,
        }
    }

    /// Asks the reader for the next chunk, unless one is already asked for.
    pub(crate) fn want_more(&mut self) {
        if self.credit_out || self.eof {
            return;
        }
        if let Some(credit) = &self.credit {
            self.credit_out = credit.try_send(()).is_ok();
        }
    }

    /// Ends the connection: the reader thread sees the end of the stream.
    pub(crate) fn close(&self) {
        let _ = self.tcp.shutdown(Shutdown::Both);
    }
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at < self.inbox.len() {
            let n = buf.len().min(self.inbox.len() - self.at);
            buf[..n].copy_from_slice(&self.inbox[self.at..self.at + n]);
            self.at += n;
            return Ok(n);
        }
        if self.direct {
            return self.tcp.read(buf);
        }
        if self.eof {
            return Ok(0);
        }
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn chunks_flow_one_per_credit_and_end_with_the_stream() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (tcp, _) = listener.accept().unwrap();
        let mut wire = Wire::new(tcp, b"ab".to_vec());
        let (tx, rx) = std::sync::mpsc::channel();
        wire.start_reader(move |c| tx.send(c).is_ok()).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(wire.read(&mut buf).unwrap(), 2, "buffered bytes first");
        assert_eq!(
            wire.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        peer.write_all(b"cd").unwrap();
        // No credit yet: nothing is read.
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(50))
            .is_err());
        wire.want_more();
        wire.want_more(); // one outstanding at most
        let chunk = rx.recv().unwrap();
        assert_eq!(chunk.as_deref(), Some(&b"cd"[..]));
        wire.feed(chunk);
        assert_eq!(wire.read(&mut buf).unwrap(), 2);
        drop(peer);
        wire.want_more();
        let end = rx.recv().unwrap();
        assert_eq!(end, None);
        wire.feed(end);
        assert_eq!(wire.read(&mut buf).unwrap(), 0);
    }
}
