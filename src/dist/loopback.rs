//! The in-process backend: `n` ranks that are threads of one process (each
//! with its own runtime and model), exchanging bytes through shared memory.
//! It makes distributed runs testable without MPI and, since the sums are
//! the collectives' own (rank order), equal bit for bit to an MPI run.

use super::exchange::{self, Exchange, Part};
use super::Communicator;
use crate::error::{arg_err, Error, Result};
use std::sync::{Arc, Condvar, Mutex};

/// What one collective call of every rank has deposited so far.
#[derive(Default)]
struct Round {
    /// Completed collectives; a rank waits for `generation` to move on.
    generation: u64,
    arrived: usize,
    left: usize,
    /// Each rank's message.
    sends: Vec<Option<Part>>,
    aborted: Option<i32>,
}

struct Shared {
    n: usize,
    round: Mutex<Round>,
    cv: Condvar,
}

pub struct Loopback {
    rank: usize,
    shared: Arc<Shared>,
}

impl Loopback {
    /// The `n` ranks of one group, rank order.
    pub fn group(n: usize) -> Result<Vec<Loopback>> {
        if n == 0 {
            return Err(arg_err("loopback", "a group needs at least one rank"));
        }
        let shared = Arc::new(Shared {
            n,
            round: Mutex::new(Round {
                sends: vec![None; n],
                ..Default::default()
            }),
            cv: Condvar::new(),
        });
        Ok((0..n)
            .map(|rank| Loopback {
                rank,
                shared: shared.clone(),
            })
            .collect())
    }

    /// The code some rank aborted the group with, if one did.
    pub fn aborted(&self) -> Option<i32> {
        self.shared.round.lock().unwrap().aborted
    }
}

fn aborted(code: i32) -> Error {
    Error::Io(format!("loopback: the job was aborted (code {code})"))
}

impl Exchange for Loopback {
    /// Deposits this rank's part, waits for every rank's, lets `take` read
    /// all parts (rank order), then waits until every rank has read them.
    fn exchange(&self, mine: Part, take: &mut dyn FnMut(&[&Part]) -> Result<()>) -> Result<()> {
        let sh = &*self.shared;
        let mut r = sh.round.lock().unwrap();
        let gen = r.generation;
        r.sends[self.rank] = Some(mine);
        r.arrived += 1;
        if r.arrived == sh.n {
            sh.cv.notify_all();
        }
        while r.arrived < sh.n && r.aborted.is_none() {
            r = sh.cv.wait(r).unwrap();
        }
        if let Some(code) = r.aborted {
            return Err(aborted(code));
        }
        let parts: Vec<&Part> = r
            .sends
            .iter()
            .map(|s| s.as_ref().expect("every rank deposited"))
            .collect();
        let res = take(&parts);
        r.left += 1;
        if r.left == sh.n {
            r.arrived = 0;
            r.left = 0;
            r.sends.iter_mut().for_each(|s| *s = None);
            r.generation += 1;
            sh.cv.notify_all();
        }
        while r.generation == gen && r.aborted.is_none() {
            r = sh.cv.wait(r).unwrap();
        }
        match r.aborted {
            Some(code) => Err(aborted(code)),
            None => res,
        }
    }
}

impl Communicator for Loopback {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.shared.n
    }
    fn backend(&self) -> &str {
        "loopback"
    }
    fn alltoallv(
        &self,
        send: &[u8],
        send_counts: &[usize],
        recv: &mut [u8],
        recv_counts: &[usize],
    ) -> Result<()> {
        exchange::alltoallv(self, send, send_counts, recv, recv_counts)
    }
    fn allgatherv(&self, send: &[u8], recv: &mut [u8], counts: &[usize]) -> Result<()> {
        exchange::allgatherv(self, send, recv, counts)
    }
    fn broadcast(&self, buf: &mut [u8], root: usize) -> Result<()> {
        exchange::broadcast(self, buf, root)
    }
    fn barrier(&self) -> Result<()> {
        exchange::barrier(self)
    }
    fn abort(&self, code: i32) {
        let mut r = self.shared.round.lock().unwrap();
        r.aborted.get_or_insert(code);
        self.shared.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_ranks<T: Send>(n: usize, f: impl Fn(&Loopback) -> T + Sync) -> Vec<T> {
        let group = Loopback::group(n).unwrap();
        std::thread::scope(|s| {
            let hs: Vec<_> = group.iter().map(|c| s.spawn(|| f(c))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn alltoallv_routes_each_part_to_its_rank() {
        // Rank r sends (r + 1) bytes of value 10 r + d to each rank d.
        let got = on_ranks(3, |c| {
            let r = c.rank();
            let send_counts = vec![r + 1; 3];
            let send: Vec<u8> = (0..3u8)
                .flat_map(|d| vec![10 * r as u8 + d; r + 1])
                .collect();
            let recv_counts: Vec<usize> = (0..3).map(|s| s + 1).collect();
            let mut recv = vec![0u8; 6];
            c.alltoallv(&send, &send_counts, &mut recv, &recv_counts)
                .unwrap();
            recv
        });
        for (d, recv) in got.iter().enumerate() {
            let d = d as u8;
            assert_eq!(recv, &vec![d, 10 + d, 10 + d, 20 + d, 20 + d, 20 + d]);
        }
    }

    #[test]
    fn allgatherv_broadcast_and_repeated_rounds() {
        let got = on_ranks(4, |c| {
            let mut last = Vec::new();
            for round in 0..50u8 {
                let counts = [1, 2, 0, 3];
                let mine = vec![round ^ c.rank() as u8; counts[c.rank()]];
                let mut all = vec![0u8; 6];
                c.allgatherv(&mine, &mut all, &counts).unwrap();
                let mut b = [c.rank() as u8; 2];
                c.broadcast(&mut b, 3).unwrap();
                assert_eq!(b, [3, 3]);
                last = all;
            }
            c.barrier().unwrap();
            last
        });
        let r = 49u8;
        for g in &got {
            assert_eq!(g, &vec![r, r ^ 1, r ^ 1, r ^ 3, r ^ 3, r ^ 3]);
        }
    }

    #[test]
    fn abort_wakes_every_waiting_rank() {
        let got = on_ranks(3, |c| {
            if c.rank() == 1 {
                c.abort(7);
                return Ok(());
            }
            c.barrier()
        });
        assert!(got[0].is_err() && got[2].is_err());
    }

    #[test]
    fn mismatched_counts_are_an_error() {
        let got = on_ranks(2, |c| {
            let mut recv = [0u8; 4];
            c.alltoallv(&[1, 2], &[1, 1], &mut recv, &[2, 2])
        });
        assert!(got.iter().all(|r| r.is_err()));
    }
}
