//! [`Collective`]: what a data-parallel job needs from its processes' communication engine (MPI, or threads in
//! one process), with no dependency on any engine; and [`ThreadGroup`], the engine for ranks that are threads of
//! one process (over channels).
//!
//! Every rank calls the same collectives in the same order. Each call waits at most its `timeout` for the
//! others and then fails with [`Error::Distributed`], so a rank that hangs ends the job instead of hanging it.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use crate::error::{Error, Result};

/// The communication a data-parallel job needs. Rank 0 is the leader: it alone writes files, reads control
/// input and decides when the run stops; the others follow its broadcasts.
pub trait Collective {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;

    /// The number of processes.
    fn size(&self) -> usize;

    /// Every rank's `mine` concatenated in rank order. `counts[r]` is the number of values rank `r` sends
    /// (every rank passes the same `counts`; `mine.len() == counts[rank]`).
    fn all_gather_f32(&self, mine: &[f32], counts: &[usize], timeout: Duration)
        -> Result<Vec<f32>>;

    /// Every rank's `mine` (the same length on every rank) concatenated in rank order.
    fn all_gather_u64(&self, mine: &[u64], timeout: Duration) -> Result<Vec<u64>>;

    /// Rank 0's `bytes` replace every other rank's.
    fn broadcast(&self, bytes: &mut Vec<u8>, timeout: Duration) -> Result<()>;
}

/// One message between two threads of a [`ThreadGroup`].
enum Message {
    F32(Vec<f32>),
    U64(Vec<u64>),
    Bytes(Vec<u8>),
}

impl Message {
    fn kind(&self) -> &'static str {
        match self {
            Message::F32(_) => "f32 values",
            Message::U64(_) => "u64 values",
            Message::Bytes(_) => "bytes",
        }
    }
}

/// One rank of a group of threads of one process that run a job together ([`ThreadGroup::new`]): each thread
/// builds its own job with its member. Messages go over channels, one per ordered pair of ranks, so they arrive
/// in the order they were sent.
pub struct ThreadGroup {
    rank: usize,
    /// `to[r]`: the channel to rank `r` (none to itself).
    to: Vec<Option<Sender<Message>>>,
    /// `from[r]`: the channel from rank `r` (none from itself).
    from: Vec<Option<Receiver<Message>>>,
}

impl ThreadGroup {
    /// The `size` members of a new group, member `r` being rank `r`; hand each to its own thread.
    pub fn new(size: usize) -> Vec<ThreadGroup> {
        let mut to: Vec<Vec<Option<Sender<Message>>>> = (0..size)
            .map(|_| (0..size).map(|_| None).collect())
            .collect();
        let mut from: Vec<Vec<Option<Receiver<Message>>>> = (0..size)
            .map(|_| (0..size).map(|_| None).collect())
            .collect();
        for (a, to_a) in to.iter_mut().enumerate() {
            for (b, slot) in to_a.iter_mut().enumerate() {
                if a != b {
                    let (tx, rx) = channel();
                    *slot = Some(tx);
                    from[b][a] = Some(rx);
                }
            }
        }
        to.into_iter()
            .zip(from)
            .enumerate()
            .map(|(rank, (to, from))| ThreadGroup { rank, to, from })
            .collect()
    }

    fn send(&self, to: usize, message: Message) -> Result<()> {
        match &self.to[to] {
            Some(tx) => tx.send(message).map_err(|_| gone(self.rank, to)),
            None => Ok(()),
        }
    }

    fn receive(&self, from: usize, timeout: Duration, what: &str) -> Result<Message> {
        let rx = self.from[from].as_ref().ok_or_else(|| {
            Error::distributed(self.rank, format!("no channel from process {from} (a bug)"))
        })?;
        rx.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => Error::distributed(
                self.rank,
                format!(
                    "no answer from process {from} for {} s ({what}); stopping the job",
                    timeout.as_secs_f64()
                ),
            ),
            RecvTimeoutError::Disconnected => gone(self.rank, from),
        })
    }

    fn mismatch(&self, from: usize, want: &str, got: &Message) -> Error {
        Error::distributed(
            self.rank,
            format!(
                "process {from} sent {} where {want} were due: the processes are out of step",
                got.kind()
            ),
        )
    }
}

fn gone(rank: usize, other: usize) -> Error {
    Error::distributed(
        rank,
        format!("process {other} has left the job (it stopped or failed); stopping the job"),
    )
}

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.to.len()
    }

    fn all_gather_f32(
        &self,
        mine: &[f32],
        counts: &[usize],
        timeout: Duration,
    ) -> Result<Vec<f32>> {
        if counts.len() != self.size() || counts[self.rank] != mine.len() {
            return Err(Error::distributed(
                self.rank,
                format!(
                    "all_gather_f32: {} values for counts {counts:?} (a bug)",
                    mine.len()
                ),
            ));
        }
        for r in 0..self.size() {
            self.send(r, Message::F32(mine.to_vec()))?;
        }
        let mut out = Vec::with_capacity(counts.iter().sum());
        for (r, &count) in counts.iter().enumerate() {
            if r == self.rank {
                out.extend_from_slice(mine);
                continue;
            }
            match self.receive(r, timeout, "gathering gradients")? {
                Message::F32(v) if v.len() == count => out.extend(v),
                Message::F32(v) => {
                    return Err(Error::distributed(
                        self.rank,
                        format!(
                            "process {r} sent {} values, {count} were due: the processes are out of step",
                            v.len()
                        ),
                    ))
                }
                other => return Err(self.mismatch(r, "f32 values", &other)),
            }
        }
        Ok(out)
    }

    fn all_gather_u64(&self, mine: &[u64], timeout: Duration) -> Result<Vec<u64>> {
        for r in 0..self.size() {
            self.send(r, Message::U64(mine.to_vec()))?;
        }
        let mut out = Vec::with_capacity(mine.len() * self.size());
        for r in 0..self.size() {
            if r == self.rank {
                out.extend_from_slice(mine);
                continue;
            }
            match self.receive(r, timeout, "gathering numbers")? {
                Message::U64(v) if v.len() == mine.len() => out.extend(v),
                other => return Err(self.mismatch(r, "as many u64 values", &other)),
            }
        }
        Ok(out)
    }

    fn broadcast(&self, bytes: &mut Vec<u8>, timeout: Duration) -> Result<()> {
        if self.rank == 0 {
            for r in 1..self.size() {
                self.send(r, Message::Bytes(bytes.clone()))?;
            }
            return Ok(());
        }
        match self.receive(0, timeout, "waiting for process 0's decision")? {
            Message::Bytes(v) => {
                *bytes = v;
                Ok(())
            }
            other => Err(self.mismatch(0, "bytes", &other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_in_rank_order_and_broadcasts_from_rank_0() {
        let t = Duration::from_secs(10);
        let results: Vec<(Vec<f32>, Vec<u64>, Vec<u8>)> = std::thread::scope(|s| {
            let handles: Vec<_> = ThreadGroup::new(3)
                .into_iter()
                .map(|g| {
                    s.spawn(move || {
                        let r = g.rank();
                        let mine: Vec<f32> = (0..r + 1).map(|i| (10 * r + i) as f32).collect();
                        let f = g.all_gather_f32(&mine, &[1, 2, 3], t).unwrap();
                        let u = g.all_gather_u64(&[r as u64, 7], t).unwrap();
                        let mut b = vec![r as u8; r + 1];
                        g.broadcast(&mut b, t).unwrap();
                        (f, u, b)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (f, u, b) in results {
            assert_eq!(f, [0.0, 10.0, 11.0, 20.0, 21.0, 22.0]);
            assert_eq!(u, [0, 7, 1, 7, 2, 7]);
            assert_eq!(b, [0]);
        }
    }

    #[test]
    fn a_silent_or_departed_rank_is_an_error_naming_it() {
        let mut group = ThreadGroup::new(2);
        let one = group.pop().unwrap();
        let zero = group.pop().unwrap();
        let err = zero
            .all_gather_u64(&[1], Duration::from_millis(50))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no answer from process 1"), "{err}");
        drop(one);
        let err = zero
            .all_gather_u64(&[1], Duration::from_millis(50))
            .unwrap_err()
            .to_string();
        assert!(err.contains("process 1 has left"), "{err}");
    }
}
