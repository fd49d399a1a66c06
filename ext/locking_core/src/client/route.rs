//! Routing with redirects: which connection of a lease a request goes on
//! (opened, reopened or taken from the pool on first use), a pooled
//! connection found dead retried once on a new one, and a cluster's MOVED,
//! ASK, TRYAGAIN and CLUSTERDOWN followed.

use super::lease::{Lease, Route};
use crate::error::{Error, Result};
use crate::protocol::Target;
use crate::topology::cluster::{self, Redirect};
use crate::topology::node::Node;
use crate::topology::server::Server;
use crate::wire::codec::Value;
use crate::wire::connection::Interrupt;
use crate::wire::pipeline::{self, Link, Received, Request};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl<'c> Lease<'c> {
    /// Runs one request on the node `route` names, following a cluster's
    /// redirects (see `follow`).
    pub(super) fn request(
        &mut self,
        target: Target,
        route: Route<'_>,
        request: Request<'_>,
        interrupt: &Interrupt,
    ) -> Result<Value> {
        // The hot path: one request, no Vec for its reply.
        let value = self.on_node(target, route, interrupt, |connection, dialect| {
            pipeline::run_one(connection, dialect, request, interrupt)
        })?;
        match (route, request.key()) {
            (_, Some(key)) | (Route::Key(key), None) => {
                self.follow(target, key, request, value, interrupt)
            }
            (Route::Node(_), None) => Ok(value),
        }
    }

    /// `value`, the reply to `request` on `key`; when it is a cluster's
    /// redirect, the request is sent where it says, until a reply that is
    /// not one (at most `MAX_REDIRECTS` MOVED/ASK). MOVED updates the slot map; ASK
    /// sends `ASKING` first, once; TRYAGAIN and CLUSTERDOWN wait a little
    /// (doubling, within the timeout) and ask the slot's master again. None
    /// of these replies means the command ran, so sending it again is safe.
    pub(super) fn follow(
        &mut self,
        target: Target,
        key: &[u8],
        request: Request<'_>,
        mut value: Value,
        interrupt: &Interrupt,
    ) -> Result<Value> {
        let Some(cluster) = self.client.server(target).and_then(Server::cluster) else {
            return Ok(value);
        };
        let give_up = Instant::now() + self.client.timeout;
        let mut pause = Duration::from_millis(5);
        // MOVED and ASK count toward MAX_REDIRECTS; a retry (CLUSTERDOWN,
        // TRYAGAIN) is bounded by the timeout alone: a failover answers
        // CLUSTERDOWN for its whole length, which can outlast 16 backoffs.
        let mut redirects = 0;
        loop {
            let Some(redirect) = cluster::redirect(&value) else {
                return Ok(value);
            };
            if matches!(redirect, Redirect::Moved(..) | Redirect::Ask(..)) {
                if redirects == cluster::MAX_REDIRECTS {
                    break;
                }
                redirects += 1;
            }
            value = match redirect {
                Redirect::Moved(slot, address) => {
                    let node = cluster.moved(slot, &address)?;
                    self.exchange_raw((target, Route::Node(node)), &[request], interrupt)?
                        .pop()
                        .unwrap_or(Value::Nil)
                }
                Redirect::Ask(_, address) => {
                    cluster.asked.fetch_add(1, Ordering::Relaxed);
                    let node = cluster.node_at(&address)?;
                    let asking = [Request::Plain(&["ASKING".into()]), request];
                    self.exchange_raw((target, Route::Node(node)), &asking, interrupt)?
                        .pop()
                        .unwrap_or(Value::Nil)
                }
                Redirect::Retry(_) if Instant::now() + pause >= give_up => return Ok(value),
                Redirect::Retry(_) => {
                    cluster.retried.fetch_add(1, Ordering::Relaxed);
                    let until = Instant::now() + pause;
                    while Instant::now() < until {
                        if interrupt.is_cancelled() {
                            return Err(Error::Interrupted {
                                server: cluster.name().to_string(),
                            });
                        }
                        std::thread::sleep(Duration::from_millis(1).min(pause));
                    }
                    pause = (pause * 2).min(Duration::from_millis(100));
                    // A failover may have moved the slot meanwhile.
                    cluster.refresh(false, interrupt)?;
                    self.exchange_raw((target, Route::Key(key)), &[request], interrupt)?
                        .pop()
                        .unwrap_or(Value::Nil)
                }
            };
        }
        Err(Error::Command {
            server: cluster.name().to_string(),
            detail: format!(
                "still redirected after {} tries (the cluster's slots keep moving)",
                cluster::MAX_REDIRECTS
            ),
        })
    }

    /// Runs `requests` on the node of `target` that `route` names, as one
    /// pipeline through the executor; each request a cluster redirects is
    /// followed on its own (see `follow`).
    pub(crate) fn exchange(
        &mut self,
        target: Target,
        route: Route<'_>,
        requests: &[Request<'_>],
        interrupt: &Interrupt,
    ) -> Result<Vec<Value>> {
        let values = self.exchange_raw((target, route), requests, interrupt)?;
        let redirects = self
            .client
            .server(target)
            .and_then(Server::cluster)
            .is_some();
        if !redirects {
            return Ok(values);
        }
        let mut followed = Vec::with_capacity(values.len());
        for (request, value) in requests.iter().zip(values) {
            let key = match (request.key(), route) {
                (Some(key), _) | (None, Route::Key(key)) => key,
                (None, Route::Node(_)) => {
                    followed.push(value);
                    continue;
                }
            };
            followed.push(self.follow(target, key, *request, value, interrupt)?);
        }
        Ok(followed)
    }

    /// `exchange` without following redirects, on the node `at` names (as
    /// `receive` takes it). Like every operation, it is sent once more on a
    /// new connection when a pooled one turns out dead (a restart, an idle
    /// drop).
    pub(super) fn exchange_raw(
        &mut self,
        (target, route): (Target, Route<'_>),
        requests: &[Request<'_>],
        interrupt: &Interrupt,
    ) -> Result<Vec<Value>> {
        self.on_node(target, route, interrupt, |connection, dialect| {
            pipeline::run(connection, dialect, requests, interrupt)
        })
    }

    /// Runs `exchange` on the connection to the node `route` names, and once
    /// more on a new connection when a pooled one turns out dead.
    pub(super) fn on_node<T>(
        &mut self,
        target: Target,
        route: Route<'_>,
        interrupt: &Interrupt,
        exchange: impl Fn(&mut Link, &pipeline::Dialect) -> Result<T>,
    ) -> Result<T> {
        // A redirect followed, a resend, a retry: each is a pipeline sent.
        self.check_fence()?;
        let (index, node, connection) = self.connection(target, route, interrupt)?;
        let stale = connection.from_pool;
        match exchange(connection, &node.dialect) {
            Err(Error::Connection { .. }) if stale => {
                let (_, node, connection) =
                    self.connection(target, Route::Node(index), interrupt)?;
                exchange(connection, &node.dialect)
            }
            other => other,
        }
    }

    /// Reads the replies to the pipeline of `ticket` (which must be
    /// `requests`) on the lease's connection to the node `at` names, by
    /// `deadline` (`None`: the connection's read timeout from now); with the
    /// node, whose dialect decodes them.
    pub(crate) fn receive(
        &mut self,
        (target, route): (Target, Route<'_>),
        ticket: pipeline::Ticket,
        requests: &[Request<'_>],
        deadline: Option<Instant>,
        interrupt: &Interrupt,
    ) -> Result<(&'c Node, Vec<Received>)> {
        let (_, node, connection) = self.connection(target, route, interrupt)?;
        let deadline = deadline.unwrap_or_else(|| Instant::now() + connection.read_timeout());
        let received = pipeline::receive(
            connection,
            &node.dialect,
            ticket,
            requests,
            deadline,
            interrupt,
        )?;
        Ok((node, received))
    }

    pub(super) fn missing(&self, target: Target) -> Error {
        Error::InvalidArgument(format!(
            "phase {} needs the {} server, which is not configured",
            self.phase,
            target.name()
        ))
    }

    /// The lease's connection to the node `route` names (with its place),
    /// opened (or reopened after a failure) on first use and watched by
    /// this operation's interrupt.
    pub(crate) fn connection(
        &mut self,
        target: Target,
        route: Route<'_>,
        interrupt: &Interrupt,
    ) -> Result<(usize, &'c Node, &mut Link)> {
        let client = self.client;
        let server = client.server(target).ok_or_else(|| self.missing(target))?;
        let index = match route {
            Route::Key(key) => server.locate(key, interrupt)?,
            Route::Node(index) => index,
        };
        let node = server
            .node(index)
            .ok_or_else(|| Error::Internal(format!("{} has no node {index}", server.name())))?;
        let held = match target {
            Target::Source => &mut self.source,
            Target::Destination => &mut self.destination,
        };
        let place = match held.iter().position(|(at, _)| *at == index) {
            Some(place) if held[place].1.healthy && held[place].1.pid == crate::process::id() => {
                place
            }
            found => {
                if let Some(place) = found {
                    // Not given back: this operation's interrupt still watches it.
                    let (_, broken) = held.remove(place);
                    if !broken.healthy {
                        server.connection_failed(index);
                    }
                }
                // After a broken one, a new connection: the pooled ones are
                // likely as dead (a restart).
                let pooled = found.is_none().then(|| node.pool.take()).flatten();
                let connection = match pooled {
                    Some(connection) => connection,
                    None => match node.connect(interrupt) {
                        Ok(connection) => connection,
                        Err(error) => {
                            if matches!(error, Error::Connection { .. } | Error::Timeout { .. }) {
                                server.connection_failed(index);
                            }
                            return Err(error);
                        }
                    },
                };
                held.push((index, connection));
                held.len() - 1
            }
        };
        let connection = &mut held[place].1;
        connection.watch(interrupt)?;
        Ok((index, node, connection))
    }
}
