//! What a view may cost: every node the parser builds is counted, and the
//! parse stops when an object's limit or the shared pool runs out.

use serde::de;
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One `Value`: what a slot of an array costs.
pub(super) const NODE: usize = std::mem::size_of::<Value>();

/// What a map entry costs beyond its key's text: the `Value`, the key's
/// `String`, the hash, and the map's index for it, twice over for the slack
/// a map keeps as it grows (`serde_json::Map` is an `IndexMap`).
pub(super) const ENTRY: usize =
    2 * (NODE + std::mem::size_of::<String>() + 3 * std::mem::size_of::<usize>());

/// How much a budget draws from its pool at a time: one draw covers the
/// view of a typical Pod, so most requests touch the pool once.
const DRAW: usize = 64 * 1024;

/// Why a parse stopped for want of memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// The view would cost more than this object may (its `limit`).
    Limit,
    /// The views of the requests in flight have taken the whole pool.
    Pool,
}

/// The bytes a view may take; see the module docs. Counted as the view is
/// built: arrays by the buffers they allocate as they grow (the old buffer
/// is counted until the new one replaces it), maps by `ENTRY` per member,
/// strings by their bytes. With a pool, the budget draws what it counts from
/// it, `DRAW` bytes at a time, and gives it back when dropped: keep the
/// budget as long as the view.
#[derive(Debug)]
pub struct Budget {
    used: Cell<usize>,
    limit: usize,
    pool: Option<Arc<Semaphore>>,
    /// What has been drawn from the pool, held until the budget is dropped.
    drawn: RefCell<Option<OwnedSemaphorePermit>>,
    exceeded: Cell<Option<Exceeded>>,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Budget {
        Budget {
            used: Cell::new(0),
            limit,
            pool: None,
            drawn: RefCell::new(None),
            exceeded: Cell::new(None),
        }
    }

    /// A budget of `limit` bytes that also draws what it uses from `pool`
    /// (one permit per byte), shared with the other requests in flight.
    pub fn drawing_from(limit: usize, pool: Arc<Semaphore>) -> Budget {
        Budget {
            pool: Some(pool),
            ..Budget::new(limit)
        }
    }

    /// No limit: for input the user chose to run on (`calmplane preview -f`,
    /// `calmplane audit -f`), not for a server.
    pub fn unlimited() -> Budget {
        Budget::new(usize::MAX)
    }

    /// The limit this budget started with.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// What the view has taken so far, in bytes.
    pub fn used(&self) -> usize {
        self.used.get()
    }

    /// Why a parse stopped for want of memory, if it did.
    pub fn exceeded(&self) -> Option<Exceeded> {
        self.exceeded.get()
    }

    /// Take `bytes`, or fail the parse.
    pub(super) fn spend<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        let used = self.used.get().saturating_add(bytes);
        if used > self.limit {
            return Err(self.fail(Exceeded::Limit));
        }
        if let Some(pool) = &self.pool {
            let mut drawn = self.drawn.borrow_mut();
            let have = drawn.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
            if used > have {
                let more = (used - have).div_ceil(DRAW) * DRAW;
                let permit = u32::try_from(more)
                    .ok()
                    .and_then(|n| pool.clone().try_acquire_many_owned(n).ok());
                match (permit, drawn.as_mut()) {
                    (Some(p), Some(held)) => held.merge(p),
                    (Some(p), None) => *drawn = Some(p),
                    (None, _) => return Err(self.fail(Exceeded::Pool)),
                }
            }
        }
        self.used.set(used);
        Ok(())
    }

    /// Give back `bytes` freed while building (an array's old buffer).
    pub(super) fn refund(&self, bytes: usize) {
        self.used.set(self.used.get().saturating_sub(bytes));
    }

    fn fail<E: de::Error>(&self, why: Exceeded) -> E {
        self.exceeded.set(Some(why));
        match why {
            Exceeded::Limit => E::custom(format_args!(
                "the object would take more than {} bytes of memory to read; refused",
                self.limit
            )),
            Exceeded::Pool => E::custom("calmplane is busy: the requests in flight hold all the memory it sets aside for them"),
        }
    }
}
