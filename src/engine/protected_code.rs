//! Protected source trees recognised in request text by their fingerprints, never by their code.
//!
//! A security team lists crown-jewel trees (`[[protected_code]]`). At start-up every file of
//! them is fingerprinted with winnowing (Schleimer, Wilkerson and Aiken 2003, the algorithm of
//! MOSS) over k-grams of normalised tokens; a request's text is tokenised the same way and every
//! one of its k-grams looked up. A finding is a run of matched fingerprints of one file, in the
//! same order in the text as in the file, that covers at least `min_match_lines` code lines of
//! that file.
//!
//! Invariants:
//! - only hashes are kept, never code: per fingerprint a 64-bit k-gram hash, a file id and the
//!   code lines the k-gram covers; per file its relative path. `Debug` prints counts only;
//! - deterministic: FNV-1a, a polynomial rolling hash and fixed mixing constants, no random
//!   seed, and directories walked in name order, so the same trees and text give the same
//!   findings in every process and on every machine;
//! - query cost is linear in the text: one tokenising pass, one rolling-hash step and one
//!   lookup per token, at most [`MAX_PLACES_PER_HASH`] hits per k-gram, each extending one of
//!   a bounded set of runs; memory grows with the files matched, not with the text (whose
//!   tokens are never stored);
//! - never panics, whatever the text (empty, binary-looking, megabytes, unbalanced quotes and
//!   comments) or the files.
//!
//! Normalisation: whitespace and comments are dropped, so re-indented code with edited comments
//! still matches. Identifiers are kept verbatim, unlike MOSS (which replaces them to catch
//! students who rename): the question here is whether a copy of protected code is leaving, and
//! the identifiers are what tells one file's `for` loops from every other file's. Renaming every
//! identifier defeats the check; that is the price of not flagging same-shaped unrelated code.
//!
//! A "line's worth" is a *code line* of the protected file: a line holding at least one token.
//! Blank lines, comment blocks and license headers never count, so a long comment between two
//! matched statements cannot inflate a short excerpt into a finding, and the threshold means
//! what a reviewer expects ("ten lines of our code"). Every fingerprint records the first and
//! last code line its k-gram covers; a run counts the distinct code lines in their union.
//!
//! Fingerprints are the winnowed k-grams plus the k-grams that start or end a code line, each
//! recorded at every place its file holds it. Winnowing alone leaves the first and last few
//! tokens of a copy without a fingerprint, so a pasted 10-line excerpt measured 8 or 9 lines and
//! was found about half the time; with the line anchors a copy measures its length
//! (`bench/protected_code.rs`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

// The constants below were chosen with `bench/protected_code.rs` (serde_json, regex-syntax and
// tokio protected, 359 other crates as unrelated code); the figures are in its report.

/// Tokens per k-gram. 20 tokens is two to three lines of code: long enough that an idiom
/// (`#[inline] pub fn is_empty(&self) -> bool { self.len() == 0 }`) is not a k-gram of its own,
/// short enough that a line with an edited identifier costs only that line. 12 and 15 found
/// fewer 10-line excerpts and more shared boilerplate; 25 lost more edited excerpts.
const K: usize = 20;

/// Winnowing window, in k-grams: any `W + K - 1` shared tokens (four to five lines) keep a
/// fingerprint even where line breaks moved. The line anchors already cover pasted code, so a
/// wide window costs no recall: 8 gave the same results with 20 % more memory.
const W: usize = 16;

/// A k-gram hash found in more places than this (distinct file and code-line pairs) is
/// boilerplate of the protected tree (forwarding impls, cfg macros, test preambles) and not
/// evidence of one file. Skipping it also bounds the hits per query k-gram, which keeps a query
/// linear. 8 missed code that the tree repeats (10-line recall 94 % against 98.5 %); 32 found
/// 1 % more 10-line excerpts and more boilerplate that other crates share with the protected.
pub const MAX_PLACES_PER_HASH: usize = 16;

/// Consecutive matches of a run may skip this many code lines of the file: a line with an
/// edited token has no matching k-gram of its own, and its neighbours' anchors resume the run.
/// 0 lost a tenth of the 15-line excerpts with an edited line (88.5 % found against 97 %); 3
/// chained more of the forwarding impls that other crates share with the protected ones.
const MAX_FILE_GAP_LINES: u32 = 2;

/// Consecutive matches of a run may be this many tokens apart in the text: room for edited
/// tokens, an inserted line, or a comment that the request syntax did not recognise.
const MAX_TEXT_GAP_TOKENS: usize = 4 * K;

/// Open runs per file during a query: bounds the work on repetitive text against repetitive
/// files; a run pushed out is one of the shortest.
const MAX_OPEN_RUNS: usize = 32;

/// Larger files are not source code a person writes (generated tables, vendored bundles).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// A NUL byte in this prefix marks a file as binary.
const BINARY_SNIFF_BYTES: usize = 8 << 10;

/// Code-line numbers are packed into 24 bits; a file's code beyond that is not fingerprinted.
const MAX_CODE_LINE: u32 = (1 << 24) - 1;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// Odd multiplier of the rolling k-gram hash.
const ROLL_BASE: u64 = 0x9e37_79b9_7f4a_7c15;
/// `ROLL_BASE^(K-1)`: the weight of the token leaving the k-gram.
const ROLL_TOP: u64 = wrapping_pow(ROLL_BASE, K - 1);

const fn wrapping_pow(base: u64, exponent: usize) -> u64 {
    let mut result = 1u64;
    let mut i = 0;
    while i < exponent {
        result = result.wrapping_mul(base);
        i += 1;
    }
    result
}

/// Fingerprints of protected files: k-gram hashes sorted for lookup, with where they occur.
pub struct FingerprintIndex {
    /// Each file's path relative to its root, by file id.
    files: Vec<String>,
    bytes: u64,
    /// Sorted; `places[i]` is where `hashes[i]` occurs.
    hashes: Vec<u64>,
    places: Vec<Place>,
    /// `hashes[bucket_starts[b]..bucket_starts[b + 1]]` are the hashes whose top `bucket_bits`
    /// bits are `b`: one or two entries per bucket, so a lookup is two memory reads.
    bucket_starts: Vec<u32>,
    bucket_bits: u32,
    /// One bit per `hash & mask` (low bits; buckets use the high ones), about 16 bits per
    /// bucket: most k-grams of a text are in no protected file, and this small array, which
    /// stays in cache, turns them away before the two reads of a bucket lookup.
    filter: Vec<u64>,
    /// Fingerprints of files added since the last [`Self::freeze`]; empty outside `add_*`.
    pending: Vec<(u64, Place)>,
}

/// A protected file the text holds a copy of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeMatch {
    /// The path relative to the configured root it came from (its file name for a file root).
    pub file: String,
    /// Distinct code lines of the file covered by the best matching run.
    pub lines: usize,
}

#[derive(Debug, Clone, Default)]
pub struct IndexStats {
    pub files: usize,
    /// Bytes of protected text fingerprinted (read, then dropped).
    pub bytes: u64,
    pub fingerprints: usize,
    /// Heap and inline bytes the index holds.
    pub memory_bytes: usize,
}

/// Errors name paths only: the code itself never appears in a message.
#[derive(Debug, thiserror::Error)]
pub enum ProtectedCodeError {
    #[error("cannot read protected code {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("protected code path {path} holds no text file of at most 1 MiB")]
    NoFiles { path: PathBuf },
}

/// Where a fingerprint occurs: a file, and the code lines its k-gram covers, packed as the first
/// code line (24 bits) and the number of further code lines (8 bits; a k-gram of `K` tokens
/// covers at most `K` lines).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    file: u32,
    packed_lines: u32,
}

impl Place {
    fn new(file: u32, first_line: u32, last_line: u32) -> Self {
        let extra = last_line.saturating_sub(first_line).min(0xff);
        Place {
            file,
            packed_lines: (first_line.min(MAX_CODE_LINE) << 8) | extra,
        }
    }

    fn first_line(self) -> u32 {
        self.packed_lines >> 8
    }

    fn last_line(self) -> u32 {
        self.first_line() + (self.packed_lines & 0xff)
    }
}

impl std::fmt::Debug for FingerprintIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stats = self.stats();
        f.debug_struct("FingerprintIndex")
            .field("files", &stats.files)
            .field("bytes", &stats.bytes)
            .field("fingerprints", &stats.fingerprints)
            .field("memory_bytes", &stats.memory_bytes)
            .finish()
    }
}

impl Default for FingerprintIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl FingerprintIndex {
    pub fn new() -> Self {
        FingerprintIndex {
            files: Vec::new(),
            bytes: 0,
            hashes: Vec::new(),
            places: Vec::new(),
            bucket_starts: vec![0; 3],
            bucket_bits: 1,
            filter: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Fingerprint every regular file under each path (recursively; skip hidden dirs like .git,
    /// skip files > 1 MiB and binary files (NUL byte in the first 8 KiB), follow no symlinks).
    /// Relative names are relative to the path given (for a file path: its file name).
    ///
    /// A configured path itself is followed if it is a symlink: it was named on purpose. A path
    /// that yields no file is an error, so that a typo does not silently protect nothing. Files
    /// read before an error stay in the index.
    pub fn add_paths(&mut self, paths: &[PathBuf]) -> Result<(), ProtectedCodeError> {
        let result = paths.iter().try_for_each(|root| self.stage_root(root));
        self.freeze();
        result
    }

    /// Fingerprint one file's text under a relative name (for tests and for add_paths).
    /// The name's extension decides the comment syntax.
    pub fn add_file(&mut self, relative: &str, text: &str) {
        self.stage_file(relative, text);
        self.freeze();
    }

    pub fn stats(&self) -> IndexStats {
        let paths: usize = self.files.iter().map(String::capacity).sum();
        IndexStats {
            files: self.files.len(),
            bytes: self.bytes,
            fingerprints: self.hashes.len(),
            memory_bytes: std::mem::size_of::<Self>()
                + self.files.capacity() * std::mem::size_of::<String>()
                + paths
                + self.hashes.capacity() * std::mem::size_of::<u64>()
                + self.places.capacity() * std::mem::size_of::<Place>()
                + self.bucket_starts.capacity() * std::mem::size_of::<u32>()
                + self.filter.capacity() * std::mem::size_of::<u64>()
                + self.pending.capacity() * std::mem::size_of::<(u64, Place)>(),
        }
    }

    /// Every protected file the text contains at least `min_match_lines` lines' worth of, best
    /// first (ties by path). A `min_match_lines` of 0 is taken as 1.
    pub fn find(&self, text: &str, min_match_lines: usize) -> Vec<CodeMatch> {
        if self.hashes.is_empty() {
            return Vec::new();
        }
        // Runs are tracked while the text is read, so memory grows with the files hit, not with
        // the text.
        let mut runs: HashMap<u32, FileRuns> = HashMap::new();
        let mut roller = KGramRoller::new();
        let mut position = 0usize;
        tokenize(text.as_bytes(), Syntax::Mixed, |token, _line| {
            let Some(hash) = roller.push(token) else {
                return;
            };
            let places = self.places_of(hash);
            if places.len() <= MAX_PLACES_PER_HASH {
                for place in places {
                    runs.entry(place.file).or_default().add(Hit {
                        position,
                        first_line: place.first_line(),
                        last_line: place.last_line(),
                    });
                }
            }
            position += 1;
        });
        let threshold = min_match_lines.max(1);
        let mut found: Vec<CodeMatch> = runs
            .into_iter()
            .filter_map(|(file, runs)| {
                let lines = runs.best() as usize;
                let relative = self.files.get(file as usize)?;
                (lines >= threshold).then(|| CodeMatch {
                    file: relative.clone(),
                    lines,
                })
            })
            .collect();
        found.sort_by(|a, b| b.lines.cmp(&a.lines).then_with(|| a.file.cmp(&b.file)));
        found
    }

    fn stage_root(&mut self, root: &Path) -> Result<(), ProtectedCodeError> {
        let files_before = self.files.len();
        for (relative, path) in files_under(root)? {
            let read_error = |source| ProtectedCodeError::Read {
                path: path.clone(),
                source,
            };
            let size = fs::symlink_metadata(&path).map_err(read_error)?.len();
            if size > MAX_FILE_BYTES {
                continue;
            }
            let bytes = fs::read(&path).map_err(read_error)?;
            let sniffed = &bytes[..bytes.len().min(BINARY_SNIFF_BYTES)];
            if bytes.len() as u64 > MAX_FILE_BYTES || sniffed.contains(&0) {
                continue;
            }
            self.stage_file(&relative, &String::from_utf8_lossy(&bytes));
        }
        if self.files.len() == files_before {
            return Err(ProtectedCodeError::NoFiles {
                path: root.to_path_buf(),
            });
        }
        Ok(())
    }

    fn stage_file(&mut self, relative: &str, text: &str) {
        let Ok(file) = u32::try_from(self.files.len()) else {
            return;
        };
        let (kgram_hashes, code_lines) = file_kgrams(text, Syntax::for_file(relative));
        // Bucket offsets are u32: stop short of overflowing them (an index of some 60 GiB).
        let mut room =
            (u32::MAX as usize - 1).saturating_sub(self.hashes.len() + self.pending.len());
        let mut chosen = HashSet::new();
        winnow(&kgram_hashes, |_, hash| {
            chosen.insert(hash);
        });
        chosen.extend(line_anchors(&code_lines).filter_map(|start| kgram_hashes.get(start)));
        // A k-gram chosen anywhere in the file is recorded wherever the file has it: winnowing's
        // choice depends on the neighbouring tokens, and code the file repeats must count as
        // often as it occurs for `MAX_PLACES_PER_HASH` to recognise it.
        for (start, &hash) in kgram_hashes.iter().enumerate() {
            let (Some(&first), Some(&last)) =
                (code_lines.get(start), code_lines.get(start + K - 1))
            else {
                break;
            };
            if room == 0 || first > MAX_CODE_LINE {
                break;
            }
            if chosen.contains(&hash) {
                self.pending.push((hash, Place::new(file, first, last)));
                room -= 1;
            }
        }
        self.files.push(relative.to_owned());
        self.bytes = self.bytes.saturating_add(text.len() as u64);
    }

    /// Merges the pending fingerprints into the sorted index and rebuilds the buckets: one sort
    /// per `add_paths`, not one per file.
    fn freeze(&mut self) {
        let mut pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            return;
        }
        pending.sort_unstable();
        // The same k-gram twice on the same code lines of a file is one fingerprint.
        pending.dedup();
        let total = self.hashes.len() + pending.len();
        let mut hashes = Vec::with_capacity(total);
        let mut places = Vec::with_capacity(total);
        let mut old = self
            .hashes
            .iter()
            .copied()
            .zip(self.places.iter().copied())
            .peekable();
        let mut new = pending.into_iter().peekable();
        loop {
            let take_old = match (old.peek(), new.peek()) {
                (Some(a), Some(b)) => a <= b,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let next = if take_old { old.next() } else { new.next() };
            if let Some((hash, place)) = next {
                hashes.push(hash);
                places.push(place);
            }
        }
        self.hashes = hashes;
        self.places = places;
        self.rebuild_buckets();
    }

    fn rebuild_buckets(&mut self) {
        let count = self.hashes.len().max(2);
        // floor(log2(count)) bits: one to two fingerprints per bucket.
        let bits = (usize::BITS - 1 - count.leading_zeros()).clamp(1, 30);
        let buckets = 1usize << bits;
        let mut starts = Vec::with_capacity(buckets + 1);
        let mut next = 0usize;
        for bucket in 0..buckets {
            while self
                .hashes
                .get(next)
                .is_some_and(|&hash| bucket_of(hash, bits) < bucket)
            {
                next += 1;
            }
            starts.push(u32::try_from(next).unwrap_or(u32::MAX));
        }
        starts.push(u32::try_from(self.hashes.len()).unwrap_or(u32::MAX));
        self.bucket_starts = starts;
        self.bucket_bits = bits;
        let mut filter = vec![0u64; 1 << (bits + FILTER_BITS_PER_BUCKET_LOG2).saturating_sub(6)];
        for &hash in &self.hashes {
            let (word, bit) = filter_position(hash, filter.len());
            if let Some(slot) = filter.get_mut(word) {
                *slot |= bit;
            }
        }
        self.filter = filter;
    }

    fn places_of(&self, hash: u64) -> &[Place] {
        let (word, bit) = filter_position(hash, self.filter.len());
        if self.filter.get(word).is_none_or(|&bits| bits & bit == 0) {
            return &[];
        }
        let bucket = bucket_of(hash, self.bucket_bits);
        let (Some(&low), Some(&high)) = (
            self.bucket_starts.get(bucket),
            self.bucket_starts.get(bucket + 1),
        ) else {
            return &[];
        };
        let (low, high) = (low as usize, high as usize);
        let Some(candidates) = self.hashes.get(low..high) else {
            return &[];
        };
        let start = low + candidates.partition_point(|&h| h < hash);
        let end = low + candidates.partition_point(|&h| h <= hash);
        self.places.get(start..end).unwrap_or(&[])
    }

    /// Every byte the index owns, for the test that no code is kept.
    #[cfg(test)]
    fn owned_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for file in &self.files {
            bytes.extend_from_slice(file.as_bytes());
        }
        for hash in &self.hashes {
            bytes.extend_from_slice(&hash.to_le_bytes());
        }
        for place in &self.places {
            bytes.extend_from_slice(&place.file.to_le_bytes());
            bytes.extend_from_slice(&place.packed_lines.to_le_bytes());
        }
        for start in &self.bucket_starts {
            bytes.extend_from_slice(&start.to_le_bytes());
        }
        bytes
    }
}

fn bucket_of(hash: u64, bits: u32) -> usize {
    (hash >> (64 - bits)) as usize
}

/// 16 filter bits per bucket: one or two fingerprints per bucket set at most one in eight.
const FILTER_BITS_PER_BUCKET_LOG2: u32 = 4;

/// The word and bit of `hash` in a filter of `words` words (a power of two).
fn filter_position(hash: u64, words: usize) -> (usize, u64) {
    let word = (hash >> 6) as usize & words.wrapping_sub(1);
    (word, 1 << (hash & 63))
}

/// The regular files under `root` with their names relative to it ('/'-separated), in name
/// order; hidden directories and symlinks below the root are skipped.
fn files_under(root: &Path) -> Result<Vec<(String, PathBuf)>, ProtectedCodeError> {
    let read_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ProtectedCodeError::Read { path, source }
    };
    let metadata = fs::metadata(root).map_err(read_error(root))?;
    if metadata.is_file() {
        let name = root.file_name().map_or_else(
            || root.to_string_lossy().into_owned(),
            |name| name.to_string_lossy().into_owned(),
        );
        return Ok(vec![(name, root.to_path_buf())]);
    }
    let mut files: Vec<PathBuf> = Vec::new();
    if !metadata.is_dir() {
        return Ok(Vec::new());
    }
    let mut directories = vec![root.to_path_buf()];
    while let Some(directory) = directories.pop() {
        let entries = fs::read_dir(&directory).map_err(read_error(&directory))?;
        for entry in entries {
            let entry = entry.map_err(read_error(&directory))?;
            let path = entry.path();
            // `DirEntry::file_type` does not follow symlinks: a link is neither file nor dir.
            let file_type = entry.file_type().map_err(read_error(&path))?;
            if file_type.is_dir() {
                if !entry.file_name().to_string_lossy().starts_with('.') {
                    directories.push(path);
                }
            } else if file_type.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files
        .into_iter()
        .map(|path| {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let name = relative
                .components()
                .map(|part| part.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            (name, path)
        })
        .collect())
}

/// A hit: the k-gram at `position` of the text occurs in a file over these code lines.
struct Hit {
    position: usize,
    first_line: u32,
    last_line: u32,
}

/// A chain of hits in order in both the text and the file.
struct Run {
    last_position: usize,
    last_first_line: u32,
    covered_until: u32,
    covered: u32,
}

/// The runs of one file's hits, which arrive in text order.
///
/// Greedy: each hit extends the longest open run it may follow, or starts one. A true copy is a
/// single diagonal, so greed finds it; repeated code in the file opens one run per copy.
#[derive(Default)]
struct FileRuns {
    open: Vec<Run>,
    /// The most code lines a closed run covered.
    best_closed: u32,
}

impl FileRuns {
    fn add(&mut self, hit: Hit) {
        let best_closed = &mut self.best_closed;
        self.open.retain(|run| {
            let alive = hit.position.saturating_sub(run.last_position) <= MAX_TEXT_GAP_TOKENS;
            if !alive {
                *best_closed = (*best_closed).max(run.covered);
            }
            alive
        });
        let followed = self
            .open
            .iter_mut()
            .filter(|run| {
                run.last_position < hit.position
                    && hit.first_line >= run.last_first_line
                    && hit.first_line <= run.covered_until.saturating_add(1 + MAX_FILE_GAP_LINES)
            })
            .max_by_key(|run| run.covered);
        if let Some(run) = followed {
            let new_from = hit.first_line.max(run.covered_until.saturating_add(1));
            let new_lines = hit.last_line.saturating_add(1).saturating_sub(new_from);
            run.covered = run.covered.saturating_add(new_lines);
            run.covered_until = run.covered_until.max(hit.last_line);
            run.last_first_line = hit.first_line;
            run.last_position = hit.position;
            return;
        }
        if self.open.len() >= MAX_OPEN_RUNS {
            let shortest = (0..self.open.len()).min_by_key(|&i| self.open[i].covered);
            if let Some(shortest) = shortest {
                let evicted = self.open.swap_remove(shortest);
                self.best_closed = self.best_closed.max(evicted.covered);
            }
        }
        self.open.push(Run {
            last_position: hit.position,
            last_first_line: hit.first_line,
            covered_until: hit.last_line,
            covered: hit.last_line.saturating_sub(hit.first_line) + 1,
        });
    }

    /// The most code lines one run covers.
    fn best(&self) -> u32 {
        self.open
            .iter()
            .map(|run| run.covered)
            .fold(self.best_closed, u32::max)
    }
}

/// The hash of every k-gram of a protected file's text, and the code line (1-based, counting
/// only lines that hold tokens) of every token.
fn file_kgrams(text: &str, syntax: Syntax) -> (Vec<u64>, Vec<u32>) {
    let mut roller = KGramRoller::new();
    let mut kgram_hashes = Vec::new();
    let mut code_lines = Vec::new();
    let mut code_line = 0u32;
    let mut last_raw_line = 0u32;
    tokenize(text.as_bytes(), syntax, |token, raw_line| {
        if raw_line != last_raw_line {
            last_raw_line = raw_line;
            code_line = code_line.saturating_add(1);
        }
        code_lines.push(code_line);
        kgram_hashes.extend(roller.push(token));
    });
    (kgram_hashes, code_lines)
}

/// The k-grams that start a code line or end one (given each token's code line).
///
/// Winnowing alone keeps a fingerprint somewhere in every `W` k-grams, so a copy's first and
/// last few tokens are rarely covered and a 10-line copy measures 8 or 9 lines. These anchors
/// make the ends of a copy that starts and ends on line boundaries (as pasted code does) match
/// exactly, and they restart a run right after an edited line.
fn line_anchors(code_lines: &[u32]) -> impl Iterator<Item = usize> + '_ {
    let kgrams = (code_lines.len() + 1).saturating_sub(K);
    let line_of = |i: usize| code_lines.get(i).copied();
    (0..kgrams).filter(move |&start| {
        let end = start + K - 1;
        let starts_line = start == 0 || line_of(start) != line_of(start - 1);
        let ends_line = line_of(end) != line_of(end + 1);
        starts_line || ends_line
    })
}

/// Winnowing: the minimum hash of every window of `W` consecutive k-grams (the rightmost on
/// ties), each chosen position recorded once. Fewer than `W` k-grams form one window.
fn winnow(hashes: &[u64], mut record: impl FnMut(usize, u64)) {
    let window = W.min(hashes.len());
    if window == 0 {
        return;
    }
    // Increasing hashes from front to back; the front is the window's minimum.
    let mut minima: VecDeque<(usize, u64)> = VecDeque::with_capacity(window + 1);
    let mut last_recorded = None;
    for (position, &hash) in hashes.iter().enumerate() {
        while minima.back().is_some_and(|&(_, back)| back >= hash) {
            minima.pop_back();
        }
        minima.push_back((position, hash));
        while minima
            .front()
            .is_some_and(|&(front, _)| front + window <= position)
        {
            minima.pop_front();
        }
        if position + 1 >= window {
            if let Some(&(chosen, chosen_hash)) = minima.front() {
                if last_recorded != Some(chosen) {
                    record(chosen, chosen_hash);
                    last_recorded = Some(chosen);
                }
            }
        }
    }
}

/// The hash of the last `K` tokens, updated in constant time per token.
struct KGramRoller {
    ring: [u64; K],
    next_slot: usize,
    full: bool,
    rolling: u64,
}

impl KGramRoller {
    fn new() -> Self {
        KGramRoller {
            ring: [0; K],
            next_slot: 0,
            full: false,
            rolling: 0,
        }
    }

    /// Adds a token; the k-gram hash once `K` tokens have been seen.
    fn push(&mut self, token: u64) -> Option<u64> {
        let slot = &mut self.ring[self.next_slot];
        if self.full {
            self.rolling = self.rolling.wrapping_sub(slot.wrapping_mul(ROLL_TOP));
        }
        *slot = token;
        self.rolling = self.rolling.wrapping_mul(ROLL_BASE).wrapping_add(token);
        self.next_slot += 1;
        if self.next_slot == K {
            self.next_slot = 0;
            self.full = true;
        }
        self.full.then(|| mix(self.rolling))
    }
}

/// MurmurHash3's finaliser: the rolling hash is linear, and winnowing needs minima spread
/// evenly.
fn mix(mut hash: u64) -> u64 {
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

/// Which comments a text has.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Syntax {
    /// `//` and `/* */` comments; `#` is code (`#include`, `#[derive]`).
    CFamily,
    /// `#` comments (Python, shell, Ruby, YAML); `//` is code (Python's floor division).
    Hash,
    /// Request text and files of unknown kind, where the language is unknown: `//` comments,
    /// `/* */` only where a comment can start (not the `/*` of `src/*`), and `#` only as
    /// Python and shell write comments, after whitespace and before a space (not `#include`,
    /// `#[derive]`, `$#` or `r#"`).
    Mixed,
}

impl Syntax {
    fn for_file(relative: &str) -> Syntax {
        let name = relative.rsplit('/').next().unwrap_or(relative);
        let by_name = [
            "Makefile",
            "makefile",
            "GNUmakefile",
            "Dockerfile",
            "Rakefile",
            "Gemfile",
            "Vagrantfile",
            "CMakeLists.txt",
            "BUILD",
            "WORKSPACE",
        ];
        if by_name.contains(&name) || (name.starts_with('.') && name.ends_with("rc")) {
            return Syntax::Hash;
        }
        let Some((_, extension)) = name.rsplit_once('.') else {
            return Syntax::Mixed;
        };
        match extension.to_ascii_lowercase().as_str() {
            "c" | "h" | "cc" | "cpp" | "cxx" | "c++" | "hpp" | "hh" | "hxx" | "ino" | "cu"
            | "cuh" | "m" | "mm" | "rs" | "go" | "java" | "kt" | "kts" | "scala" | "sc"
            | "groovy" | "gradle" | "js" | "jsx" | "mjs" | "cjs" | "ts" | "tsx" | "mts" | "cts"
            | "cs" | "swift" | "dart" | "zig" | "sol" | "proto" | "css" | "scss" | "less"
            | "hx" | "d" | "jsonc" | "json5" | "glsl" | "hlsl" | "wgsl" | "vert" | "frag" => {
                Syntax::CFamily
            }
            "py" | "pyw" | "pyi" | "pyx" | "sh" | "bash" | "zsh" | "ksh" | "fish" | "rb"
            | "rake" | "gemspec" | "pl" | "pm" | "r" | "jl" | "nim" | "cr" | "ex" | "exs"
            | "coffee" | "tcl" | "awk" | "cmake" | "mk" | "yaml" | "yml" | "toml" | "ini"
            | "cfg" | "conf" | "tf" | "hcl" | "ps1" | "psm1" | "bzl" | "star" => Syntax::Hash,
            _ => Syntax::Mixed,
        }
    }
}

/// Calls `emit(token hash, 1-based line)` for every token of `text`: identifiers and keywords
/// verbatim, numbers, string literals whole, and each other punctuation byte; whitespace and
/// comments dropped.
///
/// Strings end at the end of their line, and an unterminated quote is a token of its own, so a
/// stray apostrophe in prose or a lifetime (`'a`) swallows nothing and the tokens of a line
/// never depend on the lines before it (block comments aside). The text and the protected
/// files are tokenised alike, so such approximations cost nothing.
fn tokenize(text: &[u8], syntax: Syntax, mut emit: impl FnMut(u64, u32)) {
    let mut line = 1u32;
    let mut i = 0;
    while let Some(&byte) = text.get(i) {
        let next = text.get(i + 1).copied();
        match byte {
            b'\n' => {
                line = line.saturating_add(1);
                i += 1;
            }
            0..=b' ' | 0x7f => i += 1,
            b'/' if next == Some(b'/') && syntax != Syntax::Hash => i = line_end(text, i),
            b'/' if next == Some(b'*') && opens_block_comment(text, i, syntax) => {
                match find_block_comment_end(text, i + 2) {
                    Some(end) => {
                        line = line.saturating_add(count_newlines(&text[i..end]));
                        i = end;
                    }
                    None => i = text.len(),
                }
            }
            b'#' if is_hash_comment(text, i, syntax) => i = line_end(text, i),
            b'"' | b'\'' | b'`' => {
                let end = string_end(text, i);
                emit(fnv1a(&text[i..end]), line);
                i = end;
            }
            b'0'..=b'9' => {
                let mut end = i + 1;
                while let Some(&b) = text.get(end) {
                    let decimal_point =
                        b == b'.' && text.get(end + 1).is_some_and(u8::is_ascii_digit);
                    if !(is_identifier_byte(b) || decimal_point) {
                        break;
                    }
                    end += 1;
                }
                emit(fnv1a(&text[i..end]), line);
                i = end;
            }
            _ if is_identifier_byte(byte) => {
                // Hashed while scanned: identifiers are most of the bytes of code.
                let mut hash = FNV_OFFSET;
                let mut end = i;
                while let Some(&b) = text.get(end).filter(|&&b| is_identifier_byte(b)) {
                    hash = (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME);
                    end += 1;
                }
                emit(hash, line);
                i = end;
            }
            _ => {
                emit(fnv1a(&text[i..i + 1]), line);
                i += 1;
            }
        }
    }
}

/// Letters, digits, `_`, `$` (JavaScript, PHP and shell names) and any non-ASCII byte, so that
/// identifiers in any script stay whole.
fn is_identifier_byte(byte: u8) -> bool {
    IDENTIFIER_BYTES[usize::from(byte)]
}

const IDENTIFIER_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
        byte += 1;
    }
    table
};

/// The index of the `\n` ending the line at `i`, or the end of the text.
fn line_end(text: &[u8], i: usize) -> usize {
    text.get(i..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        .map_or(text.len(), |offset| i + offset)
}

fn count_newlines(bytes: &[u8]) -> u32 {
    let count = bytes.iter().filter(|&&b| b == b'\n').count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// The index just past the `*/` closing a comment whose body starts at `from`.
fn find_block_comment_end(text: &[u8], from: usize) -> Option<usize> {
    let body = text.get(from..)?;
    body.windows(2)
        .position(|pair| pair == b"*/")
        .map(|offset| from + offset + 2)
}

fn opens_block_comment(text: &[u8], i: usize, syntax: Syntax) -> bool {
    match syntax {
        Syntax::CFamily => true,
        Syntax::Hash => false,
        Syntax::Mixed => match i.checked_sub(1).and_then(|before| text.get(before)) {
            None => true,
            Some(&before) => before.is_ascii_whitespace() || b"(){}[];,=".contains(&before),
        },
    }
}

fn is_hash_comment(text: &[u8], i: usize, syntax: Syntax) -> bool {
    let before = i
        .checked_sub(1)
        .and_then(|before| text.get(before))
        .copied();
    match syntax {
        Syntax::CFamily => false,
        // `$#` and `${#name}` are shell expansions.
        Syntax::Hash => !matches!(before, Some(b'$' | b'{')),
        Syntax::Mixed => {
            let after_space = before.is_none_or(|b| b.is_ascii_whitespace());
            let after = text.get(i + 1).copied();
            let shebang = after == Some(b'!') && text.get(i + 2) == Some(&b'/');
            after_space && (after.is_none_or(|b| b.is_ascii_whitespace()) || shebang)
        }
    }
}

/// The index just past the string literal opening at `i`: its closing quote on the same line,
/// or just the quote itself if the line has none.
fn string_end(text: &[u8], i: usize) -> usize {
    let Some(&quote) = text.get(i) else {
        return text.len();
    };
    let mut j = i + 1;
    while let Some(&byte) = text.get(j) {
        match byte {
            b'\n' => break,
            b'\\' => {
                if matches!(text.get(j + 1), None | Some(b'\n')) {
                    break;
                }
                j += 2;
            }
            _ if byte == quote => return j + 1,
            _ => j += 1,
        }
    }
    i + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protected Rust file with distinctive names, 40 code lines.
    const LEDGER_RS: &str = r#"//! Settlement ledger for the clearing house.
use std::collections::BTreeMap;

/// Netting of open positions between counterparties.
pub struct SettlementLedger {
    positions: BTreeMap<(u32, u32), i64>,
    zanzibar_quokka_total: i64,
}

impl SettlementLedger {
    pub fn record_trade(&mut self, buyer: u32, seller: u32, amount_cents: i64) {
        // Both legs move together so the ledger always nets to zero.
        *self.positions.entry((buyer, seller)).or_insert(0) += amount_cents;
        *self.positions.entry((seller, buyer)).or_insert(0) -= amount_cents;
        self.zanzibar_quokka_total += amount_cents.abs();
    }

    pub fn net_exposure(&self, party: u32) -> i64 {
        self.positions
            .iter()
            .filter(|((from, _), _)| *from == party)
            .map(|(_, cents)| *cents)
            .sum()
    }

    pub fn settle_cycle(&mut self, threshold_cents: i64) -> Vec<(u32, u32, i64)> {
        let mut transfers = Vec::new();
        for (&(from, to), &cents) in self.positions.iter() {
            if from < to && cents.abs() >= threshold_cents {
                transfers.push((from, to, cents));
            }
        }
        for (from, to, cents) in &transfers {
            self.positions.insert((*from, *to), 0);
            self.positions.insert((*to, *from), 0);
            self.zanzibar_quokka_total -= cents.abs();
        }
        transfers
    }

    pub fn gross_volume(&self) -> i64 {
        self.zanzibar_quokka_total
    }
}
"#;

    /// A second protected file in another language.
    const RISK_PY: &str = r#"# Risk limits for the desk.
import math


class DeskRiskLimits:
    """Per-desk value-at-risk limits."""

    def __init__(self, desk_code, var_limit_usd, stress_multiplier=3.5):
        self.desk_code = desk_code
        self.var_limit_usd = var_limit_usd
        self.stress_multiplier = stress_multiplier  # set by the risk committee
        self.breaches = []

    def parametric_var(self, exposures, volatilities, confidence_z=2.33):
        variance = 0.0
        for exposure, vol in zip(exposures, volatilities):
            variance += (exposure * vol) ** 2
        return confidence_z * math.sqrt(variance)

    def check_limits(self, exposures, volatilities):
        var_usd = self.parametric_var(exposures, volatilities)
        stressed_usd = var_usd * self.stress_multiplier
        if stressed_usd > self.var_limit_usd:
            self.breaches.append((self.desk_code, stressed_usd))
            return False
        return True

    def breach_report(self):
        lines = []
        for desk_code, stressed_usd in self.breaches:
            lines.append(f"{desk_code}: stressed VaR {stressed_usd:,.0f} USD")
        return "\n".join(lines)
"#;

    /// Unrelated Rust code of the same shape and vocabulary class.
    const UNRELATED_RS: &str = r#"use std::collections::HashMap;

pub struct WordCounter {
    counts: HashMap<String, usize>,
    total_words: usize,
}

impl WordCounter {
    pub fn add_text(&mut self, text: &str) {
        for word in text.split_whitespace() {
            *self.counts.entry(word.to_lowercase()).or_insert(0) += 1;
            self.total_words += 1;
        }
    }

    pub fn most_common(&self, limit: usize) -> Vec<(String, usize)> {
        let mut pairs: Vec<(String, usize)> =
            self.counts.iter().map(|(w, c)| (w.clone(), *c)).collect();
        pairs.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        pairs.truncate(limit);
        pairs
    }

    pub fn frequency(&self, word: &str) -> f64 {
        let count = self.counts.get(word).copied().unwrap_or(0);
        if self.total_words == 0 {
            return 0.0;
        }
        count as f64 / self.total_words as f64
    }
}
"#;

    fn index_of(files: &[(&str, &str)]) -> FingerprintIndex {
        let mut index = FingerprintIndex::new();
        for (name, text) in files {
            index.add_file(name, text);
        }
        index
    }

    /// Lines `from..=to` (1-based) of `text`.
    fn excerpt(text: &str, from: usize, to: usize) -> String {
        text.lines()
            .skip(from - 1)
            .take(to + 1 - from)
            .map(|line| format!("{line}\n"))
            .collect()
    }

    /// Four-space indents become tabs; `//` comments are dropped or reworded.
    fn reindent_and_edit_comments(code: &str) -> String {
        let mut out = String::new();
        for (n, line) in code.lines().enumerate() {
            let body = line.trim_start_matches(' ');
            let depth = (line.len() - body.len()) / 4;
            let (code_part, comment) = match body.find("//") {
                Some(at) => (&body[..at], true),
                None => (body, false),
            };
            if comment && code_part.trim().is_empty() {
                if n % 2 == 0 {
                    continue;
                }
                out.push_str(&"\t".repeat(depth));
                out.push_str("// reviewed, keep in sync with the spec\n");
                continue;
            }
            out.push_str(&"\t".repeat(depth));
            out.push_str(code_part.trim_end());
            out.push('\n');
        }
        out
    }

    #[test]
    fn a_reindented_excerpt_with_edited_comments_is_found() {
        let index = index_of(&[("ledger/settlement.rs", LEDGER_RS)]);
        // Fifteen lines, twelve of them code.
        let copied = reindent_and_edit_comments(&excerpt(LEDGER_RS, 11, 25));
        assert!(copied.contains('\t') && !copied.contains("nets to zero"));
        let found = index.find(&copied, 10);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].file, "ledger/settlement.rs");
        assert_eq!(found[0].lines, 12, "{found:?}");
    }

    #[test]
    fn an_excerpt_in_a_fenced_block_inside_prose_is_found() {
        let index = index_of(&[("ledger/settlement.rs", LEDGER_RS)]);
        let text = format!(
            "Why does this fail when the threshold is zero? It's from our repo:\n\n\
             ```rust\n{}```\n\nI'd like a fix that doesn't change the API.\n",
            excerpt(LEDGER_RS, 26, 40)
        );
        let found = index.find(&text, 10);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].file, "ledger/settlement.rs");
    }

    #[test]
    fn a_python_excerpt_is_found_despite_changed_comments() {
        let index = index_of(&[("desk/risk.py", RISK_PY)]);
        let copied = excerpt(RISK_PY, 8, 26)
            .replace("  # set by the risk committee", "")
            .replace("    ", "  ")
            .replace("import math", "# from the old module\nimport math");
        let found = index.find(&copied, 10);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].file, "desk/risk.py");
    }

    #[test]
    fn an_edited_line_does_not_split_the_run() {
        let index = index_of(&[("ledger/settlement.rs", LEDGER_RS)]);
        let original = excerpt(LEDGER_RS, 11, 40);
        let whole = index.find(&original, 10);
        let edited = original.replace("let mut transfers = Vec::new();", "let mut out = vec![];");
        assert_ne!(edited, original);
        let found = index.find(&edited, 10);
        assert_eq!(found.len(), 1, "{found:?}");
        // The edited line is lost, the run around it is one.
        assert_eq!(found[0].lines + 1, whole[0].lines, "{found:?} {whole:?}");
    }

    #[test]
    fn a_long_copy_counts_even_when_a_short_one_follows_far_below() {
        let index = index_of(&[("ledger/settlement.rs", LEDGER_RS)]);
        let long = excerpt(LEDGER_RS, 26, 40);
        let alone = index.find(&long, 10);
        let text = format!(
            "{long}\n{}\n{}",
            "Unrelated discussion of the release plan. ".repeat(100),
            excerpt(LEDGER_RS, 13, 15)
        );
        assert_eq!(index.find(&text, 10), alone);
        assert_eq!(alone.len(), 1, "{alone:?}");
    }

    #[test]
    fn fragments_far_apart_in_the_text_do_not_chain() {
        let index = index_of(&[("ledger/settlement.rs", LEDGER_RS)]);
        let prose = "Unrelated discussion of the release plan. ".repeat(20);
        let text = format!(
            "{}\n{prose}\n{}",
            excerpt(LEDGER_RS, 11, 16),
            excerpt(LEDGER_RS, 17, 24)
        );
        assert_eq!(index.find(&text, 10), vec![]);
        // Adjacent, the same fragments are one copy.
        let adjacent = format!(
            "{}{}",
            excerpt(LEDGER_RS, 11, 16),
            excerpt(LEDGER_RS, 17, 24)
        );
        assert_eq!(index.find(&adjacent, 10).len(), 1);
    }

    #[test]
    fn three_lines_are_not_a_finding() {
        let index = index_of(&[("ledger/settlement.rs", LEDGER_RS)]);
        assert_eq!(index.find(&excerpt(LEDGER_RS, 13, 15), 10), vec![]);
        // The same three lines do match at a threshold they reach: the check is not vacuous.
        assert!(!index.find(&excerpt(LEDGER_RS, 13, 15), 2).is_empty());
    }

    #[test]
    fn unrelated_code_of_the_same_language_is_not_a_finding() {
        let index = index_of(&[
            ("ledger/settlement.rs", LEDGER_RS),
            ("desk/risk.py", RISK_PY),
        ]);
        assert_eq!(index.find(UNRELATED_RS, 10), vec![]);
        assert_eq!(index.find(UNRELATED_RS, 1), vec![]);
    }

    #[test]
    fn common_idioms_repeated_many_times_are_not_a_finding() {
        let go_file: String = (0..40)
            .map(|i| format!("\tv{i}, err := step{i}(ctx)\n\tif err != nil {{ return err }}\n"))
            .collect();
        let python_file: String = (0..40)
            .map(|i| format!("for i in range(n):\n    total_{i} += values[i]\n"))
            .collect();
        let index = index_of(&[("svc/steps.go", &go_file), ("calc/sums.py", &python_file)]);
        let idioms = [
            "if err != nil { return err }\n".repeat(60),
            "for i in range(n):\n    pass\n".repeat(60),
            "}\n".repeat(200),
            "// Copyright 2024 The Authors. Licensed under the Apache License 2.0.\n".repeat(30),
        ];
        for idiom in &idioms {
            assert_eq!(index.find(idiom, 10), vec![], "{idiom:.40}");
        }
    }

    #[test]
    fn boilerplate_the_protected_tree_repeats_is_not_evidence() {
        const BOILERPLATE: &str = "\tresp, err := client.Do(req)\n\tif err != nil {\n\t\t\
            return nil, fmt.Errorf(\"request failed: %w\", err)\n\t}\n\tdefer resp.Body.Close()\n";
        let handlers: String = (0..MAX_PLACES_PER_HASH + 4)
            .map(|i| format!("func handler{i}(req *http.Request) (*Reply{i}, error) {{\n{BOILERPLATE}\treturn decode{i}(resp)\n}}\n\n"))
            .collect();
        let index = index_of(&[("api/handlers.go", &handlers)]);
        assert_eq!(index.find(BOILERPLATE, 3), vec![]);
        // The same lines in a tree that holds them once are evidence.
        let once =
            format!("func fetch(req *http.Request) error {{\n{BOILERPLATE}\treturn nil\n}}\n");
        let index = index_of(&[("api/fetch.go", &once)]);
        let found = index.find(BOILERPLATE, 3);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].file, "api/fetch.go");
    }

    #[test]
    fn license_headers_are_not_code() {
        let header = "/*\n * Copyright 2024 Example Corp.\n *\n * Licensed under the Apache \
                      License, Version 2.0.\n */\n"
            .repeat(4);
        let index = index_of(&[("ledger/header.rs", &format!("{header}{LEDGER_RS}"))]);
        assert_eq!(index.find(&header, 1), vec![]);
        assert_eq!(index.find(&header.replace("/*", "#"), 1), vec![]);
    }

    #[test]
    fn two_protected_files_the_finding_names_the_right_one() {
        let index = index_of(&[
            ("ledger/settlement.rs", LEDGER_RS),
            ("desk/risk.py", RISK_PY),
        ]);
        let found = index.find(&excerpt(RISK_PY, 8, 33), 10);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].file, "desk/risk.py");
        let found = index.find(&excerpt(LEDGER_RS, 10, 40), 10);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].file, "ledger/settlement.rs");
    }

    #[test]
    fn renaming_every_identifier_defeats_the_match() {
        let index = index_of(&[("ledger/settlement.rs", LEDGER_RS)]);
        let original = excerpt(LEDGER_RS, 11, 40);
        assert!(!index.find(&original, 10).is_empty());
        let renames = [
            ("record_trade", "add_deal"),
            ("buyer", "left"),
            ("seller", "right"),
            ("amount_cents", "value"),
            ("positions", "book"),
            ("zanzibar_quokka_total", "volume"),
            ("net_exposure", "exposure_of"),
            ("party", "who"),
            ("from", "src"),
            ("cents", "amt"),
            ("settle_cycle", "run_cycle"),
            ("threshold_cents", "limit"),
            ("transfers", "moves"),
            ("to", "dst"),
            ("gross_volume", "volume_total"),
            ("entry", "slot"),
            ("or_insert", "or_put"),
            ("insert", "put"),
            ("abs", "magnitude"),
            ("push", "add"),
            ("iter", "each"),
            ("filter", "keep"),
            ("map", "apply"),
            ("sum", "total"),
        ];
        let renamed = renames
            .iter()
            .fold(original, |code, (from, to)| replace_word(&code, from, to));
        assert_eq!(index.find(&renamed, 10), vec![]);
    }

    /// Replaces whole identifiers only.
    fn replace_word(code: &str, from: &str, to: &str) -> String {
        let mut out = String::new();
        let mut word = String::new();
        for c in code.chars().chain(std::iter::once('\n')) {
            if c.is_alphanumeric() || c == '_' {
                word.push(c);
                continue;
            }
            out.push_str(if word == from { to } else { &word });
            word.clear();
            out.push(c);
        }
        out.pop();
        out
    }

    #[test]
    fn odd_input_never_panics() {
        let mut index = index_of(&[("ledger/settlement.rs", LEDGER_RS)]);
        let binary: Vec<u8> = (0..=255u8).cycle().take(64 << 10).collect();
        let binary = String::from_utf8_lossy(&binary).into_owned();
        let odd = [
            "",
            " ",
            "\n\n\t \r\n",
            "\0\0\0",
            "'",
            "\"\\",
            "`",
            "/*",
            "/* unterminated\n\n",
            "#",
            "#!",
            "a\\",
            "'\\\n'",
            "ß∂ƒ©˙∆˚¬…æ 日本語 🦀🦀🦀",
            binary.as_str(),
        ];
        for text in odd {
            assert_eq!(index.find(text, 10), vec![]);
            assert_eq!(index.find(text, 0), vec![]);
            index.add_file("odd.txt", text);
            index.add_file("odd.py", text);
            index.add_file("odd.rs", text);
            index.add_file("", text);
        }
        assert_eq!(index.stats().files, 1 + 4 * odd.len());
        let empty = FingerprintIndex::new();
        assert_eq!(empty.find(LEDGER_RS, 10), vec![]);
        assert_eq!(empty.stats().fingerprints, 0);
        // Text of only digits, only punctuation, one enormous token.
        for text in [
            "1".repeat(100_000),
            "{".repeat(100_000),
            "a".repeat(100_000),
        ] {
            assert_eq!(index.find(&text, 10), vec![]);
        }
    }

    #[test]
    fn add_paths_names_nested_files_relative_to_the_root_and_skips_hidden_dirs() {
        let root =
            std::env::temp_dir().join(format!("streammask-protected-code-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("core/ledger")).unwrap();
        fs::create_dir_all(root.join(".git/objects")).unwrap();
        fs::write(root.join("core/ledger/settlement.rs"), LEDGER_RS).unwrap();
        fs::write(root.join(".git/objects/settlement.rs"), LEDGER_RS).unwrap();
        let mut binary = LEDGER_RS.as_bytes().to_vec();
        binary.insert(10, 0);
        fs::write(root.join("core/blob.rs"), &binary).unwrap();
        let big = LEDGER_RS.repeat((MAX_FILE_BYTES as usize / LEDGER_RS.len()) + 1);
        fs::write(root.join("core/generated.rs"), big).unwrap();
        fs::write(root.join("risk.py"), RISK_PY).unwrap();

        let mut index = FingerprintIndex::new();
        index.add_paths(std::slice::from_ref(&root)).unwrap();
        assert_eq!(index.stats().files, 2, "{index:?}");
        let found = index.find(&excerpt(LEDGER_RS, 10, 40), 10);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].file, "core/ledger/settlement.rs");

        // A file root is named by its file name.
        let mut single = FingerprintIndex::new();
        single.add_paths(&[root.join("risk.py")]).unwrap();
        let found = single.find(&excerpt(RISK_PY, 8, 33), 10);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].file, "risk.py");

        let missing = root.join("no-such-dir");
        let error = FingerprintIndex::new().add_paths(&[missing]).unwrap_err();
        assert!(matches!(error, ProtectedCodeError::Read { .. }), "{error}");
        assert!(error.to_string().contains("no-such-dir"), "{error}");
        // Hidden, binary and oversized files only: nothing to protect is a misconfiguration.
        fs::create_dir_all(root.join("nothing/.git")).unwrap();
        fs::write(root.join("nothing/.git/settlement.rs"), LEDGER_RS).unwrap();
        fs::write(root.join("nothing/blob.rs"), &binary).unwrap();
        let error = FingerprintIndex::new()
            .add_paths(&[root.join("nothing")])
            .unwrap_err();
        assert!(
            matches!(error, ProtectedCodeError::NoFiles { .. }),
            "{error}"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn add_paths_follows_no_symlink_below_the_root() {
        let root = std::env::temp_dir().join(format!(
            "streammask-protected-code-links-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("tree")).unwrap();
        fs::create_dir_all(root.join("elsewhere")).unwrap();
        fs::write(root.join("elsewhere/settlement.rs"), LEDGER_RS).unwrap();
        fs::write(root.join("tree/risk.py"), RISK_PY).unwrap();
        std::os::unix::fs::symlink(root.join("elsewhere"), root.join("tree/linked")).unwrap();
        std::os::unix::fs::symlink(
            root.join("elsewhere/settlement.rs"),
            root.join("tree/settlement.rs"),
        )
        .unwrap();
        let mut index = FingerprintIndex::new();
        index.add_paths(&[root.join("tree")]).unwrap();
        assert_eq!(index.stats().files, 1);
        assert_eq!(index.find(&excerpt(LEDGER_RS, 10, 40), 10), vec![]);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_index_holds_no_code() {
        let index = index_of(&[
            ("ledger/settlement.rs", LEDGER_RS),
            ("desk/risk.py", RISK_PY),
        ]);
        let debug = format!("{index:?}");
        let owned = index.owned_bytes();
        for distinctive in [
            "zanzibar_quokka_total",
            "DeskRiskLimits",
            "stress_multiplier",
        ] {
            assert!(!debug.contains(distinctive), "{debug}");
            let needle = distinctive.as_bytes();
            assert!(
                !owned.windows(needle.len()).any(|window| window == needle),
                "{distinctive} is in the index"
            );
        }
        assert!(debug.contains("fingerprints"), "{debug}");
        // Not vacuous: the bytes examined do include the file names.
        let needle = b"ledger/settlement.rs";
        assert!(owned.windows(needle.len()).any(|window| window == needle));
        assert!(index.stats().fingerprints > 0);
    }

    #[test]
    fn identical_inputs_give_identical_indexes_and_findings() {
        let a = index_of(&[("a.rs", LEDGER_RS), ("b.py", RISK_PY)]);
        let b = index_of(&[("a.rs", LEDGER_RS), ("b.py", RISK_PY)]);
        assert_eq!(a.owned_bytes(), b.owned_bytes());
        let text = format!("{LEDGER_RS}\n{RISK_PY}");
        assert_eq!(a.find(&text, 10), b.find(&text, 10));
        assert_eq!(a.find(&text, 10).len(), 2);
    }

    #[test]
    fn winnowing_keeps_a_fingerprint_in_every_window() {
        let hashes: Vec<u64> = (0..500u64).map(|i| mix(i * 7919)).collect();
        let mut chosen = Vec::new();
        winnow(&hashes, |position, hash| {
            assert_eq!(hashes[position], hash);
            chosen.push(position);
        });
        assert!(chosen.windows(2).all(|pair| pair[0] < pair[1]));
        for start in 0..=hashes.len() - W {
            assert!(chosen.iter().any(|&p| (start..start + W).contains(&p)));
        }
        // Density close to 2 / (W + 1).
        let density = chosen.len() as f64 / hashes.len() as f64;
        assert!((density - 2.0 / (W as f64 + 1.0)).abs() < 0.08, "{density}");
    }

    #[test]
    fn comments_and_whitespace_do_not_change_tokens() {
        let tokens = |text: &str, syntax| {
            let mut all = Vec::new();
            tokenize(text.as_bytes(), syntax, |token, _| all.push(token));
            all
        };
        let plain = tokens("let x = f(\"a // b\", 'c');", Syntax::Mixed);
        assert_eq!(plain.len(), 10);
        let noisy = "let   x = /* why */ f(\n\t\"a // b\", // note\n 'c');  # trailing";
        assert_eq!(tokens(noisy, Syntax::Mixed), plain);
        assert_eq!(tokens(noisy, Syntax::CFamily)[..10], plain[..]);
        // Python's `//` is division and `#` a comment anywhere in a .py file.
        assert_eq!(tokens("a // b # c", Syntax::Hash).len(), 4);
        // Not comments in request text: `#include`, `#[derive]`, globs.
        assert_eq!(tokens("#include <x>", Syntax::Mixed).len(), 5);
        assert_eq!(tokens("#[derive(Debug)]", Syntax::Mixed).len(), 7);
        assert_eq!(tokens("ls src/*.rs */", Syntax::Mixed).len(), 8);
    }
}
