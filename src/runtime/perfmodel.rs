//! History-based performance models, as StarPU's: the mean run time of a
//! codelet, keyed by its footprint (shapes) and the kind of worker, learned
//! as tasks run and kept in a directory the user chooses between runs.

use super::worker::WorkerKind;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Entry {
    codelet: String,
    footprint: u64,
    arch: String,
    n: u64,
    mean_s: f64,
    m2: f64,
}

type Key = (u64, u64, WorkerKind);

pub(crate) struct PerfModels {
    dir: Option<PathBuf>,
    map: Mutex<HashMap<Key, Entry>>,
}

const FILE: &str = "gpt2rs-perfmodels.json";

fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x1000_0000_01b3)
    })
}

impl PerfModels {
    /// Loads the models saved in `dir` (a missing or unreadable file starts empty).
    pub fn load(dir: Option<PathBuf>) -> PerfModels {
        let mut map = HashMap::new();
        if let Some(d) = &dir {
            if let Ok(text) = std::fs::read_to_string(d.join(FILE)) {
                if let Ok(entries) = serde_json::from_str::<Vec<Entry>>(&text) {
                    for e in entries {
                        if let Some(kind) = WorkerKind::parse(&e.arch) {
                            map.insert((name_hash(&e.codelet), e.footprint, kind), e);
                        }
                    }
                }
            }
        }
        PerfModels {
            dir,
            map: Mutex::new(map),
        }
    }

    /// Expected seconds, or None while the model has too few samples.
    pub fn estimate(&self, name: &str, footprint: u64, arch: WorkerKind) -> Option<f64> {
        let m = self.map.lock().unwrap();
        m.get(&(name_hash(name), footprint, arch))
            .filter(|e| e.n >= 2)
            .map(|e| e.mean_s)
    }

    pub fn record(&self, name: &str, footprint: u64, arch: WorkerKind, seconds: f64) {
        let mut m = self.map.lock().unwrap();
        let e = m
            .entry((name_hash(name), footprint, arch))
            .or_insert_with(|| Entry {
                codelet: name.to_string(),
                footprint,
                arch: arch.name().to_string(),
                n: 0,
                mean_s: 0.0,
                m2: 0.0,
            });
        // Welford's update: stable mean and variance in one pass.
        e.n += 1;
        let d = seconds - e.mean_s;
        e.mean_s += d / e.n as f64;
        e.m2 += d * (seconds - e.mean_s);
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }

    /// Writes the models (temporary file, then rename).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(d) = &self.dir else { return Ok(()) };
        std::fs::create_dir_all(d)?;
        let mut entries: Vec<Entry> = self.map.lock().unwrap().values().cloned().collect();
        entries.sort_by(|a, b| {
            (&a.codelet, a.footprint, &a.arch).cmp(&(&b.codelet, b.footprint, &b.arch))
        });
        let tmp = d.join(format!("{FILE}.tmp{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&entries)?)?;
        std::fs::rename(tmp, d.join(FILE))
    }
}
