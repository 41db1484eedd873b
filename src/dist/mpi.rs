//! The MPI backend: the libmpi that mpi4py already loaded and initialised in
//! this process, borrowed through a typed function table per ABI. gpt2rs
//! never links MPI and never loads one: a second MPI in one process crashes
//! in `MPI_Init_thread`, so the library is found in `/proc/self/maps` and
//! opened with `RTLD_NOLOAD` (a handle to the object already mapped, or
//! nothing).
//!
//! Three ABIs, told apart by the library's file name:
//!
//! | file             | ABI                  | `MPI_Comm`, `MPI_Datatype` | `MPI_COMM_WORLD`, `MPI_BYTE`            |
//! |------------------|----------------------|----------------------------|-----------------------------------------|
//! | `libmpi.so.12`   | MPICH (Intel, Cray)  | `int`                      | `0x44000000`, `0x4c00010d`              |
//! | `libmpi.so.40`   | Open MPI 4, 5        | pointers                   | `&ompi_mpi_comm_world`, `&ompi_mpi_byte` |
//! | `libmpi_abi.so`  | MPI-5 standard ABI   | pointers                   | `0x101`, `0x247`                        |
//!
//! (MPICH's `mpi.h`; Open MPI's `mpi.h`, whose predefined handles are the
//! addresses of exported objects; the MPI-5 ABI header, `mpi_abi.h` in MPICH
//! 5.0, which fixes small integers as handle values.)
//!
//! All traffic runs on a private duplicate of `MPI_COMM_WORLD`, so it never
//! matches a message of the user's or mpi4py's. Only `MPI_BYTE` moves: the
//! sums are gpt2rs's own (see the module above).

use super::{check_allgatherv, check_alltoallv, displacements, Communicator};
use crate::error::{arg_err, Error, Result};
use libloading::Library;
use std::ffi::{c_char, c_int, c_void};
use std::sync::Mutex;

/// Which MPI ABI a library speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbiKind {
    Mpich,
    OpenMpi,
    /// The MPI-5 standard ABI (`libmpi_abi.so`).
    Standard,
}

impl AbiKind {
    /// The backend name [`Communicator::backend`] reports.
    pub fn name(self) -> &'static str {
        match self {
            AbiKind::Mpich => "mpich",
            AbiKind::OpenMpi => "openmpi",
            AbiKind::Standard => "mpi-abi",
        }
    }

    /// The ABI of a library file name, or None for a file that is no libmpi.
    /// MPICH-ABI libraries: MPICH's own (`libmpi.so.12`, Debian's
    /// `libmpich.so.12`), Intel MPI's, Cray's `libmpi_cray.so.12`.
    pub fn of_file(name: &str) -> Option<AbiKind> {
        // `stem.so.N` followed by nothing or by more version digits.
        let versioned = |soname: &str| {
            name.strip_prefix(soname)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        };
        if ["libmpi.so.12", "libmpich.so.12", "libmpi_cray.so.12"]
            .into_iter()
            .any(versioned)
        {
            Some(AbiKind::Mpich)
        } else if versioned("libmpi.so.40") {
            Some(AbiKind::OpenMpi)
        } else if versioned("libmpi_abi.so") {
            Some(AbiKind::Standard)
        } else {
            None
        }
    }
}

/// The one libmpi mapped into a process, from its `/proc/self/maps` text:
/// None if there is none, an error if two different ones are.
pub fn find_libmpi(maps: &str) -> Result<Option<(AbiKind, String)>> {
    let mut found: Option<(AbiKind, String)> = None;
    for line in maps.lines() {
        // address perms offset dev inode path: only the path has a '/'
        // (and may have spaces).
        let Some(start) = line.find('/') else {
            continue;
        };
        let path = line[start..].trim_end().trim_end_matches(" (deleted)");
        let name = path.rsplit('/').next().unwrap_or(path);
        let Some(kind) = AbiKind::of_file(name) else {
            continue;
        };
        match &found {
            None => found = Some((kind, path.to_string())),
            Some((_, p)) if p == path => {}
            Some((_, p)) => {
                return Err(Error::Io(format!(
                    "two MPI libraries are loaded in this process ({p} and {path}); \
                     mpi4py and everything else must use one MPI"
                )))
            }
        }
    }
    Ok(found)
}

// ---------------------------------------------------------------- handles per ABI

/// An MPI handle that is an `int` (MPICH's ABI).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IntHandle(c_int);

/// An MPI handle that is a pointer (Open MPI's ABI, the MPI-5 standard ABI).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PtrHandle(*mut c_void);

// SAFETY: a handle is an opaque token the library hands out and takes back;
// gpt2rs never dereferences it, and MPI handles may be used from any thread
// at the thread levels this backend accepts.
unsafe impl Send for PtrHandle {}
// SAFETY: as above; the token is never written through.
unsafe impl Sync for PtrHandle {}

/// One MPI ABI: its handle types, its thread levels and where the two
/// predefined handles this backend uses come from.
trait Abi: Sized + 'static {
    const KIND: AbiKind;
    type Comm: Copy + Send + Sync + 'static;
    type Datatype: Copy + Send + Sync + 'static;
    /// `MPI_THREAD_SINGLE`, `_FUNNELED`, `_SERIALIZED`, `_MULTIPLE`.
    const THREAD_LEVELS: [c_int; 4];
    /// `MPI_COMM_WORLD` and `MPI_BYTE`.
    fn predefined(lib: &Library) -> Result<(Self::Comm, Self::Datatype)>;
}

struct Mpich;
impl Abi for Mpich {
    const KIND: AbiKind = AbiKind::Mpich;
    type Comm = IntHandle;
    type Datatype = IntHandle;
    const THREAD_LEVELS: [c_int; 4] = [0, 1, 2, 3];
    fn predefined(_: &Library) -> Result<(IntHandle, IntHandle)> {
        // MPICH's mpi.h: fixed values, the same in every MPICH-ABI library.
        Ok((IntHandle(0x4400_0000), IntHandle(0x4c00_010d)))
    }
}

struct OpenMpi;
impl Abi for OpenMpi {
    const KIND: AbiKind = AbiKind::OpenMpi;
    type Comm = PtrHandle;
    type Datatype = PtrHandle;
    const THREAD_LEVELS: [c_int; 4] = [0, 1, 2, 3];
    fn predefined(lib: &Library) -> Result<(PtrHandle, PtrHandle)> {
        // Open MPI's mpi.h: MPI_COMM_WORLD is `&ompi_mpi_comm_world`,
        // MPI_BYTE `&ompi_mpi_byte`; the symbol's address is the handle.
        let addr = |name: &str| -> Result<PtrHandle> {
            // SAFETY: only the symbol's address is taken; nothing is read.
            let sym = unsafe { lib.get::<*mut c_void>(name) }
                .map_err(|e| Error::Io(format!("Open MPI's libmpi lacks {name}: {e}")))?;
            Ok(PtrHandle(*sym))
        };
        Ok((addr("ompi_mpi_comm_world")?, addr("ompi_mpi_byte")?))
    }
}

struct Standard;
impl Abi for Standard {
    const KIND: AbiKind = AbiKind::Standard;
    type Comm = PtrHandle;
    type Datatype = PtrHandle;
    const THREAD_LEVELS: [c_int; 4] = [0, 1024, 2048, 4096];
    fn predefined(_: &Library) -> Result<(PtrHandle, PtrHandle)> {
        // The MPI-5 ABI fixes predefined handles as small integers cast to
        // the (pointer) handle types: MPI_COMM_WORLD 0x101, MPI_BYTE 0x247.
        Ok((
            PtrHandle(std::ptr::without_provenance_mut(0x101)),
            PtrHandle(std::ptr::without_provenance_mut(0x247)),
        ))
    }
}

// ---------------------------------------------------------------- function table

type FlagFn = unsafe extern "C" fn(*mut c_int) -> c_int;
type StringFn = unsafe extern "C" fn(*mut c_char, *mut c_int) -> c_int;

/// The MPI functions this backend calls, typed with the ABI's handles.
struct Table<A: Abi> {
    initialized: FlagFn,
    finalized: FlagFn,
    query_thread: FlagFn,
    comm_dup: unsafe extern "C" fn(A::Comm, *mut A::Comm) -> c_int,
    comm_free: unsafe extern "C" fn(*mut A::Comm) -> c_int,
    comm_rank: unsafe extern "C" fn(A::Comm, *mut c_int) -> c_int,
    comm_size: unsafe extern "C" fn(A::Comm, *mut c_int) -> c_int,
    #[allow(clippy::type_complexity)] // MPI_Alltoallv's own signature
    alltoallv: unsafe extern "C" fn(
        *const c_void,
        *const c_int,
        *const c_int,
        A::Datatype,
        *mut c_void,
        *const c_int,
        *const c_int,
        A::Datatype,
        A::Comm,
    ) -> c_int,
    #[allow(clippy::type_complexity)] // MPI_Allgatherv's own signature
    allgatherv: unsafe extern "C" fn(
        *const c_void,
        c_int,
        A::Datatype,
        *mut c_void,
        *const c_int,
        *const c_int,
        A::Datatype,
        A::Comm,
    ) -> c_int,
    bcast: unsafe extern "C" fn(*mut c_void, c_int, A::Datatype, c_int, A::Comm) -> c_int,
    barrier: unsafe extern "C" fn(A::Comm) -> c_int,
    abort: unsafe extern "C" fn(A::Comm, c_int) -> c_int,
    get_library_version: StringFn,
    error_string: unsafe extern "C" fn(c_int, *mut c_char, *mut c_int) -> c_int,
}

impl<A: Abi> Table<A> {
    fn load(lib: &Library, path: &str) -> Result<Table<A>> {
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the field's type is the function's C signature in
                // this ABI (the MPI standard's, with the ABI's handle types).
                *unsafe { lib.get($name) }
                    .map_err(|e| Error::Io(format!("{path} lacks {} ({e})", $name)))?
            };
        }
        Ok(Table {
            initialized: sym!("MPI_Initialized"),
            finalized: sym!("MPI_Finalized"),
            query_thread: sym!("MPI_Query_thread"),
            comm_dup: sym!("MPI_Comm_dup"),
            comm_free: sym!("MPI_Comm_free"),
            comm_rank: sym!("MPI_Comm_rank"),
            comm_size: sym!("MPI_Comm_size"),
            alltoallv: sym!("MPI_Alltoallv"),
            allgatherv: sym!("MPI_Allgatherv"),
            bcast: sym!("MPI_Bcast"),
            barrier: sym!("MPI_Barrier"),
            abort: sym!("MPI_Abort"),
            get_library_version: sym!("MPI_Get_library_version"),
            error_string: sym!("MPI_Error_string"),
        })
    }
}

impl<A: Abi> Table<A> {
    /// Ok for MPI_SUCCESS, else one line with the MPI error string.
    fn check(&self, op: &str, rc: c_int) -> Result<()> {
        if rc == 0 {
            return Ok(());
        }
        let msg = mpi_string(|s, n| {
            // SAFETY: the buffer holds more than MPI_MAX_ERROR_STRING bytes.
            unsafe { (self.error_string)(rc, s, n) }
        })
        .unwrap_or_else(|| "no error string".into());
        // MPICH appends its whole call stack; the first clause says what failed.
        let msg = msg.split(", error stack:").next().unwrap_or_default();
        Err(Error::Io(format!("{op} failed with error {rc}: {msg}")))
    }
}

/// Reads a string an MPI call writes (`buf`, `len`), lossily, one line.
fn mpi_string(f: impl FnOnce(*mut c_char, *mut c_int) -> c_int) -> Option<String> {
    // The largest MPI_MAX_LIBRARY_VERSION_STRING of the three ABIs (MPICH's);
    // MPI_MAX_ERROR_STRING is smaller in all of them.
    let mut buf = vec![0u8; 8192];
    let mut len: c_int = 0;
    if f(buf.as_mut_ptr().cast(), &mut len) != 0 {
        return None;
    }
    buf.truncate((len.max(0) as usize).min(8192));
    let s = String::from_utf8_lossy(&buf);
    let s = s.trim_end_matches('\0').trim();
    Some(s.split_whitespace().collect::<Vec<_>>().join(" "))
}

// ---------------------------------------------------------------- engine

/// One rank's end of the private duplicate of `MPI_COMM_WORLD`, in ABI `A`.
struct Engine<A: Abi> {
    f: Table<A>,
    path: String,
    world: A::Comm,
    comm: A::Comm,
    byte: A::Datatype,
    rank: usize,
    size: usize,
    version: String,
    /// At `MPI_THREAD_SERIALIZED` two threads must never be inside MPI at
    /// once; gpt2rs's own calls go one at a time through this lock.
    serial: Mutex<()>,
    /// Keeps the library's reference count (it is mpi4py's to unload).
    _lib: Library,
}

impl<A: Abi> Engine<A> {
    fn new(lib: Library, path: String) -> Result<Engine<A>> {
        let f = Table::<A>::load(&lib, &path)?;
        let flag = |g: FlagFn| {
            let mut v: c_int = 0;
            // SAFETY: MPI_Initialized/MPI_Finalized may be called at any
            // time, from any thread; they write one int.
            let rc = unsafe { g(&mut v) };
            (rc == 0).then_some(v)
        };
        if flag(f.initialized) != Some(1) {
            return Err(Error::Io(format!(
                "MPI ({path}) is loaded but not initialised: import mpi4py.MPI \
                 (it calls MPI_Init_thread) before asking for the MPI communicator"
            )));
        }
        if flag(f.finalized) != Some(0) {
            return Err(Error::Io(format!("MPI ({path}) has been finalised")));
        }
        let mut provided: c_int = 0;
        // SAFETY: MPI is initialised and not finalised; one int is written.
        let rc = unsafe { (f.query_thread)(&mut provided) };
        if rc != 0 || provided < A::THREAD_LEVELS[2] {
            let names = ["MPI_THREAD_SINGLE", "MPI_THREAD_FUNNELED"];
            let level = A::THREAD_LEVELS
                .iter()
                .position(|&l| l == provided)
                .and_then(|i| names.get(i))
                .unwrap_or(&"unknown");
            return Err(Error::Io(format!(
                "MPI was initialised at thread level {level}; gpt2rs's communication worker \
                 calls MPI from its own thread and needs MPI_THREAD_SERIALIZED or \
                 MPI_THREAD_MULTIPLE (mpi4py asks for MULTIPLE unless \
                 mpi4py.rc.thread_level is changed before importing mpi4py.MPI)"
            )));
        }
        let (world, byte) = A::predefined(&lib)?;
        let version = mpi_string(|s, n| {
            // SAFETY: the buffer holds MPI_MAX_LIBRARY_VERSION_STRING bytes.
            unsafe { (f.get_library_version)(s, n) }
        })
        .unwrap_or_default();
        let mut comm = world;
        // SAFETY: collective over MPI_COMM_WORLD, which every rank calls
        // here; `comm` receives the new handle. Only a duplicate that exists
        // goes into an Engine (whose drop frees it).
        f.check("MPI_Comm_dup", unsafe { (f.comm_dup)(world, &mut comm) })?;
        let mut e = Engine {
            f,
            path,
            world,
            comm,
            byte,
            rank: 0,
            size: 0,
            version,
            serial: Mutex::new(()),
            _lib: lib,
        };
        let (mut rank, mut size): (c_int, c_int) = (0, 0);
        // SAFETY: `comm` is a valid communicator; one int is written each.
        e.f.check("MPI_Comm_rank", unsafe { (e.f.comm_rank)(comm, &mut rank) })?;
        // SAFETY: as above.
        e.f.check("MPI_Comm_size", unsafe { (e.f.comm_size)(comm, &mut size) })?;
        e.rank = rank as usize;
        e.size = size as usize;
        Ok(e)
    }

    /// Takes the call lock, after checking that MPI is still usable.
    fn enter(&self, op: &str) -> Result<std::sync::MutexGuard<'_, ()>> {
        let guard = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let mut done: c_int = 1;
        // SAFETY: MPI_Finalized may be called at any time.
        if unsafe { (self.f.finalized)(&mut done) } != 0 || done != 0 {
            return Err(Error::Io(format!(
                "{op}: MPI ({}) has been finalised",
                self.path
            )));
        }
        Ok(guard)
    }

    /// Counts (one per rank, checked) and their displacements as MPI's ints.
    fn c_counts(&self, op: &str, counts: &[usize]) -> Result<(Vec<c_int>, Vec<c_int>)> {
        let (displs, total) = displacements(counts);
        if total > c_int::MAX as usize {
            return Err(arg_err(
                op,
                format!(
                    "{total} bytes in one call exceed MPI's int counts and displacements \
                     ({} at most); split the message",
                    c_int::MAX
                ),
            ));
        }
        let ints = |v: &[usize]| v.iter().map(|&c| c as c_int).collect();
        Ok((ints(counts), ints(&displs)))
    }
}

impl<A: Abi> Communicator for Engine<A> {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn backend(&self) -> &str {
        A::KIND.name()
    }

    fn alltoallv(
        &self,
        send: &[u8],
        send_counts: &[usize],
        recv: &mut [u8],
        recv_counts: &[usize],
    ) -> Result<()> {
        check_alltoallv(self.size, send, send_counts, recv, recv_counts)?;
        let (sc, sd) = self.c_counts("alltoallv", send_counts)?;
        let (rc, rd) = self.c_counts("alltoallv", recv_counts)?;
        let _g = self.enter("alltoallv")?;
        // SAFETY: counts and displacements stay inside `send` and `recv`
        // (checked above) and hold one entry per rank of `comm`.
        let code = unsafe {
            (self.f.alltoallv)(
                send.as_ptr().cast(),
                sc.as_ptr(),
                sd.as_ptr(),
                self.byte,
                recv.as_mut_ptr().cast(),
                rc.as_ptr(),
                rd.as_ptr(),
                self.byte,
                self.comm,
            )
        };
        self.f.check("MPI_Alltoallv", code)
    }

    fn allgatherv(&self, send: &[u8], recv: &mut [u8], counts: &[usize]) -> Result<()> {
        check_allgatherv(self.size, self.rank, send, recv, counts)?;
        let (c, d) = self.c_counts("allgatherv", counts)?;
        let mine = counts[self.rank];
        let _g = self.enter("allgatherv")?;
        // SAFETY: `mine` bytes of `send` and every rank's part of `recv` are
        // in bounds (checked above); `c`, `d` hold one entry per rank.
        let code = unsafe {
            (self.f.allgatherv)(
                send.as_ptr().cast(),
                mine as c_int,
                self.byte,
                recv.as_mut_ptr().cast(),
                c.as_ptr(),
                d.as_ptr(),
                self.byte,
                self.comm,
            )
        };
        self.f.check("MPI_Allgatherv", code)
    }

    fn broadcast(&self, buf: &mut [u8], root: usize) -> Result<()> {
        if root >= self.size {
            return Err(arg_err("broadcast", format!("no rank {root}")));
        }
        let n = c_int::try_from(buf.len()).map_err(|_| {
            arg_err(
                "broadcast",
                format!(
                    "{} bytes exceed MPI's int counts ({} at most); split the message",
                    buf.len(),
                    c_int::MAX
                ),
            )
        })?;
        let _g = self.enter("broadcast")?;
        // SAFETY: `buf` holds `n` bytes; `root` is a rank of `comm`.
        let code = unsafe {
            (self.f.bcast)(
                buf.as_mut_ptr().cast(),
                n,
                self.byte,
                root as c_int,
                self.comm,
            )
        };
        self.f.check("MPI_Bcast", code)
    }

    fn barrier(&self) -> Result<()> {
        let _g = self.enter("barrier")?;
        // SAFETY: `comm` is a valid communicator.
        let code = unsafe { (self.f.barrier)(self.comm) };
        self.f.check("MPI_Barrier", code)
    }

    fn abort(&self, code: i32) {
        // No lock: abort must get through while another thread is blocked
        // inside a collective (MPI_Abort is callable at any thread level
        // for the purpose of ending the job).
        // SAFETY: MPI_COMM_WORLD is valid while MPI is initialised.
        unsafe { (self.f.abort)(self.world, code) };
        // MPI_Abort does not return; if a library's does, end this rank.
        std::process::exit(if code == 0 { 1 } else { code });
    }
}

impl<A: Abi> Drop for Engine<A> {
    fn drop(&mut self) {
        let mut up: c_int = 0;
        let mut done: c_int = 1;
        // SAFETY: MPI_Initialized/MPI_Finalized may be called at any time;
        // MPI_Comm_free only while MPI is up (else the handle is gone).
        unsafe {
            if (self.f.initialized)(&mut up) == 0
                && up != 0
                && (self.f.finalized)(&mut done) == 0
                && done == 0
            {
                (self.f.comm_free)(&mut self.comm);
            }
        }
    }
}

// ---------------------------------------------------------------- MpiComm

/// The MPI backend: one rank's end of a private duplicate of
/// `MPI_COMM_WORLD`, in the MPI library mpi4py loaded.
pub struct MpiComm {
    inner: Box<dyn Communicator>,
    path: String,
    version: String,
}

/// glibc's `RTLD_NOLOAD` (`<bits/dlfcn.h>`, the same on x86-64 and
/// aarch64), which libloading does not export.
#[cfg(target_os = "linux")]
const RTLD_NOLOAD: c_int = 0x4;

impl MpiComm {
    /// Borrows the MPI library this process already has loaded and
    /// initialised (by `import mpi4py.MPI`) and duplicates its
    /// `MPI_COMM_WORLD`. Collective: every rank of the job calls it.
    pub fn from_process() -> Result<MpiComm> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let Some((kind, path)) = find_libmpi(&maps)? else {
            return Err(Error::Io(
                "MPI is not loaded: import mpi4py.MPI first / launch with mpiexec".into(),
            ));
        };
        let lib = open_loaded(&path)?;
        fn engine<A: Abi>(lib: Library, path: &str) -> Result<(Box<dyn Communicator>, String)> {
            let e = Engine::<A>::new(lib, path.to_string())?;
            let version = e.version.clone();
            Ok((Box::new(e), version))
        }
        let (inner, version) = match kind {
            AbiKind::Mpich => engine::<Mpich>(lib, &path)?,
            AbiKind::OpenMpi => engine::<OpenMpi>(lib, &path)?,
            AbiKind::Standard => engine::<Standard>(lib, &path)?,
        };
        Ok(MpiComm {
            inner,
            path,
            version,
        })
    }

    /// The library's file, as mapped.
    pub fn library_path(&self) -> &str {
        &self.path
    }

    /// `MPI_Get_library_version`'s text, on one line.
    pub fn library_version(&self) -> &str {
        &self.version
    }
}

/// A handle to a library already mapped into this process; never loads one.
#[cfg(target_os = "linux")]
fn open_loaded(path: &str) -> Result<Library> {
    use libloading::os::unix::{Library as UnixLibrary, RTLD_LAZY};
    // SAFETY: with RTLD_NOLOAD dlopen only returns a new reference to an
    // object already in the process (its initialisers have run) or fails.
    let lib = unsafe { UnixLibrary::open(Some(path), RTLD_NOLOAD | RTLD_LAZY) }.map_err(|e| {
        Error::Io(format!(
            "MPI library {path} is mapped but cannot be opened without loading it again: {e}"
        ))
    })?;
    Ok(lib.into())
}

#[cfg(not(target_os = "linux"))]
fn open_loaded(path: &str) -> Result<Library> {
    Err(Error::Io(format!(
        "MPI ({path}): the MPI backend needs Linux (it reads /proc/self/maps)"
    )))
}

impl Communicator for MpiComm {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn backend(&self) -> &str {
        self.inner.backend()
    }
    fn alltoallv(
        &self,
        send: &[u8],
        send_counts: &[usize],
        recv: &mut [u8],
        recv_counts: &[usize],
    ) -> Result<()> {
        self.inner.alltoallv(send, send_counts, recv, recv_counts)
    }
    fn allgatherv(&self, send: &[u8], recv: &mut [u8], counts: &[usize]) -> Result<()> {
        self.inner.allgatherv(send, recv, counts)
    }
    fn broadcast(&self, buf: &mut [u8], root: usize) -> Result<()> {
        self.inner.broadcast(buf, root)
    }
    fn barrier(&self) -> Result<()> {
        self.inner.barrier()
    }
    fn abort(&self, code: i32) {
        self.inner.abort(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(path: &str) -> String {
        format!("7f3a1c000000-7f3a1c200000 r-xp 00000000 08:01 1234567    {path}\n")
    }

    #[test]
    fn abi_from_file_names() {
        assert_eq!(AbiKind::of_file("libmpi.so.12"), Some(AbiKind::Mpich));
        assert_eq!(AbiKind::of_file("libmpi.so.12.4.3"), Some(AbiKind::Mpich));
        assert_eq!(
            AbiKind::of_file("libmpich.so.12.1.10"),
            Some(AbiKind::Mpich)
        );
        assert_eq!(
            AbiKind::of_file("libmpi.so.40.40.3"),
            Some(AbiKind::OpenMpi)
        );
        assert_eq!(AbiKind::of_file("libmpi_abi.so.1"), Some(AbiKind::Standard));
        assert_eq!(AbiKind::of_file("libmpi.so.120"), None);
        assert_eq!(AbiKind::of_file("libmpi_mpifh.so.40"), None);
        assert_eq!(AbiKind::of_file("libmpi.so"), None);
    }

    #[test]
    fn libmpi_from_maps() {
        let venv = "/work/venv/lib/libmpi.so.12";
        let maps =
            line("/usr/lib/libc.so.6") + &line(venv) + &line(venv) + "7f00-7f01 rw-p 0 00:00 0\n";
        assert_eq!(
            find_libmpi(&maps).unwrap(),
            Some((AbiKind::Mpich, venv.to_string()))
        );
        let spaced = line("/opt/my mpi/lib/libmpi.so.40.40.3 (deleted)");
        assert_eq!(
            find_libmpi(&spaced).unwrap(),
            Some((
                AbiKind::OpenMpi,
                "/opt/my mpi/lib/libmpi.so.40.40.3".to_string()
            ))
        );
        assert_eq!(find_libmpi(&line("/usr/lib/libc.so.6")).unwrap(), None);
        let two = line(venv) + &line("/opt/ompi/lib/libmpi.so.40");
        assert!(find_libmpi(&two).is_err());
    }
}
