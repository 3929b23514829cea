//! [`MpiCollective`]: the [`Collective`] of a job launched by `mpirun` (feature `distributed`).
//!
//! Every collective is non-blocking and polled against its deadline: a blocking MPI collective whose peer
//! hangs never returns. MPI cannot take back a buffer it was given, so a collective that times out cannot
//! return: it prints an error naming this process and what it waited for, and ends the whole job with
//! `MPI_Abort` (mpirun then stops every rank).

use std::time::{Duration, Instant};

use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::request::{LocalScope, Request};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use mpi::Threading;
use trainer_core::job::Collective;
use trainer_core::Error;

/// The exit code of a job ended by a timeout or a failed rank.
pub const ABORT_CODE: i32 = 3;

/// MPI, initialised for this process, and its world communicator. Dropping it finalises MPI.
pub struct Mpi {
    world: SimpleCommunicator,
    _universe: Universe,
}

impl Mpi {
    /// MPI when this process was started by `mpirun` with more than one rank; `None` otherwise (a plain
    /// `trainer-cli train`, or `mpirun -n 1`), so a single process never initialises MPI.
    pub fn from_launcher() -> anyhow::Result<Option<Mpi>> {
        let size = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
            .iter()
            .find_map(|k| std::env::var(k).ok())
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(1);
        if size <= 1 {
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
            _universe: universe,
        }))
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    /// The collective for the job.
    pub fn collective(&self) -> MpiCollective<'_> {
        MpiCollective { world: &self.world }
    }

    /// Ends every process of the job with `code` (after this process printed why).
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

/// The [`Collective`] over MPI's world communicator.
pub struct MpiCollective<'u> {
    world: &'u SimpleCommunicator,
}

impl MpiCollective<'_> {
    /// Polls `request` until it completes or `timeout` passes; on timeout the job is aborted (see the module).
    fn wait<'a, D: ?Sized>(
        &self,
        mut request: Request<'a, D, &LocalScope<'a>>,
        timeout: Duration,
        what: &str,
    ) {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(20);
        loop {
            match request.test() {
                Ok(_) => return,
                Err(pending) => request = pending,
            }
            if Instant::now() >= deadline {
                let rank = self.world.rank();
                eprintln!(
                    "error: process {rank}: no answer from the other processes for {} s ({what}); stopping the job",
                    timeout.as_secs_f64()
                );
                self.world.abort(ABORT_CODE);
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
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
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
        let mut part = PartitionMut::new(&mut out[..], &counts32[..], &displs[..]);
        mpi::request::scope(|scope| {
            let request = self
                .world
                .immediate_all_gather_varcount_into(scope, mine, &mut part);
            self.wait(request, timeout, "gathering gradients");
        });
        Ok(out)
    }

    fn all_gather_u64(&self, mine: &[u64], timeout: Duration) -> trainer_core::Result<Vec<u64>> {
        let mut out = vec![0u64; mine.len() * self.size()];
        mpi::request::scope(|scope| {
            let request = self
                .world
                .immediate_all_gather_into(scope, mine, &mut out[..]);
            self.wait(request, timeout, "gathering numbers");
        });
        Ok(out)
    }

    fn broadcast(&self, bytes: &mut Vec<u8>, timeout: Duration) -> trainer_core::Result<()> {
        let root = self.world.process_at_rank(0);
        let mut len = [bytes.len() as u64];
        mpi::request::scope(|scope| {
            let request = root.immediate_broadcast_into(scope, &mut len[..]);
            self.wait(request, timeout, "waiting for process 0's decision");
        });
        let len = usize::try_from(len[0]).unwrap_or(usize::MAX);
        self.count(len)?;
        if self.rank() != 0 {
            bytes.clear();
            bytes.resize(len, 0);
        }
        mpi::request::scope(|scope| {
            let request = root.immediate_broadcast_into(scope, &mut bytes[..]);
            self.wait(request, timeout, "waiting for process 0's decision");
        });
        Ok(())
    }
}
