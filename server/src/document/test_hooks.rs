//! Hooks for the server's own unit tests (compiled only under `cfg(test)`):
//! make a document's load from storage, or its answer to a join, slow, to
//! test what waits on it; make its actor fail (panic) on its next op.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

/// Documents whose load waits this long first, by id.
static SLOW_LOADS: Mutex<Option<HashMap<String, Duration>>> = Mutex::new(None);

/// Every later load of `doc` waits `by` before it reads storage.
pub(crate) fn slow_load(doc: &str, by: Duration) {
    let mut loads = SLOW_LOADS.lock().unwrap_or_else(|p| p.into_inner());
    loads.get_or_insert_default().insert(doc.to_owned(), by);
}

/// How long a load of `doc` waits first (none unless a test asked).
pub(crate) fn load_delay(doc: &str) -> Option<Duration> {
    let loads = SLOW_LOADS.lock().unwrap_or_else(|p| p.into_inner());
    loads.as_ref()?.get(doc).copied()
}

/// Documents whose actor waits this long before it answers a join, by id.
static SLOW_JOINS: Mutex<Option<HashMap<String, Duration>>> = Mutex::new(None);

/// The actor of `doc` waits `by` before it answers its next join (after the
/// upgrade's authorize, which it answers at once); later joins are answered
/// at once.
pub(crate) fn slow_join(doc: &str, by: Duration) {
    let mut joins = SLOW_JOINS.lock().unwrap_or_else(|p| p.into_inner());
    joins.get_or_insert_default().insert(doc.to_owned(), by);
}

/// How long the actor of `doc` waits before it answers this join (once).
pub(crate) fn join_delay(doc: &str) -> Option<Duration> {
    let mut joins = SLOW_JOINS.lock().unwrap_or_else(|p| p.into_inner());
    joins.as_mut()?.remove(doc)
}

/// Documents whose actor panics on its next op.
static FAILING_OPS: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// The actor of `doc` panics when it receives its next op (once).
pub(crate) fn panic_on_next_op(doc: &str) {
    let mut failing = FAILING_OPS.lock().unwrap_or_else(|p| p.into_inner());
    failing.get_or_insert_default().insert(doc.to_owned());
}

/// Whether the actor of `doc` panics on this op (once).
pub(crate) fn take_op_panic(doc: &str) -> bool {
    let mut failing = FAILING_OPS.lock().unwrap_or_else(|p| p.into_inner());
    failing.as_mut().is_some_and(|docs| docs.remove(doc))
}
