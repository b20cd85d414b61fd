//! Entity keys between checkpoints: [`EntityInterner`] gives each distinct
//! key a dense id, keeping its bytes once in an arena ([`EntityKeys`]); a
//! drain hands them over sorted in the store's key order.
//!
//! The tiler interns every entity of every event, so a lookup must cost one
//! cache miss: keys up to 23 bytes (post and user ids) are compared inside
//! the hash table's own slot, and only longer keys are compared against the
//! arena.

use std::hash::BuildHasher;

use foldhash::fast::FixedState;
use hashbrown::HashTable;

/// Entity keys stored back to back; key `i` is `data[ends[i - 1]..ends[i]]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntityKeys {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl EntityKeys {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Key `i`; panics when out of range (ids come from the interner).
    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.data[start..self.ends[i]]
    }

    /// Appends a key and returns its index.
    pub fn push(&mut self, key: &[u8]) -> u32 {
        self.data.extend_from_slice(key);
        self.ends.push(self.data.len());
        (self.ends.len() - 1) as u32
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).map(|i| self.get(i))
    }

    fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }

    /// The keys sorted by (length, bytes), and each old index's new position.
    pub fn sorted(&self) -> (EntityKeys, Vec<u32>) {
        // Compare a packed (length, first 15 bytes) integer first: most keys
        // differ there, and the sort touches no key bytes until they tie.
        let packed = |e: &[u8]| -> u128 {
            let mut b = [0u8; 16];
            b[0] = e.len().min(255) as u8;
            let n = e.len().min(15);
            b[1..1 + n].copy_from_slice(&e[..n]);
            u128::from_be_bytes(b)
        };
        let mut order: Vec<(u128, u32)> = self
            .iter()
            .enumerate()
            .map(|(i, e)| (packed(e), i as u32))
            .collect();
        order.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| {
                let (x, y) = (self.get(a.1 as usize), self.get(b.1 as usize));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            })
        });
        let mut rank = vec![0u32; self.len()];
        let mut sorted = EntityKeys {
            data: Vec::with_capacity(self.data.len()),
            ends: Vec::with_capacity(self.len()),
        };
        for (r, (_, e)) in order.iter().enumerate() {
            rank[*e as usize] = r as u32;
            sorted.push(self.get(*e as usize));
        }
        (sorted, rank)
    }
}

/// Longest key compared inside the hash table's slot.
const INLINE: usize = 23;

/// A hash table slot: the key inline (length byte, then the bytes, zero
/// padded) when it is short, else a marker and the key stays in the arena.
#[derive(Clone, Copy)]
struct Slot {
    inline: [u8; INLINE + 1],
    id: u32,
}

/// Marks a slot whose key is longer than [`INLINE`] bytes.
const LONG: u8 = u8::MAX;

fn inline_form(key: &[u8]) -> Option<[u8; INLINE + 1]> {
    if key.len() > INLINE {
        return None;
    }
    let mut b = [0u8; INLINE + 1];
    b[0] = key.len() as u8;
    b[1..1 + key.len()].copy_from_slice(key);
    Some(b)
}

/// Dense ids for entity keys, until [`take`](Self::take).
#[derive(Default)]
pub struct EntityInterner {
    table: HashTable<Slot>,
    keys: EntityKeys,
    hasher: FixedState,
}

impl EntityInterner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of distinct keys so far.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The id of `key`, assigning the next one when it is new.
    #[inline]
    pub fn intern(&mut self, key: &[u8]) -> u32 {
        let hash = self.hasher.hash_one(key);
        let inline = inline_form(key);
        let keys = &self.keys;
        let found = self.table.find(hash, |s| match &inline {
            Some(b) => s.inline == *b,
            None => s.inline[0] == LONG && keys.get(s.id as usize) == key,
        });
        if let Some(s) = found {
            return s.id;
        }
        let id = self.keys.push(key);
        let mut slot = Slot {
            inline: [0; INLINE + 1],
            id,
        };
        match inline {
            Some(b) => slot.inline = b,
            None => slot.inline[0] = LONG,
        }
        let (keys, hasher) = (&self.keys, &self.hasher);
        self.table
            .insert_unique(hash, slot, |s| hasher.hash_one(keys.get(s.id as usize)));
        id
    }

    /// The key of an id.
    pub fn key(&self, id: u32) -> &[u8] {
        self.keys.get(id as usize)
    }

    /// Every key, sorted by (length, bytes), and each id's position in
    /// that order; the interner starts over (keeping its allocations).
    pub fn take_sorted(&mut self) -> (EntityKeys, Vec<u32>) {
        let sorted = self.keys.sorted();
        self.keys.clear();
        self.table.clear();
        sorted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dense_and_stable_and_sorting_ranks_by_length_then_bytes() {
        let mut x: u64 = 0x853C49E6748FEA9B;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut interner = EntityInterner::new();
        let mut brute: std::collections::HashMap<Vec<u8>, u32> = Default::default();
        for round in 0..3 {
            for _ in 0..20_000 {
                // Short, exactly-inline, long and empty keys, some with zero bytes.
                let key: Vec<u8> = match rnd(5) {
                    0 => format!("user-{}", rnd(3000)).into_bytes(),
                    1 => format!("{:0>23}", rnd(500)).into_bytes(),
                    2 => format!("a-much-longer-entity-key-{}", rnd(500)).into_bytes(),
                    3 => vec![0; rnd(4) as usize],
                    _ => vec![0, rnd(3) as u8, 0],
                };
                let next = brute.len() as u32;
                let want = *brute.entry(key.clone()).or_insert(next);
                assert_eq!(interner.intern(&key), want, "round {round}");
                assert_eq!(interner.key(want), key.as_slice());
            }
            assert_eq!(interner.len(), brute.len());
            let (sorted, rank) = interner.take_sorted();
            let mut want: Vec<&Vec<u8>> = brute.keys().collect();
            want.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
            assert_eq!(sorted.iter().collect::<Vec<_>>(), want);
            for (key, id) in &brute {
                assert_eq!(sorted.get(rank[*id as usize] as usize), key.as_slice());
            }
            assert!(interner.is_empty());
            brute.clear();
        }
    }
}
