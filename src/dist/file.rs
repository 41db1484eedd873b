//! The file-system backend (llm.c's file-system init), for launchers without
//! MPI: ranks that share a directory and know their rank and the job's size
//! (torchrun-style `RANK` / `WORLD_SIZE`, or Slurm's) exchange each
//! collective's messages as files, one per rank, written whole and renamed
//! into place. It carries the host's small collectives (the NCCL id, losses,
//! checks) and, on CPUs, the gradients too: slower than MPI, the same bits.
//!
//! A job is a session. Rank 0 clears what an earlier job left (gpt2rs's own
//! files only), writes the session's nonce, and only then locks
//! `gpt2rs-alive.0`; the others join the session they find behind that lock,
//! lock their own `gpt2rs-alive.<r>` and say so. Every message's name carries
//! the nonce, so nothing a dead job left is ever read. A lock goes with its
//! process, so a waiting rank that can take a peer's lock knows the peer is
//! gone and fails in one line rather than hang; `abort` leaves a marker
//! that waiting ranks obey.

use super::exchange::{self, Exchange, Part};
use super::Communicator;
use crate::error::{arg_err, Error, Result};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a waiting rank looks for an abort and for dead peers.
const CHECK_EVERY: Duration = Duration::from_millis(200);

pub struct FileComm {
    dir: PathBuf,
    rank: usize,
    size: usize,
    nonce: String,
    /// The collectives done so far (serialising them).
    seq: Mutex<u64>,
    _alive: File,
}

fn io(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    Error::Io(format!("file transport: {what}: {e}"))
}

impl FileComm {
    /// Joins the job of `size` ranks sharing `dir` as rank `rank`, waiting
    /// at most `timeout` for the others. Collective.
    pub fn join(dir: &Path, rank: usize, size: usize, timeout: Duration) -> Result<FileComm> {
        if rank >= size {
            return Err(arg_err(
                "file transport",
                format!("rank {rank} of a job of {size}"),
            ));
        }
        fs::create_dir_all(dir).map_err(|e| io(dir.display(), e))?;
        let deadline = Instant::now() + timeout;
        let alive0 = dir.join("gpt2rs-alive.0");
        let session = dir.join("gpt2rs-session");
        let (nonce, alive) = if rank == 0 {
            for entry in fs::read_dir(dir).map_err(|e| io(dir.display(), e))? {
                let path = entry.map_err(|e| io(dir.display(), e))?.path();
                let ours = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("gpt2rs-"));
                if ours {
                    fs::remove_file(&path).map_err(|e| io(path.display(), e))?;
                }
            }
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let nonce = format!("{:016x}", (t as u64) ^ ((std::process::id() as u64) << 40));
            write_whole(&session, nonce.as_bytes())?;
            (nonce, lock(&alive0)?)
        } else {
            // The session is the one behind a held lock of rank 0.
            let nonce = loop {
                if held(&alive0) {
                    if let Ok(b) = fs::read(&session) {
                        break String::from_utf8_lossy(&b).into_owned();
                    }
                }
                if Instant::now() > deadline {
                    return Err(Error::Io(format!(
                        "file transport: rank 0 did not start a job in {} within {} s",
                        dir.display(),
                        timeout.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            (nonce, lock(&dir.join(format!("gpt2rs-alive.{rank}")))?)
        };
        let c = FileComm {
            dir: dir.to_path_buf(),
            rank,
            size,
            nonce,
            seq: Mutex::new(0),
            _alive: alive,
        };
        // Everyone holds its lock once everyone has said so: from then on a
        // free lock means a dead rank.
        write_whole(&c.name("join", rank), b"")?;
        for p in 0..size {
            let path = c.name("join", p);
            while !path.exists() {
                c.check(p, false)?;
                if Instant::now() > deadline {
                    return Err(Error::Io(format!(
                        "file transport: rank {p} did not join within {} s",
                        timeout.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(c)
    }

    fn name(&self, what: impl std::fmt::Display, rank: usize) -> PathBuf {
        self.dir
            .join(format!("gpt2rs-{}.{what}.{rank}", self.nonce))
    }

    fn abort_marker(&self) -> PathBuf {
        self.dir.join(format!("gpt2rs-{}.abort", self.nonce))
    }

    /// An error if the job was aborted or (with `joined`) rank `peer` is gone.
    fn check(&self, peer: usize, joined: bool) -> Result<()> {
        if let Ok(b) = fs::read(self.abort_marker()) {
            return Err(Error::Io(format!(
                "file transport: the job was aborted ({})",
                String::from_utf8_lossy(&b)
            )));
        }
        let lock = self.dir.join(format!("gpt2rs-alive.{peer}"));
        if joined && !held(&lock) {
            return Err(Error::Io(format!(
                "file transport: rank {peer} has ended (its lock {} is free)",
                lock.display()
            )));
        }
        Ok(())
    }

    /// Waits for rank `peer`'s message `path`.
    fn wait_for(&self, path: &Path, peer: usize) -> Result<Vec<u8>> {
        let mut nap = Duration::from_micros(20);
        let mut checked = Instant::now();
        loop {
            match fs::read(path) {
                Ok(b) => return Ok(b),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io(path.display(), e)),
            }
            if checked.elapsed() > CHECK_EVERY {
                self.check(peer, true)?;
                checked = Instant::now();
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(2));
        }
    }
}

/// Writes `path` whole: a reader finds it complete or not at all.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, bytes).map_err(|e| io(tmp.display(), e))?;
    fs::rename(&tmp, path).map_err(|e| io(path.display(), e))
}

/// `path` locked for as long as the returned file is open.
fn lock(path: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| io(path.display(), e))?;
    f.lock().map_err(|e| io(path.display(), e))?;
    Ok(f)
}

/// Whether some process holds `path`'s lock.
fn held(path: &Path) -> bool {
    match File::open(path) {
        Ok(f) => matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

fn encode((bytes, counts): &Part) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 * (1 + counts.len()) + bytes.len());
    out.extend_from_slice(&(counts.len() as u64).to_le_bytes());
    for &c in counts {
        out.extend_from_slice(&(c as u64).to_le_bytes());
    }
    out.extend_from_slice(bytes);
    out
}

fn decode(b: &[u8]) -> Result<Part> {
    let bad = || Error::Io("file transport: a truncated message".into());
    let word = |i: usize| -> Result<usize> {
        let w = b.get(8 * i..8 * i + 8).ok_or_else(bad)?;
        Ok(u64::from_le_bytes(w.try_into().map_err(|_| bad())?) as usize)
    };
    let n = word(0)?;
    let counts = (1..=n).map(word).collect::<Result<Vec<_>>>()?;
    let body = b.get(8 * (n + 1)..).ok_or_else(bad)?;
    Ok((body.to_vec(), counts))
}

impl Exchange for FileComm {
    fn exchange(&self, mine: Part, take: &mut dyn FnMut(&[&Part]) -> Result<()>) -> Result<()> {
        let mut seq = self.seq.lock().unwrap_or_else(|e| e.into_inner());
        write_whole(&self.name(*seq, self.rank), &encode(&mine))?;
        let parts = (0..self.size)
            .map(|p| decode(&self.wait_for(&self.name(*seq, p), p)?))
            .collect::<Result<Vec<Part>>>()?;
        // Every rank wrote this collective's message, so every rank has read
        // the previous one: this rank's copy of it can go.
        let old = match *seq {
            0 => self.name("join", self.rank),
            s => self.name(s - 1, self.rank),
        };
        let _ = fs::remove_file(old);
        *seq += 1;
        take(&parts.iter().collect::<Vec<_>>())
    }
}

impl Communicator for FileComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn backend(&self) -> &str {
        "file"
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
    /// Leaves the abort marker for the other ranks and ends this process.
    fn abort(&self, code: i32) {
        let _ = write_whole(
            &self.abort_marker(),
            format!("by rank {}, code {code}", self.rank).as_bytes(),
        );
        std::process::exit(code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_truncation_is_an_error() {
        let p: Part = (vec![1, 2, 3], vec![2, 0, 1]);
        assert_eq!(decode(&encode(&p)).unwrap(), p);
        assert!(decode(&encode(&p)[..12]).is_err());
    }

    #[test]
    fn a_rank_that_ends_fails_the_others_instead_of_hanging() {
        let dir = std::env::temp_dir().join(format!("gpt2rs-file-dead-{}", std::process::id()));
        let t = Duration::from_secs(30);
        let r0 = std::thread::scope(|s| {
            let h = s.spawn(|| {
                let c = FileComm::join(&dir, 0, 2, t).unwrap();
                let t0 = Instant::now();
                (c.barrier(), t0.elapsed())
            });
            drop(FileComm::join(&dir, 1, 2, t).unwrap());
            h.join().unwrap()
        });
        let e = r0.0.unwrap_err().to_string();
        assert!(e.contains("rank 1 has ended"), "{e}");
        assert!(r0.1 < Duration::from_secs(5));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn ranks_in_threads_exchange_through_a_directory() {
        let dir = std::env::temp_dir().join(format!("gpt2rs-file-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let t = Duration::from_secs(30);
        let got: Vec<Vec<u8>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|r| {
                    let dir = &dir;
                    s.spawn(move || {
                        let c = FileComm::join(dir, r, 3, t).unwrap();
                        let mut all = vec![0u8; 6];
                        for round in 0..20u8 {
                            let counts = [1, 2, 3];
                            let mine = vec![round + r as u8; counts[r]];
                            c.allgatherv(&mine, &mut all, &counts).unwrap();
                            let mut b = [r as u8; 4];
                            c.broadcast(&mut b, 2).unwrap();
                            assert_eq!(b, [2; 4]);
                        }
                        c.barrier().unwrap();
                        all
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for g in &got {
            assert_eq!(g, &vec![19, 20, 20, 21, 21, 21]);
        }
        // Only the last collective's messages (and the session) are left.
        let left = fs::read_dir(&dir).unwrap().count();
        assert!(left <= 3 + 3 + 1, "{left} files left");
        let _ = fs::remove_dir_all(&dir);
    }
}
