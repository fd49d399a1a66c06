//! Where protocol commands run. The protocol's operations only ever produce
//! commands and consume replies; a `Store` is anything that answers them
//! one at a time: the in-memory model (`model::ModelStore`) of the explorer
//! and the unit tests. On Redis the driver is `client::Lease`, which routes
//! each command to its key's node and sends a batch's commands at once.

use crate::error::{Error, Result};
use crate::protocol::{Command, Operation, Reply, Step, Target};

pub trait Store {
    /// Runs one single-key command atomically.
    fn execute(&mut self, key: &[u8], command: &Command) -> Result<Reply>;
}

/// Runs an operation to completion, one command at a time. (The Redis
/// driver, `client::Lease`, runs the same operations but sends the commands
/// of a batch to both servers before reading either reply.)
pub fn run<'a, O: Operation>(
    op: O,
    key: &[u8],
    source: Option<&'a mut dyn Store>,
    destination: Option<&'a mut dyn Store>,
) -> Result<O::Output> {
    let mut op = op;
    let mut stores = [source, destination];
    let mut replies = Vec::new();
    loop {
        match op.step(replies) {
            Step::Done(result) => return result,
            Step::Send(batch) => {
                replies = batch
                    .iter()
                    .map(|(target, command)| {
                        let slot = match target {
                            Target::Source => 0,
                            Target::Destination => 1,
                        };
                        match stores[slot].as_deref_mut() {
                            Some(store) => store.execute(key, command),
                            None => Err(Error::InvalidArgument(format!(
                                "the {target:?} server is not configured"
                            ))),
                        }
                    })
                    .collect();
            }
        }
    }
}
