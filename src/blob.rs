//! Layer blobs: tar → SHA-256 (diff_id) → compressor → SHA-256 (digest) → sink, in one pass.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use anyhow::{Result, bail};
use oci_spec::image::MediaType;
use sha2::{Digest as _, Sha256};

use crate::tarball::{self, Entry};

/// A `sha256:<hex>` content digest.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Self(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    pub fn from_sha256(hash: &[u8]) -> Self {
        Self(format!("sha256:{}", hex::encode(hash)))
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Digest {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.strip_prefix("sha256:") {
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {
                Ok(Self(s.to_owned()))
            }
            _ => bail!("invalid digest {s:?} (expected sha256:<64 lowercase hex>)"),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// How layer tars are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip(u32),
    Zstd(i32),
    /// zstd with every file's content in frames of its own and a table of contents, for
    /// partial pulls ([`crate::chunked`]).
    ZstdChunked(i32),
}

impl Compression {
    /// gzip level 6: what `gzip`, `pigz` and Docker use, so sizes match what users expect, and
    /// zlib-rs gives it ~43 MB/s per core here (3× C zlib). Level 1 is 3× faster but 12 % larger,
    /// and every node pays for the size on every pull while the build pays once (cached layers are
    /// not recompressed).
    pub const DEFAULT_GZIP: u32 = 6;
    /// zstd level 3: zstd's own default; ~90–120 MB/s per core, smaller than gzip -6.
    pub const DEFAULT_ZSTD: i32 = 3;

    pub fn media_type(self) -> MediaType {
        match self {
            Compression::None => MediaType::ImageLayer,
            Compression::Gzip(_) => MediaType::ImageLayerGzip,
            Compression::Zstd(_) | Compression::ZstdChunked(_) => MediaType::ImageLayerZstd,
        }
    }
}

impl FromStr for Compression {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if let Some(rest) = s.strip_prefix("zstd:chunked") {
            let level = match rest.strip_prefix(':') {
                None if rest.is_empty() => Self::DEFAULT_ZSTD,
                Some(l) => match l.parse::<i32>() {
                    Ok(n) if (1..=19).contains(&n) => n,
                    _ => bail!("compression level {l:?} for zstd:chunked must be 1..=19"),
                },
                None => bail!("unknown compression {s:?}: use zstd:chunked[:1-19]"),
            };
            return Ok(Compression::ZstdChunked(level));
        }
        let (name, given) = match s.split_once(':') {
            Some((n, l)) => (n, Some(l)),
            None => (s, None),
        };
        let level = |max: i64, default: i64| -> Result<i64> {
            match given {
                None => Ok(default),
                Some(l) => match l.parse::<i64>() {
                    Ok(n) if (1..=max).contains(&n) => Ok(n),
                    _ => bail!("compression level {l:?} for {name} must be 1..={max}"),
                },
            }
        };
        Ok(match name {
            "none" | "uncompressed" if given.is_none() => Compression::None,
            "gzip" => Compression::Gzip(level(9, Self::DEFAULT_GZIP as i64)? as u32),
            "zstd" => Compression::Zstd(level(19, Self::DEFAULT_ZSTD as i64)? as i32),
            _ => bail!("unknown compression {s:?}: use gzip[:1-9], zstd[:1-19], zstd:chunked[:1-19] or none"),
        })
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Gzip(l) => write!(f, "gzip:{l}"),
            Compression::Zstd(l) => write!(f, "zstd:{l}"),
            Compression::ZstdChunked(l) => write!(f, "zstd:chunked:{l}"),
        }
    }
}

/// What one pass over a layer yields.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
    pub uncompressed_size: u64,
    pub media_type: String,
    /// Annotations the layer's descriptor must carry (`zstd:chunked`: where its TOC is).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// A writer that hashes and counts what passes through.
pub struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), count: 0 }
    }

    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, Digest::from_sha256(&self.hasher.finalize()), self.count)
    }

    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The reading side of [`HashWriter`]: counts and hashes what passes through.
pub struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: io::Read> HashReader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner, hasher: Sha256::new(), count: 0 }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The digest of what was read so far.
    pub fn digest(&self) -> Digest {
        Digest::from_sha256(&self.hasher.clone().finalize())
    }

    pub fn finish(self) -> (u64, Digest) {
        (self.count, Digest::from_sha256(&self.hasher.finalize()))
    }
}

impl<R: io::Read> io::Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Like [`HashWriter`], but the hashing runs on a thread of its own: for streams (`-o -`) where
/// one thread reading files and writing the pipe would otherwise also pay for SHA-256. Bytes are
/// gathered into 1 MiB buffers, each handed to the hasher and written to `inner`.
pub struct OffloadHashWriter<W> {
    inner: Option<W>,
    buf: Vec<u8>,
    tx: Option<mpsc::SyncSender<Arc<Vec<u8>>>>,
    hasher: Option<thread::JoinHandle<Sha256>>,
    count: u64,
}

const OFFLOAD_BUF: usize = 1 << 20;

impl<W: Write> OffloadHashWriter<W> {
    pub fn new(inner: W) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Arc<Vec<u8>>>(4);
        let hasher = thread::spawn(move || {
            let mut h = Sha256::new();
            for buf in rx {
                h.update(&buf[..]);
            }
            h
        });
        Self { inner: Some(inner), buf: Vec::with_capacity(OFFLOAD_BUF), tx: Some(tx), hasher: Some(hasher), count: 0 }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = Arc::new(std::mem::replace(&mut self.buf, Vec::with_capacity(OFFLOAD_BUF)));
        let tx = self.tx.as_ref().ok_or_else(|| io::Error::other("hasher already finished"))?;
        tx.send(Arc::clone(&buf)).map_err(|_| io::Error::other("the hashing thread died"))?;
        self.inner.as_mut().ok_or_else(|| io::Error::other("writer already finished"))?.write_all(&buf)
    }

    /// Writes what is buffered and returns the inner writer, the digest and the byte count.
    pub fn finish(mut self) -> io::Result<(W, Digest, u64)> {
        self.send()?;
        self.tx.take();
        let h = self
            .hasher
            .take()
            .expect("finish runs once")
            .join()
            .map_err(|_| io::Error::other("the hashing thread panicked"))?;
        let inner = self.inner.take().expect("finish runs once");
        Ok((inner, Digest::from_sha256(&h.finalize()), self.count))
    }
}

impl<W: Write> Write for OffloadHashWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(OFFLOAD_BUF - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.count += n as u64;
        if self.buf.len() == OFFLOAD_BUF {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W> Drop for OffloadHashWriter<W> {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.hasher.take() {
            let _ = h.join();
        }
    }
}

/// Compressed layers are cut into fixed chunks of this many tar bytes, each compressed on its
/// own (a gzip member or a zstd frame) and concatenated: a valid gzip / zstd stream that any
/// number of workers produce identically, so one huge layer no longer serialises the build. The
/// size is part of the format: changing it changes every compressed digest.
pub const CHUNK: usize = 4 << 20;

/// Compression workers shared by every layer of a build.
pub struct Pool {
    tx: Option<mpsc::Sender<Job>>,
    workers: Vec<thread::JoinHandle<()>>,
}

struct Job {
    data: Vec<u8>,
    compression: Compression,
    reply: mpsc::SyncSender<io::Result<Vec<u8>>>,
}

impl Pool {
    /// A pool of `n` worker threads (at least one).
    pub fn new(n: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let workers = (0..n.max(1))
            .map(|_| {
                let rx = Arc::clone(&rx);
                thread::spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let _ = job.reply.send(compress_chunk(&job.data, job.compression));
                    }
                })
            })
            .collect();
        Self { tx: Some(tx), workers }
    }

    pub(crate) fn submit(&self, data: Vec<u8>, compression: Compression) -> mpsc::Receiver<io::Result<Vec<u8>>> {
        let (reply, rx) = mpsc::sync_channel(1);
        let job = Job { data, compression, reply };
        if let Some(tx) = &self.tx
            && let Err(mpsc::SendError(job)) = tx.send(job)
        {
            let _ = job.reply.send(compress_chunk(&job.data, job.compression));
        }
        rx
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.tx.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// One chunk as a complete gzip member or zstd frame.
pub(crate) fn compress_chunk(data: &[u8], compression: Compression) -> io::Result<Vec<u8>> {
    match compression {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip(level) => {
            let mut enc = flate2::GzBuilder::new()
                .operating_system(255)
                .write(Vec::with_capacity(data.len() / 2), flate2::Compression::new(level));
            enc.write_all(data)?;
            enc.finish()
        }
        Compression::Zstd(level) | Compression::ZstdChunked(level) => ZSTD.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().is_none_or(|(l, _)| *l != level) {
                let mut c = zstd::bulk::Compressor::new(level)?;
                c.include_checksum(false)?;
                c.include_contentsize(true)?;
                *slot = Some((level, c));
            }
            let (_, c) = slot.as_mut().expect("set above");
            c.compress(data)
        }),
    }
}

thread_local! {
    static ZSTD: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { std::cell::RefCell::new(None) };
}

/// Cuts what is written into [`CHUNK`]s, compresses them on the pool (or inline) and writes the
/// results to `inner` in order. At most `IN_FLIGHT` chunks per writer wait on the pool, so memory
/// stays bounded whatever the layer size.
struct ChunkWriter<'p, W: Write> {
    inner: W,
    compression: Compression,
    pool: Option<&'p Pool>,
    buf: Vec<u8>,
    pending: VecDeque<mpsc::Receiver<io::Result<Vec<u8>>>>,
}

const IN_FLIGHT: usize = 3;

impl<'p, W: Write> ChunkWriter<'p, W> {
    fn new(inner: W, compression: Compression, pool: Option<&'p Pool>) -> Self {
        Self { inner, compression, pool, buf: Vec::with_capacity(CHUNK), pending: VecDeque::new() }
    }

    fn submit(&mut self) -> io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        match self.pool {
            Some(pool) => {
                self.pending.push_back(pool.submit(data, self.compression));
                while self.pending.len() >= IN_FLIGHT {
                    self.drain_one()?;
                }
            }
            None => {
                let out = compress_chunk(&data, self.compression)?;
                self.inner.write_all(&out)?;
            }
        }
        Ok(())
    }

    fn drain_one(&mut self) -> io::Result<()> {
        if let Some(rx) = self.pending.pop_front() {
            let out = rx.recv().map_err(|_| io::Error::other("a compression worker died"))??;
            self.inner.write_all(&out)?;
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        if !self.buf.is_empty() {
            self.submit()?;
        }
        while !self.pending.is_empty() {
            self.drain_one()?;
        }
        Ok(self.inner)
    }
}

impl<W: Write> Write for ChunkWriter<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.submit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the layer made of `entries` into `sink`, compressed (on `pool` when given), and
/// returns its descriptor data. The bytes do not depend on the pool.
pub fn write_layer<W: Write>(
    entries: &[Entry],
    epoch: u64,
    compression: Compression,
    pool: Option<&Pool>,
    sink: W,
    on_data: &mut dyn FnMut(u64),
) -> Result<(W, BlobInfo)> {
    if let Compression::ZstdChunked(level) = compression {
        return crate::chunked::write_layer(entries, epoch, level, pool, sink, on_data);
    }
    let outer = HashWriter::new(sink);
    let (outer, diff_id, uncompressed_size) = match compression {
        Compression::None => {
            let tar = tarball::write(entries, epoch, outer, on_data)?;
            let (sink, digest, size) = tar.finish();
            let media_type = compression.media_type().to_string();
            let info = BlobInfo {
                diff_id: digest.clone(),
                digest,
                size,
                uncompressed_size: size,
                media_type,
                annotations: Default::default(),
            };
            return Ok((sink, info));
        }
        Compression::Gzip(_) | Compression::Zstd(_) | Compression::ZstdChunked(_) => {
            let chunks = ChunkWriter::new(outer, compression, pool);
            let tar = tarball::write(entries, epoch, HashWriter::new(chunks), on_data)?;
            let (chunks, diff_id, size) = tar.finish();
            (chunks.finish()?, diff_id, size)
        }
    };
    let (sink, digest, size) = outer.finish();
    let media_type = compression.media_type().to_string();
    Ok((sink, BlobInfo { digest, size, diff_id, uncompressed_size, media_type, annotations: Default::default() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tarball::{Content, Kind};
    use std::io::Read;

    fn entries() -> Vec<Entry> {
        let data = b"some layer content ".repeat(1000);
        vec![
            Entry::dir("nix", 0o755),
            Entry {
                path: "nix/f".into(),
                kind: Kind::File { size: data.len() as u64, content: Content::Inline(data) },
                mode: 0o444,
                uid: 0,
                gid: 0,
            },
        ]
    }

    #[test]
    fn one_pass_gives_both_digests() {
        for c in [Compression::None, Compression::Gzip(6), Compression::Zstd(3)] {
            let (blob, info) = write_layer(&entries(), 1, c, None, Vec::new(), &mut |_| {}).unwrap();
            assert_eq!(info.digest, Digest::of(&blob), "{c}");
            assert_eq!(info.size, blob.len() as u64);
            let tar = match c {
                Compression::None => blob.clone(),
                Compression::Gzip(_) => {
                    let mut v = Vec::new();
                    flate2::read::MultiGzDecoder::new(&blob[..]).read_to_end(&mut v).unwrap();
                    v
                }
                Compression::Zstd(_) | Compression::ZstdChunked(_) => zstd::decode_all(&blob[..]).unwrap(),
            };
            assert_eq!(info.diff_id, Digest::of(&tar), "{c}");
            assert_eq!(info.uncompressed_size, tar.len() as u64);
        }
    }

    /// Several chunks: the same bytes inline and on pools of any size, and they decompress.
    #[test]
    fn chunked_output_does_not_depend_on_workers() {
        let data: Vec<u8> = (0..(CHUNK * 2 + 12345)).map(|i| (i * 7 % 251) as u8).collect();
        let big = vec![Entry {
            path: "f".into(),
            kind: Kind::File { size: data.len() as u64, content: Content::Inline(data.clone()) },
            mode: 0o444,
            uid: 0,
            gid: 0,
        }];
        for c in [Compression::Gzip(1), Compression::Zstd(1)] {
            let (inline, a) = write_layer(&big, 1, c, None, Vec::new(), &mut |_| {}).unwrap();
            for n in [1, 2, 5] {
                let pool = Pool::new(n);
                let (pooled, b) = write_layer(&big, 1, c, Some(&pool), Vec::new(), &mut |_| {}).unwrap();
                assert_eq!(a, b, "{c} with {n} workers");
                assert_eq!(inline, pooled);
            }
            let tar = match c {
                Compression::Gzip(_) => {
                    let mut v = Vec::new();
                    flate2::read::MultiGzDecoder::new(&inline[..]).read_to_end(&mut v).unwrap();
                    v
                }
                _ => zstd::decode_all(&inline[..]).unwrap(),
            };
            assert_eq!(Digest::of(&tar), a.diff_id);
        }
    }

    #[test]
    fn offloaded_hash_matches() {
        let data: Vec<u8> = (0..3_000_001u32).map(|i| (i % 253) as u8).collect();
        let mut w = OffloadHashWriter::new(Vec::new());
        for piece in data.chunks(70_000) {
            w.write_all(piece).unwrap();
        }
        let (out, digest, n) = w.finish().unwrap();
        assert_eq!((out.as_slice(), n), (data.as_slice(), data.len() as u64));
        assert_eq!(digest, Digest::of(&data));
    }

    #[test]
    fn compression_parses() {
        assert_eq!("gzip".parse::<Compression>().unwrap(), Compression::Gzip(6));
        assert_eq!("zstd:9".parse::<Compression>().unwrap(), Compression::Zstd(9));
        assert_eq!("none".parse::<Compression>().unwrap(), Compression::None);
        assert!("gzip:0".parse::<Compression>().is_err());
        assert!("lz4".parse::<Compression>().is_err());
        assert_eq!("zstd:chunked".parse::<Compression>().unwrap(), Compression::ZstdChunked(3));
        assert_eq!("zstd:chunked:7".parse::<Compression>().unwrap(), Compression::ZstdChunked(7));
        assert_eq!(Compression::ZstdChunked(7).to_string(), "zstd:chunked:7");
        assert!("zstd:chunked:0".parse::<Compression>().is_err());
        assert!("zstd:chunkedx".parse::<Compression>().is_err());
    }
}
