//! The memory manager: makes replicas valid where a task runs (transfers),
//! keeps them coherent (a write frees every other replica), pins them while a
//! task uses them, and keeps each node under its byte limit by evicting: clean
//! replicas (another valid copy exists) first, least recently used first; then
//! dirty ones, written back to host memory before they are dropped.
//!
//! Lock order: a handle's coherence lock may be held while a node's `mem` lock
//! is taken, never the reverse (eviction only `try_lock`s handles), and a
//! strong handle reference is never dropped while a `mem` lock is held (the
//! drop itself takes that lock).

use super::buffer::{Buf, HostBuffer};
use super::cuda::GpuNode;
use super::handle::{Access, Coherence, HandleInner, Replica};
use super::node::MemoryNode;
use super::trace::{Event, Trace};
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BusStats {
    pub src: usize,
    pub dst: usize,
    pub name: String,
    pub transfers: u64,
    pub bytes: u64,
    pub seconds: f64,
}

pub(crate) struct Memory {
    pub nodes: Vec<MemoryNode>,
    /// The GPU behind each node (None for the host and simulated devices).
    pub gpus: Vec<Option<Arc<GpuNode>>>,
    buses: Vec<Mutex<BusStats>>,
    /// Collectives' traffic (sent plus received), as one more bus.
    net: Mutex<BusStats>,
    pub trace: Arc<Trace>,
    tick: AtomicU64,
}

/// Default bus bandwidth for estimates before any transfer was measured.
const DEFAULT_BANDWIDTH: f64 = 10e9;

/// `GPT2RS_POISON_UNINITIALISED=1`: host replicas that a GPU would leave
/// uninitialised (write-only accesses, see `make_valid`) are filled with
/// 0xFF bytes (NaN in every float dtype), so that a CPU test run shows a
/// codelet that does not write all of a W operand, which the GPU would
/// expose as garbage.
fn poison_uninitialised() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("GPT2RS_POISON_UNINITIALISED").is_ok_and(|v| v == "1"))
}

impl Memory {
    pub fn new(
        nodes: Vec<MemoryNode>,
        gpus: Vec<Option<Arc<GpuNode>>>,
        trace: Arc<Trace>,
    ) -> Memory {
        debug_assert_eq!(nodes.len(), gpus.len());
        let n = nodes.len();
        let mut buses = Vec::with_capacity(n * n);
        for s in 0..n {
            for d in 0..n {
                buses.push(Mutex::new(BusStats {
                    src: s,
                    dst: d,
                    name: format!("{}->{}", nodes[s].name, nodes[d].name),
                    ..Default::default()
                }));
            }
        }
        Memory {
            net: Mutex::new(BusStats {
                name: format!("{}<->network", nodes[0].name),
                ..Default::default()
            }),
            nodes,
            gpus,
            buses,
            trace,
            tick: AtomicU64::new(0),
        }
    }

    pub fn bus_stats(&self) -> Vec<BusStats> {
        let net = self.net.lock().unwrap().clone();
        self.buses
            .iter()
            .map(|b| b.lock().unwrap().clone())
            .filter(|b| b.src != b.dst)
            .chain((net.transfers > 0).then_some(net))
            .collect()
    }

    /// Counts one collective's bytes (sent plus received) and time.
    pub fn record_network(&self, bytes: u64, seconds: f64) {
        let mut b = self.net.lock().unwrap();
        b.transfers += 1;
        b.bytes += bytes;
        b.seconds += seconds;
    }

    /// Expected seconds to move `bytes` from `src` to `dst`, from what was measured.
    pub fn transfer_estimate(&self, src: usize, dst: usize, bytes: usize) -> f64 {
        let n = self.nodes.len();
        let b = self.buses[src * n + dst].lock().unwrap();
        let bw = if b.bytes > (1 << 20) && b.seconds > 0.0 {
            b.bytes as f64 / b.seconds
        } else {
            DEFAULT_BANDWIDTH
        };
        bytes as f64 / bw
    }

    fn note_memory(&self, node: usize, used: u64) {
        if self.trace.enabled {
            self.trace.push(Event::Memory {
                node,
                ts_us: self.trace.us(Instant::now()),
                used,
            });
        }
    }

    /// Counts `bytes` on `node` for handle `h`; `reserved` means the bytes were
    /// already counted by a reservation.
    fn account_alloc(&self, node: usize, h: &Arc<HandleInner>, bytes: u64, reserved: bool) {
        let mut m = self.nodes[node].mem.lock().unwrap();
        if !reserved {
            m.used += bytes;
            m.peak = m.peak.max(m.used);
        }
        m.resident.insert(h.id, Arc::downgrade(h));
        let used = m.used;
        drop(m);
        self.note_memory(node, used);
    }

    pub fn release_bytes(&self, node: usize, id: u64, bytes: u64) {
        let mut m = self.nodes[node].mem.lock().unwrap();
        m.used -= bytes;
        m.resident.remove(&id);
        let used = m.used;
        drop(m);
        self.nodes[node].unpinned.notify_all();
        self.note_memory(node, used);
    }

    /// A buffer of `bytes` on `node`, zeroed when `zeroed`. A GPU that refuses the allocation
    /// (memory taken outside the runtime's accounting: cuBLAS workspaces,
    /// other processes) gets one round of eviction first.
    fn alloc(&self, node: usize, bytes: usize, zeroed: bool) -> Result<Buf> {
        let Some(dev) = &self.gpus[node] else {
            let b = if zeroed {
                HostBuffer::zeroed(bytes)
            } else {
                HostBuffer::uninit(bytes)
            };
            if !zeroed && poison_uninitialised() {
                // SAFETY: a new buffer nobody else holds yet.
                unsafe { b.bytes_mut() }.fill(0xFF);
            }
            return Ok(Buf::Host(b));
        };
        match dev.alloc(bytes, zeroed) {
            Err(Error::OutOfMemory { .. }) => {
                self.evict(node, 2 * bytes as u64 + (64 << 20));
                dev.alloc(bytes, zeroed).map(Buf::Cuda)
            }
            r => r.map(Buf::Cuda),
        }
    }

    /// Copies a replica's contents between nodes. Host->device is enqueued on
    /// the device's stream (ordered before any kernel that reads it);
    /// device->host returns when the data has arrived.
    fn transfer(&self, src: usize, dst: usize, from: &Buf, to: &mut Buf) -> Result<()> {
        let t0 = Instant::now();
        let dev = |n: usize| self.gpus[n].as_ref().expect("a CUDA node has a device");
        let bytes = match (from, &mut *to) {
            (Buf::Host(a), Buf::Host(b)) => {
                b.copy_from(a);
                a.len_bytes()
            }
            (Buf::Host(a), Buf::Cuda(b)) => {
                dev(dst).htod(a.bytes(), b)?;
                a.len_bytes()
            }
            (Buf::Cuda(a), Buf::Host(b)) => {
                // SAFETY: `b` is a fresh replica nobody else can see yet.
                dev(src).dtoh(a, unsafe { b.bytes_mut() })?;
                b.len_bytes()
            }
            (Buf::Cuda(a), Buf::Cuda(b)) => {
                let n = a.len().min(b.len());
                if dev(src).gpu.ordinal == dev(dst).gpu.ordinal {
                    dev(src).dtod(a, b, n)?;
                } else {
                    // Through host memory: simple and always available (no peer access needed).
                    let mut tmp = vec![0u8; n];
                    dev(src).dtoh(a, &mut tmp)?;
                    dev(dst).htod(&tmp, b)?;
                }
                n
            }
        };
        // Host->device copies are asynchronous: this is the enqueue time, so
        // the bus statistics overstate that bandwidth.
        let dt = t0.elapsed();
        let n = self.nodes.len();
        {
            let mut b = self.buses[src * n + dst].lock().unwrap();
            b.transfers += 1;
            b.bytes += bytes as u64;
            b.seconds += dt.as_secs_f64();
        }
        self.trace.push(Event::Transfer {
            src,
            dst,
            bytes,
            start_us: self.trace.us(t0),
            dur_us: dt.as_secs_f64() * 1e6,
        });
        Ok(())
    }

    /// With the coherence lock held: makes the replica of `h` on `node` valid for
    /// `mode` and pins it.
    fn make_valid(
        &self,
        h: &Arc<HandleInner>,
        coh: &mut Coherence,
        node: usize,
        mode: Access,
        reserved: bool,
    ) -> Result<()> {
        let bytes = h.bytes() as u64;
        if coh.replicas[node].is_none() {
            // A handle with no replica holds zeros; a write-only access or a
            // copy from another replica fills the buffer before it is read.
            let source = (0..coh.replicas.len()).find(|&i| coh.replicas[i].is_some());
            let zeroed = mode.reads() && source.is_none();
            let mut buf = match self.alloc(node, h.bytes(), zeroed) {
                Ok(b) => b,
                Err(e) => {
                    if reserved {
                        self.nodes[node].mem.lock().unwrap().used -= bytes;
                    }
                    return Err(e);
                }
            };
            if mode.reads() {
                // The first replica found (the host's, when it has one) is the source.
                if let Some(src) = source {
                    let from = &coh.replicas[src].as_ref().unwrap().buf;
                    if let Err(e) = self.transfer(src, node, from, &mut buf) {
                        if reserved {
                            self.nodes[node].mem.lock().unwrap().used -= bytes;
                        }
                        return Err(e);
                    }
                }
            }
            self.account_alloc(node, h, bytes, reserved);
            coh.replicas[node] = Some(Replica {
                buf,
                pins: 0,
                last_use: 0,
            });
        } else if reserved {
            // Someone made it valid between our reservation and now: give the bytes back.
            let mut m = self.nodes[node].mem.lock().unwrap();
            m.used -= bytes;
        }
        if mode.writes() {
            for i in 0..coh.replicas.len() {
                if i == node {
                    continue;
                }
                if let Some(r) = coh.replicas[i].take() {
                    // Dependencies keep a writer from starting while another
                    // task uses the handle, so no other replica is pinned.
                    debug_assert_eq!(r.pins, 0, "a pinned replica invalidated");
                    if r.pins > 0 {
                        self.nodes[i].mem.lock().unwrap().pinned -= bytes;
                    }
                    self.release_bytes(i, h.id, bytes);
                }
            }
        }
        self.pin(coh, node, bytes);
        Ok(())
    }

    fn pin(&self, coh: &mut Coherence, node: usize, bytes: u64) {
        let r = coh.replicas[node].as_mut().unwrap();
        r.pins += 1;
        r.last_use = self.tick.fetch_add(1, Ordering::Relaxed);
        if r.pins == 1 {
            self.nodes[node].mem.lock().unwrap().pinned += bytes;
        }
    }

    pub fn unpin(&self, h: &HandleInner, node: usize) {
        let mut coh = h.coh.lock().unwrap();
        if let Some(r) = coh.replicas[node].as_mut() {
            r.pins -= 1;
            if r.pins == 0 {
                self.nodes[node].mem.lock().unwrap().pinned -= h.bytes() as u64;
                self.nodes[node].unpinned.notify_all();
            }
        }
    }

    /// Makes every distinct handle of a task valid on `node` and pins it. On a
    /// node with a limit, reserves all the bytes at once (evicting if needed),
    /// waiting while other tasks hold pins, failing only if this task alone
    /// cannot fit. `relieve` is asked first when pins block: an asynchronous
    /// worker finishes one of its own tasks in flight (their pins would
    /// otherwise never be released while it waits here) and says whether it did.
    pub fn acquire(
        &self,
        node: usize,
        ops: &[(Arc<HandleInner>, Access)],
        who: &str,
        relieve: &mut dyn FnMut() -> bool,
    ) -> Result<()> {
        let nd = &self.nodes[node];
        let mut pinned = vec![false; ops.len()];
        let unpin_all = |pinned: &[bool]| {
            for (i, (h, _)) in ops.iter().enumerate() {
                if pinned[i] {
                    self.unpin(h, node);
                }
            }
        };
        let Some(limit) = nd.limit else {
            for (i, (h, mode)) in ops.iter().enumerate() {
                let mut coh = h.coh.lock().unwrap();
                if let Err(e) = self.make_valid(h, &mut coh, node, *mode, false) {
                    drop(coh);
                    unpin_all(&pinned);
                    return Err(e);
                }
                pinned[i] = true;
            }
            return Ok(());
        };
        let total: u64 = ops.iter().map(|(h, _)| h.bytes() as u64).sum();
        if total > limit {
            return Err(Error::OutOfMemory {
                node: nd.name.clone(),
                limit,
                msg: format!("{who} needs {total} bytes of operands on this node at once"),
            });
        }
        let _reserve = nd.reserve.lock().unwrap();
        let mut my_pinned = 0u64;
        let deadline = Instant::now() + Duration::from_secs(600);
        let missing_idx = loop {
            let mut missing = 0u64;
            let mut missing_idx = Vec::new();
            for (i, (h, mode)) in ops.iter().enumerate() {
                if pinned[i] {
                    continue;
                }
                let mut coh = h.coh.lock().unwrap();
                if coh.replicas[node].is_some() {
                    // Valid here already: pinning it needs no allocation.
                    if let Err(e) = self.make_valid(h, &mut coh, node, *mode, false) {
                        drop(coh);
                        unpin_all(&pinned);
                        return Err(e);
                    }
                    pinned[i] = true;
                    my_pinned += h.bytes() as u64;
                } else {
                    missing += h.bytes() as u64;
                    missing_idx.push(i);
                }
            }
            let short = {
                let m = nd.mem.lock().unwrap();
                (m.used + missing).saturating_sub(limit)
            };
            if short > 0 {
                self.evict(node, short);
            }
            let mut m = nd.mem.lock().unwrap();
            if m.used + missing <= limit {
                m.used += missing;
                m.peak = m.peak.max(m.used);
                break missing_idx;
            }
            if m.pinned > my_pinned && Instant::now() < deadline {
                drop(m);
                if relieve() {
                    continue;
                }
                // Other running tasks hold pins: wait for them to finish.
                let m = nd.mem.lock().unwrap();
                let _ = nd
                    .unpinned
                    .wait_timeout(m, Duration::from_millis(50))
                    .unwrap();
                continue;
            }
            let used = m.used;
            drop(m);
            unpin_all(&pinned);
            return Err(Error::OutOfMemory {
                node: nd.name.clone(),
                limit,
                msg: format!(
                    "{who} needs {missing} more bytes but {used} are in use and cannot be evicted"
                ),
            });
        };
        for (j, &i) in missing_idx.iter().enumerate() {
            let (h, mode) = &ops[i];
            let mut coh = h.coh.lock().unwrap();
            if let Err(e) = self.make_valid(h, &mut coh, node, *mode, true) {
                drop(coh);
                // Give back what the rest had reserved (make_valid released its own).
                let rest: u64 = missing_idx[j + 1..]
                    .iter()
                    .map(|&k| ops[k].0.bytes() as u64)
                    .sum();
                nd.mem.lock().unwrap().used -= rest;
                unpin_all(&pinned);
                return Err(e);
            }
            pinned[i] = true;
        }
        Ok(())
    }

    /// Frees at least `need` bytes on `node` if it can; returns the bytes freed.
    pub fn evict(&self, node: usize, need: u64) -> u64 {
        let weak: Vec<_> = self.nodes[node]
            .mem
            .lock()
            .unwrap()
            .resident
            .values()
            .cloned()
            .collect();
        let mut cands: Vec<(bool, u64, Arc<HandleInner>)> = Vec::new();
        for w in weak {
            let Some(h) = w.upgrade() else { continue };
            let info = match h.coh.try_lock() {
                Ok(c) => match &c.replicas[node] {
                    Some(r) if r.pins == 0 => Some((c.valid_count() == 1, r.last_use)),
                    _ => None,
                },
                Err(_) => None,
            };
            if let Some((dirty, last)) = info {
                cands.push((dirty, last, h));
            }
        }
        // Clean before dirty, then least recently used first.
        cands.sort_by_key(|c| (c.0, c.1));
        let mut freed = 0u64;
        for (_, _, h) in &cands {
            if freed >= need {
                break;
            }
            let Ok(mut coh) = h.coh.try_lock() else {
                continue;
            };
            match &coh.replicas[node] {
                Some(r) if r.pins == 0 => {}
                _ => continue,
            }
            let bytes = h.bytes() as u64;
            // The only valid copy: written back to host first (a dirty host
            // replica has nowhere to go).
            if coh.valid_count() == 1 && (node == 0 || !self.write_back(h, &mut coh, node)) {
                continue;
            }
            coh.replicas[node] = None;
            self.release_bytes(node, h.id, bytes);
            self.nodes[node].mem.lock().unwrap().evictions += 1;
            freed += bytes;
        }
        drop(cands);
        freed
    }

    /// Copies the only replica of `h` (on `node`) to host memory, if the host
    /// has room without evicting anything itself.
    fn write_back(&self, h: &Arc<HandleInner>, coh: &mut Coherence, node: usize) -> bool {
        let bytes = h.bytes() as u64;
        {
            let mut m = self.nodes[0].mem.lock().unwrap();
            if let Some(limit) = self.nodes[0].limit {
                if m.used + bytes > limit {
                    return false;
                }
            }
            m.used += bytes;
            m.peak = m.peak.max(m.used);
        }
        let mut buf = Buf::Host(HostBuffer::uninit(h.bytes()));
        let from = &coh.replicas[node].as_ref().unwrap().buf;
        if self.transfer(node, 0, from, &mut buf).is_err() {
            // The device failed (its context is unusable): keep the replica,
            // the task that needed room fails with out-of-memory instead.
            self.nodes[0].mem.lock().unwrap().used -= bytes;
            return false;
        }
        self.account_alloc(0, h, bytes, true);
        coh.replicas[0] = Some(Replica {
            buf,
            pins: 0,
            last_use: self.tick.fetch_add(1, Ordering::Relaxed),
        });
        self.nodes[node].mem.lock().unwrap().writebacks += 1;
        true
    }
}

impl Memory {
    /// Gives a fresh handle a host replica filled by `fill` (counted against
    /// the host's limit but never refused: the data exists already).
    pub fn register_host(&self, h: &Arc<HandleInner>, fill: impl FnOnce(&mut [u8])) {
        let mut coh = h.coh.lock().unwrap();
        self.account_alloc(0, h, h.bytes() as u64, false);
        let buf = HostBuffer::zeroed(h.bytes());
        // SAFETY: the handle is new, nobody else can see the buffer yet.
        fill(unsafe { buf.bytes_mut() });
        let buf = Buf::Host(buf);
        coh.replicas[0] = Some(Replica {
            buf,
            pins: 0,
            last_use: self.tick.fetch_add(1, Ordering::Relaxed),
        });
    }
}
