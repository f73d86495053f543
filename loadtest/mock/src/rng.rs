//! Seeded randomness for ids, signatures, delta sizes and write splits. Every value depends
//! only on the seed, which is what makes a seeded run reproducible.

/// SplitMix64. It is fast, seedable and has no internal state worth protecting. The mock
/// needs reproducible randomness, not cryptographic randomness.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough integer in `lo..=hi`. The modulo bias is irrelevant at these ranges.
    pub(crate) fn between(&mut self, lo: usize, hi: usize) -> usize {
        let span = (hi.saturating_sub(lo) as u64).saturating_add(1);
        lo + (self.next_u64() % span) as usize
    }
}

pub(crate) fn random_id(prefix: &str, len: usize, rng: &mut Rng) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut s = String::with_capacity(prefix.len() + len);
    s.push_str(prefix);
    for _ in 0..len {
        s.push(ALPHABET[rng.between(0, ALPHABET.len() - 1)] as char);
    }
    s
}

/// `len` characters drawn from `alphabet` (ASCII).
pub(crate) fn random_chars(alphabet: &[u8], len: usize, rng: &mut Rng) -> String {
    (0..len)
        .map(|_| alphabet[rng.between(0, alphabet.len() - 1)] as char)
        .collect()
}

pub(crate) fn fake_signature(rng: &mut Rng) -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    // 96 random bytes give 128 base64 characters with no padding, which looks like a real
    // signature and is valid base64.
    let mut out = String::with_capacity(128);
    for _ in 0..32 {
        let n = rng.next_u64() & 0xFF_FFFF;
        for shift in [18, 12, 6, 0] {
            out.push(B64[((n >> shift) & 63) as usize] as char);
        }
    }
    out
}
