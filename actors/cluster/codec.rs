//! The one place bincode is used: encoding and decoding of cluster messages, always with a size
//! limit on decode. bincode is unmaintained (RUSTSEC-2025-0141); keeping it behind this module
//! makes it a one-file swap.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest message decoded from a peer, in bytes (inbound frames are capped at the transport
/// too).
pub(crate) const DECODE_LIMIT: usize = 4 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// A message that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    /// Encoding failed.
    #[error("cannot encode: {0}")]
    Encode(String),
    /// Decoding failed (garbage, a newer protocol, or over the size limit).
    #[error("cannot decode: {0}")]
    Decode(String),
}

/// Encodes `value`.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes a `T` from `bytes`, refusing trailing bytes and anything over [`DECODE_LIMIT`].
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > DECODE_LIMIT {
        return Err(CodecError::Decode(format!(
            "{} bytes, over the {DECODE_LIMIT}-byte limit",
            bytes.len()
        )));
    }
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Decode(format!(
            "{} trailing bytes",
            bytes.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        id: String,
        n: u64,
        list: Vec<u32>,
    }

    #[test]
    fn round_trips() {
        let s = Sample {
            id: "a".into(),
            n: 7,
            list: vec![1, 2, 3],
        };
        assert_eq!(decode::<Sample>(&encode(&s).unwrap()).unwrap(), s);
    }

    #[test]
    fn garbage_and_oversized_input_are_errors_not_panics() {
        assert!(decode::<Sample>(&[0xff; 64]).is_err());
        assert!(decode::<Sample>(&[]).is_err());
        // A length prefix claiming a huge vector is refused by the limit, not allocated.
        let mut bytes = encode(&Sample {
            id: String::new(),
            n: 0,
            list: vec![],
        })
        .unwrap();
        bytes.truncate(2);
        bytes.extend_from_slice(&[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(decode::<Sample>(&bytes).is_err());
        let mut ok = encode(&Sample {
            id: "x".into(),
            n: 1,
            list: vec![],
        })
        .unwrap();
        ok.push(0);
        assert!(
            decode::<Sample>(&ok)
                .unwrap_err()
                .to_string()
                .contains("trailing")
        );
    }
}
