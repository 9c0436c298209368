//! A vector of reusable entries addressed by index: the scheduler's nodes, feasibility groups and
//! task classes refer to each other by these indices instead of by hashing their keys again.

use std::ops::{Index, IndexMut};

/// Entries addressed by a stable index; removed indices are reused.
pub(super) struct Slab<T> {
    entries: Vec<Option<T>>,
    vacant: Vec<usize>,
}

impl<T> Slab<T> {
    pub(super) fn new() -> Self {
        Self {
            entries: Vec::new(),
            vacant: Vec::new(),
        }
    }

    /// Stores `value`; returns its index.
    pub(super) fn insert(&mut self, value: T) -> usize {
        match self.vacant.pop() {
            Some(id) => {
                self.entries[id] = Some(value);
                id
            }
            None => {
                self.entries.push(Some(value));
                self.entries.len() - 1
            }
        }
    }

    pub(super) fn remove(&mut self, id: usize) -> Option<T> {
        let value = self.entries.get_mut(id)?.take()?;
        self.vacant.push(id);
        Some(value)
    }

    pub(super) fn get(&self, id: usize) -> Option<&T> {
        self.entries.get(id)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, id: usize) -> Option<&mut T> {
        self.entries.get_mut(id)?.as_mut()
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len() - self.vacant.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(id, entry)| Some((id, entry.as_ref()?)))
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut T)> {
        self.entries
            .iter_mut()
            .enumerate()
            .filter_map(|(id, entry)| Some((id, entry.as_mut()?)))
    }
}

/// Indexing an id that was removed is a bug in the scheduler's bookkeeping.
impl<T> Index<usize> for Slab<T> {
    type Output = T;

    fn index(&self, id: usize) -> &T {
        self.get(id)
            .unwrap_or_else(|| panic!("scheduler bookkeeping: no entry {id}"))
    }
}

impl<T> IndexMut<usize> for Slab<T> {
    fn index_mut(&mut self, id: usize) -> &mut T {
        self.get_mut(id)
            .unwrap_or_else(|| panic!("scheduler bookkeeping: no entry {id}"))
    }
}
