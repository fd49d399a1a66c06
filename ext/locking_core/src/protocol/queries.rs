//! The read-only operations: locked? and ttl.

use super::{primary, unexpected, Command, Operation, Reply, Step, Target, TokenTtl};
use crate::error::{Error, Result};
use crate::protocol::phase::Phase;

/// locked?: any holder wherever the phase must look; both servers at once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Locked {
    targets: Vec<Target>,
    started: bool,
}

impl Locked {
    pub fn new(phase: Phase) -> Self {
        let targets = match phase {
            Phase::Source => vec![Target::Source],
            Phase::Dual | Phase::Drain => vec![Target::Source, Target::Destination],
            Phase::Destination => vec![Target::Destination],
        };
        Locked {
            targets,
            started: false,
        }
    }
}

impl Operation for Locked {
    type Output = bool;

    fn step(&mut self, replies: Vec<Result<Reply>>) -> Step<bool> {
        if !self.started {
            self.started = true;
            return Step::Send(
                self.targets
                    .iter()
                    .map(|target| (*target, Command::Exists))
                    .collect(),
            );
        }
        // An error is never turned into an answer: one unreachable server makes
        // the whole question fail, even when the other says "free".
        let mut locked = false;
        for reply in replies {
            match reply {
                Ok(Reply::Flag(exists)) => locked |= exists,
                Ok(other) => return unexpected("exists", &other),
                Err(error) => return Step::Done(Err(error)),
            }
        }
        Step::Done(Ok(locked))
    }
}

/// Remaining TTL of our lock on the server that decides ownership in the phase.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ttl {
    phase: Phase,
    token: Vec<u8>,
    started: bool,
}

impl Ttl {
    pub fn new(phase: Phase, token: &[u8]) -> Self {
        Ttl {
            phase,
            token: token.to_vec(),
            started: false,
        }
    }
}

impl Operation for Ttl {
    type Output = TokenTtl;

    fn step(&mut self, replies: Vec<Result<Reply>>) -> Step<TokenTtl> {
        if !self.started {
            self.started = true;
            return Step::Send(vec![(
                primary(self.phase),
                Command::TokenTtl {
                    token: self.token.clone(),
                },
            )]);
        }
        match replies.into_iter().next() {
            Some(Ok(Reply::Ttl(ttl))) => Step::Done(Ok(ttl)),
            Some(Ok(other)) => unexpected("token ttl", &other),
            Some(Err(error)) => Step::Done(Err(error)),
            None => Step::Done(Err(Error::Internal("ttl lost its reply".into()))),
        }
    }
}
