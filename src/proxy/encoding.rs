//! Content-Encoding, both ways: a request body is decoded whole before it is scanned, a
//! response body is decoded as it streams. One table ([`Coding`]) says which codings exist.
//!
//! Invariants:
//! - a body is scanned in the form its receiver reads it, so nothing encoded is forwarded as if
//!   it were scanned: a coding the table does not know is refused, not passed through;
//! - decoding is bounded: a request body decompresses to at most `limit` bytes (a bomb is a
//!   [`EncodingError::TooLarge`], found after reading `limit + 1` bytes, never more);
//!   [`EncodingError::TooLarge`], found after reading `limit + 1` bytes, never more), and one
//!   chunk of a streamed response decompresses to at most the streaming decoder's cap
//!   ([`MAX_DECODED_PER_CHUNK`] by default): a bomb in a stream is an error found after
//!   writing that many bytes, never more; a zstd frame may not ask for a window over 8 MiB
//!   (RFC 8878's limit for HTTP), since the decoder allocates it up front;
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

/// The largest zstd window accepted: 8 MiB, the limit RFC 8878 sets for the `zstd` content
/// coding. A frame may declare a window of up to 2 GiB, which the decoder would allocate before
/// producing a byte: a few bytes of body must not cost the proxy that much memory.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

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
                let mut decoder =
                    zstd::stream::read::Decoder::new(&data[..]).map_err(|_| invalid())?;
                decoder
                    .window_log_max(ZSTD_WINDOW_LOG_MAX)
                    .map_err(|_| invalid())?;
                Box::new(decoder)
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

/// What one upstream chunk of a streamed response may decompress to. Upstream reads are tens
/// of KiB, and text compresses tenfold or so; a chunk that expands past this is a bomb, and the
/// stream ends rather than grow the proxy.
pub const MAX_DECODED_PER_CHUNK: usize = 16 << 20;

/// A streaming decoder for a response body in one coding. Each [`Decoder::decode`] call
/// produces at most its cap of bytes; past it the call fails (the stream is then ended).
pub struct Decoder {
    kind: DecoderKind,
}

enum DecoderKind {
    Identity,
    Gzip(flate2::write::MultiGzDecoder<CappedSink>),
    Deflate(flate2::write::ZlibDecoder<CappedSink>),
    Brotli(Box<brotli::DecompressorWriter<CappedSink>>),
    Zstd(zstd::stream::write::Decoder<'static, CappedSink>),
}

/// Where a streaming decoder writes: refuses to grow past `cap` bytes, so a decompressor
/// stops at the cap instead of filling memory first and being checked after.
struct CappedSink {
    buf: Vec<u8>,
    cap: usize,
}

impl Write for CappedSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
            return Err(std::io::Error::other("decompressed chunk over the cap"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Decoder {
    /// The decoder for a response's `Content-Encoding`, producing at most
    /// [`MAX_DECODED_PER_CHUNK`] bytes per chunk; `None` when it is not one coding streammask
    /// decodes (the response is then refused).
    pub fn for_encoding(encoding: Option<&str>) -> Option<Decoder> {
        Decoder::with_cap(encoding, MAX_DECODED_PER_CHUNK)
    }

    /// [`Decoder::for_encoding`] with a cap of `max_per_chunk` decoded bytes per chunk.
    pub fn with_cap(encoding: Option<&str>, max_per_chunk: usize) -> Option<Decoder> {
        let sink = || CappedSink {
            buf: Vec::new(),
            cap: max_per_chunk,
        };
        let kind = match Coding::parse(encoding.unwrap_or(""))? {
            Coding::Identity => DecoderKind::Identity,
            Coding::Gzip => DecoderKind::Gzip(flate2::write::MultiGzDecoder::new(sink())),
            Coding::Deflate => DecoderKind::Deflate(flate2::write::ZlibDecoder::new(sink())),
            Coding::Brotli => {
                DecoderKind::Brotli(Box::new(brotli::DecompressorWriter::new(sink(), 4096)))
            }
            Coding::Zstd => {
                let mut decoder = zstd::stream::write::Decoder::new(sink()).ok()?;
                decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).ok()?;
                DecoderKind::Zstd(decoder)
            }
        };
        Some(Decoder { kind })
    }

    /// Whether bytes pass through unchanged (no content coding).
    pub fn is_identity(&self) -> bool {
        matches!(self.kind, DecoderKind::Identity)
    }

    /// Decompress `chunk`, returning what is available so far (at most the cap).
    pub fn decode(&mut self, chunk: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.decode_into(chunk, &mut out).map(|()| out)
    }

    /// [`Decoder::decode`], appending to `out`: on an error `out` keeps what it held before.
    pub fn decode_into(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        fn drain<W: Write>(
            w: &mut W,
            chunk: &[u8],
            out: &mut Vec<u8>,
            sink: impl Fn(&mut W) -> &mut CappedSink,
        ) -> std::io::Result<()> {
            let written = w.write_all(chunk).and_then(|()| w.flush());
            // A failed call leaves the decoder unusable; its partial output goes too.
            // Taken, not drained: the sink keeps no capacity between chunks.
            let decoded = std::mem::take(&mut sink(w).buf);
            if written.is_ok() {
                if out.is_empty() {
                    *out = decoded;
                } else {
                    out.extend_from_slice(&decoded);
                }
            }
            written
        }
        match &mut self.kind {
            DecoderKind::Identity => {
                out.extend_from_slice(chunk);
                Ok(())
            }
            DecoderKind::Gzip(d) => drain(d, chunk, out, |d| d.get_mut()),
            DecoderKind::Deflate(d) => drain(d, chunk, out, |d| d.get_mut()),
            DecoderKind::Brotli(d) => drain(d.as_mut(), chunk, out, |d| d.get_mut()),
            DecoderKind::Zstd(d) => drain(d, chunk, out, |d| d.get_mut()),
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

    #[test]
    fn a_bomb_in_a_stream_stops_at_the_per_chunk_cap() {
        let cap = 1 << 20;
        let zeros = vec![0u8; 64 << 20];
        for (encoding, bomb) in [
            ("gzip", gzip(&zeros)),
            ("br", brotli(&zeros)),
            ("zstd", zstd(&zeros)),
            ("deflate", deflate(&zeros)),
        ] {
            let mut decoder = Decoder::with_cap(Some(encoding), cap).expect("known coding");
            // Fed whole, as one upstream read might carry it.
            assert!(decoder.decode(&bomb).is_err(), "{encoding}: whole bomb");
            // Fed in reads of 4 KiB: some read expands past the cap, and none returns more.
            let mut decoder = Decoder::with_cap(Some(encoding), cap).expect("known coding");
            let mut failed = false;
            for piece in bomb.chunks(4096) {
                match decoder.decode(piece) {
                    Ok(out) => assert!(out.len() <= cap, "{encoding}: {} bytes", out.len()),
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            assert!(failed, "{encoding}: 64 MiB from a few KiB must hit the cap");
        }
        // Ordinary text in ordinary reads stays well under the default cap.
        let text = "data: {\"type\":\"ping\"}\n\n".repeat(50_000);
        let mut decoder = Decoder::for_encoding(Some("gzip")).expect("gzip is known");
        let mut out = Vec::new();
        for piece in gzip(text.as_bytes()).chunks(16 << 10) {
            out.extend(decoder.decode(piece).expect("ordinary text decodes"));
        }
        assert_eq!(out, text.as_bytes());
    }

    #[test]
    fn a_zstd_frame_asking_for_a_huge_window_is_refused_before_allocating_it() {
        fn zstd_with_window(data: &[u8], window_log: u32) -> Vec<u8> {
            let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).expect("encoder");
            encoder.window_log(window_log).expect("window");
            encoder.write_all(data).expect("compress in memory");
            encoder.finish().expect("compress in memory")
        }
        // A 128 MiB window declared by a frame of a few dozen bytes.
        let greedy = zstd_with_window(BODY, 27);
        assert!(greedy.len() < 200);
        assert_eq!(
            decode_body(greedy.clone(), Some("zstd"), 1 << 20),
            Err(EncodingError::Invalid("zstd".into()))
        );
        let mut decoder = Decoder::for_encoding(Some("zstd")).expect("zstd is known");
        assert!(decoder.decode(&greedy).is_err());
        // RFC 8878's 8 MiB window is accepted.
        let fitting = zstd_with_window(BODY, 23);
        assert_eq!(
            decode_body(fitting, Some("zstd"), 1 << 20).as_deref(),
            Ok(BODY)
        );
    }
}
