//! Disk fault injection for tests of the code above the `io` layer. Faults are per thread,
//! matching the one-executor-per-core model: a test arms a fault on the core it runs on.

use std::cell::Cell;

/// What the next matching operation returns instead of doing its I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Segment writes fail with ENOSPC after `after_writes` more succeed.
    WriteNoSpace { after_writes: u32 },
    /// Segment writes fail with EIO after `after_writes` more succeed.
    WriteIo { after_writes: u32 },
    /// The next fdatasync fails with EIO.
    SyncIo,
    /// The next segment file creation fails with EMFILE.
    CreateFile,
}

thread_local! {
    static ARMED: Cell<Option<Fault>> = const { Cell::new(None) };
}

/// Arms `fault` on this thread; it stays armed until `clear` (writes keep failing, as a full
/// disk does) except `SyncIo` and `CreateFile`, which fire once.
pub fn arm(fault: Fault) {
    ARMED.with(|armed| armed.set(Some(fault)));
}

pub fn clear() {
    ARMED.with(|armed| armed.set(None));
}

pub(super) fn on_write() -> std::io::Result<()> {
    ARMED.with(|armed| match armed.get() {
        Some(Fault::WriteNoSpace { after_writes: 0 }) => Err(errno(libc::ENOSPC)),
        Some(Fault::WriteIo { after_writes: 0 }) => Err(errno(libc::EIO)),
        Some(Fault::WriteNoSpace { after_writes }) => {
            armed.set(Some(Fault::WriteNoSpace { after_writes: after_writes - 1 }));
            Ok(())
        }
        Some(Fault::WriteIo { after_writes }) => {
            armed.set(Some(Fault::WriteIo { after_writes: after_writes - 1 }));
            Ok(())
        }
        Some(Fault::SyncIo) | Some(Fault::CreateFile) | None => Ok(()),
    })
}

pub(super) fn on_create() -> std::io::Result<()> {
    ARMED.with(|armed| match armed.get() {
        Some(Fault::CreateFile) => {
            armed.set(None);
            Err(errno(libc::EMFILE))
        }
        _ => Ok(()),
    })
}

pub(super) fn on_sync() -> std::io::Result<()> {
    ARMED.with(|armed| match armed.get() {
        Some(Fault::SyncIo) => {
            armed.set(None);
            Err(errno(libc::EIO))
        }
        _ => Ok(()),
    })
}

fn errno(code: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(code)
}
