//! The length-prefixed framing Connect streams and gRPC-Web share: a
//! flags byte, a 32-bit big-endian length, then the message.

use bytes::{BufMut, Bytes, BytesMut};
use tonic::Status;

/// The single enveloped request message of a server-streaming call.
pub(crate) fn unwrap_envelope(bytes: Bytes) -> Result<Bytes, Status> {
    if bytes.len() < 5 {
        return Err(Status::invalid_argument("the request is not an enveloped message"));
    }
    let flags = bytes[0];
    if flags & 0x01 != 0 {
        return Err(Status::unimplemented("compressed messages are not supported"));
    }
    let length = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    if bytes.len() != 5 + length {
        return Err(Status::invalid_argument("the request envelope's length does not match its body"));
    }
    Ok(bytes.slice(5..))
}

/// One frame: `flags`, the payload's length, then the payload.
pub(crate) fn envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + payload.len());
    out.put_u8(flags);
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
    out.freeze()
}
