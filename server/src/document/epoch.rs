//! The epoch a document shows in its first messages, and what the epoch a
//! client brings says about it.
//!
//! A document shows `max(storage epoch, deleted + 1)`, where `deleted` is the
//! last epoch a deleted generation of its id showed (kept by storage). So a
//! re-created document shows an epoch greater than any its id showed before,
//! and an unclean restart (which raises the storage epoch past every deleted
//! epoch + 1) changes every document's epoch. A client whose epoch is at most
//! `deleted` last saw a generation that is gone.

/// A document's epoch and its id's deleted epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DocEpoch {
    storage: u64,
    deleted: Option<u64>,
}

impl DocEpoch {
    /// The epoch of a document on storage with epoch `storage` whose id was
    /// last deleted showing `deleted` (`None`: never deleted).
    pub(crate) fn new(storage: u64, deleted: Option<u64>) -> DocEpoch {
        DocEpoch { storage, deleted }
    }

    /// The epoch the first messages carry.
    pub(crate) fn shown(&self) -> u64 {
        match self.deleted {
            Some(deleted) => self.storage.max(deleted.saturating_add(1)),
            None => self.storage,
        }
    }

    /// Whether a client that last saw `client` saw a deleted generation (it
    /// is closed with 4004, so that it gives up what it did not send).
    /// On a regional server: the epoch to remember as deleted so that this
    /// document never shows `home`, the home's epoch for it (a client that
    /// saved its state at the home must get a snapshot or a 4004 here, never
    /// a resume into this other history); `None` when it already differs.
    /// Epochs are times in milliseconds, so this only happens when the two
    /// storages were made in the same millisecond.
    pub(crate) fn marker_against(&self, home: u64) -> Option<u64> {
        (self.shown() == home).then_some(home)
    }

    /// This epoch with `deleted` remembered too.
    pub(crate) fn with_deleted(&self, deleted: u64) -> DocEpoch {
        DocEpoch {
            storage: self.storage,
            deleted: Some(self.deleted.map_or(deleted, |d| d.max(deleted))),
        }
    }

    pub(crate) fn saw_deleted(&self, client: Option<u64>) -> bool {
        matches!((client, self.deleted), (Some(c), Some(d)) if c <= d)
    }

    /// Whether a client that last saw `client` may resume from its revision:
    /// only with the epoch shown now; without an epoch (an old client) only
    /// if the id was never deleted, since its revision may be of a deleted
    /// generation.
    pub(crate) fn may_resume(&self, client: Option<u64>) -> bool {
        match client {
            Some(epoch) => epoch == self.shown(),
            None => self.deleted.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DocEpoch;

    #[test]
    fn a_never_deleted_document_shows_the_storage_epoch() {
        let e = DocEpoch::new(100, None);
        assert_eq!(e.shown(), 100);
        assert!(e.may_resume(Some(100)));
        assert!(e.may_resume(None));
        assert!(!e.may_resume(Some(99)));
        assert!(!e.saw_deleted(Some(99)));
    }

    #[test]
    fn a_region_never_shows_its_homes_epoch() {
        let e = DocEpoch::new(100, None);
        assert_eq!(e.marker_against(99), None);
        let marker = e.marker_against(100).unwrap();
        let marked = e.with_deleted(marker);
        assert_ne!(marked.shown(), 100);
        assert_eq!(marked.marker_against(100), None);
        // A deleted epoch already remembered is never lowered.
        let e = DocEpoch::new(100, Some(300));
        assert_eq!(e.with_deleted(50).shown(), 301);
        assert_eq!(e.marker_against(301), Some(301));
        assert_ne!(e.with_deleted(301).shown(), 301);
    }

    #[test]
    fn a_re_created_document_shows_more_than_its_deleted_generation() {
        // Deleted while the storage epoch was shown.
        let e = DocEpoch::new(100, Some(100));
        assert_eq!(e.shown(), 101);
        assert!(e.saw_deleted(Some(100)));
        assert!(e.saw_deleted(Some(7)));
        assert!(!e.saw_deleted(Some(101)));
        assert!(!e.saw_deleted(None));
        assert!(e.may_resume(Some(101)));
        assert!(!e.may_resume(None), "an epoch-less resume gets a snapshot");
        // Deleted again: the next generation goes higher still.
        assert_eq!(DocEpoch::new(100, Some(e.shown())).shown(), 102);
        // A later storage epoch (an unclean restart) wins.
        assert_eq!(DocEpoch::new(500, Some(101)).shown(), 500);
    }
}
