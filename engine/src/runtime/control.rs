//! Control channels: small out-of-band messages between the workers of all processes.
//!
//! Operators use them to agree on things that are not data: where each worker's share of a
//! file starts, the watermarks of idle workers' peers. They travel over timely's own
//! communication layer, so they work across processes, and an arriving message schedules the
//! operator that owns the channel.

use std::rc::Rc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use timely::Bincode;
use timely::communication::{Pull, Push};
use timely::worker::Worker;

/// A channel on which every message a worker sends is received by every worker (itself
/// included).
pub struct Broadcast<T> {
    push: Box<dyn Push<Bincode<T>>>,
    pull: Box<dyn Pull<Bincode<T>>>,
}

impl<T> Broadcast<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + 'static,
{
    /// Allocates a channel whose arrivals activate the operator at `address`. Every worker
    /// must allocate its channels in the same order (as it builds its dataflows).
    pub fn new(worker: &Worker, address: Rc<[usize]>) -> Self {
        let identifier = worker.new_identifier();
        let (push, pull) = worker.broadcast::<Bincode<T>>(identifier, address);
        Broadcast { push, pull }
    }

    /// Sends `message` to every worker.
    pub fn send(&mut self, message: T) {
        self.push.send(Bincode::from(message));
        self.push.done();
    }

    /// The next message received, if any.
    pub fn recv(&mut self) -> Option<T> {
        self.pull.recv().map(|message| message.payload)
    }
}
