//! Content-Encoding, both ways: a request body is decoded whole before it is scanned, a
//! response body is decoded as it streams. One table ([`Coding`]) says which codings exist.
//!
//! Invariants:
//! - a body is scanned in the form its receiver reads it, so nothing encoded is forwarded as if
//!   it were scanned: a coding the table does not know is refused, not passed through;
//! - decoding is bounded: a request body decompresses to at most `limit` bytes (a bomb is a
//!   [`EncodingError::TooLarge`], found after reading `limit + 1` bytes, never more);
//! - error messages name the coding (cut to a short label), never body bytes.

use std::io::{Read, Write};

/// The content codings streammask decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

impl Coding {
    /// The coding a `Content-Encoding` token names (case-insensitive), if streammask knows it.
    fn parse(token: &str) -> Option<Coding> {
        Some(match token.trim().to_ascii_lowercase().as_str() {
            "" | "identity" => Coding::Identity,
            "gzip" | "x-gzip" => Coding::Gzip,
            "deflate" => Coding::Deflate,
            "br" => Coding::Brotli,
            "zstd" => Coding::Zstd,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodingError {
    /// The coding is not one streammask decodes (its name, cut to a short label).
    #[error("unsupported Content-Encoding {0:?}")]
    Unsupported(String),
    /// The body is not valid in the coding its header names (the coding, as a short label).
    #[error("the body is not valid {0}")]
    Invalid(String),
    /// The decoded body is larger than the limit.
    #[error("the decompressed body exceeds the limit of {0} bytes")]
    TooLarge(usize),
}

/// A header value echoed into a message, cut short so an error never carries much input.
pub(super) fn short_label(value: &str) -> String {
    value
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(16)
        .collect()
}

/// Undo the `Content-Encoding` of a whole body (codings applied in order, so undone in
/// reverse), producing at most `limit` bytes.
pub fn decode_body(
    body: Vec<u8>,
    encoding: Option<&str>,
    limit: usize,
) -> Result<Vec<u8>, EncodingError> {
    let Some(encoding) = encoding else {
        return Ok(body);
    };
    let mut data = body;
    for token in encoding.split(',').rev() {
        let label = || short_label(&token.trim().to_ascii_lowercase());
        let invalid = || EncodingError::Invalid(label());
        let coding = Coding::parse(token).ok_or_else(|| EncodingError::Unsupported(label()))?;
        let reader: Box<dyn Read + '_> = match coding {
            Coding::Identity => continue,
            Coding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&data[..])),
            Coding::Deflate => Box::new(flate2::read::ZlibDecoder::new(&data[..])),
            Coding::Brotli => Box::new(brotli::Decompressor::new(&data[..], 4096)),
            Coding::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(&data[..]).map_err(|_| invalid())?)
            }
        };
        let mut out = Vec::new();
        reader
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|_| invalid())?;
        if out.len() > limit {
            return Err(EncodingError::TooLarge(limit));
        }
        data = out;
    }
    Ok(data)
}

/// A streaming decoder for a response body in one coding.
pub enum Decoder {
    Identity,
    Gzip(flate2::write::MultiGzDecoder<Vec<u8>>),
    Deflate(flate2::write::ZlibDecoder<Vec<u8>>),
    Brotli(Box<brotli::DecompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

impl Decoder {
    /// The decoder for a response's `Content-Encoding`; `None` when it is not one coding
    /// streammask decodes (the response is then refused).
    pub fn for_encoding(encoding: Option<&str>) -> Option<Decoder> {
        Some(match Coding::parse(encoding.unwrap_or(""))? {
            Coding::Identity => Decoder::Identity,
            Coding::Gzip => Decoder::Gzip(flate2::write::MultiGzDecoder::new(Vec::new())),
            Coding::Deflate => Decoder::Deflate(flate2::write::ZlibDecoder::new(Vec::new())),
            Coding::Brotli => {
                Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096)))
            }
            Coding::Zstd => Decoder::Zstd(zstd::stream::write::Decoder::new(Vec::new()).ok()?),
        })
    }

    /// Decompress `chunk`, returning what is available so far.
    pub fn decode(&mut self, chunk: &[u8]) -> std::io::Result<Vec<u8>> {
        fn drain<W: Write>(
            w: &mut W,
            chunk: &[u8],
            take: impl FnOnce(&mut W) -> Vec<u8>,
        ) -> std::io::Result<Vec<u8>> {
            w.write_all(chunk)?;
            w.flush()?;
            Ok(take(w))
        }
        match self {
            Decoder::Identity => Ok(chunk.to_vec()),
            Decoder::Gzip(d) => drain(d, chunk, |d| std::mem::take(d.get_mut())),
            Decoder::Deflate(d) => drain(d, chunk, |d| std::mem::take(d.get_mut())),
            Decoder::Brotli(d) => drain(d.as_mut(), chunk, |d| std::mem::take(d.get_mut())),
            Decoder::Zstd(d) => drain(d, chunk, |d| std::mem::take(d.get_mut())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] =
        br#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hello"}]}"#;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("compress in memory");
        e.finish().expect("compress in memory")
    }

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("compress in memory");
        e.finish().expect("compress in memory")
    }

    fn brotli(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(data).expect("compress in memory");
        }
        out
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(data, 3).expect("compress in memory")
    }

    #[test]
    fn every_coding_is_undone() {
        let cases: [(&str, Vec<u8>); 7] = [
            ("gzip", gzip(BODY)),
            ("X-GZIP", gzip(BODY)),
            ("deflate", deflate(BODY)),
            ("br", brotli(BODY)),
            ("zstd", zstd(BODY)),
            ("identity", BODY.to_vec()),
            // Applied in order (gzip, then br), so undone in reverse.
            ("gzip, br", brotli(&gzip(BODY))),
        ];
        for (encoding, encoded) in cases {
            assert_eq!(
                decode_body(encoded, Some(encoding), 1 << 20).as_deref(),
                Ok(BODY),
                "{encoding}"
            );
        }
        assert_eq!(decode_body(BODY.to_vec(), None, 16).as_deref(), Ok(BODY));
    }

    #[test]
    fn a_body_that_lies_about_its_coding_is_refused() {
        for (encoding, body) in [
            ("gzip", BODY.to_vec()),
            ("br", gzip(BODY)),
            ("deflate", zstd(BODY)),
            ("zstd", deflate(BODY)),
            // Stacked in the wrong order.
            ("br, gzip", brotli(&gzip(BODY))),
            // Truncated mid-stream.
            ("gzip", gzip(BODY)[..20].to_vec()),
        ] {
            let coding = encoding.rsplit(',').next().unwrap_or_default().trim();
            assert_eq!(
                decode_body(body, Some(encoding), 1 << 20),
                Err(EncodingError::Invalid(coding.to_string())),
                "{encoding}"
            );
        }
    }

    #[test]
    fn unknown_codings_are_refused_by_a_short_label() {
        assert_eq!(
            decode_body(BODY.to_vec(), Some("compress"), 1 << 20),
            Err(EncodingError::Unsupported("compress".into()))
        );
        let long = format!("{}\"<script>", "x".repeat(40));
        assert_eq!(
            decode_body(BODY.to_vec(), Some(&long), 1 << 20),
            Err(EncodingError::Unsupported("x".repeat(16)))
        );
    }

    #[test]
    fn bombs_stop_at_the_limit() {
        let limit = 1 << 20;
        let zeros = vec![0u8; 16 << 20];
        for (encoding, bomb) in [
            ("gzip", gzip(&zeros)),
            ("br", brotli(&zeros)),
            ("zstd", zstd(&zeros)),
            ("deflate", deflate(&zeros)),
            // A bomb inside a bomb: the inner layer is small, the outer one expands past it.
            ("gzip, gzip", gzip(&gzip(&zeros))),
        ] {
            assert!(bomb.len() < limit, "{encoding}: the bomb itself is small");
            assert_eq!(
                decode_body(bomb, Some(encoding), limit),
                Err(EncodingError::TooLarge(limit)),
                "{encoding}"
            );
        }
        // Exactly at the limit is fine.
        let exact = vec![b'a'; limit];
        assert_eq!(
            decode_body(gzip(&exact), Some("gzip"), limit).map(|b| b.len()),
            Ok(limit)
        );
    }

    #[test]
    fn response_decoders_decode_in_pieces_and_refuse_what_they_do_not_know() {
        for (encoding, encoded) in [
            (Some("gzip"), gzip(BODY)),
            (Some("deflate"), deflate(BODY)),
            (Some("br"), brotli(BODY)),
            (Some("zstd"), zstd(BODY)),
            (None, BODY.to_vec()),
            (Some("identity"), BODY.to_vec()),
        ] {
            let mut decoder = Decoder::for_encoding(encoding).expect("known coding");
            let mut out = Vec::new();
            for piece in encoded.chunks(7) {
                out.extend(decoder.decode(piece).expect("valid piece decodes"));
            }
            out.extend(decoder.decode(&[]).expect("flush decodes"));
            assert_eq!(out, BODY, "{encoding:?}");
        }
        assert!(Decoder::for_encoding(Some("compress")).is_none());
        assert!(Decoder::for_encoding(Some("gzip, br")).is_none());
        let mut gzip_decoder = Decoder::for_encoding(Some("gzip")).expect("gzip is known");
        assert!(gzip_decoder.decode(b"this is not gzip at all").is_err());
    }
}
