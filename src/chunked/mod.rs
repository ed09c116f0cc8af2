//! `zstd:chunked` layers (issue 13): a zstd layer that podman (containers/storage) can pull
//! partially, fetching with range requests only the files whose content it does not hold yet.
//!
//! The blob is one valid zstd stream that decompresses to the exact tar [`tarball::write`]
//! makes, cut into frames so that every regular file's content can be fetched and decompressed
//! on its own:
//!
//! ```text
//! [headers…][file 1 chunk 1][file 1 chunk 2]…[padding, headers…][file 2]…[padding, end blocks]
//! [skippable: TOC (zstd JSON)][skippable: tar-split (zstd JSON lines)][skippable: footer, 64 B]
//! ```
//!
//! - The tar is plain zstd's for the same listing after one leading `./` entry (0755): a
//!   podman 4.3 partial pull otherwise creates the layer's root 0700, and the merged `/` takes the
//!   top layer's, so a non-root user reaches nothing. The build adds it to the listing
//!   ([`root_entry`]) so every output of one build (a docker-archive too) has the same diff_ids.
//! - Tar headers (with the previous file's padding) share frames; each file's content starts a
//!   new frame. A file under 64 KiB is one chunk. A larger one is cut for Nix: where a store
//!   reference (`/nix/store/` + hash) starts, a reference region starts, a chunk of its own that
//!   runs 16 KiB past the last reference in it; the reference-free stretches between are cut by
//!   the rolling checksum containers/storage uses (bup/perkeep rollsum, a cut where the low 16
//!   bits of `s2` are all ones) once a chunk holds 3 MiB, and at 4 MiB. Each chunk is its own
//!   frame. When a dependency is rebuilt, Nix re-hashes every path above it while their bytes
//!   change only where the hashes are written (RUNPATHs, shebangs, `.pyc` source paths): the
//!   reference-free chunks keep their digests, so a partial pull takes them from local storage
//!   and fetches the small regions. podman's own writer cuts every file at ~64 KiB: a 1 GB
//!   library becomes 16,000 chunks, and a client that merges a layer's ranges down to 1,024
//!   (containers/storage's `mergeMissingChunks`) then fetches most of the layer; with few large
//!   reference-free chunks it rarely has to merge (the real comfyui closure with a rebuilt
//!   interpreter: 2.86 GB fetched by podman 4.3.1 before, 0.11 GB after; README.md).
//! - The TOC (containers/storage's `minimal.TOC`, CRFS-like): `{"version":1,"entries":[…],
//!   "tarSplitDigest":…}`, one entry per tar entry (type, name as in the tar header, linkName,
//!   mode, size, uid, gid, modtime, digest = sha256 of the content, offset/endOffset of its
//!   frames), plus a `chunk` entry for every chunk after the first when a file has several.
//! - tar-split (vbatts/tar-split's JSON packer): the raw header bytes as `segment` entries and
//!   one `file` entry (name, size, crc64-ISO of the content) per tar entry, so newer clients can
//!   rebuild the exact tar stream from the files.
//! - The footer (64 bytes): TOC offset, compressed and uncompressed length, type 1, tar-split
//!   offset and lengths, the magic `GNUlInUx`.
//! - Annotations on the layer descriptor: podman 4.3's (`io.containers.zstd-chunked.manifest-
//!   checksum` and `…manifest-position` = `offset:length:uncompressed:1`) and the newer
//!   `io.github.containers.zstd-chunked.*` (the same two plus `…tarsplit-position`). Clients
//!   find the TOC through them, never through the footer.
//!
//! Frames are compressed on the build's [`Pool`] (or inline); the bytes do not depend on it.
//! What the producer computes beside plain zstd's tar hash — each file's and chunk's SHA-256,
//! the rolling checksum, the CRC — is made cheap by [`sha`] (the same bytes into several
//! digests in one SHA-NI pass) and [`sums`] (AVX2 and PCLMULQDQ), so that a chunked build runs at
//! ≥ 0.8× plain zstd's throughput (`scripts/bench`).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::sync::mpsc;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

mod sha;
mod sums;

use sha::Sha256;
use sums::{Crc64, RollSum};

use crate::blob::{BlobInfo, Compression, Digest, HashWriter, Pool, compress_chunk};
use crate::closure::{HASH_LEN, REFERENCE_PREFIX, reference_finder};
use crate::tarball::{self, Content, Entry, Kind};
use crate::transport::source::{SourceImage, SourceLayer};

/// podman 4.3 (containers/storage ≤ 1.45): sha256 of the compressed TOC.
pub const OLD_TOC_CHECKSUM: &str = "io.containers.zstd-chunked.manifest-checksum";
/// podman 4.3: `offset:length:uncompressed length:1` of the compressed TOC.
pub const OLD_TOC_POSITION: &str = "io.containers.zstd-chunked.manifest-position";
/// Newer containers/storage: sha256 of the compressed TOC.
pub const TOC_CHECKSUM: &str = "io.github.containers.zstd-chunked.manifest-checksum";
/// Newer containers/storage: `offset:length:uncompressed length:1` of the compressed TOC.
pub const TOC_POSITION: &str = "io.github.containers.zstd-chunked.manifest-position";
/// Newer containers/storage: `offset:length:uncompressed length` of the compressed tar-split.
pub const TAR_SPLIT_POSITION: &str = "io.github.containers.zstd-chunked.tarsplit-position";

const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
const FOOTER_MAGIC: &[u8; 8] = b"GNUlInUx";
const FOOTER_SIZE: usize = 64;
/// Our cap on a chunk (and on a frame of headers): bounds memory on data the rollsum never cuts.
const MAX_CHUNK: usize = 4 << 20;
/// Frames waiting on the pool per layer, in uncompressed bytes: enough small files' frames to
/// keep the workers busy (16 MiB bought no speed and ~60 MiB of peak RSS on the bench store)…
const IN_FLIGHT_BYTES: usize = 4 << 20;
/// …and at least this many frames, whatever their size: a large file's ~3 MiB chunks, one or
/// two at a time, would leave a many-core pool idle on a layer of large files.
const IN_FLIGHT_FRAMES: usize = 2;
/// Files from this size on are cut into chunks; smaller ones are one chunk, fetched whole (as
/// the rollsum would leave most of them).
const SPLIT_MIN: u64 = 64 << 10;
/// A chunk free of store references is not cut by the rollsum before it holds this much.
const MIN_FREE: usize = 3 << 20;
/// A reference region (a chunk of its own, starting where a [`REFERENCE_PREFIX`] does): the
/// prefix, the hash and what follows up to this many bytes; another reference starting inside
/// extends it.
const REF_SPAN: u64 = (REFERENCE_PREFIX.len() + HASH_LEN) as u64 + (16 << 10);

/// The table of contents (containers/storage `minimal.TOC`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toc {
    pub version: u32,
    pub entries: Vec<TocEntry>,
    #[serde(rename = "tarSplitDigest", default, skip_serializing_if = "String::is_empty")]
    pub tar_split_digest: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One TOC entry (containers/storage `minimal.FileMetadata`); empty fields are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TocEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    #[serde(rename = "linkName", default, skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mode: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uid: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gid: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modtime: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    #[serde(rename = "endOffset", default, skip_serializing_if = "is_zero")]
    pub end_offset: u64,
    #[serde(rename = "chunkSize", default, skip_serializing_if = "is_zero")]
    pub chunk_size: u64,
    #[serde(rename = "chunkOffset", default, skip_serializing_if = "is_zero")]
    pub chunk_offset: u64,
    #[serde(rename = "chunkDigest", default, skip_serializing_if = "String::is_empty")]
    pub chunk_digest: String,
}

/// One line of tar-split's JSON packer (`storage.Entry`).
#[derive(Serialize)]
struct SplitEntry<'a> {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    size: u64,
    payload: Option<String>,
    position: u64,
}

/// Builds the tar-split stream.
struct TarSplit {
    json: Vec<u8>,
    position: u64,
}

impl TarSplit {
    fn segment(&mut self, raw: &[u8]) -> Result<()> {
        if raw.is_empty() {
            return Ok(());
        }
        use base64::Engine as _;
        let payload = Some(base64::engine::general_purpose::STANDARD.encode(raw));
        self.push(&SplitEntry { kind: 2, name: "", size: 0, payload, position: self.position })
    }

    fn file(&mut self, name: &str, size: u64, crc: Option<[u8; 8]>) -> Result<()> {
        use base64::Engine as _;
        let payload = crc.map(|c| base64::engine::general_purpose::STANDARD.encode(c));
        self.push(&SplitEntry { kind: 1, name, size, payload, position: self.position })
    }

    fn push(&mut self, e: &SplitEntry<'_>) -> Result<()> {
        serde_json::to_writer(&mut self.json, e).context("serialising tar-split")?;
        self.json.push(b'\n');
        self.position += 1;
        Ok(())
    }
}

/// Where a frame's compressed bytes land in the TOC once their offset is known.
#[derive(Clone, Copy)]
enum Tag {
    /// Headers and padding: in no entry.
    None,
    /// A chunk of file `file`, described by TOC entry `entry` (the file's own for its first).
    Chunk { file: usize, entry: usize },
}

type Reply = mpsc::Receiver<io::Result<Vec<u8>>>;

/// Frames in order: compressed on the pool, written to `out` in submission order, their
/// offsets recorded into the TOC.
struct Frames<'p, W: Write> {
    out: HashWriter<W>,
    level: i32,
    pool: Option<&'p Pool>,
    /// Frames on the pool: the reply, its uncompressed size, where it goes in the TOC.
    pending: VecDeque<(Reply, usize, Tag)>,
    pending_bytes: usize,
}

impl<W: Write> Frames<'_, W> {
    fn submit(&mut self, data: Vec<u8>, tag: Tag, toc: &mut [TocEntry]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let compression = Compression::Zstd(self.level);
        match self.pool {
            Some(pool) => {
                let n = data.len();
                self.pending.push_back((pool.submit(data, compression), n, tag));
                self.pending_bytes += n;
                while self.pending_bytes > IN_FLIGHT_BYTES && self.pending.len() > IN_FLIGHT_FRAMES {
                    self.drain_one(toc)?;
                }
                Ok(())
            }
            None => {
                let frame = compress_chunk(&data, compression)?;
                self.write(&frame, tag, toc)
            }
        }
    }

    fn drain_one(&mut self, toc: &mut [TocEntry]) -> io::Result<()> {
        if let Some((rx, n, tag)) = self.pending.pop_front() {
            self.pending_bytes -= n;
            let frame = rx.recv().map_err(|_| io::Error::other("a compression worker died"))??;
            self.write(&frame, tag, toc)?;
        }
        Ok(())
    }

    fn write(&mut self, frame: &[u8], tag: Tag, toc: &mut [TocEntry]) -> io::Result<()> {
        let start = self.offset();
        self.out.write_all(frame)?;
        if let Tag::Chunk { file, entry } = tag {
            toc[entry].offset = start;
            toc[file].end_offset = self.offset();
        }
        Ok(())
    }

    fn offset(&self) -> u64 {
        self.out.count()
    }

    fn finish(&mut self, toc: &mut [TocEntry]) -> io::Result<()> {
        while !self.pending.is_empty() {
            self.drain_one(toc)?;
        }
        Ok(())
    }
}

/// Everything the producer keeps while walking the entries.
struct Producer {
    /// Header bytes (and padding) for the next header frame.
    headers: Vec<u8>,
    /// Raw non-content bytes since the last tar-split entry.
    segment: Vec<u8>,
    split: TarSplit,
    tar_hash: Sha256,
    tar_size: u64,
    toc: Vec<TocEntry>,
}

impl Producer {
    fn raw(&mut self, bytes: &[u8]) {
        self.headers.extend_from_slice(bytes);
        self.segment.extend_from_slice(bytes);
        self.tar_hash.update(bytes);
        self.tar_size += bytes.len() as u64;
    }
}

/// The entry for a layer's root (`./`, 0755) that every zstd:chunked layer starts with.
pub fn root_entry() -> Entry {
    Entry::dir(".", 0o755)
}

/// Writes the `zstd:chunked` layer of `entries` at zstd `level` into `sink`; the descriptor's
/// annotations locate the TOC and tar-split. The bytes do not depend on the pool.
pub fn write_layer<W: Write>(
    entries: &[Entry],
    epoch: u64,
    level: i32,
    pool: Option<&Pool>,
    sink: W,
    on_data: &mut dyn FnMut(u64),
) -> Result<(W, BlobInfo)> {
    let modtime = crate::image::rfc3339(epoch);
    let mut frames = Frames { out: HashWriter::new(sink), level, pool, pending: VecDeque::new(), pending_bytes: 0 };
    let mut p = Producer {
        headers: Vec::new(),
        segment: Vec::new(),
        split: TarSplit { json: Vec::new(), position: 0 },
        tar_hash: Sha256::new(),
        tar_size: 0,
        toc: Vec::with_capacity(entries.len()),
    };
    let mut buf = vec![0u8; 256 * 1024];
    let mut header = Vec::with_capacity(1536);
    // The layer's root as its first entry (as podman's own writer has it): a partial pull
    // (podman 4.3) creates a layer's root 0700 unless the TOC says otherwise, and the merged `/`
    // takes the top layer's, so a non-root user could reach nothing. It is in the tar too (newer
    // clients check that TOC and tar-split list the same entries), hence the tar differs from
    // plain zstd's by this one leading entry.
    let root = root_entry();
    let with_root = entries.first().is_none_or(|e| e.path != ".");
    for e in with_root.then_some(&root).into_iter().chain(entries) {
        header.clear();
        tarball::write_header(e, epoch, &mut header)?;
        p.raw(&header);
        if p.headers.len() >= MAX_CHUNK {
            let h = std::mem::take(&mut p.headers);
            frames.submit(h, Tag::None, &mut p.toc)?;
        }
        let seg = std::mem::take(&mut p.segment);
        p.split.segment(&seg)?;
        let (kind, link_name, size) = match &e.kind {
            Kind::Dir => ("dir", String::new(), 0),
            Kind::Symlink { target } => ("symlink", target.clone(), 0),
            Kind::File { size, .. } => ("reg", String::new(), *size),
        };
        let name = match e.kind {
            Kind::Dir => format!("{}/", e.path),
            _ => e.path.clone(),
        };
        let index = p.toc.len();
        p.toc.push(TocEntry {
            kind: kind.to_owned(),
            name: name.clone(),
            link_name,
            mode: u64::from(e.mode),
            size,
            uid: e.uid,
            gid: e.gid,
            modtime: Some(modtime.clone()),
            ..TocEntry::default()
        });
        let mut crc = None;
        if let Kind::File { size, content } = &e.kind
            && *size > 0
        {
            let h = std::mem::take(&mut p.headers);
            frames.submit(h, Tag::None, &mut p.toc)?;
            crc = Some(write_content(&mut frames, &mut p, index, content, *size, &mut buf, on_data)?);
            let mut pad = Vec::new();
            tarball::write_padding(&mut pad, *size)?;
            p.raw(&pad);
        }
        p.split.file(&name, size, crc)?;
    }
    p.raw(&[0u8; tarball::END_MARKER as usize]);
    let h = std::mem::take(&mut p.headers);
    frames.submit(h, Tag::None, &mut p.toc)?;
    let seg = std::mem::take(&mut p.segment);
    p.split.segment(&seg)?;
    frames.finish(&mut p.toc)?;

    // The metadata: TOC, tar-split, footer, as skippable frames.
    let split_uncompressed = p.split.json.len() as u64;
    let split = zstd::bulk::compress(&p.split.json, level).context("compressing tar-split")?;
    let toc = Toc { version: 1, entries: p.toc, tar_split_digest: Digest::of(&split).to_string() };
    let toc_json = serde_json::to_vec(&toc).context("serialising the TOC")?;
    let toc_z = zstd::bulk::compress(&toc_json, level).context("compressing the TOC")?;
    let toc_offset = frames.offset() + 8;
    skippable(&mut frames.out, &toc_z)?;
    let split_offset = frames.offset() + 8;
    skippable(&mut frames.out, &split)?;
    let mut footer = [0u8; FOOTER_SIZE];
    for (i, v) in
        [toc_offset, toc_z.len() as u64, toc_json.len() as u64, 1, split_offset, split.len() as u64, split_uncompressed]
            .into_iter()
            .enumerate()
    {
        footer[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    footer[56..].copy_from_slice(FOOTER_MAGIC);
    skippable(&mut frames.out, &footer)?;

    let toc_digest = Digest::of(&toc_z).to_string();
    let toc_position = format!("{toc_offset}:{}:{}:1", toc_z.len(), toc_json.len());
    let annotations = BTreeMap::from([
        (OLD_TOC_CHECKSUM.to_owned(), toc_digest.clone()),
        (OLD_TOC_POSITION.to_owned(), toc_position.clone()),
        (TOC_CHECKSUM.to_owned(), toc_digest),
        (TOC_POSITION.to_owned(), toc_position),
        (TAR_SPLIT_POSITION.to_owned(), format!("{split_offset}:{}:{split_uncompressed}", split.len())),
    ]);
    let (sink, digest, size) = frames.out.finish();
    let info = BlobInfo {
        digest,
        size,
        diff_id: Digest::from_sha256(&p.tar_hash.finalize()),
        uncompressed_size: p.tar_size,
        media_type: Compression::ZstdChunked(level).media_type().to_string(),
        annotations,
    };
    Ok((sink, info))
}

fn skippable<W: Write>(w: &mut W, data: &[u8]) -> io::Result<()> {
    let len = u32::try_from(data.len()).map_err(|_| io::Error::other("a skippable frame over 4 GiB"))?;
    w.write_all(&SKIPPABLE_MAGIC)?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(data)
}

/// Streams one file's content: cut into chunks, each a frame with its TOC entry; returns the
/// content's crc64 for tar-split.
fn write_content<W: Write>(
    frames: &mut Frames<'_, W>,
    p: &mut Producer,
    file: usize,
    content: &Content,
    size: u64,
    buf: &mut [u8],
    on_data: &mut dyn FnMut(u64),
) -> Result<[u8; 8]> {
    let mut chunker = Chunker {
        file,
        split: size >= SPLIT_MIN,
        roll: RollSum::new(),
        chunk: Vec::new(),
        chunk_offset: 0,
        ref_end: 0,
        carry: Vec::new(),
        file_hash: Sha256::new(),
        chunk_hash: Sha256::new(),
        crc: Crc64::new(),
        chunks: Vec::new(),
    };
    match content {
        Content::Inline(bytes) => {
            for piece in bytes.chunks(inline_piece()) {
                chunker.feed(piece, frames, p)?;
            }
            on_data(bytes.len() as u64);
        }
        Content::Disk(path) => tarball::read_exact_pieces(path, size, buf, |piece| {
            chunker.feed(piece, frames, p)?;
            on_data(piece.len() as u64);
            Ok(())
        })?,
    }
    chunker.finish(frames, p)?;
    let digest = hex_digest(chunker.file_hash);
    p.toc[file].digest = digest;
    if chunker.chunks.len() > 1 {
        for (i, (offset, size, digest)) in chunker.chunks.into_iter().enumerate() {
            let e = &mut p.toc[file + i];
            e.chunk_offset = offset;
            e.chunk_size = size;
            e.chunk_digest = digest;
        }
    }
    Ok(chunker.crc.sum())
}

/// The size of the pieces inline content is fed in: all of it at once, except in tests, which
/// vary it (the cuts must not depend on it).
#[cfg(not(test))]
fn inline_piece() -> usize {
    usize::MAX
}
#[cfg(test)]
use tests::inline_piece;

struct Chunker {
    file: usize,
    /// Cut at store references and by the rollsum ([`SPLIT_MIN`] bytes or more); else one chunk.
    split: bool,
    roll: RollSum,
    chunk: Vec<u8>,
    chunk_offset: u64,
    /// The file offset up to which the current chunk is a reference region (see [`REF_SPAN`]).
    ref_end: u64,
    /// Bytes received but not yet placed: whether a [`REFERENCE_PREFIX`] starts in them is not known
    /// until the next bytes come (fewer than its length; more only after tiny pieces).
    carry: Vec<u8>,
    file_hash: Sha256,
    /// The current chunk's, from the second chunk on (the first one's is the file's so far).
    chunk_hash: Sha256,
    crc: Crc64,
    /// (offset in the file, size, digest) of every chunk so far.
    chunks: Vec<(u64, u64, String)>,
}

impl Chunker {
    /// Takes the next bytes of the file. Where the cuts fall depends on the content only, never
    /// on how it is split into pieces (reads may come short).
    fn feed<W: Write>(&mut self, data: &[u8], frames: &mut Frames<'_, W>, p: &mut Producer) -> Result<()> {
        if !self.split {
            return self.run(data, frames, p);
        }
        let tail = REFERENCE_PREFIX.len() - 1;
        if !self.carry.is_empty() {
            // The carry and enough new bytes to decide it (all of them, if fewer came).
            let mut joint = std::mem::take(&mut self.carry);
            let head = tail.min(data.len());
            joint.extend_from_slice(&data[..head]);
            let ready = joint.len().saturating_sub(tail);
            self.place(&joint, ready, frames, p)?;
            if head < tail {
                self.carry = joint[ready..].to_vec();
                return Ok(());
            }
        }
        let ready = data.len().saturating_sub(tail);
        self.place(data, ready, frames, p)?;
        self.carry = data[ready..].to_vec();
        Ok(())
    }

    /// The file has no more bytes: places the carry and ends the last chunk.
    fn finish<W: Write>(&mut self, frames: &mut Frames<'_, W>, p: &mut Producer) -> Result<()> {
        let carry = std::mem::take(&mut self.carry);
        self.place(&carry, carry.len(), frames, p)?;
        self.cut(frames, p, true)
    }

    /// Places `window[..ready]`: where a [`REFERENCE_PREFIX`] starts in it (found in all of `window`),
    /// a reference region begins (its own chunk, with the chunk before it ended).
    fn place<W: Write>(
        &mut self,
        window: &[u8],
        ready: usize,
        frames: &mut Frames<'_, W>,
        p: &mut Producer,
    ) -> Result<()> {
        let mut at = 0;
        for s in reference_finder().find_iter(window).take_while(|&i| i < ready) {
            self.run(&window[at..s], frames, p)?;
            if self.position() >= self.ref_end {
                self.cut(frames, p, false)?;
            }
            self.ref_end = self.position() + REF_SPAN;
            at = s;
        }
        self.run(&window[at..ready], frames, p)
    }

    /// The file offset of the next byte.
    fn position(&self) -> u64 {
        self.chunk_offset + self.chunk.len() as u64
    }

    /// Appends placed bytes to chunks, cutting at the end of a reference region, by the rollsum
    /// once a free chunk holds [`MIN_FREE`] bytes, and at [`MAX_CHUNK`].
    fn run<W: Write>(&mut self, mut data: &[u8], frames: &mut Frames<'_, W>, p: &mut Producer) -> Result<()> {
        p.tar_size += data.len() as u64;
        self.crc.update(data);
        while !data.is_empty() {
            let room = (MAX_CHUNK - self.chunk.len()).min(data.len());
            let here = self.position();
            let (take, cut) = if !self.split {
                (room, false)
            } else if here < self.ref_end {
                let left = (self.ref_end - here).min(room as u64) as usize;
                (left, here + left as u64 == self.ref_end)
            } else if self.chunk.len() < MIN_FREE {
                ((MIN_FREE - self.chunk.len()).min(room), false)
            } else {
                let cut = self.roll.scan(&data[..room]);
                (cut.unwrap_or(room), cut.is_some())
            };
            // The tar's hash and the file's see the same 64-byte blocks, and the first chunk's
            // is the file's so far: SHA-256 passes over the same bytes, run side by side.
            if self.chunks.is_empty() {
                sha::update_both(&mut p.tar_hash, &mut self.file_hash, &data[..take]);
            } else {
                sha::update_three(&mut p.tar_hash, &mut self.file_hash, &mut self.chunk_hash, &data[..take]);
            }
            self.chunk.extend_from_slice(&data[..take]);
            data = &data[take..];
            if cut || self.chunk.len() == MAX_CHUNK {
                self.cut(frames, p, false)?;
            }
        }
        Ok(())
    }

    /// Ends the current chunk (if it holds anything) as a frame.
    /// `last`: the file has no more bytes. A file of one chunk needs no chunk digest (the TOC
    /// gives chunk fields only to files of several).
    fn cut<W: Write>(&mut self, frames: &mut Frames<'_, W>, p: &mut Producer, last: bool) -> Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let (entry, digest) = if self.chunks.is_empty() {
            let digest = if last { String::new() } else { hex_digest(self.file_hash.clone()) };
            (self.file, digest)
        } else {
            let name = p.toc[self.file].name.clone();
            p.toc.push(TocEntry { kind: "chunk".to_owned(), name, ..TocEntry::default() });
            (p.toc.len() - 1, hex_digest(std::mem::replace(&mut self.chunk_hash, Sha256::new())))
        };
        let data = std::mem::take(&mut self.chunk);
        let size = data.len() as u64;
        self.roll = RollSum::new();
        self.chunks.push((self.chunk_offset, size, digest));
        self.chunk_offset += size;
        frames.submit(data, Tag::Chunk { file: self.file, entry }, &mut p.toc)?;
        Ok(())
    }
}

fn hex_digest(h: Sha256) -> String {
    Digest::from_sha256(&h.finalize()).to_string()
}

/// The zstd:chunked annotations among a layer descriptor's: they describe the blob itself and
/// go wherever it goes.
pub fn blob_annotations<'a>(all: impl IntoIterator<Item = (&'a String, &'a String)>) -> BTreeMap<String, String> {
    all.into_iter()
        .filter(|(k, _)| {
            k.starts_with("io.containers.zstd-chunked.") || k.starts_with("io.github.containers.zstd-chunked.")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Where a chunked layer's TOC lies, from its descriptor's annotations (new keys, else old).
pub fn toc_position(annotations: &BTreeMap<String, String>) -> Option<(u64, u64, Digest)> {
    let (pos, sum) = match (annotations.get(TOC_POSITION), annotations.get(TOC_CHECKSUM)) {
        (Some(p), Some(s)) => (p, s),
        _ => (annotations.get(OLD_TOC_POSITION)?, annotations.get(OLD_TOC_CHECKSUM)?),
    };
    let mut parts = pos.split(':').map(str::parse::<u64>);
    let (Some(Ok(offset)), Some(Ok(length))) = (parts.next(), parts.next()) else {
        return None;
    };
    Some((offset, length, sum.parse().ok()?))
}

/// Parses a TOC from the compressed bytes the annotations point at, checking their digest.
pub fn parse_toc(compressed: &[u8], expected: &Digest) -> Result<Toc> {
    let got = Digest::of(compressed);
    if &got != expected {
        bail!("the zstd:chunked TOC hashes to {got}, but the layer's annotation says {expected}");
    }
    let json = zstd::decode_all(compressed).context("decompressing the zstd:chunked TOC")?;
    serde_json::from_slice(&json).context("parsing the zstd:chunked TOC")
}

/// Reads and checks the TOC of a chunked layer of `img` (`None`: the layer is not chunked): a
/// range request to a registry, a seek in an `oci:` layout; archives stream the blob up to it.
pub fn read_layer_toc(img: &SourceImage, layer: &SourceLayer) -> Result<Option<Toc>> {
    let Some((offset, length, digest)) = toc_position(&layer.annotations) else {
        return Ok(None);
    };
    let what = || format!("the zstd:chunked TOC of layer {} ({offset}:{length})", layer.digest);
    if offset.checked_add(length).is_none_or(|end| end > layer.size) || length > 256 << 20 {
        bail!("{}: outside the {}-byte blob", what(), layer.size);
    }
    let compressed = match img.read_blob_range(&layer.digest, offset, length) {
        Some(read) => read.with_context(what)?,
        None => {
            let mut compressed = vec![0u8; length as usize];
            let mut r = img.open_blob(&layer.digest, layer.size)?;
            io::copy(&mut (&mut r).take(offset), &mut io::sink()).with_context(what)?;
            r.read_exact(&mut compressed).with_context(what)?;
            compressed
        }
    };
    parse_toc(&compressed, &digest).with_context(what).map(Some)
}

/// What a client that pulls a chunked layer partially can reuse or must fetch: every regular
/// file and every chunk with the compressed bytes of its frames.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contents {
    /// (content digest, compressed bytes) of each regular file with content.
    pub files: Vec<(String, u64)>,
    /// (chunk digest, compressed bytes) of each chunk; a file of one chunk is that chunk
    /// (named by the file's digest).
    pub chunks: Vec<(String, u64)>,
    /// The compressed TOC: fetched by every partial pull.
    pub toc_bytes: u64,
}

impl Contents {
    pub fn of(toc: &Toc, toc_bytes: u64) -> Self {
        let mut c = Contents { toc_bytes, ..Contents::default() };
        let mut file_end = 0;
        for (i, e) in toc.entries.iter().enumerate() {
            let is_file = e.kind == "reg" && !e.digest.is_empty();
            if is_file {
                file_end = e.end_offset;
                c.files.push((e.digest.clone(), e.end_offset.saturating_sub(e.offset)));
            }
            if is_file || e.kind == "chunk" {
                let end = match toc.entries.get(i + 1) {
                    Some(n) if n.kind == "chunk" => n.offset,
                    _ => file_end,
                };
                let digest = if e.chunk_digest.is_empty() { &e.digest } else { &e.chunk_digest };
                c.chunks.push((digest.clone(), end.saturating_sub(e.offset)));
            }
        }
        c
    }

    /// Compressed bytes of the files (and of the chunks) whose digest `have` lacks, each digest
    /// counted once, plus the TOC: estimates of what a partial pull fetches when the client
    /// holds `have` — by whole files (the floor the issue names) and by chunks (podman 4.3 also
    /// reuses unchanged chunks of a changed file).
    pub fn missing(&self, have: &HashSet<&str>) -> (u64, u64) {
        let sum = |list: &[(String, u64)]| {
            let mut seen = HashSet::new();
            list.iter()
                .filter(|(d, _)| !have.contains(d.as_str()) && seen.insert(d.as_str()))
                .map(|(_, n)| n)
                .sum::<u64>()
        };
        (self.toc_bytes + sum(&self.files), self.toc_bytes + sum(&self.chunks))
    }

    /// Every file and chunk digest.
    pub fn digests(&self) -> impl Iterator<Item = &str> {
        self.files.iter().chain(&self.chunks).map(|(d, _)| d.as_str())
    }
}

/// A TOC in numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TocSummary {
    /// Regular files with content.
    pub files: u64,
    /// Chunks (frames of file content), at least one per file.
    pub chunks: u64,
    /// Compressed bytes of file content: what a pull that has none of the files fetches.
    pub content_bytes: u64,
}

impl Toc {
    pub fn summary(&self) -> TocSummary {
        let mut s = TocSummary::default();
        for e in &self.entries {
            match e.kind.as_str() {
                "reg" if !e.digest.is_empty() => {
                    s.files += 1;
                    s.chunks += 1;
                    s.content_bytes += e.end_offset.saturating_sub(e.offset);
                }
                "chunk" => s.chunks += 1,
                _ => {}
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    thread_local! {
        /// The size of the pieces inline content is fed in (reads may come short: the cuts must
        /// not depend on it).
        static INLINE_PIECE: Cell<usize> = const { Cell::new(usize::MAX) };
    }

    pub(super) fn inline_piece() -> usize {
        INLINE_PIECE.with(Cell::get)
    }

    fn file(path: &str, data: Vec<u8>) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::File { size: data.len() as u64, content: Content::Inline(data) },
            mode: 0o444,
            uid: 0,
            gid: 0,
        }
    }

    const BIG: usize = 5_000_000;

    /// `len` pseudo-random bytes (xorshift from `seed`): the rollsum cuts them into chunks.
    pub(super) fn noise(seed: u32, len: usize) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect()
    }

    fn entries() -> Vec<Entry> {
        let big = noise(1, BIG);
        vec![
            Entry::dir("nix", 0o755),
            Entry::dir("nix/store", 0o755),
            file("nix/store/a/big", big),
            file("nix/store/a/empty", vec![]),
            Entry {
                path: "nix/store/a/l".into(),
                kind: Kind::Symlink { target: "big".into() },
                mode: 0o777,
                uid: 0,
                gid: 0,
            },
            file(&format!("nix/store/a/{}", "n".repeat(150)), b"hello\n".to_vec()),
        ]
    }

    #[test]
    fn one_zstd_stream_same_tar_as_plain_zstd_and_toc_points_at_content() {
        let entries = entries();
        let (blob, info) = write_layer(&entries, 1, 3, None, Vec::new(), &mut |_| {}).unwrap();
        let (_, plain) =
            crate::blob::write_layer(&entries, 1, Compression::Zstd(3), None, Vec::new(), &mut |_| {}).unwrap();
        assert_eq!(info.digest, Digest::of(&blob));
        assert_eq!(info.size, blob.len() as u64);
        let tar = zstd::decode_all(&blob[..]).unwrap();
        assert_eq!(Digest::of(&tar), info.diff_id);
        let (plain_tar, _) =
            crate::blob::write_layer(&entries, 1, Compression::None, None, Vec::new(), &mut |_| {}).unwrap();
        assert_eq!(Digest::of(&plain_tar), plain.diff_id);
        assert_eq!(&tar[..512], &tarball::write(&[Entry::dir(".", 0o755)], 1, Vec::new(), &mut |_| {}).unwrap()[..512]);
        assert_eq!(tar[512..], plain_tar[..], "plain zstd's tar after the root entry");
        assert_eq!(info.media_type, "application/vnd.oci.image.layer.v1.tar+zstd");

        let (offset, length, sum) = toc_position(&info.annotations).unwrap();
        let toc = parse_toc(&blob[offset as usize..(offset + length) as usize], &sum).unwrap();
        assert_eq!(toc.version, 1);
        // Footer: the TOC's offset and the magic.
        let footer = &blob[blob.len() - FOOTER_SIZE..];
        assert_eq!(&footer[56..], FOOTER_MAGIC);
        assert_eq!(u64::from_le_bytes(footer[..8].try_into().unwrap()), offset);
        assert_eq!(blob[blob.len() - FOOTER_SIZE - 8..blob.len() - FOOTER_SIZE - 4], SKIPPABLE_MAGIC);

        // Every file's frames decompress on their own to its content, with its digest.
        let big = toc.entries.iter().find(|e| e.name == "nix/store/a/big").unwrap();
        let chunks: Vec<_> = toc.entries.iter().filter(|e| e.kind == "chunk").collect();
        assert!(!chunks.is_empty(), "5 MB of noise is cut into several chunks");
        let content = zstd::decode_all(&blob[big.offset as usize..big.end_offset as usize]).unwrap();
        assert_eq!(content.len(), BIG);
        assert_eq!(Digest::of(&content).to_string(), big.digest);
        let mut at = big.chunk_size;
        for c in &chunks {
            assert_eq!(c.chunk_offset, at);
            assert!(c.offset > big.offset && c.offset < big.end_offset);
            at += c.chunk_size;
        }
        assert_eq!(at, BIG as u64);
        let long = toc.entries.iter().find(|e| e.name.ends_with(&"n".repeat(150))).unwrap();
        assert_eq!(zstd::decode_all(&blob[long.offset as usize..long.end_offset as usize]).unwrap(), b"hello\n");
        let empty = toc.entries.iter().find(|e| e.name == "nix/store/a/empty").unwrap();
        assert_eq!((empty.offset, empty.digest.as_str()), (0, ""));
        assert!(toc.entries.iter().any(|e| e.name == "nix/store/" && e.kind == "dir"));
        assert!(toc.entries.iter().any(|e| e.kind == "symlink" && e.link_name == "big"));
        assert_eq!(toc.summary().files, 2);

        // tar-split: its segments and file sizes rebuild the tar.
        let pos = &info.annotations[TAR_SPLIT_POSITION];
        let v: Vec<u64> = pos.split(':').map(|n| n.parse().unwrap()).collect();
        let split = &blob[v[0] as usize..(v[0] + v[1]) as usize];
        assert_eq!(Digest::of(split).to_string(), toc.tar_split_digest);
        let split = zstd::decode_all(split).unwrap();
        assert_eq!(split.len() as u64, v[2]);
        let mut rebuilt = Vec::new();
        let mut files = entries.iter().filter(|e| e.data_size() > 0);
        for (i, line) in split.split(|&b| b == b'\n').filter(|l| !l.is_empty()).enumerate() {
            let j: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert_eq!(j["position"], i as u64);
            if j["type"] == 2 {
                use base64::Engine as _;
                rebuilt
                    .extend(base64::engine::general_purpose::STANDARD.decode(j["payload"].as_str().unwrap()).unwrap());
            } else if j["size"].as_u64().unwrap_or(0) > 0 {
                let Kind::File { content: Content::Inline(b), .. } = &files.next().unwrap().kind else { panic!() };
                rebuilt.extend(b);
            }
        }
        assert_eq!(rebuilt, tar);
    }

    #[test]
    fn a_toc_that_does_not_match_its_annotation_is_refused() {
        let (blob, info) = write_layer(&entries(), 1, 3, None, Vec::new(), &mut |_| {}).unwrap();
        let (offset, length, _) = toc_position(&info.annotations).unwrap();
        let wrong = Digest::of(b"not the toc");
        let err = parse_toc(&blob[offset as usize..(offset + length) as usize], &wrong).unwrap_err().to_string();
        assert!(err.contains(wrong.as_str()) && err.contains("hashes to"), "{err}");
    }

    #[test]
    fn bytes_do_not_depend_on_workers() {
        let entries = entries();
        let (inline, a) = write_layer(&entries, 1, 3, None, Vec::new(), &mut |_| {}).unwrap();
        for n in [1, 3] {
            let pool = Pool::new(n);
            let (pooled, b) = write_layer(&entries, 1, 3, Some(&pool), Vec::new(), &mut |_| {}).unwrap();
            assert_eq!((&inline, &a), (&pooled, &b), "{n} workers");
        }
    }

    /// `noise` with a store reference (`/nix/store/<hash>-python3.11`, the hash made of `h`)
    /// written at each of `at`.
    fn with_references(len: usize, at: &[usize], h: u8) -> Vec<u8> {
        let mut data = noise(7, len);
        for &i in at {
            let r = format!("/nix/store/{}-python3.11", (h as char).to_string().repeat(32));
            data[i..i + r.len()].copy_from_slice(r.as_bytes());
        }
        data
    }

    /// The big file's chunks: (offset in the file, size, digest).
    fn chunks_of(data: Vec<u8>) -> (Vec<u8>, Vec<(u64, u64, String)>) {
        let entries = vec![Entry::dir("nix", 0o755), file("nix/store/a/lib.so", data)];
        let (blob, info) = write_layer(&entries, 1, 3, None, Vec::new(), &mut |_| {}).unwrap();
        let (offset, length, sum) = toc_position(&info.annotations).unwrap();
        let toc = parse_toc(&blob[offset as usize..(offset + length) as usize], &sum).unwrap();
        let file = toc.entries.iter().position(|e| e.kind == "reg").unwrap();
        let chunks = toc.entries[file..]
            .iter()
            .take_while(|e| e.kind == "reg" || e.kind == "chunk")
            .map(|e| (e.chunk_offset, e.chunk_size, e.chunk_digest.clone()))
            .collect();
        (blob, chunks)
    }

    #[test]
    fn a_rehash_changes_only_the_chunks_that_hold_references() {
        // Two references close together (one region), one far, one at the very end.
        let len = 7_000_000;
        let at = [1_000_000, 1_000_400, 4_500_000, len - 54];
        let (_, a) = chunks_of(with_references(len, &at, b'a'));
        let (_, b) = chunks_of(with_references(len, &at, b'b'));
        let bounds = |c: &[(u64, u64, String)]| c.iter().map(|c| (c.0, c.1)).collect::<Vec<_>>();
        assert_eq!(bounds(&a), bounds(&b), "the same cuts whatever the hashes");
        let changed: Vec<_> = a.iter().zip(&b).filter(|(x, y)| x.2 != y.2).map(|(x, _)| (x.0, x.1)).collect();
        assert_eq!(changed.len(), 3, "one chunk per reference region: {changed:?}");
        for (&(offset, size), r) in changed.iter().zip([1_000_000u64, 4_500_000, len as u64 - 54]) {
            assert_eq!(offset, r, "a region starts where its reference does");
            assert!(size <= REF_SPAN + 400, "a region is small: {size}");
        }
        // A reference-free chunk ends where a region starts, or holds at least MIN_FREE bytes.
        let mut free = 0;
        for c in a.iter().filter(|c| !changed.contains(&(c.0, c.1))) {
            free += 1;
            assert!(c.1 >= MIN_FREE as u64 || changed.iter().any(|r| r.0 == c.0 + c.1), "{:?}", (c.0, c.1));
        }
        assert!(free >= 4, "{a:?}");
    }

    #[test]
    fn cuts_do_not_depend_on_how_the_content_arrives() {
        // References straddling every small piece size, at the start and at the end.
        let len = 1_200_000;
        let at = [0, 9, 70_003, 70_050, 600_001, len - 54];
        let data = with_references(len, &at, b'z');
        let (whole, chunks) = chunks_of(data.clone());
        assert!(chunks.len() >= 4, "{chunks:?}");
        for piece in [1, 5, 10, 11, 12, 4096, 65_537] {
            INLINE_PIECE.with(|p| p.set(piece));
            let (pieces, _) = chunks_of(data.clone());
            INLINE_PIECE.with(|p| p.set(usize::MAX));
            assert!(pieces == whole, "fed in pieces of {piece} bytes");
        }
    }

    #[test]
    fn small_files_are_one_chunk() {
        let data = with_references(SPLIT_MIN as usize - 1, &[10, 40_000], b'a');
        let (_, chunks) = chunks_of(data);
        assert_eq!(chunks.len(), 1);
    }
}
