//! Where a graph's arrays live: in an owned `Vec`, or in a memory-mapped segment file (the
//! cold tier, `cold.rs`). Both read as one `&[T]`, so the search code does not know which.
//!
//! A mapped array's pages are the operating system's page cache: the process holds the
//! ones queries touched recently and the kernel evicts them under memory pressure, so a
//! shard can serve more vectors than its memory. Writing to a mapped array copies it into
//! memory first (copy on write); a built graph is only written before it is mapped.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use bytemuck::Pod;
use memmap2::Mmap;

/// An array of `T`, owned or mapped.
pub(crate) enum Store<T> {
    Owned(Vec<T>),
    Mapped(Mapped<T>),
}

/// `len` values of `T` at byte `offset` of a mapped file.
pub(crate) struct Mapped<T> {
    map: Arc<Mmap>,
    offset: usize,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Pod> Mapped<T> {
    /// `None` when the range is outside the map or `offset` is not aligned for `T`.
    pub(crate) fn new(map: Arc<Mmap>, offset: usize, len: usize) -> Option<Self> {
        let bytes = len.checked_mul(size_of::<T>())?;
        let end = offset.checked_add(bytes)?;
        let slice = map.get(offset..end)?;
        bytemuck::try_cast_slice::<u8, T>(slice).ok()?;
        Some(Self {
            map,
            offset,
            len,
            _t: PhantomData,
        })
    }

    fn as_slice(&self) -> &[T] {
        let bytes = &self.map[self.offset..self.offset + self.len * size_of::<T>()];
        bytemuck::cast_slice(bytes)
    }
}

impl<T> Store<T> {
    /// Whether the values live in a mapped file.
    pub(crate) fn is_mapped(&self) -> bool {
        matches!(self, Self::Mapped(_))
    }
}

impl<T> Default for Store<T> {
    fn default() -> Self {
        Self::Owned(Vec::new())
    }
}

impl<T> From<Vec<T>> for Store<T> {
    fn from(v: Vec<T>) -> Self {
        Self::Owned(v)
    }
}

impl<T: Pod> Deref for Store<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Self::Owned(v) => v,
            Self::Mapped(m) => m.as_slice(),
        }
    }
}

impl<T: Pod> DerefMut for Store<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        if let Self::Mapped(m) = self {
            *self = Self::Owned(m.as_slice().to_vec());
        }
        match self {
            Self::Owned(v) => v,
            Self::Mapped(_) => unreachable!("copied into memory above"),
        }
    }
}

impl<T: Pod> Clone for Store<T> {
    fn clone(&self) -> Self {
        match self {
            Self::Owned(v) => Self::Owned(v.clone()),
            Self::Mapped(m) => Self::Mapped(Mapped {
                map: m.map.clone(),
                offset: m.offset,
                len: m.len,
                _t: PhantomData,
            }),
        }
    }
}

impl<T: Pod + PartialEq> PartialEq for Store<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Pod> fmt::Debug for Store<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.is_mapped() { "mapped" } else { "owned" };
        write!(f, "Store({kind}, {} values)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn mapped_reads_like_owned_and_copies_on_write() {
        let dir = std::env::temp_dir().join(format!("store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.bin");
        let values: Vec<f32> = (0..100).map(|i| i as f32 * 0.5).collect();
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&[0u8; 64]).unwrap();
        f.write_all(bytemuck::cast_slice(&values)).unwrap();
        drop(f);
        let map = Arc::new(crate::cold::map_file(&path).unwrap());
        let mut mapped: Store<f32> = Store::Mapped(Mapped::new(map.clone(), 64, 100).unwrap());
        assert!(mapped.is_mapped());
        assert_eq!(mapped, Store::from(values.clone()));
        // Out of range or misaligned: refused.
        assert!(Mapped::<f32>::new(map.clone(), 64, 101).is_none());
        assert!(Mapped::<f32>::new(map, 62, 10).is_none());
        mapped[3] = 7.0;
        assert!(!mapped.is_mapped());
        assert_eq!(mapped[3], 7.0);
        assert_eq!(mapped[4], 2.0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
