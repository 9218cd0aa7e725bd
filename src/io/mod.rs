//! The runtime edge: files, executors, timers and task spawning. glommio is named only here,
//! so the rest of ringmq depends on this small surface and the runtime could be replaced.
//! Tests inject disk faults at this layer (`fault`).
//!
//! Everything here runs on the calling core's executor; nothing is `Send` unless it says so.

mod aligned;
pub mod fault;
mod file;
mod mesh;
mod net;
mod polling;
mod runtime;
mod streaming;

pub use aligned::AlignedBuf;
pub use file::{
    ReadFile, ReadFileId, WriteBuf, WriteFile, read_small_file, remove_dir_all, remove_file, sync_dir,
    write_file_atomic,
};
pub use mesh::{Inbox, Mesh, MeshBuilder, mesh};
pub use net::{Listener, Stream, reserve_address};
pub use polling::QUIET_LOGS;
pub use runtime::{
    Latch, Signal, Task, block_on, memlock_wanted_bytes, raise_memlock_limit, run_sharded, sleep,
    spawn_blocking, spawn_detached, spawn_local,
};
