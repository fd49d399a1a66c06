//! What runs on top of a lease: the operator tools (`operator` and the walks,
//! deletes, backfill and control keys beside it) and the renewer thread.

pub mod backfill;
pub mod bulk;
pub mod control;
pub mod operator;
mod places;
pub mod renew;
pub mod semaphores;
pub mod stats;

#[cfg(test)]
mod redirect_tests;
