//! Beyond one machine: the engines clusters already have, loaded at run time
//! (MPI through the library mpi4py loaded, NCCL from its pip wheel), behind
//! one byte-moving [`Communicator`], and the collectives that data-parallel
//! training submits as tasks of the runtime's graph.
//!
//! The transports only move bytes. Every sum is done by gpt2rs's own
//! codelets, adding the ranks' contributions in rank order, so all ranks,
//! all backends and both ZeRO stages get the same bits whatever algorithm
//! the MPI library picks (MPI promises neither a reduction order nor equal
//! results on every rank).

pub mod collective;
pub mod data_parallel;
mod exchange;
pub mod file;
pub mod loopback;
pub mod mpi;
pub mod nccl;
pub mod nccl_comm;
pub mod sparse_rows;

use crate::error::{arg_err, Result};

/// One rank's end of a fixed group of processes (or, for the loopback
/// backend, threads). All counts are in bytes; every rank calls the same
/// collectives in the same order.
pub trait Communicator: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// What moves the bytes ("mpich", "openmpi", "mpi-abi", "loopback").
    fn backend(&self) -> &str;

    /// `send` holds `send_counts[r]` bytes for each rank r, contiguous in rank
    /// order; `recv` gets `recv_counts[r]` bytes from each rank r, contiguous
    /// in rank order. Rank a's `send_counts[b]` equals rank b's `recv_counts[a]`.
    fn alltoallv(
        &self,
        send: &[u8],
        send_counts: &[usize],
        recv: &mut [u8],
        recv_counts: &[usize],
    ) -> Result<()>;

    /// Every rank r contributes `counts[r]` bytes (`send`); `recv` gets all
    /// contributions, contiguous in rank order.
    fn allgatherv(&self, send: &[u8], recv: &mut [u8], counts: &[usize]) -> Result<()>;

    /// `buf` of rank `root` to every rank.
    fn broadcast(&self, buf: &mut [u8], root: usize) -> Result<()>;

    fn barrier(&self) -> Result<()>;

    /// Ends every rank of the job with `code` (MPI_Abort). Does not return
    /// on a real transport; the loopback backend records it and returns.
    fn abort(&self, code: i32);
}

/// Prefix sums: where each rank's part starts, and the total.
pub(crate) fn displacements(counts: &[usize]) -> (Vec<usize>, usize) {
    let mut displs = Vec::with_capacity(counts.len());
    let mut total = 0;
    for &c in counts {
        displs.push(total);
        total += c;
    }
    (displs, total)
}

/// The checks every backend makes on alltoallv's arguments: one count per
/// rank, and the counts inside the buffers.
pub(crate) fn check_alltoallv(
    n: usize,
    send: &[u8],
    send_counts: &[usize],
    recv: &[u8],
    recv_counts: &[usize],
) -> Result<()> {
    check_ranks("alltoallv", send_counts, n)?;
    check_ranks("alltoallv", recv_counts, n)?;
    if displacements(send_counts).1 > send.len() || displacements(recv_counts).1 > recv.len() {
        return Err(arg_err("alltoallv", "counts exceed the buffers"));
    }
    Ok(())
}

/// The same for allgatherv, where rank `rank` sends `counts[rank]` bytes.
pub(crate) fn check_allgatherv(
    n: usize,
    rank: usize,
    send: &[u8],
    recv: &[u8],
    counts: &[usize],
) -> Result<()> {
    check_ranks("allgatherv", counts, n)?;
    if send.len() < counts[rank] || displacements(counts).1 > recv.len() {
        return Err(arg_err("allgatherv", "counts exceed the buffers"));
    }
    Ok(())
}

fn check_ranks(op: &str, counts: &[usize], n: usize) -> Result<()> {
    if counts.len() != n {
        return Err(arg_err(
            op,
            format!("{} counts for {n} ranks", counts.len()),
        ));
    }
    Ok(())
}
