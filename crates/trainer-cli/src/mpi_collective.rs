//! [`MpiCollective`]: the [`Collective`] of a job launched by `mpirun` (feature `distributed`).
//!
//! Every collective is non-blocking and polled against its deadline: a blocking MPI collective whose peer
//! hangs never returns. MPI cannot take back a buffer it was given, so a collective that times out cannot
//! return: it prints an error naming this process and what it waited for, and ends the whole job with
//! `MPI_Abort` (mpirun then stops every rank).

use std::cell::Cell;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::request::{LocalScope, Request};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use mpi::Threading;
use trainer_core::job::Collective;
use trainer_core::Error;

/// The exit code of a job a collective's timeout ended (a process that fails ends it with 2).
pub const ABORT_CODE: i32 = 3;

/// MPI, initialised for this process, and its world communicator. Dropping it finalises MPI.
pub struct Mpi {
    world: SimpleCommunicator,
    traffic: Cell<Traffic>,
    _universe: Universe,
}

/// What this process's collectives moved and how long they took.
#[derive(Clone, Copy, Default)]
struct Traffic {
    calls: u64,
    /// Bytes this process contributed to gathers, or broadcast as rank 0.
    sent: u64,
    /// Bytes it received from the others.
    received: u64,
    /// Time inside collectives: moving the bytes and waiting for the slowest process.
    inside: Duration,
    first: Option<Instant>,
}

impl Mpi {
    /// MPI when this process was started by `mpirun` with more than one rank; `None` otherwise (a plain
    /// `trainer-cli train`, or `mpirun -n 1`), so a single process never initialises MPI.
    pub fn from_launcher() -> anyhow::Result<Option<Mpi>> {
        if crate::ranks::launched_size() <= 1 {
            return Ok(None);
        }
        let (universe, _) =
            mpi::initialize_with_threading(Threading::Funneled).ok_or_else(|| {
                anyhow::anyhow!("MPI was already initialised in this process (a bug)")
            })?;
        let world = universe.world();
        if world.size() <= 1 {
            return Ok(None);
        }
        Ok(Some(Mpi {
            world,
            traffic: Cell::default(),
            _universe: universe,
        }))
    }

    /// Runs `job` as this process's part of the job. A failed process prints its error and ends every process
    /// of the job with `MPI_Abort` (exit code 2): the others would otherwise wait for it until their timeout.
    /// A process that ends well prints what its collectives moved.
    pub fn run(
        &self,
        job: impl FnOnce(MpiCollective<'_>) -> anyhow::Result<ExitCode>,
    ) -> anyhow::Result<ExitCode> {
        match job(MpiCollective { mpi: self }) {
            Ok(code) => {
                crate::ranks::say(&self.traffic_text());
                Ok(code)
            }
            Err(err) => {
                // The library's distributed errors already name the process.
                match err.downcast_ref::<Error>() {
                    Some(Error::Distributed { .. }) => {
                        crate::ranks::say(&format!("error: {err:#}"))
                    }
                    _ => {
                        crate::ranks::say(&format!("error: process {}: {err:#}", self.world.rank()))
                    }
                }
                self.world.abort(2)
            }
        }
    }

    /// One line: this process's collectives, bytes and time in them, against the time since the first.
    fn traffic_text(&self) -> String {
        let t = self.traffic.get();
        let since = t.first.map_or(0.0, |f| f.elapsed().as_secs_f64());
        let inside = t.inside.as_secs_f64();
        format!(
            "process {} of {}: {} collectives, sent {:.2} MB, received {:.2} MB, {inside:.2} s in them ({:.1}% of the {since:.2} s since the first)",
            self.world.rank(),
            self.world.size(),
            t.calls,
            t.sent as f64 / 1e6,
            t.received as f64 / 1e6,
            100.0 * inside / since.max(1e-9),
        )
    }
}

/// The [`Collective`] over MPI's world communicator.
pub struct MpiCollective<'u> {
    mpi: &'u Mpi,
}

impl MpiCollective<'_> {
    /// Polls `request` until it completes or `timeout` passes; on timeout the job is aborted (see the module).
    /// Counts the call, its `sent` and `received` bytes and its time.
    fn wait<'a, D: ?Sized>(
        &self,
        mut request: Request<'a, D, &LocalScope<'a>>,
        timeout: Duration,
        what: &str,
        (sent, received): (usize, usize),
    ) {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut pause = Duration::from_micros(20);
        loop {
            match request.test() {
                Ok(_) => {
                    let mut t = self.mpi.traffic.get();
                    t.calls += 1;
                    t.sent += sent as u64;
                    t.received += received as u64;
                    t.inside += start.elapsed();
                    t.first.get_or_insert(start);
                    self.mpi.traffic.set(t);
                    return;
                }
                Err(pending) => request = pending,
            }
            if Instant::now() >= deadline {
                let rank = self.mpi.world.rank();
                crate::ranks::say(&format!(
                    "error: process {rank}: no answer from the other processes for {} s ({what}); stopping the job \
                     (the last checkpoint resumes with --resume latest; --collective-timeout sets the wait)",
                    timeout.as_secs_f64()
                ));
                self.mpi.world.abort(ABORT_CODE);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    fn count(&self, n: usize) -> trainer_core::Result<i32> {
        i32::try_from(n).map_err(|_| {
            Error::Distributed {
                rank: self.rank(),
                message: format!("{n} values in one message: MPI takes at most {} (use more ranks or a smaller adapter)", i32::MAX),
            }
        })
    }
}

impl Collective for MpiCollective<'_> {
    fn rank(&self) -> usize {
        self.mpi.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.mpi.world.size() as usize
    }

    fn all_gather_f32(
        &self,
        mine: &[f32],
        counts: &[usize],
        timeout: Duration,
    ) -> trainer_core::Result<Vec<f32>> {
        if counts.len() != self.size() || counts[self.rank()] != mine.len() {
            return Err(Error::Distributed {
                rank: self.rank(),
                message: format!(
                    "all_gather_f32: {} values for counts {counts:?} (a bug)",
                    mine.len()
                ),
            });
        }
        let counts32 = counts
            .iter()
            .map(|&c| self.count(c))
            .collect::<trainer_core::Result<Vec<i32>>>()?;
        let mut displs = Vec::with_capacity(counts.len());
        let mut at = 0usize;
        for &c in counts {
            displs.push(self.count(at)?);
            at += c;
        }
        let mut out = vec![0f32; at];
        let received = std::mem::size_of_val(&out[..]) - std::mem::size_of_val(mine);
        let mut part = PartitionMut::new(&mut out[..], &counts32[..], &displs[..]);
        mpi::request::scope(|scope| {
            let request = self
                .mpi
                .world
                .immediate_all_gather_varcount_into(scope, mine, &mut part);
            let sent = std::mem::size_of_val(mine);
            let io = (sent, received);
            self.wait(request, timeout, "gathering gradients", io);
        });
        Ok(out)
    }

    fn all_gather_u64(&self, mine: &[u64], timeout: Duration) -> trainer_core::Result<Vec<u64>> {
        let mut out = vec![0u64; mine.len() * self.size()];
        mpi::request::scope(|scope| {
            let request = self
                .mpi
                .world
                .immediate_all_gather_into(scope, mine, &mut out[..]);
            let bytes = std::mem::size_of_val(mine);
            let io = (bytes, bytes * (self.size() - 1));
            self.wait(request, timeout, "gathering numbers", io);
        });
        Ok(out)
    }

    fn broadcast(&self, bytes: &mut Vec<u8>, timeout: Duration) -> trainer_core::Result<()> {
        let root = self.mpi.world.process_at_rank(0);
        let root_sends = |n: usize| if self.rank() == 0 { (n, 0) } else { (0, n) };
        let mut len = [bytes.len() as u64];
        mpi::request::scope(|scope| {
            let request = root.immediate_broadcast_into(scope, &mut len[..]);
            self.wait(
                request,
                timeout,
                "waiting for process 0's decision",
                root_sends(8),
            );
        });
        let len = usize::try_from(len[0]).unwrap_or(usize::MAX);
        self.count(len)?;
        if self.rank() != 0 {
            bytes.clear();
            bytes.resize(len, 0);
        }
        mpi::request::scope(|scope| {
            let request = root.immediate_broadcast_into(scope, &mut bytes[..]);
            self.wait(
                request,
                timeout,
                "waiting for process 0's decision",
                root_sends(len),
            );
        });
        Ok(())
    }
}
