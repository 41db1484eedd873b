//! The collectives of the backends that move whole messages: each rank
//! deposits one message per collective (its bytes, and for alltoallv its
//! per-rank counts) and reads every rank's. The loopback backend deposits
//! into shared memory, the file backend into a shared directory.

use super::{check_allgatherv, check_alltoallv, displacements, Communicator};
use crate::error::{arg_err, Result};

/// One rank's message: its bytes, and (alltoallv) how many go to each rank.
pub(crate) type Part = (Vec<u8>, Vec<usize>);

pub(crate) trait Exchange: Communicator {
    /// Deposits this rank's message, waits for every rank's, and lets
    /// `take` read them all (rank order). Every rank calls it in the same
    /// order; it is also a barrier.
    fn exchange(&self, mine: Part, take: &mut dyn FnMut(&[&Part]) -> Result<()>) -> Result<()>;
}

pub(crate) fn alltoallv(
    x: &dyn Exchange,
    send: &[u8],
    send_counts: &[usize],
    recv: &mut [u8],
    recv_counts: &[usize],
) -> Result<()> {
    check_alltoallv(x.size(), send, send_counts, recv, recv_counts)?;
    let (rdispl, _) = displacements(recv_counts);
    let me = x.rank();
    x.exchange((send.to_vec(), send_counts.to_vec()), &mut |parts| {
        for (src, (bytes, counts)) in parts.iter().enumerate() {
            let (sdispl, _) = displacements(counts);
            if counts.get(me) != Some(&recv_counts[src]) {
                return Err(arg_err(
                    "alltoallv",
                    format!(
                        "rank {src} sends {:?} bytes to rank {me}, which expects {}",
                        counts.get(me),
                        recv_counts[src]
                    ),
                ));
            }
            recv[rdispl[src]..rdispl[src] + counts[me]]
                .copy_from_slice(&bytes[sdispl[me]..sdispl[me] + counts[me]]);
        }
        Ok(())
    })
}

pub(crate) fn allgatherv(
    x: &dyn Exchange,
    send: &[u8],
    recv: &mut [u8],
    counts: &[usize],
) -> Result<()> {
    check_allgatherv(x.size(), x.rank(), send, recv, counts)?;
    let (displ, _) = displacements(counts);
    let mine = send[..counts[x.rank()]].to_vec();
    x.exchange((mine, Vec::new()), &mut |parts| {
        for (src, (bytes, _)) in parts.iter().enumerate() {
            if bytes.len() != counts[src] {
                return Err(arg_err(
                    "allgatherv",
                    format!(
                        "rank {src} sent {} bytes, {} expected",
                        bytes.len(),
                        counts[src]
                    ),
                ));
            }
            recv[displ[src]..displ[src] + counts[src]].copy_from_slice(bytes);
        }
        Ok(())
    })
}

pub(crate) fn broadcast(x: &dyn Exchange, buf: &mut [u8], root: usize) -> Result<()> {
    if root >= x.size() {
        return Err(arg_err("broadcast", format!("no rank {root}")));
    }
    let mine = if x.rank() == root {
        buf.to_vec()
    } else {
        Vec::new()
    };
    x.exchange((mine, Vec::new()), &mut |parts| {
        let bytes = &parts[root].0;
        if bytes.len() != buf.len() {
            return Err(arg_err(
                "broadcast",
                format!("root sent {} bytes, {} expected", bytes.len(), buf.len()),
            ));
        }
        buf.copy_from_slice(bytes);
        Ok(())
    })
}

pub(crate) fn barrier(x: &dyn Exchange) -> Result<()> {
    x.exchange((Vec::new(), Vec::new()), &mut |_| Ok(()))
}
