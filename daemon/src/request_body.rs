//! Control request bodies as sent: plain, or gzip-compressed by palisadectl
//! for large policies (`Content-Encoding: gzip`), decompressed within a
//! bound so a small body cannot expand without limit.

use std::io::Read as _;

use axum::body::Bytes;

/// Why a request body is refused.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// A `Content-Encoding` other than gzip.
    #[error("the request body is encoded as {0:?}; palisaded takes plain or gzip bodies")]
    UnknownEncoding(String),
    /// The body is longer than `limit` once decompressed.
    #[error(
        "the {what} request is over {} MiB once decompressed, palisaded's limit for it",
        limit / (1024 * 1024)
    )]
    TooLarge {
        /// What the request is for.
        what: &'static str,
        /// The limit in bytes.
        limit: usize,
    },
    /// The gzip stream is broken.
    #[error("the gzip request body cannot be decompressed: {0}")]
    Corrupt(std::io::Error),
}

/// The body as the handler reads it: `body` itself when `encoding` is
/// absent or `identity`, decompressed when it is `gzip`; refused when the
/// result is over `limit` bytes.
///
/// # Errors
///
/// An unknown encoding, a corrupt stream, or a result over `limit`.
pub fn decode(
    encoding: Option<&str>,
    body: Bytes,
    limit: usize,
    what: &'static str,
) -> Result<Bytes, BodyError> {
    let too_large = BodyError::TooLarge { what, limit };
    match encoding.map(str::trim) {
        None | Some("identity") => {
            if body.len() > limit {
                return Err(too_large);
            }
            Ok(body)
        }
        Some(encoding) if encoding.eq_ignore_ascii_case("gzip") => {
            let mut decoded = Vec::new();
            let mut decoder = flate2::read::GzDecoder::new(&body[..])
                .take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1));
            decoder
                .read_to_end(&mut decoded)
                .map_err(BodyError::Corrupt)?;
            if decoded.len() > limit {
                return Err(too_large);
            }
            Ok(Bytes::from(decoded))
        }
        Some(other) => Err(BodyError::UnknownEncoding(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn gzip(data: &[u8]) -> Bytes {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        Bytes::from(encoder.finish().unwrap())
    }

    #[test]
    fn plain_and_gzip_bodies_read_the_same() {
        let text = b"{\"files\":[]}".repeat(1000);
        assert_eq!(
            decode(None, Bytes::from(text.clone()), 1 << 20, "apply").unwrap(),
            text
        );
        assert_eq!(
            decode(Some("gzip"), gzip(&text), 1 << 20, "apply").unwrap(),
            text
        );
        assert_eq!(
            decode(Some("GZIP "), gzip(&text), 1 << 20, "apply").unwrap(),
            text
        );
    }

    #[test]
    fn a_small_body_expanding_past_the_limit_is_refused_naming_the_limit() {
        let bomb = gzip(&vec![b'a'; 9 * 1024 * 1024]);
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        let error = decode(Some("gzip"), bomb, 8 * 1024 * 1024, "diff").unwrap_err();
        assert_eq!(
            error.to_string(),
            "the diff request is over 8 MiB once decompressed, palisaded's limit for it"
        );
        let plain = Bytes::from(vec![b'a'; 8 * 1024 * 1024 + 1]);
        assert!(matches!(
            decode(None, plain, 8 * 1024 * 1024, "diff"),
            Err(BodyError::TooLarge { .. })
        ));
    }

    #[test]
    fn unknown_encodings_and_broken_streams_are_refused() {
        assert!(matches!(
            decode(Some("br"), Bytes::from_static(b"x"), 10, "apply"),
            Err(BodyError::UnknownEncoding(_))
        ));
        assert!(matches!(
            decode(Some("gzip"), Bytes::from_static(b"not gzip"), 10, "apply"),
            Err(BodyError::Corrupt(_))
        ));
    }
}
