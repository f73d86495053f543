//! The in-process backend: one replica's groups in a map behind a mutex.
//!
//! Invariants (besides the store's, see the parent module):
//! - at most `max_groups` groups and `max_total_bytes` bytes of values are held after every put;
//!   over either, whole groups go, the one whose newest entry expires first (so fully expired
//!   groups always go first);
//! - fully expired groups at the front of that order are dropped on every put, and expired
//!   entries of a group when it is written or when a fetch meets them;
//! - the mutex is never held across an await, and `Debug` prints counts only.

use super::{now_ms, GroupLimits, GroupStore, Id, StoreEntry, StoreError};
use async_trait::async_trait;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Mutex, MutexGuard};

/// Groups of sealed values in this process, bounded in groups and total value bytes.
pub struct MemoryStore {
    max_groups: usize,
    max_total_bytes: usize,
    inner: Mutex<Inner>,
}

/// What a [`MemoryStore`] holds now (expired entries included until removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUsage {
    pub groups: usize,
    pub entries: usize,
    pub bytes: usize,
}

#[derive(Default)]
struct Inner {
    groups: HashMap<Id, Group>,
    /// `(newest expiry, group)` of every group: the global eviction order.
    by_newest: BTreeSet<(u64, Id)>,
    entries: usize,
    bytes: usize,
}

struct Group {
    slots: HashMap<Id, Slot>,
    bytes: usize,
    /// The latest expiry of the group's entries: the group is gone at that time.
    newest: u64,
}

struct Slot {
    value: Vec<u8>,
    expires_at_ms: u64,
}

impl MemoryStore {
    pub fn new(max_groups: usize, max_total_bytes: usize) -> MemoryStore {
        MemoryStore {
            max_groups,
            max_total_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// [`GroupStore::put`] as of `now_ms` (tests use it to move time without sleeping).
    pub fn put_at(
        &self,
        group: &Id,
        entries: Vec<StoreEntry>,
        limits: GroupLimits,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        inner.drop_expired_groups(now_ms);
        let mut slots = match inner.take_group(group) {
            Some(existing) => existing.slots,
            None => HashMap::new(),
        };
        slots.retain(|_, slot| slot.expires_at_ms > now_ms);
        for entry in entries {
            // An entry that cannot be kept still replaces what its field held: the caller
            // meant the old value to go.
            slots.remove(&entry.field);
            if entry.expires_at_ms > now_ms && entry.value.len() <= limits.max_bytes {
                slots.insert(
                    entry.field,
                    Slot {
                        value: entry.value,
                        expires_at_ms: entry.expires_at_ms,
                    },
                );
            }
        }
        trim_group(&mut slots, limits);
        inner.insert_group(*group, slots);
        inner.trim_global(self.max_groups, self.max_total_bytes);
        Ok(())
    }

    /// [`GroupStore::fetch`] as of `now_ms`.
    /// [`GroupStore::fetch_group`] at `now_ms`.
    pub fn fetch_group_at(
        &self,
        group: &Id,
        now_ms: u64,
    ) -> Result<Vec<(Id, Vec<u8>)>, StoreError> {
        let inner = self.lock()?;
        let Some(found) = inner.groups.get(group) else {
            return Ok(Vec::new());
        };
        Ok(found
            .slots
            .iter()
            .filter(|(_, slot)| slot.expires_at_ms > now_ms)
            .map(|(field, slot)| (*field, slot.value.clone()))
            .collect())
    }

    pub fn fetch_at(
        &self,
        group: &Id,
        fields: &[Id],
        now_ms: u64,
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut inner = self.lock()?;
        let Some(found) = inner.groups.get_mut(group) else {
            return Ok(vec![None; fields.len()]);
        };
        if found.newest <= now_ms {
            inner.take_group(group);
            return Ok(vec![None; fields.len()]);
        }
        let mut values = Vec::with_capacity(fields.len());
        let mut removed = (0, 0);
        for field in fields {
            match found.slots.get(field) {
                Some(slot) if slot.expires_at_ms > now_ms => values.push(Some(slot.value.clone())),
                Some(_) => {
                    // Expired: remove it now that we are here (the group's newest entry is
                    // still live, so its place in the eviction order stands).
                    if let Some(slot) = found.slots.remove(field) {
                        found.bytes -= slot.value.len();
                        removed.0 += 1;
                        removed.1 += slot.value.len();
                    }
                    values.push(None);
                }
                None => values.push(None),
            }
        }
        inner.entries -= removed.0;
        inner.bytes -= removed.1;
        Ok(values)
    }

    /// Groups, entries and value bytes held now.
    pub fn usage(&self) -> Result<MemoryUsage, StoreError> {
        let inner = self.lock()?;
        Ok(inner.usage())
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        self.inner.lock().map_err(|_| StoreError::Poisoned)
    }
}

/// Drops the entries that expire first (ties: by field, so every run agrees) until the group
/// is within `limits`.
fn trim_group(slots: &mut HashMap<Id, Slot>, limits: GroupLimits) {
    let mut bytes: usize = slots.values().map(|s| s.value.len()).sum();
    if slots.len() <= limits.max_entries && bytes <= limits.max_bytes {
        return;
    }
    let mut order: Vec<(u64, Id)> = slots
        .iter()
        .map(|(field, slot)| (slot.expires_at_ms, *field))
        .collect();
    order.sort_unstable();
    for (_, field) in order {
        if slots.len() <= limits.max_entries && bytes <= limits.max_bytes {
            break;
        }
        if let Some(slot) = slots.remove(&field) {
            bytes -= slot.value.len();
        }
    }
}

impl Inner {
    fn usage(&self) -> MemoryUsage {
        MemoryUsage {
            groups: self.groups.len(),
            entries: self.entries,
            bytes: self.bytes,
        }
    }

    /// Removes `group` and its share of the totals.
    fn take_group(&mut self, id: &Id) -> Option<Group> {
        let group = self.groups.remove(id)?;
        self.by_newest.remove(&(group.newest, *id));
        self.entries -= group.slots.len();
        self.bytes -= group.bytes;
        Some(group)
    }

    /// Adds `slots` as group `id` (absent from the map), unless it is empty.
    fn insert_group(&mut self, id: Id, slots: HashMap<Id, Slot>) {
        let Some(newest) = slots.values().map(|s| s.expires_at_ms).max() else {
            return;
        };
        let bytes = slots.values().map(|s| s.value.len()).sum();
        self.entries += slots.len();
        self.bytes += bytes;
        self.by_newest.insert((newest, id));
        self.groups.insert(
            id,
            Group {
                slots,
                bytes,
                newest,
            },
        );
    }

    /// Drops the groups whose every entry has expired (they lead the eviction order).
    fn drop_expired_groups(&mut self, now_ms: u64) {
        while let Some(&(newest, id)) = self.by_newest.first() {
            if newest > now_ms {
                break;
            }
            self.take_group(&id);
        }
    }

    /// Drops whole groups, newest expiry first, until within the global bounds.
    fn trim_global(&mut self, max_groups: usize, max_total_bytes: usize) {
        while self.groups.len() > max_groups || self.bytes > max_total_bytes {
            let Some(&(_, id)) = self.by_newest.first() else {
                break;
            };
            self.take_group(&id);
        }
    }
}

#[async_trait]
impl GroupStore for MemoryStore {
    async fn put(
        &self,
        group: &Id,
        entries: Vec<StoreEntry>,
        limits: GroupLimits,
    ) -> Result<(), StoreError> {
        self.put_at(group, entries, limits, now_ms())
    }

    async fn fetch(&self, group: &Id, fields: &[Id]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.fetch_at(group, fields, now_ms())
    }

    async fn fetch_group(&self, group: &Id) -> Result<Vec<(Id, Vec<u8>)>, StoreError> {
        self.fetch_group_at(group, now_ms())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("MemoryStore");
        out.field("max_groups", &self.max_groups)
            .field("max_total_bytes", &self.max_total_bytes);
        // `try_lock`: Debug must never block or deadlock on a thread that holds the lock.
        match self.inner.try_lock() {
            Ok(inner) => out.field("usage", &inner.usage()),
            Err(_) => out.field("usage", &"(locked)"),
        };
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_group_is_fetched_without_its_expired_entries() {
        let store = MemoryStore::new(16, 1 << 20);
        let group = [7u8; 32];
        let live = StoreEntry {
            field: [1u8; 32],
            value: b"live".to_vec(),
            expires_at_ms: T + 10,
        };
        let old = StoreEntry {
            field: [2u8; 32],
            value: b"old".to_vec(),
            expires_at_ms: T + 5,
        };
        store
            .put_at(&group, vec![live, old], LIMITS, T)
            .expect("put");
        let mut all = store.fetch_group_at(&group, T + 6).expect("fetch");
        all.sort();
        assert_eq!(all, vec![([1u8; 32], b"live".to_vec())]);
        assert!(store
            .fetch_group_at(&[9u8; 32], T)
            .expect("fetch")
            .is_empty());
    }

    const T: u64 = 1_000_000;
    const LIMITS: GroupLimits = GroupLimits {
        max_entries: 100,
        max_bytes: 1 << 20,
    };

    fn id(n: u8) -> Id {
        [n; 32]
    }

    fn entry(field: u8, value: &[u8], expires_at_ms: u64) -> StoreEntry {
        StoreEntry {
            field: id(field),
            value: value.to_vec(),
            expires_at_ms,
        }
    }

    fn fetch(store: &MemoryStore, group: u8, fields: &[u8], now: u64) -> Vec<Option<Vec<u8>>> {
        let fields: Vec<Id> = fields.iter().map(|&f| id(f)).collect();
        store.fetch_at(&id(group), &fields, now).unwrap()
    }

    fn some(value: &[u8]) -> Option<Vec<u8>> {
        Some(value.to_vec())
    }

    #[tokio::test]
    async fn put_then_fetch_through_the_trait() {
        let store = MemoryStore::new(10, 1 << 20);
        let later = now_ms() + 60_000;
        let entries = vec![entry(1, b"one", later), entry(2, b"two", later)];
        store.put(&id(9), entries, LIMITS).await.unwrap();
        let got = store.fetch(&id(9), &[id(2), id(3), id(1)]).await.unwrap();
        assert_eq!(got, vec![some(b"two"), None, some(b"one")]);
        assert_eq!(store.backend(), "memory");
        assert!(store.fetch(&id(9), &[]).await.unwrap().is_empty());
    }

    #[test]
    fn unknown_group_is_all_none() {
        let store = MemoryStore::new(10, 1 << 20);
        assert_eq!(fetch(&store, 7, &[1, 2, 3], T), vec![None, None, None]);
        store
            .put_at(&id(1), vec![entry(1, b"v", T + 10)], LIMITS, T)
            .unwrap();
        assert_eq!(fetch(&store, 2, &[1], T), vec![None]);
    }

    #[test]
    fn replace_same_field() {
        let store = MemoryStore::new(10, 1 << 20);
        let g = id(1);
        store
            .put_at(
                &g,
                vec![entry(1, b"old", T + 10), entry(2, b"keep", T + 10)],
                LIMITS,
                T,
            )
            .unwrap();
        store
            .put_at(&g, vec![entry(1, b"newer", T + 20)], LIMITS, T)
            .unwrap();
        assert_eq!(
            fetch(&store, 1, &[1, 2], T),
            vec![some(b"newer"), some(b"keep")]
        );
        assert_eq!(
            store.usage().unwrap(),
            MemoryUsage {
                groups: 1,
                entries: 2,
                bytes: 9
            }
        );
        // Within one put, the last entry for a field wins.
        store
            .put_at(
                &g,
                vec![entry(3, b"a", T + 10), entry(3, b"b", T + 10)],
                LIMITS,
                T,
            )
            .unwrap();
        assert_eq!(fetch(&store, 1, &[3], T), vec![some(b"b")]);
    }

    #[test]
    fn entries_expire_one_by_one_then_the_group() {
        let store = MemoryStore::new(10, 1 << 20);
        let g = id(1);
        let entries = vec![entry(1, b"short", T + 10), entry(2, b"long", T + 20)];
        store.put_at(&g, entries, LIMITS, T).unwrap();
        assert_eq!(
            fetch(&store, 1, &[1, 2], T + 9),
            vec![some(b"short"), some(b"long")]
        );
        // expires_at_ms <= now is expired.
        assert_eq!(fetch(&store, 1, &[1, 2], T + 10), vec![None, some(b"long")]);
        assert_eq!(store.usage().unwrap().entries, 1, "removed when met");
        assert_eq!(fetch(&store, 1, &[2], T + 20), vec![None]);
        assert_eq!(
            store.usage().unwrap().groups,
            0,
            "the group went with its last entry"
        );
    }

    #[test]
    fn expired_or_oversize_entry_clears_its_field() {
        let store = MemoryStore::new(10, 1 << 20);
        let g = id(1);
        let limits = GroupLimits {
            max_entries: 10,
            max_bytes: 8,
        };
        store
            .put_at(
                &g,
                vec![entry(1, b"a", T + 10), entry(2, b"b", T + 10)],
                limits,
                T,
            )
            .unwrap();
        store
            .put_at(
                &g,
                vec![entry(1, b"already", T), entry(2, b"way too big", T + 10)],
                limits,
                T,
            )
            .unwrap();
        assert_eq!(fetch(&store, 1, &[1, 2], T), vec![None, None]);
        assert_eq!(store.usage().unwrap().groups, 0);
    }

    #[test]
    fn group_entry_limit_drops_earliest_expiring() {
        let store = MemoryStore::new(10, 1 << 20);
        let g = id(1);
        let limits = GroupLimits {
            max_entries: 2,
            max_bytes: 1 << 20,
        };
        // Written out of expiry order: what goes is what expires first, not what came first.
        let entries = vec![
            entry(1, b"mid", T + 20),
            entry(2, b"late", T + 30),
            entry(3, b"early", T + 10),
        ];
        store.put_at(&g, entries, limits, T).unwrap();
        assert_eq!(
            fetch(&store, 1, &[1, 2, 3], T),
            vec![some(b"mid"), some(b"late"), None]
        );
        store
            .put_at(&g, vec![entry(4, b"latest", T + 40)], limits, T)
            .unwrap();
        assert_eq!(
            fetch(&store, 1, &[1, 2, 4], T),
            vec![None, some(b"late"), some(b"latest")]
        );
    }

    #[test]
    fn group_byte_limit_drops_earliest_expiring() {
        let store = MemoryStore::new(10, 1 << 20);
        let g = id(1);
        let limits = GroupLimits {
            max_entries: 100,
            max_bytes: 25,
        };
        let entries = vec![
            entry(1, &[b'a'; 10], T + 10),
            entry(2, &[b'b'; 10], T + 20),
            entry(3, &[b'c'; 10], T + 30),
        ];
        store.put_at(&g, entries, limits, T).unwrap();
        let got = fetch(&store, 1, &[1, 2, 3], T);
        assert_eq!(got, vec![None, Some(vec![b'b'; 10]), Some(vec![b'c'; 10])]);
        assert_eq!(store.usage().unwrap().bytes, 20);
    }

    #[test]
    fn oversize_value_is_not_kept_and_evicts_nothing() {
        let store = MemoryStore::new(10, 1 << 20);
        let g = id(1);
        let limits = GroupLimits {
            max_entries: 100,
            max_bytes: 16,
        };
        store
            .put_at(&g, vec![entry(1, b"small", T + 10)], limits, T)
            .unwrap();
        store
            .put_at(&g, vec![entry(2, &[0; 17], T + 20)], limits, T)
            .unwrap();
        assert_eq!(fetch(&store, 1, &[1, 2], T), vec![some(b"small"), None]);
        // Exactly max_bytes fits.
        store
            .put_at(&id(2), vec![entry(1, &[0; 16], T + 20)], limits, T)
            .unwrap();
        assert_eq!(fetch(&store, 2, &[1], T), vec![Some(vec![0; 16])]);
    }

    #[test]
    fn global_group_bound_drops_group_whose_newest_expires_first() {
        let store = MemoryStore::new(2, 1 << 20);
        // Group 1 has the latest single entry but group 2's newest is later still; group 3's
        // newest is the earliest, though written last.
        store
            .put_at(
                &id(1),
                vec![entry(1, b"a", T + 10), entry(2, b"b", T + 30)],
                LIMITS,
                T,
            )
            .unwrap();
        store
            .put_at(&id(2), vec![entry(1, b"c", T + 40)], LIMITS, T)
            .unwrap();
        store
            .put_at(&id(3), vec![entry(1, b"d", T + 20)], LIMITS, T)
            .unwrap();
        assert_eq!(fetch(&store, 1, &[1, 2], T), vec![some(b"a"), some(b"b")]);
        assert_eq!(fetch(&store, 2, &[1], T), vec![some(b"c")]);
        assert_eq!(fetch(&store, 3, &[1], T), vec![None]);
        assert_eq!(store.usage().unwrap().groups, 2);
    }

    #[test]
    fn global_byte_bound_drops_whole_groups() {
        let store = MemoryStore::new(100, 20);
        store
            .put_at(
                &id(1),
                vec![entry(1, &[1; 8], T + 10), entry(2, &[1; 2], T + 50)],
                LIMITS,
                T,
            )
            .unwrap();
        store
            .put_at(&id(2), vec![entry(1, &[2; 8], T + 20)], LIMITS, T)
            .unwrap();
        // 18 bytes so far; 8 more is over 20: group 2 (newest T+20) goes, group 1 (T+50) stays.
        store
            .put_at(&id(3), vec![entry(1, &[3; 8], T + 30)], LIMITS, T)
            .unwrap();
        assert_eq!(
            fetch(&store, 1, &[1, 2], T),
            vec![Some(vec![1; 8]), Some(vec![1; 2])]
        );
        assert_eq!(fetch(&store, 2, &[1], T), vec![None]);
        assert_eq!(fetch(&store, 3, &[1], T), vec![Some(vec![3; 8])]);
        assert_eq!(
            store.usage().unwrap(),
            MemoryUsage {
                groups: 2,
                entries: 3,
                bytes: 18
            }
        );
    }

    #[test]
    fn expired_groups_go_before_live_ones() {
        let store = MemoryStore::new(2, 1 << 20);
        store
            .put_at(&id(1), vec![entry(1, b"a", T + 10)], LIMITS, T)
            .unwrap();
        store
            .put_at(&id(2), vec![entry(1, b"b", T + 100)], LIMITS, T)
            .unwrap();
        // At T+50 group 1 has expired: writing group 3 drops it, not a live group.
        store
            .put_at(&id(3), vec![entry(1, b"c", T + 60)], LIMITS, T + 50)
            .unwrap();
        assert_eq!(store.usage().unwrap().groups, 2);
        assert_eq!(fetch(&store, 2, &[1], T + 50), vec![some(b"b")]);
        assert_eq!(fetch(&store, 3, &[1], T + 50), vec![some(b"c")]);
    }

    #[test]
    fn replacing_the_newest_entry_moves_the_group_in_eviction_order() {
        let store = MemoryStore::new(2, 1 << 20);
        store
            .put_at(&id(1), vec![entry(1, b"a", T + 100)], LIMITS, T)
            .unwrap();
        store
            .put_at(&id(2), vec![entry(1, b"b", T + 50)], LIMITS, T)
            .unwrap();
        // Group 1's only entry now expires earliest of all.
        store
            .put_at(&id(1), vec![entry(1, b"a2", T + 10)], LIMITS, T)
            .unwrap();
        store
            .put_at(&id(3), vec![entry(1, b"c", T + 60)], LIMITS, T)
            .unwrap();
        assert_eq!(fetch(&store, 1, &[1], T), vec![None]);
        assert_eq!(fetch(&store, 2, &[1], T), vec![some(b"b")]);
    }

    #[test]
    fn zero_bounds_keep_nothing() {
        let store = MemoryStore::new(0, 1 << 20);
        store
            .put_at(&id(1), vec![entry(1, b"a", T + 10)], LIMITS, T)
            .unwrap();
        assert_eq!(fetch(&store, 1, &[1], T), vec![None]);
        let store = MemoryStore::new(10, 1 << 20);
        let none = GroupLimits {
            max_entries: 0,
            max_bytes: 100,
        };
        store
            .put_at(&id(1), vec![entry(1, b"a", T + 10)], none, T)
            .unwrap();
        assert_eq!(fetch(&store, 1, &[1], T), vec![None]);
        assert_eq!(store.usage().unwrap().groups, 0);
    }

    #[test]
    fn debug_prints_counts_only() {
        let store = MemoryStore::new(10, 1 << 20);
        store
            .put_at(
                &id(0xab),
                vec![entry(0xcd, b"ciphertext", T + 10)],
                LIMITS,
                T,
            )
            .unwrap();
        let shown = format!("{store:?}");
        assert!(
            shown.contains("groups: 1") && shown.contains("bytes: 10"),
            "{shown}"
        );
        assert!(!shown.contains("171") && !shown.contains("205"), "{shown}");
        assert!(
            !shown.contains("ciphertext") && !shown.contains("99, 105"),
            "{shown}"
        );
    }
}
