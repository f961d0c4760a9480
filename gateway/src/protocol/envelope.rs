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

/// Checks a whole gRPC or gRPC-Web request body: every message a whole
/// frame (flags 0, or 1 for compressed, then as many bytes as the length
/// prefix says). A `text` body (`grpc-web-text`) is base64 first, read in
/// groups of four characters each padded or not, as a client may encode
/// each message apart. Returns the binary body; `Err` says what is wrong,
/// for an INVALID_ARGUMENT (tonic's own framing would answer INTERNAL,
/// though the mistake is the client's).
pub fn check_grpc_body(body: &[u8], text: bool) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    let binary = if text { std::borrow::Cow::Owned(decode_grpc_web_text(body)?) } else { body.into() };
    let mut rest = &binary[..];
    while !rest.is_empty() {
        let Some((header, after)) = rest.split_first_chunk::<5>() else {
            return Err(format!("the body ends inside a message's 5-byte header ({} bytes)", rest.len()));
        };
        if header[0] > 1 {
            return Err(format!("a message's flags byte is {} (0 or 1, compressed)", header[0]));
        }
        let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if after.len() < length {
            return Err(format!(
                "a message's length prefix says {length} bytes, but the body ends after {}",
                after.len()
            ));
        }
        rest = &after[length..];
    }
    Ok(binary)
}

/// `grpc-web-text`: base64 in groups of four characters, each group padded
/// or not.
fn decode_grpc_web_text(text: &[u8]) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    if !text.len().is_multiple_of(4) {
        return Err(format!("the grpc-web-text body is not base64: {} characters, not a multiple of 4", text.len()));
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for (index, group) in text.chunks(4).enumerate() {
        base64::engine::general_purpose::STANDARD
            .decode_vec(group, &mut out)
            .map_err(|e| format!("the grpc-web-text body is not base64 (at character {}): {e}", index * 4))?;
    }
    Ok(out)
}
