//! SHA-256 that can hash the same bytes into two digests for the price of about one.
//!
//! A chunked layer hashes every file's content twice over: once in the tar stream (the layer's
//! diff_id) and once on its own (the TOC's content digest). Both start on a 64-byte block
//! boundary (a tar entry's content starts at a multiple of 512), so they see the same blocks.
//! SHA-NI rounds are bound by their latency (one stream: ≈ 1.6 GB/s here), so two states
//! interleaved over one message schedule cost little more than one; [`update_both`] does that.
//! Without SHA-NI it is two plain passes of the `sha2` crate's block function.

use sha2::block_api::compress256;

/// The SHA-256 initial hash value.
const H0: [u32; 8] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/// A running SHA-256.
#[derive(Clone)]
pub(super) struct Sha256 {
    state: [u32; 8],
    buf: [u8; 64],
    buf_len: usize,
    len: u64,
}

impl Sha256 {
    pub(super) fn new() -> Self {
        Self { state: H0, buf: [0; 64], buf_len: 0, len: 0 }
    }

    pub(super) fn update(&mut self, data: &[u8]) {
        let rest = self.fill(data);
        let whole = rest.len() / 64 * 64;
        compress(&mut [&mut self.state], [&rest[..whole]]);
        self.keep(&rest[whole..]);
    }

    /// Tops up the buffer from `data` and hashes it when full; what is left of `data`.
    fn fill<'d>(&mut self, data: &'d [u8]) -> &'d [u8] {
        self.len += data.len() as u64;
        if self.buf_len == 0 {
            return data;
        }
        let take = (64 - self.buf_len).min(data.len());
        self.buf[self.buf_len..self.buf_len + take].copy_from_slice(&data[..take]);
        self.buf_len += take;
        if self.buf_len == 64 {
            let block = self.buf;
            compress(&mut [&mut self.state], [&block]);
            self.buf_len = 0;
        }
        &data[take..]
    }

    /// Whether `other` stands at the same offset in a block with the same bytes buffered.
    fn in_step_with(&self, other: &Self) -> bool {
        self.buf_len == other.buf_len && self.buf[..self.buf_len] == other.buf[..other.buf_len]
    }

    fn keep(&mut self, tail: &[u8]) {
        self.buf[self.buf_len..self.buf_len + tail.len()].copy_from_slice(tail);
        self.buf_len += tail.len();
    }

    pub(super) fn finalize(mut self) -> [u8; 32] {
        let bits = self.len.wrapping_mul(8);
        let mut pad = [0u8; 72];
        pad[0] = 0x80;
        let zeros = (55usize.wrapping_sub(self.buf_len)) % 64;
        pad[1 + zeros..9 + zeros].copy_from_slice(&bits.to_be_bytes());
        let len = self.len;
        self.update(&pad[..9 + zeros]);
        debug_assert_eq!(self.buf_len, 0);
        self.len = len;
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

/// `a.update(data); b.update(data)` in one pass where both stand at the same offset in a block
/// with the same bytes buffered (else two passes: the result is the same either way).
pub(super) fn update_both(a: &mut Sha256, b: &mut Sha256, data: &[u8]) {
    if !a.in_step_with(b) {
        a.update(data);
        b.update(data);
        return;
    }
    let rest = a.fill(data);
    b.fill(data);
    let whole = rest.len() / 64 * 64;
    compress(&mut [&mut a.state, &mut b.state], [&rest[..whole]; 2]);
    a.keep(&rest[whole..]);
    b.keep(&rest[whole..]);
}

/// [`update_both`] of `a` and `b`, and `c.update(data)`, in one pass: `c` may stand anywhere in
/// its block (a chunk of a file starts where the rolling checksum cut).
pub(super) fn update_three(a: &mut Sha256, b: &mut Sha256, c: &mut Sha256, data: &[u8]) {
    if !a.in_step_with(b) {
        update_both(a, c, data);
        b.update(data);
        return;
    }
    let rest_ab = a.fill(data);
    b.fill(data);
    let rest_c = c.fill(data);
    let (n_ab, n_c) = (rest_ab.len() / 64 * 64, rest_c.len() / 64 * 64);
    let n = n_ab.min(n_c);
    compress(&mut [&mut a.state, &mut b.state, &mut c.state], [&rest_ab[..n], &rest_ab[..n], &rest_c[..n]]);
    // The two streams' block counts differ by one at most.
    compress(&mut [&mut a.state, &mut b.state], [&rest_ab[n..n_ab]; 2]);
    compress(&mut [&mut c.state], [&rest_c[n..n_c]]);
    a.keep(&rest_ab[n_ab..]);
    b.keep(&rest_ab[n_ab..]);
    c.keep(&rest_c[n_c..]);
}

/// Runs the block function of each state over its own blocks (whole 64-byte blocks, as many
/// for every state; states given the same slice share its message schedule).
fn compress<const N: usize>(states: &mut [&mut [u32; 8]; N], blocks: [&[u8]; N]) {
    debug_assert!(blocks.iter().all(|b| b.len() % 64 == 0 && b.len() == blocks[0].len()));
    if blocks[0].is_empty() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sha") && std::arch::is_x86_feature_detected!("sse4.1") {
        // SAFETY: the CPU has SHA-NI and SSE4.1 (and SSSE3 with it), checked just above.
        unsafe { x86::compress(states, blocks) };
        return;
    }
    compress_portable(states, blocks);
}

fn compress_portable<const N: usize>(states: &mut [&mut [u32; 8]; N], blocks: [&[u8]; N]) {
    for (s, b) in states.iter_mut().zip(blocks) {
        compress256(s, b.as_chunks::<64>().0);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// The round constants, four to a vector.
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];

    /// The block function of SHA-NI for `N` states, each over its own blocks: message schedules
    /// first (once for states that share a slice), then the rounds of all states interleaved,
    /// independent chains that overlap in the CPU.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) fn compress<const N: usize>(states: &mut [&mut [u32; 8]; N], blocks: [&[u8]; N]) {
        // The states as SHA-NI wants them: (A, B, E, F) and (C, D, G, H), high lane first.
        let mut abef = [_mm_setzero_si128(); N];
        let mut cdgh = [_mm_setzero_si128(); N];
        for (s, state) in states.iter().enumerate() {
            let dcba = words(&state[..4]);
            let hgfe = words(&state[4..]);
            let cdab = _mm_shuffle_epi32(dcba, 0xB1);
            let efgh = _mm_shuffle_epi32(hgfe, 0x1B);
            abef[s] = _mm_alignr_epi8(cdab, efgh, 8);
            cdgh[s] = _mm_blend_epi16(efgh, cdab, 0xF0);
        }
        // Which state's schedule each state uses: the first with the same slice.
        let msg: [usize; N] =
            std::array::from_fn(|s| (0..s).find(|&t| std::ptr::eq(blocks[t], blocks[s])).unwrap_or(s));
        let mut wk = [[_mm_setzero_si128(); 16]; N];
        for at in (0..blocks[0].len()).step_by(64) {
            for s in 0..N {
                if msg[s] == s {
                    wk[s] = schedule(&blocks[s][at..at + 64]);
                }
            }
            let (abef0, cdgh0) = (abef, cdgh);
            #[expect(clippy::needless_range_loop, reason = "i: the round group, the same for every state")]
            for i in 0..16 {
                for s in 0..N {
                    cdgh[s] = _mm_sha256rnds2_epu32(cdgh[s], abef[s], wk[msg[s]][i]);
                }
                for s in 0..N {
                    abef[s] = _mm_sha256rnds2_epu32(abef[s], cdgh[s], _mm_shuffle_epi32(wk[msg[s]][i], 0x0E));
                }
            }
            for s in 0..N {
                abef[s] = _mm_add_epi32(abef[s], abef0[s]);
                cdgh[s] = _mm_add_epi32(cdgh[s], cdgh0[s]);
            }
        }
        for (s, state) in states.iter_mut().enumerate() {
            let feba = _mm_shuffle_epi32(abef[s], 0x1B);
            let dchg = _mm_shuffle_epi32(cdgh[s], 0xB1);
            let dcba = _mm_blend_epi16(feba, dchg, 0xF0);
            let hgef = _mm_alignr_epi8(dchg, feba, 8);
            let mut out = [0u32; 8];
            out[..4].copy_from_slice(&lanes(dcba));
            out[4..].copy_from_slice(&lanes(hgef));
            **state = out;
        }
    }

    /// The 64 message words of one block plus the round constants, four to a vector: W[t] =
    /// σ1(W[t−2]) + W[t−7] + σ0(W[t−15]) + W[t−16] for t ≥ 16, by SHA-NI's message instructions.
    #[target_feature(enable = "sha,sse2,ssse3")]
    #[inline]
    fn schedule(block: &[u8]) -> [__m128i; 16] {
        let bswap = _mm_set_epi64x(0x0C0D_0E0F_0809_0A0B, 0x0405_0607_0001_0203);
        let mut w = [_mm_setzero_si128(); 16];
        for (i, wi) in w.iter_mut().take(4).enumerate() {
            *wi = _mm_shuffle_epi8(bytes16(&block[16 * i..16 * i + 16]), bswap);
        }
        for i in 4..16 {
            let t = _mm_add_epi32(_mm_sha256msg1_epu32(w[i - 4], w[i - 3]), _mm_alignr_epi8(w[i - 1], w[i - 2], 4));
            w[i] = _mm_sha256msg2_epu32(t, w[i - 1]);
        }
        for (i, wi) in w.iter_mut().enumerate() {
            *wi = _mm_add_epi32(*wi, words(&K[4 * i..4 * i + 4]));
        }
        w
    }

    #[target_feature(enable = "sse2")]
    #[inline]
    fn words(w: &[u32]) -> __m128i {
        _mm_set_epi32(w[3] as i32, w[2] as i32, w[1] as i32, w[0] as i32)
    }

    #[target_feature(enable = "sse2")]
    #[inline]
    fn bytes16(b: &[u8]) -> __m128i {
        assert_eq!(b.len(), 16);
        // SAFETY: `b` is 16 readable bytes, asserted just above.
        unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
    }

    #[target_feature(enable = "sse2")]
    #[inline]
    fn lanes(v: __m128i) -> [u32; 4] {
        let lo = _mm_cvtsi128_si64(v) as u64;
        let hi = _mm_cvtsi128_si64(_mm_unpackhi_epi64(v, v)) as u64;
        [lo as u32, (lo >> 32) as u32, hi as u32, (hi >> 32) as u32]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunked::tests::noise;
    use sha2::Digest as _;

    fn reference(data: &[u8]) -> [u8; 32] {
        sha2::Sha256::digest(data).into()
    }

    #[test]
    fn agrees_with_sha2_at_every_length_and_in_pieces() {
        let data = noise(5, 3000);
        for len in (0..300).chain([511, 512, 513, 2999, 3000]) {
            let mut h = Sha256::new();
            h.update(&data[..len]);
            assert_eq!(h.finalize(), reference(&data[..len]), "length {len}");
        }
        let (mut h, mut at) = (Sha256::new(), 0);
        for n in [1, 63, 64, 65, 0, 700, 3, 128] {
            h.update(&data[at..at + n]);
            at += n;
        }
        assert_eq!(h.finalize(), reference(&data[..at]));
    }

    /// What a CPU without SHA-NI runs, against what this one runs (the same where it has none).
    #[test]
    fn the_portable_block_function_agrees() {
        let data = noise(4, 64 * 9);
        let (mut a, mut b, mut c) = (H0, H0, H0);
        compress(&mut [&mut a, &mut b], [&data[..512], &data[64..]]);
        compress_portable(&mut [&mut c], [&data[..512]]);
        assert_eq!(a, c);
        let mut d = H0;
        compress_portable(&mut [&mut d], [&data[64..]]);
        assert_eq!(b, d);
        assert_ne!(a, b);
    }

    #[test]
    fn both_at_once_is_each_alone() {
        let data = noise(6, 5000);
        // Aligned (both fresh, or both 512 bytes in), and not (the plain path).
        for (a_lead, b_lead) in [(0, 0), (512, 0), (3, 0), (64, 64)] {
            let (mut a, mut b) = (Sha256::new(), Sha256::new());
            a.update(&data[4000..4000 + a_lead]);
            b.update(&data[4500..4500 + b_lead]);
            let mut at = 0;
            for n in [100, 1000, 64, 7, 2000] {
                update_both(&mut a, &mut b, &data[at..at + n]);
                at += n;
            }
            let a_data = [&data[4000..4000 + a_lead], &data[..at]].concat();
            let b_data = [&data[4500..4500 + b_lead], &data[..at]].concat();
            assert_eq!(a.finalize(), reference(&a_data), "leads {a_lead}, {b_lead}");
            assert_eq!(b.finalize(), reference(&b_data), "leads {a_lead}, {b_lead}");
        }
    }

    #[test]
    fn three_at_once_is_each_alone() {
        let data = noise(8, 5000);
        // The third at every offset in its block; the first two in step, and not.
        for (c_lead, b_lead) in (0..70).map(|c| (c, 0)).chain([(5, 3), (0, 1)]) {
            let (mut a, mut b, mut c) = (Sha256::new(), Sha256::new(), Sha256::new());
            b.update(&data[4500..4500 + b_lead]);
            c.update(&data[4000..4000 + c_lead]);
            let mut at = 0;
            for n in [100, 1000, 64, 7, 2000, 1] {
                update_three(&mut a, &mut b, &mut c, &data[at..at + n]);
                at += n;
            }
            let b_data = [&data[4500..4500 + b_lead], &data[..at]].concat();
            let c_data = [&data[4000..4000 + c_lead], &data[..at]].concat();
            assert_eq!(a.finalize(), reference(&data[..at]), "leads {c_lead}, {b_lead}");
            assert_eq!(b.finalize(), reference(&b_data), "leads {c_lead}, {b_lead}");
            assert_eq!(c.finalize(), reference(&c_data), "leads {c_lead}, {b_lead}");
        }
    }
}
