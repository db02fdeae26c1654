//! SFTP framing: reading length-prefixed packets with a size limit, and encoding replies. Requests are decoded by
//! `russh_sftp::protocol`; the replies sent most often (status, data) are encoded here directly into one buffer.

use std::io;

use bytes::{BufMut, Bytes, BytesMut};
use russh_sftp::protocol::{Packet, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt};

pub(crate) const SSH_FXP_STATUS: u8 = 101;
pub(crate) const SSH_FXP_DATA: u8 = 103;
pub(crate) const SSH_FXP_EXTENDED_REPLY: u8 = 201;

/// Bytes before the payload of a DATA reply: length, type, request id, data length.
pub(crate) const DATA_HEADER_LEN: usize = 4 + 1 + 4 + 4;

/// Reads one packet (type byte and payload, without the length). `None` when the client closed the stream between
/// packets; an error for a packet longer than `max_len`.
pub(crate) async fn read_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_len: u32,
) -> io::Result<Option<Bytes>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len);
    if len == 0 || len > max_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("packet of {len} bytes (the limit is {max_len})"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    reader.read_exact(&mut buf).await?;
    Ok(Some(Bytes::from(buf)))
}

/// The request id of a raw packet, if it is long enough to have one.
pub(crate) fn request_id(packet: &[u8]) -> Option<u32> {
    let bytes = packet.get(1..5)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

/// An SSH_FXP_STATUS reply.
pub(crate) fn status(id: u32, code: StatusCode, message: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(4 + 1 + 4 + 4 + 4 + message.len() + 4 + 2);
    buf.put_u32(0);
    buf.put_u8(SSH_FXP_STATUS);
    buf.put_u32(id);
    buf.put_u32(code as u32);
    put_string(&mut buf, message.as_bytes());
    put_string(&mut buf, b"en");
    finish(buf)
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

    #[tokio::test]
    async fn oversized_and_truncated_packets() {
        let mut big: &[u8] = &[0, 4, 0, 1, 9];
        assert!(read_packet(&mut big, 1024).await.is_err());
        let mut empty: &[u8] = &[];
        assert!(read_packet(&mut empty, 1024).await.unwrap().is_none());
        let mut zero: &[u8] = &[0, 0, 0, 0];
        assert!(read_packet(&mut zero, 1024).await.is_err());
        let mut cut: &[u8] = &[0, 0, 0, 5, 1, 2];
        assert!(read_packet(&mut cut, 1024).await.is_err());
        let mut ok: &[u8] = &[0, 0, 0, 2, 7, 8, 0];
        assert_eq!(
            read_packet(&mut ok, 1024).await.unwrap().unwrap(),
            &[7u8, 8][..]
        );
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
