//! A table of requests in flight, indexed by a small integer the engine hands the device
//! (a `user_data`, a CID): insert and remove are O(1) and reuse freed places, so a table
//! that reached a queue's depth never allocates again.

/// The table.
#[derive(Debug)]
pub struct Slots<T> {
    items: Vec<Option<T>>,
    free: Vec<usize>,
    used: usize,
}

impl<T> Slots<T> {
    /// An empty table with room for `n` entries before it allocates.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            items: Vec::with_capacity(n),
            free: Vec::with_capacity(n),
            used: 0,
        }
    }

    /// Stores `v` and returns its index.
    pub fn insert(&mut self, v: T) -> usize {
        self.used += 1;
        if let Some(i) = self.free.pop() {
            self.items[i] = Some(v);
            return i;
        }
        self.items.push(Some(v));
        self.items.len() - 1
    }

    /// Takes the entry at `i` out.
    pub fn remove(&mut self, i: usize) -> Option<T> {
        let v = self.items.get_mut(i)?.take()?;
        self.free.push(i);
        self.used -= 1;
        Some(v)
    }

    /// The entry at `i`.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.items.get_mut(i)?.as_mut()
    }

    /// Entries stored.
    pub fn len(&self) -> usize {
        self.used
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Iterates over the stored entries.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter().flatten()
    }

    /// Takes every entry out (for failing everything in flight).
    pub fn drain(&mut self) -> Vec<T> {
        self.free.clear();
        self.used = 0;
        self.items.drain(..).flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_reused() {
        let mut s = Slots::with_capacity(2);
        let (a, b) = (s.insert('a'), s.insert('b'));
        assert_eq!((a, b, s.len()), (0, 1, 2));
        assert_eq!(s.remove(a), Some('a'));
        assert_eq!(s.remove(a), None);
        assert_eq!(s.insert('c'), 0);
        assert_eq!(s.get_mut(1), Some(&mut 'b'));
        assert_eq!(s.drain(), vec!['c', 'b']);
        assert_eq!(s.len(), 0);
    }
}
