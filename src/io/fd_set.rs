//! A set of fds as a bitmap indexed by fd number (fds are small and dense).

use std::os::fd::RawFd;

#[derive(Default)]
pub struct FdSet {
    words: Vec<u64>,
}

impl FdSet {
    fn index(fd: RawFd) -> Option<(usize, u64)> {
        let fd = usize::try_from(fd).ok()?;
        Some((fd / 64, 1 << (fd % 64)))
    }

    pub fn contains(&self, fd: RawFd) -> bool {
        Self::index(fd)
            .and_then(|(w, bit)| self.words.get(w).map(|word| word & bit != 0))
            .unwrap_or(false)
    }

    /// Adds `fd` (negative fds are ignored).
    pub fn insert(&mut self, fd: RawFd) {
        if let Some((w, bit)) = Self::index(fd) {
            if w >= self.words.len() {
                self.words.resize(w + 1, 0);
            }
            self.words[w] |= bit;
        }
    }

    pub fn remove(&mut self, fd: RawFd) {
        if let Some((w, bit)) = Self::index(fd) {
            if let Some(word) = self.words.get_mut(w) {
                *word &= !bit;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FdSet;

    #[test]
    fn insert_contains_remove() {
        let mut s = FdSet::default();
        assert!(!s.contains(3));
        s.insert(3);
        s.insert(64);
        s.insert(10_000);
        s.insert(-1);
        assert!(s.contains(3) && s.contains(64) && s.contains(10_000));
        assert!(!s.contains(4) && !s.contains(63) && !s.contains(-1));
        s.remove(64);
        s.remove(99_999);
        assert!(!s.contains(64) && s.contains(3));
    }
}
