//! Keyword-gated rules: Hyperscan finds the key word, a forward automaton finds the ends.
//!
//! The assignment grammar (`ADAFRUIT_TOKEN = "…"`, `apiKey: '…'`, `GetEnv("api_token", "…")`)
//! accepts any key name around a key word and a dozen separator forms. Run whole inside
//! Hyperscan, every key word of a text (prose and code say `token` every few hundred bytes)
//! starts the grammar's automata, and the pack's grammar rules cost ~40 % of its scan. A rule
//! with a [`Rule::keyword`](crate::engine::rules::Rule::keyword) has Hyperscan report only the
//! key word; from where it ends, the rule's `after_keyword` runs as an anchored lazy DFA and
//! reports every offset where a match of `keyword · after_keyword` ends. Those ends are the
//! rule's candidates, exactly the ends Hyperscan would report for that expression, so the
//! rule's pattern still decides where a match starts and what it is.
//!
//! Rules with the same key word (a quoted and an unquoted rule) form one [`KeywordGroup`]:
//! Hyperscan reports the key word once (under the first member's id), and one automaton of
//! every member's `after_keyword` walks from it once, telling the members' ends apart.
//!
//! Invariants:
//! - an end is reported once the byte after it (or the end of the data) is known, or earlier
//!   when no byte that may follow can change it: in a stream, in the same scan call in which
//!   Hyperscan would report it;
//! - block and stream scans report the same ends for any chunking: a stream keeps the bytes
//!   from the oldest key word whose walk is still alive (at most the longest expression, plus
//!   the chunk) and walks again from it as bytes arrive, reporting only new ends;
//! - only active members' ends are reported; the matcher hands them out in end order among the
//!   other rules' reports (others first at equal ends), each `(rule, end)` once ([`Ends`]);
//! - an automaton that cannot be built or run (its cache exhausted) reports every offset a
//!   match could end at, for every member: the rules' patterns then sort them out (fail closed);
//! - a walk is cut short without the automaton only where the automaton would die on the same
//!   first byte or two ([`Openings`], computed from the automaton itself under every byte that
//!   may come before; when that computation cannot finish, nothing is cut short).

use crate::engine::matcher::Candidate;
use regex_automata::{
    hybrid::{
        dfa::{Cache, DFA},
        LazyStateID,
    },
    nfa::thompson,
    util::{pool::Pool, start, syntax},
    Anchored, MatchKind,
};
use std::{cmp::Reverse, collections::BinaryHeap, sync::OnceLock};

type CacheFactory =
    Box<dyn Fn() -> Cache + Send + Sync + std::panic::UnwindSafe + std::panic::RefUnwindSafe>;

/// A built automaton and its per-thread caches.
struct Automaton {
    dfa: DFA,
    caches: Pool<Cache, CacheFactory>,
    openings: Openings,
}

/// The first bytes, and first pairs of bytes, after which the automaton is not yet dead. Key
/// words are common words (`token` every few hundred bytes of prose and code), mostly followed
/// by a letter, or by a space and a word, which no assignment grammar accepts: those walks end
/// on a table lookup instead of a cache, a start state and a transition or two.
struct Openings {
    first: ByteSet,
    /// Indexed by the first byte.
    second: Box<[ByteSet; 256]>,
}

#[derive(Clone, Copy)]
struct ByteSet([u64; 4]);

impl ByteSet {
    const EMPTY: ByteSet = ByteSet([0; 4]);
    const ALL: ByteSet = ByteSet([u64::MAX; 4]);

    fn insert(&mut self, byte: u8) {
        self.0[usize::from(byte >> 6)] |= 1 << (byte & 63);
    }

    fn contains(self, byte: u8) -> bool {
        self.0[usize::from(byte >> 6)] & (1 << (byte & 63)) != 0
    }
}

impl Openings {
    /// Nothing cut short.
    fn everything() -> Openings {
        Openings {
            first: ByteSet::ALL,
            second: Box::new([ByteSet::ALL; 256]),
        }
    }

    /// Every first byte and pair after which `dfa`, started anchored under any byte before it
    /// (or none), is not dead. A match is at least one byte long and reported one byte late, so
    /// a walk that dies within these bytes reports nothing. Computed on a cache of its own;
    /// if that cache is cleared (its state ids then stale) or a transition fails, nothing is
    /// cut short.
    fn of(dfa: &DFA) -> Openings {
        Self::compute(dfa).unwrap_or_else(Openings::everything)
    }

    fn compute(dfa: &DFA) -> Option<Openings> {
        let mut cache = dfa.create_cache();
        let clears = cache.clear_count();
        let mut starts: Vec<LazyStateID> = Vec::new();
        for look_behind in std::iter::once(None).chain((0..=u8::MAX).map(Some)) {
            let config = start::Config::new()
                .anchored(Anchored::Yes)
                .look_behind(look_behind);
            let state = dfa.start_state(&mut cache, &config).ok()?;
            if cache.clear_count() != clears {
                return None;
            }
            if !starts.contains(&state) {
                starts.push(state);
            }
        }
        let mut openings = Openings {
            first: ByteSet::EMPTY,
            second: Box::new([ByteSet::EMPTY; 256]),
        };
        for &start in &starts {
            for first in 0..=u8::MAX {
                let after_first = dfa.next_state(&mut cache, start, first).ok()?;
                if cache.clear_count() != clears {
                    return None;
                }
                if after_first.is_dead() {
                    continue;
                }
                openings.first.insert(first);
                for second in 0..=u8::MAX {
                    let after_second = dfa.next_state(&mut cache, after_first, second).ok()?;
                    if cache.clear_count() != clears {
                        return None;
                    }
                    if !after_second.is_dead() {
                        openings.second[usize::from(first)].insert(second);
                    }
                }
            }
        }
        Some(openings)
    }

    /// Whether a walk over `first` (and `second`, when it is known) may find an end.
    fn may_open(&self, first: u8, second: Option<u8>) -> bool {
        self.first.contains(first)
            && second.is_none_or(|second| self.second[usize::from(first)].contains(second))
    }
}

/// What follows a key word, ready to walk: one expression per member rule.
pub struct AfterKeyword {
    expressions: Vec<String>,
    /// The longest match of any expression: a walk ends this many bytes after its key word.
    max_len: usize,
    /// Whether an expression has look-around (`$`, `\b`): a match ending where the known
    /// bytes end may still be undone by the next byte.
    looks: bool,
    /// Built on first use (a key word never seen costs nothing); `None` inside when it
    /// cannot be built.
    automaton: OnceLock<Option<Automaton>>,
}

/// Whether a walk needs bytes that have not arrived yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    Done,
    Alive,
}

impl AfterKeyword {
    /// Check `expressions` (each a finite language without the empty string) without building
    /// their automaton.
    pub fn new(expressions: &[&str]) -> Result<AfterKeyword, String> {
        let (mut max_len, mut looks) = (0, false);
        for expression in expressions {
            let hir = regex_syntax::ParserBuilder::new()
                .unicode(false)
                .utf8(false)
                .build()
                .parse(expression)
                .map_err(|e| format!("after_keyword: {e}"))?;
            let properties = hir.properties();
            let longest = properties
                .maximum_len()
                .ok_or("after_keyword has no finite maximum length (use bounded quantifiers)")?;
            if properties.minimum_len().unwrap_or(0) == 0 {
                return Err("after_keyword matches the empty string".into());
            }
            max_len = max_len.max(longest);
            looks |= !properties.look_set().is_empty();
        }
        Ok(AfterKeyword {
            expressions: expressions.iter().map(|e| e.to_string()).collect(),
            max_len,
            looks,
            automaton: OnceLock::new(),
        })
    }

    /// Build the automaton now, reporting why it cannot be (a rule outside the embedded pack
    /// is checked when it is compiled).
    pub fn build_now(&self) -> Result<(), String> {
        if self.automaton.get().is_none() {
            let _ = self.automaton.set(Some(build(&self.expressions)?));
        }
        Ok(())
    }

    fn automaton(&self) -> Option<&Automaton> {
        self.automaton
            .get_or_init(|| build(&self.expressions).ok())
            .as_ref()
    }

    /// Walk from `at`, where a key word ends in `hay`, reporting each `(expression, end)`
    /// (`end` an index into `hay`, after `after`) where a match of an expression started at
    /// `at` ends. `complete`: `hay` holds everything that follows (a block, a closed stream);
    /// otherwise bytes may follow, and [`Walk::Alive`] says a walk over more of them may find
    /// more ends.
    pub fn walk(
        &self,
        hay: &[u8],
        at: usize,
        complete: bool,
        after: usize,
        report: &mut impl FnMut(usize, usize),
    ) -> Walk {
        let Some(automaton) = self.automaton() else {
            return self.every_end(hay, at, complete, after, report);
        };
        if let Some(&first) = hay.get(at) {
            if !automaton.openings.may_open(first, hay.get(at + 1).copied()) {
                return Walk::Done;
            }
        }
        self.walk_automaton(automaton, hay, at, complete, after, report)
    }

    /// [`AfterKeyword::walk`] byte by byte, every walk through the automaton.
    fn walk_automaton(
        &self,
        automaton: &Automaton,
        hay: &[u8],
        at: usize,
        complete: bool,
        after: usize,
        report: &mut impl FnMut(usize, usize),
    ) -> Walk {
        let limit = at.saturating_add(self.max_len);
        let dfa = &automaton.dfa;
        let mut cache = automaton.caches.get();
        let config = start::Config::new()
            .anchored(Anchored::Yes)
            .look_behind(at.checked_sub(1).and_then(|i| hay.get(i).copied()));
        let Ok(mut state) = dfa.start_state(&mut cache, &config) else {
            return self.every_end(hay, at, complete, after, report);
        };
        let stop = hay.len().min(limit.saturating_add(1));
        // Over the slice itself: `take` and `skip` around `enumerate` cost more per byte than
        // the transition does.
        let walked = hay.get(at..stop).unwrap_or_default();
        for (offset, &byte) in walked.iter().enumerate() {
            let i = at + offset;
            // From an untagged state (not a match, dead, quit or not yet computed one) the
            // transition is a plain table read, as in regex-automata's own search loop; any
            // other state, or a transition not yet computed, takes the checked path.
            let known = if state.is_tagged() {
                None
            } else {
                Some(dfa.next_state_untagged(&cache, state, byte)).filter(|next| !next.is_unknown())
            };
            state = match known.map_or_else(|| dfa.next_state(&mut cache, state, byte), Ok) {
                Ok(next) => next,
                Err(_) => return self.every_end(hay, i, complete, after, report),
            };
            if !state.is_tagged() {
                continue;
            }
            // Matches are delayed by one byte: the state after byte `i` says which
            // expressions end at `i`.
            if state.is_match() && i > after {
                patterns(dfa, &cache, state).for_each(|pattern| report(pattern, i));
            }
            if state.is_dead() {
                return Walk::Done;
            }
        }
        let end = hay.len();
        if end > limit {
            return Walk::Done;
        }
        if end <= after {
            return if complete { Walk::Done } else { Walk::Alive };
        }
        let Ok(at_end) = dfa.next_eoi_state(&mut cache, state) else {
            return self.every_end(hay, end - 1, complete, after, report);
        };
        if complete {
            if at_end.is_match() {
                patterns(dfa, &cache, at_end).for_each(|pattern| report(pattern, end));
            }
            return Walk::Done;
        }
        // Bytes may follow: an expression ends here now only if every byte that may follow
        // confirms it (a `$` needs the end of the data, a `\b` the next byte: both wait, as
        // Hyperscan waits). Without look-around, the end of the data stands for any byte.
        if at_end.is_match() {
            let mut sure: Vec<usize> = patterns(dfa, &cache, at_end).collect();
            if self.looks {
                for byte in 0..=u8::MAX {
                    match dfa.next_state(&mut cache, state, byte) {
                        Ok(next) if next.is_match() => {
                            let here: Vec<usize> = patterns(dfa, &cache, next).collect();
                            sure.retain(|p| here.contains(p));
                        }
                        Ok(_) => sure.clear(),
                        // Fail closed: report it now.
                        Err(_) => {}
                    }
                    if sure.is_empty() {
                        break;
                    }
                }
            }
            for pattern in sure {
                report(pattern, end);
            }
        }
        Walk::Alive
    }

    /// Fail closed: every offset after `from` where a match of an expression walked from the
    /// key word could end, for every expression.
    fn every_end(
        &self,
        hay: &[u8],
        from: usize,
        complete: bool,
        after: usize,
        report: &mut impl FnMut(usize, usize),
    ) -> Walk {
        // `from` is at least the key word's end; measuring the limit from there only reports
        // more.
        let limit = from.saturating_add(self.max_len);
        for end in (from.max(after) + 1)..=limit.min(hay.len()) {
            for pattern in 0..self.expressions.len() {
                report(pattern, end);
            }
        }
        if complete || hay.len() >= limit {
            Walk::Done
        } else {
            Walk::Alive
        }
    }
}

/// The expressions that match in match state `state`.
fn patterns<'a>(
    dfa: &'a DFA,
    cache: &'a Cache,
    state: LazyStateID,
) -> impl Iterator<Item = usize> + 'a {
    (0..dfa.match_len(cache, state)).map(move |i| dfa.match_pattern(cache, state, i).as_usize())
}

fn build(expressions: &[String]) -> Result<Automaton, String> {
    let dfa = DFA::builder()
        .configure(
            DFA::config()
                .match_kind(MatchKind::All)
                .cache_capacity(1 << 20),
        )
        .syntax(syntax::Config::new().unicode(false).utf8(false))
        .thompson(thompson::Config::new().utf8(false))
        .build_many(expressions)
        .map_err(|e| format!("after_keyword: {e}"))?;
    let factory = dfa.clone();
    let caches: Pool<Cache, CacheFactory> = Pool::new(Box::new(move || factory.create_cache()));
    let openings = Openings::of(&dfa);
    Ok(Automaton {
        dfa,
        caches,
        openings,
    })
}

/// The rules that share a key word, and what follows it for each.
pub struct KeywordGroup {
    /// Member rules (matcher indices) in the order of `after`'s expressions, and whether each
    /// is active (reported).
    members: Vec<(u32, bool)>,
    after: AfterKeyword,
}

impl KeywordGroup {
    /// `members`: (rule, active, after_keyword) for each rule with the key word.
    pub fn new(members: &[(u32, bool, &str)]) -> Result<KeywordGroup, String> {
        let expressions: Vec<&str> = members.iter().map(|&(_, _, after)| after).collect();
        Ok(KeywordGroup {
            members: members
                .iter()
                .map(|&(rule, active, _)| (rule, active))
                .collect(),
            after: AfterKeyword::new(&expressions)?,
        })
    }

    /// The most bytes one walk reads.
    pub fn max_len(&self) -> usize {
        self.after.max_len.saturating_add(1)
    }

    /// Whether a member is active (else the key word's reports are dropped).
    pub fn active(&self) -> bool {
        self.members.iter().any(|&(_, active)| active)
    }

    /// [`AfterKeyword::walk`], the active members' ends (plus `base`) pushed into `ends`;
    /// returns the walk's state and the furthest end found.
    pub fn walk(
        &self,
        hay: &[u8],
        at: usize,
        complete: bool,
        after: usize,
        base: usize,
        ends: &mut Ends,
    ) -> (Walk, usize) {
        let mut furthest = 0;
        let state = self
            .after
            .walk(hay, at, complete, after, &mut |pattern, end| {
                if let Some(&(rule, true)) = self.members.get(pattern) {
                    ends.push(rule, end + base);
                }
                furthest = furthest.max(end + base);
            });
        (state, furthest)
    }
}

/// Keyword rules' candidates waiting for their place in the end order.
#[derive(Debug, Default)]
pub struct Ends {
    waiting: BinaryHeap<Reverse<(usize, u32)>>,
    /// Per rule, the last end handed out (two walks may find the same end).
    handed_out: Vec<(u32, usize)>,
}

impl Ends {
    pub fn push(&mut self, rule: u32, end: usize) {
        self.waiting.push(Reverse((end, rule)));
    }

    /// Hand out the waiting candidates that end before `end` (all of them for `None`); false
    /// once `deliver` asks to stop.
    pub fn before(
        &mut self,
        end: Option<usize>,
        deliver: &mut impl FnMut(Candidate) -> bool,
    ) -> bool {
        while let Some(&Reverse((at, rule))) = self.waiting.peek() {
            if end.is_some_and(|end| at >= end) {
                break;
            }
            self.waiting.pop();
            match self.handed_out.iter_mut().find(|(r, _)| *r == rule) {
                Some((_, last)) if *last >= at => continue,
                Some((_, last)) => *last = at,
                None => self.handed_out.push((rule, at)),
            }
            if !deliver(Candidate { rule, end: at }) {
                return false;
            }
        }
        true
    }
}

/// A walk a stream resumes when more bytes arrive.
#[derive(Debug, Clone, Copy)]
struct PendingWalk {
    /// Index of the group in the matcher's groups.
    group: usize,
    /// Absolute offset where the key word ends.
    at: usize,
    /// Ends up to here (absolute) were reported.
    reported_to: usize,
}

/// Bytes of capacity a stream's tail may keep beyond what it holds.
const TAIL_KEEP: usize = 4096;

/// The keyword walks of one stream: the bytes they still need and the ends not yet handed out.
#[derive(Debug, Default)]
pub struct KeywordStream {
    /// The stream's bytes from absolute offset `base`: from one byte before the oldest live
    /// walk's key word end, or the last byte (a key word may end at the next chunk's first
    /// byte, and its walk looks behind it).
    tail: Vec<u8>,
    base: usize,
    walks: Vec<PendingWalk>,
    pub ends: Ends,
}

impl KeywordStream {
    /// Take the next bytes and resume the live walks over them.
    pub fn append(&mut self, chunk: &[u8], groups: &[KeywordGroup]) {
        self.tail.extend_from_slice(chunk);
        self.resume(false, groups);
    }

    /// The end of the stream: finish the live walks.
    pub fn close(&mut self, groups: &[KeywordGroup]) {
        self.resume(true, groups);
    }

    fn resume(&mut self, complete: bool, groups: &[KeywordGroup]) {
        for walk in std::mem::take(&mut self.walks) {
            if let Some(group) = groups.get(walk.group) {
                self.walk(group, walk, complete);
            }
        }
    }

    /// A key word of group `index` ends at absolute offset `at`, within the bytes appended.
    pub fn start(&mut self, groups: &[KeywordGroup], index: usize, at: usize, complete: bool) {
        if let Some(group) = groups.get(index) {
            let walk = PendingWalk {
                group: index,
                at,
                reported_to: at,
            };
            self.walk(group, walk, complete);
        }
    }

    fn walk(&mut self, group: &KeywordGroup, mut walk: PendingWalk, complete: bool) {
        let base = self.base;
        // The tail always holds a live walk's bytes: `trim` keeps them.
        let at = walk.at.saturating_sub(base);
        let (state, furthest) = group.walk(
            &self.tail,
            at,
            complete,
            walk.reported_to.saturating_sub(base),
            base,
            &mut self.ends,
        );
        walk.reported_to = walk.reported_to.max(furthest);
        if state == Walk::Alive {
            self.walks.push(walk);
        }
    }

    /// Drop the bytes no live walk needs.
    pub fn trim(&mut self) {
        let end = self.base + self.tail.len();
        let keep_from = self
            .walks
            .iter()
            .map(|walk| walk.at.saturating_sub(1))
            .min()
            .unwrap_or(end.saturating_sub(1))
            .max(self.base);
        self.tail.drain(..keep_from - self.base);
        self.base = keep_from;
        // A stream that was once fed a large chunk does not keep its size for life.
        if self.tail.capacity() > TAIL_KEEP && self.tail.len() < self.tail.capacity() / 4 {
            self.tail.shrink_to(self.tail.len().max(TAIL_KEEP / 4));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(after: &AfterKeyword, hay: &[u8], at: usize) -> Vec<(usize, usize)> {
        let mut found = Vec::new();
        after.walk(hay, at, true, at, &mut |pattern, end| {
            found.push((pattern, end))
        });
        found
    }

    #[test]
    fn a_walk_reports_every_end_and_stops_when_nothing_more_can_match() {
        let after = AfterKeyword::new(&[r"[ \t]{0,2}=[ \t]{0,2}[a-z]{3,5}"]).unwrap();
        assert_eq!(
            ends(&after, b"token = abcdefg", 5),
            vec![(0, 11), (0, 12), (0, 13)]
        );
        assert_eq!(ends(&after, b"tokens are", 5), vec![]);
    }

    #[test]
    fn one_walk_tells_the_members_ends_apart() {
        let after = AfterKeyword::new(&[r#"="[a-z]{3}""#, r"=[a-z]{3}(?:;|$)"]).unwrap();
        assert_eq!(ends(&after, b"k=\"abc\"", 1), vec![(0, 7)]);
        assert_eq!(ends(&after, b"k=abc;", 1), vec![(1, 6)]);
        assert_eq!(ends(&after, b"k=abc", 1), vec![(1, 5)]);
    }

    #[test]
    fn look_ahead_waits_for_the_next_byte_or_the_end() {
        let after = AfterKeyword::new(&[r"=[a-z]{3}(?:[ ;]|$)"]).unwrap();
        let mut found = Vec::new();
        // `=abc` with more to come: `$` cannot be decided yet.
        let state = after.walk(b"k=abc", 1, false, 1, &mut |_, end| found.push(end));
        assert_eq!((state, found.as_slice()), (Walk::Alive, &[][..]));
        // The end of the data decides it.
        assert_eq!(ends(&after, b"k=abc", 1), vec![(0, 5)]);
        // A terminator is part of the match: reported at once (the walk lives on until a
        // byte shows nothing longer can match).
        let state = after.walk(b"k=abc;", 1, false, 1, &mut |_, end| found.push(end));
        assert_eq!((state, found.as_slice()), (Walk::Alive, &[6][..]));
        found.clear();
        let state = after.walk(b"k=abc;x", 1, false, 1, &mut |_, end| found.push(end));
        assert_eq!((state, found.as_slice()), (Walk::Done, &[6][..]));
    }

    #[test]
    fn without_look_around_an_end_at_the_last_byte_is_reported_at_once() {
        let after = AfterKeyword::new(&[r#"="[a-z]{3}""#]).unwrap();
        let mut found = Vec::new();
        let state = after.walk(b"k=\"abc\"", 1, false, 1, &mut |_, end| found.push(end));
        assert_eq!((state, found), (Walk::Alive, vec![7]));
    }

    #[test]
    fn a_stream_finds_what_a_block_finds_at_every_cut() {
        let group = KeywordGroup::new(&[
            (0, true, r#"[_A-Z]{0,4}[ ]?[:=][ ]?"[a-z0-9]{4,8}""#),
            (1, true, r"[_A-Z]{0,4}[ ]?[:=][ ]?[a-z0-9]{4,8}(?:[ ,]|$)"),
            (2, false, r"[ ]?[:=]"),
        ])
        .unwrap();
        let groups = [group];
        let text = b"TOKEN_A = \"abab1212\", token=xyz12 TOKEN: ab12cd";
        let keyword_ends: Vec<usize> = (1..=text.len())
            .filter(|&at| text[..at].to_ascii_lowercase().ends_with(b"token"))
            .collect();
        assert_eq!(keyword_ends.len(), 3);
        let mut block = Ends::default();
        for &at in &keyword_ends {
            groups[0].walk(text, at, true, at, 0, &mut block);
        }
        let mut expected = Vec::new();
        block.before(None, &mut |c| {
            expected.push((c.rule, c.end));
            true
        });
        // `TOKEN_A = "abab1212"` for the quoted rule; `token=xyz12 ` and `TOKEN: ab12cd` at
        // the end of the text for the unquoted one; nothing for the inactive rule.
        assert_eq!(expected, vec![(0, 20), (1, 34), (1, 47)]);
        for cut in 0..=text.len() {
            for second in cut..=text.len() {
                let mut stream = KeywordStream::default();
                let mut found = Vec::new();
                let mut from = 0;
                for to in [cut, second, text.len()] {
                    stream.append(&text[from..to], &groups);
                    for &at in keyword_ends.iter().filter(|&&at| at > from && at <= to) {
                        stream.start(&groups, 0, at, false);
                    }
                    stream.ends.before(None, &mut |c| {
                        found.push((c.rule, c.end));
                        true
                    });
                    stream.trim();
                    from = to;
                }
                stream.close(&groups);
                stream.ends.before(None, &mut |c| {
                    found.push((c.rule, c.end));
                    true
                });
                assert_eq!(found, expected, "cuts at {cut} and {second}");
            }
        }
    }

    #[test]
    fn a_stream_keeps_only_the_bytes_a_live_walk_needs() {
        let groups = [KeywordGroup::new(&[(0, true, r"=[a-z]{1,100}(?:;|$)")]).unwrap()];
        let mut stream = KeywordStream::default();
        stream.append(&[b'.'; 64 * 1024], &groups);
        stream.trim();
        assert_eq!(stream.tail.len(), 1);
        assert!(
            stream.tail.capacity() <= TAIL_KEEP,
            "{}",
            stream.tail.capacity()
        );
        // A key word at the end of the next chunk: its walk lives on, and its bytes stay.
        stream.append(b"..token", &groups);
        stream.start(&groups, 0, 64 * 1024 + 7, false);
        stream.append(b"=abc", &groups);
        stream.trim();
        assert_eq!(stream.tail, b"n=abc");
        stream.append(&[b'x'; 200], &groups);
        stream.trim();
        // Longer than any match: the walk is over.
        assert_eq!(stream.tail, b"x");
    }

    #[test]
    fn ends_come_out_in_order_and_once_per_rule() {
        let mut ends = Ends::default();
        for (rule, end) in [(1, 9), (0, 4), (1, 9), (0, 7), (1, 2)] {
            ends.push(rule, end);
        }
        let mut out = Vec::new();
        ends.before(Some(8), &mut |c| {
            out.push((c.rule, c.end));
            true
        });
        assert_eq!(out, vec![(1, 2), (0, 4), (0, 7)]);
        ends.push(1, 9);
        ends.before(None, &mut |c| {
            out.push((c.rule, c.end));
            true
        });
        assert_eq!(out, vec![(1, 2), (0, 4), (0, 7), (1, 9)]);
    }

    /// Every walk that the openings cut short reports what the automaton reports, under every
    /// byte before the key word's end, for every first byte and pair, with and without bytes
    /// after them; and the openings do cut walks short.
    #[test]
    fn a_walk_cut_short_by_its_openings_ends_as_the_automaton_would() {
        let after = AfterKeyword::new(&[
            // The look-behind decides: `\b` holds after a word byte (`k`, `_`), not after a
            // space, a newline or nothing.
            r"\b[ ]?=[ ]?[a-z]{2,4}",
            r#"[_.][A-Z]{1,3}[ ]?:"[a-z]{2}""#,
            r"[0-9]=x(?:;|$)",
        ])
        .unwrap();
        let automaton = after.automaton().expect("builds");
        let mut cut_short = 0;
        let look_behinds: [Option<u8>; 5] = [None, Some(b'k'), Some(b' '), Some(b'\n'), Some(b'_')];
        for look_behind in look_behinds {
            for first in 0..=u8::MAX {
                for second in 0..=u8::MAX {
                    for tail in [&b""[..], b"=ab;", b"ab\"xy\"", b"B:\"ab\""] {
                        let mut hay: Vec<u8> = look_behind.into_iter().collect();
                        let at = hay.len();
                        hay.extend_from_slice(&[first, second]);
                        hay.extend_from_slice(tail);
                        for complete in [true, false] {
                            let (mut walked, mut cut) = (Vec::new(), Vec::new());
                            let walked_state = after.walk_automaton(
                                automaton,
                                &hay,
                                at,
                                complete,
                                at,
                                &mut |pattern, end| walked.push((pattern, end)),
                            );
                            let state = after.walk(&hay, at, complete, at, &mut |pattern, end| {
                                cut.push((pattern, end))
                            });
                            assert_eq!(
                                (state, &cut),
                                (walked_state, &walked),
                                "{look_behind:?} {first} {second} {tail:?} {complete}"
                            );
                        }
                    }
                    if !automaton.openings.may_open(first, Some(second)) {
                        cut_short += 1;
                    }
                }
                // A lone first byte at the end of the data.
                let hay = [first];
                let mut cut = Vec::new();
                let state = after.walk(&hay, 0, false, 0, &mut |p, e| cut.push((p, e)));
                let mut walked = Vec::new();
                let walked_state =
                    after.walk_automaton(automaton, &hay, 0, false, 0, &mut |p, e| {
                        walked.push((p, e))
                    });
                assert_eq!((state, cut), (walked_state, walked), "{first}");
            }
        }
        assert!(!automaton.openings.may_open(b's', None));
        assert!(!automaton.openings.may_open(b' ', Some(b'c')));
        assert!(automaton.openings.may_open(b' ', Some(b'=')));
        assert!(cut_short > 60_000, "{cut_short}");
    }

    #[test]
    fn expressions_that_can_be_empty_or_unbounded_are_refused() {
        assert!(AfterKeyword::new(&["=?"]).is_err());
        assert!(AfterKeyword::new(&["=[a-z]+"]).is_err());
        assert!(AfterKeyword::new(&["=[a-z"]).is_err());
    }
}
