//! SFTP framing: reading length-prefixed packets with a size limit, and encoding replies. Requests are decoded by
//! `russh_sftp::protocol`; the replies sent most often (status, data) are encoded here directly into one buffer.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use russh_sftp::protocol::{Packet, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt};

pub(crate) const SSH_FXP_STATUS: u8 = 101;
pub(crate) const SSH_FXP_DATA: u8 = 103;
pub(crate) const SSH_FXP_EXTENDED_REPLY: u8 = 201;

/// Bytes before the payload of a DATA reply: length, type, request id, data length.
pub(crate) const DATA_HEADER_LEN: usize = 4 + 1 + 4 + 4;

/// Reads packets (type byte and payload, without the length) off a stream. Packets are sliced out of a shared
/// buffer, so the data of a WRITE reaches the file without being copied on the way. While the client sends nothing
/// the reader holds no buffer.
pub(crate) struct PacketReader<R> {
    input: R,
    buf: BytesMut,
    max_len: u32,
}

/// Bytes read at once while no packet is half read (the reader then holds no buffer).
const FIRST_READ: usize = 4 * 1024;
/// Buffer allocated for packets that continue past what arrived, shared by the packets sliced out of it.
const CHUNK: usize = 64 * 1024;

impl<R: AsyncRead + Unpin> PacketReader<R> {
    pub(crate) fn new(input: R, max_len: u32) -> Self {
        PacketReader {
            input,
            buf: BytesMut::new(),
            max_len,
        }
    }

    /// The next packet. `None` when the client closed the stream between packets; an error for a packet longer
    /// than the limit or a stream that ends inside a packet.
    pub(crate) async fn next(&mut self) -> io::Result<Option<Bytes>> {
        if self.buf.is_empty() && !self.read_first().await? {
            return Ok(None);
        }
        while self.buf.len() < 4 {
            self.read_more(4).await?;
        }
        let len = self
            .buf
            .get(..4)
            .map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap_or_default()));
        if len == 0 || len > self.max_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("packet of {len} bytes (the limit is {})", self.max_len),
            ));
        }
        let total = 4 + len as usize;
        while self.buf.len() < total {
            self.read_more(total).await?;
        }
        self.buf.advance(4);
        Ok(Some(self.buf.split_to(len as usize).freeze()))
    }

    /// Waits for the client with no buffer held, then keeps what arrived. `false` at the end of the stream.
    async fn read_first(&mut self) -> io::Result<bool> {
        self.buf = BytesMut::new();
        let mut first = [0u8; FIRST_READ];
        let n = self.input.read(&mut first).await?;
        let Some(arrived) = first.get(..n).filter(|a| !a.is_empty()) else {
            return Ok(false);
        };
        let wanted = match arrived.get(..4) {
            Some(len) => 4 + u32::from_be_bytes(len.try_into().unwrap_or_default()) as usize,
            None => 4,
        };
        // A packet that arrived whole needs no more room; one that continues gets a shared chunk.
        let capacity = if wanted <= n {
            n
        } else {
            CHUNK.max(wanted.min(4 + self.max_len as usize))
        };
        self.buf.reserve(capacity);
        self.buf.extend_from_slice(arrived);
        Ok(true)
    }

    /// Reads more of a packet that needs `total` bytes in the buffer.
    async fn read_more(&mut self, total: usize) -> io::Result<()> {
        let missing = total.saturating_sub(self.buf.len());
        if self.buf.capacity() - self.buf.len() < missing {
            self.buf.reserve(missing.max(CHUNK));
        }
        if self.input.read_buf(&mut self.buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

pub(crate) const SSH_FXP_WRITE: u8 = 6;

/// An SSH_FXP_WRITE request, decoded without copying its data.
pub(crate) struct WriteRequest {
    pub id: u32,
    pub handle: Bytes,
    pub offset: u64,
    pub data: Bytes,
}

/// Decodes `packet` if it is a well-formed WRITE (anything else is left to russh-sftp's decoder).
pub(crate) fn write_request(packet: &Bytes) -> Option<WriteRequest> {
    let mut rest = packet.clone();
    if rest.try_get_u8().ok()? != SSH_FXP_WRITE {
        return None;
    }
    let id = rest.try_get_u32().ok()?;
    let handle = take_string(&mut rest)?;
    let offset = rest.try_get_u64().ok()?;
    let data = take_string(&mut rest)?;
    rest.is_empty().then_some(WriteRequest {
        id,
        handle,
        offset,
        data,
    })
}

fn take_string(buf: &mut Bytes) -> Option<Bytes> {
    let len = buf.try_get_u32().ok()? as usize;
    (len <= buf.len()).then(|| buf.split_to(len))
}

/// The request id of a raw packet, if it is long enough to have one.
pub(crate) fn request_id(packet: &[u8]) -> Option<u32> {
    let bytes = packet.get(1..5)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

/// An SSH_FXP_STATUS reply.
pub(crate) fn status(id: u32, code: StatusCode, message: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(STATUS_LEN + message.len());
    put_status(&mut buf, id, code, message);
    buf.freeze()
}

/// Bytes of a STATUS reply besides its message.
const STATUS_LEN: usize = 4 + 1 + 4 + 4 + 4 + 4 + 2;

/// Appends an SSH_FXP_STATUS reply to `buf`, which may hold other replies before it.
pub(crate) fn put_status(buf: &mut BytesMut, id: u32, code: StatusCode, message: &str) {
    let message = message.as_bytes();
    buf.reserve(STATUS_LEN + message.len());
    buf.put_u32((STATUS_LEN - 4 + message.len()) as u32);
    buf.put_u8(SSH_FXP_STATUS);
    buf.put_u32(id);
    buf.put_u32(code as u32);
    put_string(buf, message);
    put_string(buf, b"en");
}

/// An SSH_FXP_EXTENDED_REPLY with `data` as its payload.
pub(crate) fn extended_reply(id: u32, data: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(4 + 1 + 4 + data.len());
    buf.put_u32(0);
    buf.put_u8(SSH_FXP_EXTENDED_REPLY);
    buf.put_u32(id);
    buf.put_slice(data);
    finish(buf)
}

/// Completes a DATA reply whose payload was read into `buf` after [`DATA_HEADER_LEN`] reserved bytes.
pub(crate) fn data(id: u32, mut buf: Vec<u8>, payload_len: usize) -> Bytes {
    buf.truncate(DATA_HEADER_LEN + payload_len);
    let total = (buf.len() - 4) as u32;
    let mut header = [0u8; DATA_HEADER_LEN];
    header[..4].copy_from_slice(&total.to_be_bytes());
    header[4] = SSH_FXP_DATA;
    header[5..9].copy_from_slice(&id.to_be_bytes());
    header[9..].copy_from_slice(&(payload_len as u32).to_be_bytes());
    if let Some(head) = buf.get_mut(..DATA_HEADER_LEN) {
        head.copy_from_slice(&header);
    }
    Bytes::from(buf)
}

/// Any other reply, encoded by russh-sftp.
pub(crate) fn packet(id: u32, packet: Packet) -> Bytes {
    Bytes::try_from(packet).unwrap_or_else(|e| {
        status(
            id,
            StatusCode::Failure,
            &format!("cannot encode reply: {e}"),
        )
    })
}

fn put_string(buf: &mut BytesMut, s: &[u8]) {
    buf.put_u32(s.len() as u32);
    buf.put_slice(s);
}

fn finish(mut buf: BytesMut) -> Bytes {
    let len = (buf.len() - 4) as u32;
    if let Some(head) = buf.get_mut(..4) {
        head.copy_from_slice(&len.to_be_bytes());
    }
    buf.freeze()
}

/// Reads the arguments of an extended request.
pub(crate) struct ExtArgs<'a>(&'a [u8]);

impl<'a> ExtArgs<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        ExtArgs(data)
    }

    pub(crate) fn string(&mut self) -> Option<String> {
        let len = self.0.get(..4)?;
        let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
        let bytes = self.0.get(4..4usize.checked_add(len)?)?;
        self.0 = self.0.get(4 + len..)?;
        Some(String::from_utf8_lossy(bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    async fn read_one(mut input: &[u8]) -> io::Result<Option<Bytes>> {
        PacketReader::new(&mut input, 1024).next().await
    }

    #[tokio::test]
    async fn oversized_and_truncated_packets() {
        assert!(read_one(&[0, 4, 0, 1, 9]).await.is_err());
        assert!(read_one(&[]).await.unwrap().is_none());
        assert!(read_one(&[0, 0, 0, 0]).await.is_err());
        assert!(read_one(&[0, 0, 0, 5, 1, 2]).await.is_err());
        assert!(read_one(&[0, 0]).await.is_err());
        assert_eq!(
            read_one(&[0, 0, 0, 2, 7, 8, 0]).await.unwrap().unwrap(),
            &[7u8, 8][..]
        );
    }

    #[tokio::test]
    async fn packets_split_across_reads_and_reads_holding_several_packets() {
        let mut stream = Vec::new();
        let packets: Vec<Vec<u8>> = (0..50u8)
            .map(|i| vec![i; (i as usize * 997) % 70_000 + 1])
            .collect();
        for p in &packets {
            stream.extend_from_slice(&(p.len() as u32).to_be_bytes());
            stream.extend_from_slice(p);
        }
        // Odd-sized pieces, as SSH channel data arrives.
        let (mut client, server) = tokio::io::duplex(3001);
        let feed = tokio::spawn(async move {
            for piece in stream.chunks(1234) {
                tokio::io::AsyncWriteExt::write_all(&mut client, piece)
                    .await
                    .unwrap();
            }
        });
        let mut reader = PacketReader::new(server, 100_000);
        for p in &packets {
            assert_eq!(&reader.next().await.unwrap().unwrap()[..], &p[..]);
        }
        feed.await.unwrap();
        assert!(reader.next().await.unwrap().is_none());
    }

    #[test]
    fn write_requests_decode_without_copying_and_others_are_left_alone() {
        let write = russh_sftp::protocol::Write {
            id: 42,
            handle: "7".to_owned(),
            offset: 1 << 40,
            data: b"payload".to_vec(),
        };
        let encoded = Bytes::try_from(Packet::Write(write)).unwrap().slice(4..);
        let decoded = write_request(&encoded).unwrap();
        assert_eq!(decoded.id, 42);
        assert_eq!(&decoded.handle[..], b"7");
        assert_eq!(decoded.offset, 1 << 40);
        assert_eq!(&decoded.data[..], b"payload");
        assert_eq!(decoded.data.as_ptr(), encoded[encoded.len() - 7..].as_ptr());
        for cut in 0..encoded.len() {
            assert!(write_request(&encoded.slice(..cut)).is_none());
        }
        let status = status(1, StatusCode::Ok, "ok").slice(4..);
        assert!(write_request(&status).is_none());
    }

    #[test]
    fn data_reply_layout() {
        let mut buf = vec![0u8; DATA_HEADER_LEN + 8];
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + 3].copy_from_slice(b"abc");
        let reply = data(7, buf, 3);
        assert_eq!(
            &reply[..],
            &[
                0,
                0,
                0,
                12,
                SSH_FXP_DATA,
                0,
                0,
                0,
                7,
                0,
                0,
                0,
                3,
                b'a',
                b'b',
                b'c'
            ][..]
        );
    }

    #[test]
    fn status_decodes_with_russh_sftp() {
        let reply = status(9, StatusCode::NoSuchFile, "gone");
        let mut body = reply.slice(4..);
        match Packet::try_from(&mut body).unwrap() {
            Packet::Status(s) => {
                assert_eq!(s.id, 9);
                assert_eq!(s.status_code, StatusCode::NoSuchFile);
                assert_eq!(s.error_message, "gone");
            }
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #[test]
        fn ext_args_never_read_past_the_end(data in prop::collection::vec(any::<u8>(), 0..40)) {
            let mut args = ExtArgs::new(&data);
            while args.string().is_some() {}
        }
    }
}
