//! The two running sums a zstd:chunked layer needs beside SHA-256, made fast enough that the
//! format costs little over plain zstd (issue 13: ≥ 0.8× its build throughput):
//!
//! - [`RollSum`]: containers/storage's rolling checksum, which decides where a file is cut into
//!   chunks. Byte by byte it is a chain of dependent additions (≈ 0.8 GB/s here); with AVX2 it
//!   takes 16 bytes a step as prefix sums over 16-bit lanes (≈ 3 GB/s).
//! - [`Crc64`]: the CRC-64/GO-ISO that tar-split stores per file. Slicing-by-8 tables
//!   (≈ 1.5 GB/s); with PCLMULQDQ it folds 64 bytes a step by carry-less multiplication.
//!
//! Both fall back to the portable code where the CPU lacks the instructions, and both are checked
//! against it in the tests below: the bytes of a layer never depend on the path taken.

/// The rolling checksum cuts where these low bits of `s2` are all ones (containers/storage's
/// `RollsumBits`).
const ROLLSUM_BITS: u32 = 16;
const MASK: u16 = u16::MAX;
// All sums are kept mod 2^16: additions mod 2^16 agree with the 32-bit ones on the low 16 bits,
// and those are all a cut looks at.
const _: () = assert!(ROLLSUM_BITS == 16);

/// containers/storage's rolling checksum (bup's rollsum as in perkeep), 64-byte window.
///
/// `s1` is 31 × 64 plus the sum of the window's bytes; `s2` adds each window sum as bytes come
/// in: `s2 += s1 - 64 × (byte leaving + 31)`. A cut falls after a byte when the low 16 bits of
/// `s2` are all ones.
pub(super) struct RollSum {
    s1: u16,
    s2: u16,
    window: [u8; 64],
    /// Where the oldest byte of the window is.
    wofs: usize,
}

impl RollSum {
    const WINDOW: u16 = 64;
    const CHAR_OFFSET: u16 = 31;

    pub(super) fn new() -> Self {
        Self {
            s1: Self::WINDOW * Self::CHAR_OFFSET,
            s2: (u32::from(Self::WINDOW) * u32::from(Self::WINDOW - 1) * u32::from(Self::CHAR_OFFSET)) as u16,
            window: [0; 64],
            wofs: 0,
        }
    }

    /// Rolls over `data` until a cut: the bytes up to and including the one after which the
    /// checksum says to cut, or `None` (all rolled, no cut).
    pub(super) fn scan(&mut self, data: &[u8]) -> Option<usize> {
        let (mut s1, mut s2) = (self.s1, self.s2);
        let mut cut = None;
        // The byte leaving the window: from the saved window for the first 64 bytes, then from
        // `data` itself.
        let head = data.len().min(64);
        for (i, &ch) in data[..head].iter().enumerate() {
            if roll_one(&mut s1, &mut s2, ch, self.window[(self.wofs + i) & 63]) {
                cut = Some(i + 1);
                break;
            }
        }
        if cut.is_none() && data.len() > 64 {
            cut = scan_body(data, &mut s1, &mut s2);
        }
        let n = cut.unwrap_or(data.len());
        if n >= 64 {
            self.window.copy_from_slice(&data[n - 64..n]);
            self.wofs = 0;
        } else {
            for &ch in &data[..n] {
                self.window[self.wofs] = ch;
                self.wofs = (self.wofs + 1) & 63;
            }
        }
        (self.s1, self.s2) = (s1, s2);
        cut
    }

    #[cfg(test)]
    fn roll(&mut self, ch: u8) {
        let drop = self.window[self.wofs];
        roll_one(&mut self.s1, &mut self.s2, ch, drop);
        self.window[self.wofs] = ch;
        self.wofs = (self.wofs + 1) & 63;
    }

    #[cfg(test)]
    fn on_split(&self) -> bool {
        self.s2 & MASK == MASK
    }
}

/// One byte in, `drop` out; whether to cut after it.
#[inline(always)]
fn roll_one(s1: &mut u16, s2: &mut u16, ch: u8, drop: u8) -> bool {
    let drop = u16::from(drop);
    *s1 = s1.wrapping_add(u16::from(ch)).wrapping_sub(drop);
    *s2 = s2.wrapping_add(*s1).wrapping_sub(RollSum::WINDOW.wrapping_mul(drop + RollSum::CHAR_OFFSET));
    *s2 & MASK == MASK
}

/// Rolls over `data[64..]`, where the byte leaving the window is the one 64 bytes back in
/// `data`; the first cut's end in `data`.
fn scan_body(data: &[u8], s1: &mut u16, s2: &mut u16) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { x86::scan_body_avx2(data, s1, s2) };
    }
    scan_body_portable(data, 64, s1, s2)
}

fn scan_body_portable(data: &[u8], from: usize, s1: &mut u16, s2: &mut u16) -> Option<usize> {
    for (i, (&ch, &drop)) in data[from..].iter().zip(&data[from - 64..]).enumerate() {
        if roll_one(s1, s2, ch, drop) {
            return Some(from + i + 1);
        }
    }
    None
}

/// CRC-64 with the ISO polynomial as Go's `hash/crc64` computes it (tar-split's file checksum).
#[derive(Default)]
pub(super) struct Crc64 {
    crc: u64,
}

/// The polynomial x⁶⁴ + x⁴ + x³ + x + 1, bit-reflected (bit 0 is the x⁶³ coefficient).
const POLY: u64 = 0xD800_0000_0000_0000;

/// Slicing-by-8 tables, made at compile time.
static TABLES: [[u64; 256]; 8] = tables();

const fn tables() -> [[u64; 256]; 8] {
    let mut t = [[0u64; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ POLY } else { crc >> 1 };
            bit += 1;
        }
        t[0][i] = crc;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = t[0][(prev & 0xff) as usize] ^ (prev >> 8);
            i += 1;
        }
        k += 1;
    }
    t
}

/// The register after `data`, from register `crc` (no pre- or post-inversion): slicing-by-8.
fn crc_tables(mut crc: u64, data: &[u8]) -> u64 {
    let t = &TABLES;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let v = crc ^ u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        crc = t[7][(v & 0xff) as usize]
            ^ t[6][((v >> 8) & 0xff) as usize]
            ^ t[5][((v >> 16) & 0xff) as usize]
            ^ t[4][((v >> 24) & 0xff) as usize]
            ^ t[3][((v >> 32) & 0xff) as usize]
            ^ t[2][((v >> 40) & 0xff) as usize]
            ^ t[1][((v >> 48) & 0xff) as usize]
            ^ t[0][(v >> 56) as usize];
    }
    for &b in words.remainder() {
        crc = t[0][((crc as u8) ^ b) as usize] ^ (crc >> 8);
    }
    crc
}

/// x^n mod the polynomial, bit-reflected: the folding constants.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const fn x_pow(n: u32) -> u64 {
    let mut v = 1u64 << 63; // x⁰
    let mut i = 0;
    while i < n {
        v = if v & 1 == 1 { (v >> 1) ^ POLY } else { v >> 1 };
        i += 1;
    }
    v
}

impl Crc64 {
    pub(super) fn new() -> Self {
        Self::default()
    }

    pub(super) fn update(&mut self, data: &[u8]) {
        let crc = !self.crc;
        #[cfg(target_arch = "x86_64")]
        if data.len() >= 128 && std::arch::is_x86_feature_detected!("pclmulqdq") {
            // SAFETY: the CPU has PCLMULQDQ (and SSE2, as every x86-64), checked just above.
            self.crc = !unsafe { x86::crc_pclmul(crc, data) };
            return;
        }
        self.crc = !crc_tables(crc, data);
    }

    pub(super) fn sum(&self) -> [u8; 8] {
        self.crc.to_be_bytes()
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{MASK, crc_tables, scan_body_portable, x_pow};

    /// [`super::scan_body`] 16 bytes a step: for positions i..i+16, with `e` = byte in − byte
    /// out and `E` its prefix sum, `s1` = s1₀ + E and `s2` = s2₀ + (m+1)·s1₀ + prefix(E − 64·out
    /// − 64·31) at lane m. Each lane is checked for a cut; the sums carried to the next step are
    /// lane 15's.
    #[target_feature(enable = "avx2")]
    pub(super) fn scan_body_avx2(data: &[u8], s1: &mut u16, s2: &mut u16) -> Option<usize> {
        let ones = _mm256_set1_epi16(-1);
        let offset = _mm256_set1_epi16((64 * 31) as i16);
        let steps = _mm256_setr_epi16(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16);
        let mut s1v = _mm256_set1_epi16(*s1 as i16);
        let mut s2v = _mm256_set1_epi16(*s2 as i16);
        let mut i = 64;
        while i + 16 <= data.len() {
            // SAFETY: i ≥ 64 and i + 16 ≤ len, so both 16-byte reads are inside `data`.
            let (inb, outb) = unsafe {
                (_mm_loadu_si128(data.as_ptr().add(i).cast()), _mm_loadu_si128(data.as_ptr().add(i - 64).cast()))
            };
            let inw = _mm256_cvtepu8_epi16(inb);
            let outw = _mm256_cvtepu8_epi16(outb);
            let e = prefix16(_mm256_sub_epi16(inw, outw));
            let f = prefix16(_mm256_sub_epi16(_mm256_sub_epi16(e, _mm256_slli_epi16(outw, 6)), offset));
            let s2m = _mm256_add_epi16(_mm256_add_epi16(s2v, _mm256_mullo_epi16(s1v, steps)), f);
            let hits = _mm256_movemask_epi8(_mm256_cmpeq_epi16(s2m, ones));
            if hits != 0 {
                // Lane m (2 mask bits each): the first cut; the sums there, by the exact rule.
                let m = hits.trailing_zeros() as usize / 2;
                let mut lanes = [0u16; 16];
                // SAFETY: `lanes` is 32 writable bytes.
                unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), s2m) };
                debug_assert_eq!(lanes[m] & MASK, MASK);
                let mut e_lanes = [0u16; 16];
                // SAFETY: as above.
                unsafe { _mm256_storeu_si256(e_lanes.as_mut_ptr().cast(), e) };
                *s1 = (_mm256_cvtsi256_si32(s1v) as u16).wrapping_add(e_lanes[m]);
                *s2 = lanes[m];
                return Some(i + m + 1);
            }
            // Carry lane 15: s1 += E₁₅, s2 += 16·s1 + F₁₅ (s2 with the old s1).
            s2v = _mm256_add_epi16(_mm256_add_epi16(s2v, _mm256_slli_epi16(s1v, 4)), last16(f));
            s1v = _mm256_add_epi16(s1v, last16(e));
            i += 16;
        }
        *s1 = _mm256_cvtsi256_si32(s1v) as u16;
        *s2 = _mm256_cvtsi256_si32(s2v) as u16;
        scan_body_portable(data, i, s1, s2)
    }

    /// Inclusive prefix sums of 16 lanes of 16 bits.
    #[target_feature(enable = "avx2")]
    fn prefix16(mut x: __m256i) -> __m256i {
        // Within each 128-bit half…
        x = _mm256_add_epi16(x, _mm256_slli_si256(x, 2));
        x = _mm256_add_epi16(x, _mm256_slli_si256(x, 4));
        x = _mm256_add_epi16(x, _mm256_slli_si256(x, 8));
        // …then the low half's total into every lane of the high half.
        let low_total = _mm256_unpackhi_epi64(_mm256_shufflehi_epi16(x, 0xff), _mm256_shufflehi_epi16(x, 0xff));
        _mm256_add_epi16(x, _mm256_permute2x128_si256(low_total, low_total, 0x08))
    }

    /// Lane 15 in every lane.
    #[target_feature(enable = "avx2")]
    fn last16(x: __m256i) -> __m256i {
        let h = _mm256_shufflehi_epi16(x, 0xff);
        let h = _mm256_unpackhi_epi64(h, h);
        _mm256_permute2x128_si256(h, h, 0x11)
    }

    /// The CRC register after `data` (≥ 64 bytes), from register `crc`: four 128-bit lanes
    /// folded 64 bytes a step, then into one, whose 16 bytes and the tail go through the tables.
    ///
    /// In the bit-reflected order, a 128-bit lane holding L (first 8 bytes) and H stands for
    /// L·x⁶⁴ + H, and a carry-less product of two 64-bit values is their product times x. So
    /// moving a lane forward by D bits is clmul(L, x^(63+D)) ⊕ clmul(H, x^(D−1)).
    #[target_feature(enable = "pclmulqdq,sse2")]
    pub(super) fn crc_pclmul(crc: u64, data: &[u8]) -> u64 {
        let mut lanes = [load(data, 0), load(data, 16), load(data, 32), load(data, 48)];
        lanes[0] = _mm_xor_si128(lanes[0], _mm_set_epi64x(0, crc as i64));
        let mut at = 64;
        while at + 64 <= data.len() {
            for (j, lane) in lanes.iter_mut().enumerate() {
                *lane = _mm_xor_si128(fold(*lane, K512), load(data, at + 16 * j));
            }
            at += 64;
        }
        let one = _mm_xor_si128(
            _mm_xor_si128(fold(lanes[0], K384), fold(lanes[1], K256)),
            _mm_xor_si128(fold(lanes[2], K128), lanes[3]),
        );
        let mut rest = [0u8; 16];
        rest[..8].copy_from_slice(&_mm_cvtsi128_si64(one).to_le_bytes());
        rest[8..].copy_from_slice(&_mm_cvtsi128_si64(_mm_unpackhi_epi64(one, one)).to_le_bytes());
        crc_tables(crc_tables(0, &rest), &data[at..])
    }

    /// The constants that move a lane forward by `d` bits: (x^(d−1), x^(63+d)).
    const fn k(d: u32) -> (i64, i64) {
        (x_pow(d - 1) as i64, x_pow(63 + d) as i64)
    }
    const K128: (i64, i64) = k(128);
    const K256: (i64, i64) = k(256);
    const K384: (i64, i64) = k(384);
    const K512: (i64, i64) = k(512);

    #[target_feature(enable = "pclmulqdq,sse2")]
    #[inline]
    fn fold(x: __m128i, (hi, lo): (i64, i64)) -> __m128i {
        let k = _mm_set_epi64x(hi, lo);
        _mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11))
    }

    #[target_feature(enable = "sse2")]
    #[inline]
    fn load(data: &[u8], at: usize) -> __m128i {
        assert!(at + 16 <= data.len());
        // SAFETY: the 16 bytes at `at` are inside `data`, asserted just above.
        unsafe { _mm_loadu_si128(data.as_ptr().add(at).cast()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunked::tests::noise;

    #[test]
    fn crc64_is_gos_iso() {
        let mut c = Crc64::new();
        c.update(b"123456789");
        assert_eq!(u64::from_be_bytes(c.sum()), 0xb909_56c7_75a4_1001);
        // In pieces of any length, the same.
        let mut c = Crc64::new();
        for piece in [&b"1"[..], b"2345", b"6789"] {
            c.update(piece);
        }
        assert_eq!(u64::from_be_bytes(c.sum()), 0xb909_56c7_75a4_1001);
    }

    #[test]
    fn crc64_folding_agrees_with_the_tables_at_every_length() {
        let data = noise(11, 5000);
        for len in (0..700).chain([1023, 1024, 1025, 4096, 4999, 5000]) {
            let mut fast = Crc64::new();
            fast.update(&data[..len]);
            let slow = !crc_tables(!0, &data[..len]);
            assert_eq!(u64::from_be_bytes(fast.sum()), slow, "length {len}");
        }
        // Pieces of odd sizes, some folded and some not.
        let (mut a, mut at) = (Crc64::new(), 0);
        for n in [3, 200, 129, 64, 1, 1000, 77] {
            a.update(&data[at..at + n]);
            at += n;
        }
        assert_eq!(u64::from_be_bytes(a.sum()), !crc_tables(!0, &data[..at]));
    }

    /// Every cut `scan` finds, fed in pieces of `piece` bytes.
    fn cuts_in_pieces(data: &[u8], piece: usize) -> Vec<usize> {
        let (mut r, mut cuts, mut at) = (RollSum::new(), Vec::new(), 0);
        while at < data.len() {
            let end = (at + piece).min(data.len());
            match r.scan(&data[at..end]) {
                Some(n) => {
                    at += n;
                    cuts.push(at);
                }
                None => at = end,
            }
        }
        cuts
    }

    #[test]
    fn scan_cuts_where_rolling_byte_by_byte_does() {
        // Noise, and text-like data with long runs (the sums wrap in other ways there).
        let mut data = noise(7, 2_000_000);
        data.extend((0..600_000u32).map(|i| b"abc def\n"[(i % 8) as usize] ^ ((i >> 13) as u8 & 1)));
        data.extend(noise(9, 500_000));
        let mut r = RollSum::new();
        let mut expected = Vec::new();
        for (i, &ch) in data.iter().enumerate() {
            r.roll(ch);
            if r.on_split() {
                expected.push(i + 1);
            }
        }
        assert!(expected.len() > 20, "{}", expected.len());
        for piece in [1, 17, 63, 64, 65, 1000, 256 << 10, data.len()] {
            assert_eq!(cuts_in_pieces(&data, piece), expected, "pieces of {piece}");
        }
        // Each body alone, whatever this CPU would pick: the portable one (a CPU without AVX2)
        // and the vector ones this CPU has.
        type Body = fn(&[u8], &mut u16, &mut u16) -> Option<usize>;
        let mut bodies: Vec<(&str, Body)> = vec![("portable", |d, s1, s2| scan_body_portable(d, 64, s1, s2))];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            bodies.push(("avx2", |d, s1, s2| unsafe { x86::scan_body_avx2(d, s1, s2) }));
        }
        for (name, body) in bodies {
            let mut r = RollSum::new();
            assert_eq!(r.scan(&data[..64]), None, "no cut in the first 64 bytes of this noise");
            let (mut s1, mut s2, mut base, mut cuts) = (r.s1, r.s2, 0, Vec::new());
            // A body rolls from byte 64 of what it is given, the 64 before being the window.
            while let Some(n) = body(&data[base..], &mut s1, &mut s2) {
                cuts.push(base + n);
                base += n - 64;
            }
            assert_eq!(cuts, expected, "{name}");
        }
    }
}
