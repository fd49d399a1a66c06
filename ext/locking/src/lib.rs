//! The Ruby binding of the `locking` gem: argument conversion, GVL release and
//! error mapping around `locking_core`. One file per Ruby class.

mod client;
mod error;
mod memory;
mod nogvl;
mod operate_places;
mod renewal;
mod rules;
mod semaphore;
mod walk;

use magnus::{Error, Ruby};

#[magnus::init(name = "locking")]
fn init(ruby: &Ruby) -> Result<(), Error> {
    client::init(ruby)?;
    renewal::init(ruby)?;
    walk::init(ruby)?;
    semaphore::init(ruby)?;
    operate_places::init(ruby)?;
    memory::init(ruby)
}
