//! Memory nodes: host RAM (node 0), then one per device. Each node counts its
//! bytes against an optional limit and keeps the list of data handles that have
//! a replica there, so that the memory manager can evict them.

use super::handle::HandleInner;
use std::collections::HashMap;
use std::sync::{Condvar, Mutex, Weak};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeKind {
    Host,
    /// Host memory posing as a separate device memory node, served by a worker
    /// of its own: exercises transfers, coherence and eviction without a GPU.
    SimDevice,
    /// The memory of one GPU.
    Cuda,
}

impl NodeKind {
    pub fn name(self) -> &'static str {
        match self {
            NodeKind::Host => "host",
            NodeKind::SimDevice => "sim",
            NodeKind::Cuda => "cuda",
        }
    }
}

#[derive(Default)]
pub(crate) struct NodeMem {
    pub used: u64,
    pub peak: u64,
    /// Bytes of replicas currently pinned by running or starting tasks.
    pub pinned: u64,
    pub evictions: u64,
    pub writebacks: u64,
    /// Handles with a replica on this node, by handle id.
    pub resident: HashMap<u64, Weak<HandleInner>>,
}

pub struct MemoryNode {
    pub id: usize,
    pub kind: NodeKind,
    pub name: String,
    pub limit: Option<u64>,
    pub(crate) mem: Mutex<NodeMem>,
    /// Signalled when pins are released, for tasks waiting for room.
    pub(crate) unpinned: Condvar,
    /// Held while one task pins and reserves its operands on this node, so that
    /// two tasks can never each hold half of what the other needs.
    pub(crate) reserve: Mutex<()>,
}

impl MemoryNode {
    /// Node `id`, the `index`-th of its kind (`sim0`, `cuda1`, ...).
    pub fn new(id: usize, kind: NodeKind, index: usize, limit: Option<u64>) -> MemoryNode {
        let name = match kind {
            NodeKind::Host => "host".to_string(),
            _ => format!("{}{}", kind.name(), index),
        };
        MemoryNode {
            id,
            kind,
            name,
            limit,
            mem: Mutex::new(NodeMem::default()),
            unpinned: Condvar::new(),
            reserve: Mutex::new(()),
        }
    }

    pub fn used(&self) -> u64 {
        self.mem.lock().unwrap().used
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeStats {
    pub id: usize,
    pub name: String,
    pub kind: String,
    pub limit: Option<u64>,
    pub used_bytes: u64,
    pub peak_bytes: u64,
    pub evictions: u64,
    pub writebacks: u64,
}

impl MemoryNode {
    pub fn stats(&self) -> NodeStats {
        let m = self.mem.lock().unwrap();
        NodeStats {
            id: self.id,
            name: self.name.clone(),
            kind: self.kind.name().to_string(),
            limit: self.limit,
            used_bytes: m.used,
            peak_bytes: m.peak,
            evictions: m.evictions,
            writebacks: m.writebacks,
        }
    }
}
