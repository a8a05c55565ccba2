//! Slices of a version's id-hash space: a sink instance serving `slice i of n` keeps only the
//! items whose slice hash is `i` modulo `n`, and the router scatters a query to one replica of
//! every slice of a layout.
//!
//! The slice hash is the platform's item hash ([`fnv1a64`]) passed through the SplitMix64
//! finalizer, so slices are independent of the shards inside an instance (FNV-1a modulo the
//! shard count): slice 0 of 2 with 2 shards still fills both shards. Because a slice is a
//! residue class, slice `i of n` is exactly the union of `i of 2n` and `i + n of 2n`, which is
//! how a slice splits in two. The function is fixed: every process and restart agrees.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::hash::fnv1a64;

/// The most slices a version may be cut into.
pub const MAX_SLICES: u32 = 1024;

/// One slice of the id-hash space: the items whose slice hash is `index` modulo `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slice {
    index: u32,
    count: u32,
}

/// Why a slice was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a slice: expected i/n with 0 <= i < n <= {MAX_SLICES}")]
pub struct BadSlice(pub String);

impl Slice {
    /// The whole space (`0/1`): an instance that holds every item.
    pub const WHOLE: Self = Self { index: 0, count: 1 };

    /// Slice `index` of `count`.
    pub fn new(index: u32, count: u32) -> Result<Self, BadSlice> {
        if count == 0 || count > MAX_SLICES || index >= count {
            return Err(BadSlice(format!("{index}/{count}")));
        }
        Ok(Self { index, count })
    }

    /// Every slice of a layout of `count` equal slices.
    pub fn all(count: u32) -> Result<Vec<Self>, BadSlice> {
        (0..count).map(|i| Self::new(i, count)).collect()
    }

    /// Its index.
    pub fn index(self) -> u32 {
        self.index
    }

    /// How many slices of its size make the whole space.
    pub fn count(self) -> u32 {
        self.count
    }

    /// Whether this is the whole space.
    pub fn is_whole(self) -> bool {
        self.count == 1
    }

    /// The slice hash of an item (see the module docs).
    pub fn hash(item_id: &str) -> u64 {
        splitmix64(fnv1a64(item_id.as_bytes()))
    }

    /// Whether `item_id` belongs to this slice.
    pub fn contains(self, item_id: &str) -> bool {
        self.count == 1 || Self::hash(item_id) % u64::from(self.count) == u64::from(self.index)
    }

    /// The slice of `item_id` in a layout of `count` equal slices.
    pub fn of(item_id: &str, count: u32) -> Result<Self, BadSlice> {
        let count_ok = Self::new(0, count)?.count;
        Ok(Self {
            index: (Self::hash(item_id) % u64::from(count_ok)) as u32,
            count: count_ok,
        })
    }

    /// The two slices this one splits into: `i of 2n` and `i + n of 2n`.
    pub fn halves(self) -> Result<(Self, Self), BadSlice> {
        let count = self
            .count
            .checked_mul(2)
            .filter(|&c| c <= MAX_SLICES)
            .ok_or_else(|| BadSlice(format!("{}/{}", self.index, u64::from(self.count) * 2)))?;
        Ok((
            Self {
                index: self.index,
                count,
            },
            Self {
                index: self.index + self.count,
                count,
            },
        ))
    }

    /// Whether some item belongs to both slices (`i ≡ j` modulo gcd(n, m)).
    pub fn overlaps(self, other: Self) -> bool {
        let g = gcd(self.count, other.count);
        self.index % g == other.index % g
    }

    /// Whether these slices hold every item exactly once.
    pub fn is_partition(slices: &[Self]) -> bool {
        if slices.is_empty() {
            return false;
        }
        for (i, a) in slices.iter().enumerate() {
            if slices[i + 1..].iter().any(|b| a.overlaps(*b)) {
                return false;
            }
        }
        // Disjoint residue classes: they cover everything when their shares sum to one.
        let lcm = slices.iter().fold(1u64, |l, s| {
            l / gcd64(l, s.count.into()) * u64::from(s.count)
        });
        slices.iter().map(|s| lcm / u64::from(s.count)).sum::<u64>() == lcm
    }
}

impl fmt::Display for Slice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Slice {
    type Err = BadSlice;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadSlice(s.to_owned());
        let (i, n) = s.trim().split_once('/').ok_or_else(bad)?;
        let (i, n) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        Self::new(i, n).map_err(|_| bad())
    }
}

impl Default for Slice {
    fn default() -> Self {
        Self::WHOLE
    }
}

impl Serialize for Slice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Slice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn gcd64(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd64(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let s: Slice = "1/4".parse().unwrap();
        assert_eq!((s.index(), s.count()), (1, 4));
        assert_eq!(s.to_string(), "1/4");
        for bad in ["4/4", "0/0", "x/2", "1", "-1/2", "0/2048", ""] {
            assert!(bad.parse::<Slice>().is_err(), "{bad}");
        }
        assert_eq!(Slice::default(), Slice::WHOLE);
    }

    #[test]
    fn each_item_is_in_exactly_one_slice_and_slices_are_even() {
        let all = Slice::all(4).unwrap();
        let mut counts = [0usize; 4];
        for i in 0..8000 {
            let id = format!("item-{i}");
            let owners: Vec<_> = all.iter().filter(|s| s.contains(&id)).collect();
            assert_eq!(owners.len(), 1, "{id}");
            assert_eq!(*owners[0], Slice::of(&id, 4).unwrap());
            counts[owners[0].index() as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (1800..2200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn slices_do_not_follow_the_shards_inside_an_instance() {
        // Items of slice 0/2 spread over both FNV shards of an instance with 2 shards.
        let slice = Slice::new(0, 2).unwrap();
        let mut shards = [0usize; 2];
        for i in 0..4000 {
            let id = format!("item-{i}");
            if slice.contains(&id) {
                shards[(fnv1a64(id.as_bytes()) % 2) as usize] += 1;
            }
        }
        assert!(shards.iter().all(|&c| c > 800), "{shards:?}");
    }

    #[test]
    fn a_slice_is_exactly_its_two_halves() {
        let s = Slice::new(1, 3).unwrap();
        let (a, b) = s.halves().unwrap();
        assert_eq!((a.to_string(), b.to_string()), ("1/6".into(), "4/6".into()));
        for i in 0..3000 {
            let id = format!("x{i}");
            assert_eq!(s.contains(&id), a.contains(&id) || b.contains(&id));
            assert!(!(a.contains(&id) && b.contains(&id)));
        }
        assert!(Slice::new(0, MAX_SLICES).unwrap().halves().is_err());
    }

    #[test]
    fn partitions_are_recognised() {
        let p = |s: &str| -> Vec<Slice> { s.split(',').map(|x| x.parse().unwrap()).collect() };
        assert!(Slice::is_partition(&p("0/1")));
        assert!(Slice::is_partition(&p("0/4,1/4,2/4,3/4")));
        // After splitting 0/2: 1/2 with its halves' sibling 0/4 and 2/4.
        assert!(Slice::is_partition(&p("1/2,0/4,2/4")));
        assert!(
            !Slice::is_partition(&p("0/2,0/4,2/4,1/2")),
            "0/2 overlaps its halves"
        );
        assert!(!Slice::is_partition(&p("0/4,1/4,2/4")), "3/4 is missing");
        assert!(!Slice::is_partition(&p("0/2,1/3")), "they overlap");
        assert!(!Slice::is_partition(&[]));
        assert!(
            Slice::new(0, 2)
                .unwrap()
                .overlaps(Slice::new(2, 4).unwrap())
        );
        assert!(
            !Slice::new(1, 2)
                .unwrap()
                .overlaps(Slice::new(2, 4).unwrap())
        );
    }
}
