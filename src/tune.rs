//! `ringmq tune`: checks what a thread-per-core broker wants of the machine and, with
//! `--apply`, sets it. Every tuner reports `ok`, `would change` (dry run, the default),
//! `changed`, `manual` (needs a change outside this process: a limit in the service unit) or
//! `n/a`; nothing changes silently. `tuning/README.md` explains each one.
//!
//! Paths are read under `root` (`/` normally; a directory mirroring /proc and /sys in tests).

use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// What a tuner found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub tuner: &'static str,
    pub status: Status,
    pub current: String,
    pub wanted: String,
    pub why: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    WouldChange,
    Changed,
    Manual,
    NotApplicable,
    Failed(String),
}

impl Status {
    pub fn label(&self) -> String {
        match self {
            Status::Ok => "ok".into(),
            Status::WouldChange => "would change".into(),
            Status::Changed => "changed".into(),
            Status::Manual => "manual".into(),
            Status::NotApplicable => "n/a".into(),
            Status::Failed(reason) => format!("failed: {reason}"),
        }
    }
}

/// A value in a /proc or /sys file, and how to tell whether it is good enough.
struct FileTuner {
    tuner: &'static str,
    path: &'static str,
    wanted: &'static str,
    good: fn(&str) -> bool,
    why: &'static str,
}

const AT_LEAST_4096: fn(&str) -> bool = |v| v.parse::<u64>().is_ok_and(|n| n >= 4096);

const FILE_TUNERS: &[FileTuner] = &[
    FileTuner {
        tuner: "swappiness",
        path: "proc/sys/vm/swappiness",
        wanted: "1",
        good: |v| v.parse::<u32>().is_ok_and(|n| n <= 1),
        why: "the batch cache and DMA buffers must stay in memory; swapping them stalls a whole core",
    },
    FileTuner {
        tuner: "aio-max-nr",
        path: "proc/sys/fs/aio-max-nr",
        wanted: "1048576",
        good: |v| v.parse::<u64>().is_ok_and(|n| n >= 1_048_576),
        why: "io_uring and AIO requests in flight across every core and partition",
    },
    FileTuner {
        tuner: "somaxconn",
        path: "proc/sys/net/core/somaxconn",
        wanted: "4096",
        good: AT_LEAST_4096,
        why: "bursts of client connections (every core accepts on the same port)",
    },
    FileTuner {
        tuner: "tcp-max-syn-backlog",
        path: "proc/sys/net/ipv4/tcp_max_syn_backlog",
        wanted: "4096",
        good: AT_LEAST_4096,
        why: "connection bursts are not dropped before accept",
    },
    FileTuner {
        tuner: "rmem-max",
        path: "proc/sys/net/core/rmem_max",
        wanted: "16777216",
        good: |v| v.parse::<u64>().is_ok_and(|n| n >= 16 << 20),
        why: "the ceiling of a receive buffer a socket sets itself (SO_RCVBUF: librdkafka's socket.receive.buffer.bytes)",
    },
    FileTuner {
        tuner: "wmem-max",
        path: "proc/sys/net/core/wmem_max",
        wanted: "16777216",
        good: |v| v.parse::<u64>().is_ok_and(|n| n >= 16 << 20),
        why: "the ceiling of a send buffer a socket sets itself (SO_SNDBUF: librdkafka's socket.send.buffer.bytes)",
    },
    FileTuner {
        tuner: "transparent-hugepages",
        path: "sys/kernel/mm/transparent_hugepage/enabled",
        wanted: "always",
        good: |v| selected(v) == "always",
        why: "fewer TLB misses over the batch cache and large read buffers",
    },
];

/// The bracketed choice of a sysfs multiple-choice file ("always [madvise] never").
fn selected(value: &str) -> &str {
    value
        .split_whitespace()
        .find_map(|word| word.strip_prefix('[')?.strip_suffix(']'))
        .unwrap_or(value.trim())
}

fn read(root: &Path, path: &str) -> Option<String> {
    std::fs::read_to_string(root.join(path)).ok().map(|value| value.trim().to_string())
}

/// Writes `value`, or says why it could not.
fn write(root: &Path, path: &str, value: &str) -> Status {
    match std::fs::write(root.join(path), value) {
        Ok(()) => Status::Changed,
        Err(error) => Status::Failed(error.to_string()),
    }
}

fn file_tuner(root: &Path, tuner: &FileTuner, apply: bool) -> Report {
    let report = |status, current: String| Report {
        tuner: tuner.tuner,
        status,
        current,
        wanted: tuner.wanted.into(),
        why: tuner.why,
    };
    let Some(current) = read(root, tuner.path) else {
        return report(Status::NotApplicable, format!("no {}", tuner.path));
    };
    let shown = selected(&current).to_string();
    if (tuner.good)(&current) {
        return report(Status::Ok, shown);
    }
    if !apply {
        return report(Status::WouldChange, shown);
    }
    report(write(root, tuner.path, tuner.wanted), shown)
}

/// The frequency governor of every CPU that has one.
fn cpu_governor(root: &Path, apply: bool) -> Report {
    let why = "a shard's core spins and parks constantly; a power-saving governor adds wake-up latency";
    let cpus = root.join("sys/devices/system/cpu");
    let mut governors: Vec<String> = std::fs::read_dir(&cpus)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .filter(|entry| {
                    entry
                        .file_name()
                        .to_string_lossy()
                        .strip_prefix("cpu")
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .map(|entry| {
                    format!(
                        "sys/devices/system/cpu/{}/cpufreq/scaling_governor",
                        entry.file_name().to_string_lossy()
                    )
                })
                .filter(|path| root.join(path).exists())
                .collect()
        })
        .unwrap_or_default();
    governors.sort();
    let report = |status, current: String| Report {
        tuner: "cpu-governor",
        status,
        current,
        wanted: "performance".into(),
        why,
    };
    if governors.is_empty() {
        return report(Status::NotApplicable, "no cpufreq (a VM or a fixed frequency)".into());
    }
    let current: Vec<String> = governors.iter().filter_map(|path| read(root, path)).collect();
    let shown = current.join(",");
    if current.iter().all(|governor| governor == "performance") {
        return report(Status::Ok, shown);
    }
    if !apply {
        return report(Status::WouldChange, shown);
    }
    let failed =
        governors.iter().map(|path| write(root, path, "performance")).find(|s| *s != Status::Changed);
    report(failed.unwrap_or(Status::Changed), shown)
}

/// The I/O scheduler of the disk holding `data_dir`.
fn disk_scheduler(root: &Path, data_dir: &Path, apply: bool) -> Report {
    let why = "O_DIRECT writes are already batched and ordered by each core; a scheduler only adds latency";
    let report = |status, current: String| Report {
        tuner: "disk-scheduler",
        status,
        current,
        wanted: "none".into(),
        why,
    };
    let Some(queue) = scheduler_path(root, data_dir) else {
        return report(Status::NotApplicable, format!("no block device found for {}", data_dir.display()));
    };
    let Some(current) = read(root, &queue) else {
        return report(Status::NotApplicable, format!("no {queue}"));
    };
    let shown = selected(&current).to_string();
    if shown == "none" || !current.contains("none") {
        // Devices without a "none" choice keep what they have.
        return report(Status::Ok, shown);
    }
    if !apply {
        return report(Status::WouldChange, shown);
    }
    report(write(root, &queue, "none"), shown)
}

/// `sys/dev/block/MAJ:MIN/queue/scheduler` of the device holding `dir` (its parent disk's for
/// a partition), relative to `root`.
fn scheduler_path(root: &Path, dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let existing = dir.ancestors().find(|path| path.exists())?;
    let device = std::fs::metadata(existing).ok()?.dev();
    let (major, minor) = (libc::major(device), libc::minor(device));
    let base = format!("sys/dev/block/{major}:{minor}");
    [format!("{base}/queue/scheduler"), format!("{base}/../queue/scheduler")]
        .into_iter()
        .find(|path| root.join(path).exists())
}

/// Network interrupts: with `irq_cores` (the cores no shard runs on), each NIC queue's IRQ is
/// steered there so packet processing does not preempt shards. Without it there is nothing to
/// steer to: every core runs a shard.
fn irq_affinity(root: &Path, irq_cores: Option<&str>, apply: bool) -> Report {
    let why = "interrupt handling on a shard's core preempts the shard and adds tail latency";
    let irqs = network_irqs(root);
    let current: Vec<String> = irqs
        .iter()
        .map(|irq| {
            format!("{irq}:{}", read(root, &format!("proc/irq/{irq}/smp_affinity_list")).unwrap_or_default())
        })
        .collect();
    let report = |status, wanted: String| Report {
        tuner: "irq-affinity",
        status,
        current: if current.is_empty() { "no network IRQs".into() } else { current.join(" ") },
        wanted,
        why,
    };
    let Some(cores) = irq_cores else {
        return report(Status::NotApplicable, "give --irq-cores (cores without a shard)".into());
    };
    let misplaced: Vec<&u32> = irqs
        .iter()
        .filter(|irq| read(root, &format!("proc/irq/{irq}/smp_affinity_list")).as_deref() != Some(cores))
        .collect();
    if misplaced.is_empty() {
        return report(Status::Ok, cores.into());
    }
    if !apply {
        return report(Status::WouldChange, cores.into());
    }
    let failed = misplaced
        .iter()
        .map(|irq| write(root, &format!("proc/irq/{irq}/smp_affinity_list"), cores))
        .find(|status| *status != Status::Changed);
    report(failed.unwrap_or(Status::Changed), cores.into())
}

/// IRQs of network queues, by the names drivers give them in /proc/interrupts (the interface's
/// name, or a queue suffix such as `-input.0`, `-rx`, `TxRx`).
fn network_irqs(root: &Path) -> Vec<u32> {
    let interfaces: Vec<String> = std::fs::read_dir(root.join("sys/class/net"))
        .map(|entries| {
            entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
        })
        .unwrap_or_default();
    let interfaces: Vec<&String> = interfaces.iter().filter(|name| *name != "lo").collect();
    let queue_names = ["-input", "-output", "-rx", "-tx", "TxRx"];
    read(root, "proc/interrupts")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (irq, rest) = line.trim_start().split_once(':')?;
            let irq: u32 = irq.parse().ok()?;
            let device = rest.split_whitespace().last()?;
            let network = queue_names.iter().any(|q| device.contains(q))
                || interfaces.iter().any(|name| device.starts_with(name.as_str()));
            network.then_some(irq)
        })
        .collect()
}

/// Locked memory and open files: raised in the service unit (`tuning/ringmq.service`), not
/// by a running process for the ones that start later.
fn limits() -> Vec<Report> {
    let limit = |resource| {
        let mut value = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit fills the struct it is given.
        (unsafe { libc::getrlimit(resource, &mut value) } == 0).then_some(value.rlim_cur)
    };
    let shown = |value: Option<u64>| match value {
        Some(libc::RLIM_INFINITY) => "unlimited".to_string(),
        Some(value) => value.to_string(),
        None => "unknown".to_string(),
    };
    let memlock = limit(libc::RLIMIT_MEMLOCK);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let memlock_wanted = crate::io::memlock_wanted_bytes(cores);
    let nofile = limit(libc::RLIMIT_NOFILE);
    let status = |good: bool| if good { Status::Ok } else { Status::Manual };
    vec![
        Report {
            tuner: "memlock-limit",
            status: status(memlock.is_some_and(|v| v == libc::RLIM_INFINITY || v >= memlock_wanted)),
            current: shown(memlock),
            wanted: format!("unlimited (LimitMEMLOCK=infinity), or at least {memlock_wanted}"),
            why: "io_uring rings and registered buffers (64 MiB per core, three rings each) are locked memory",
        },
        Report {
            tuner: "open-files-limit",
            status: status(nofile.is_some_and(|v| v >= 1 << 20)),
            current: shown(nofile),
            wanted: "1048576 (LimitNOFILE=1048576)".into(),
            why: "a segment, index and socket per partition and client",
        },
    ]
}

/// Every tuner's report; with `apply`, after changing what it can.
pub fn run(root: &Path, data_dir: &Path, irq_cores: Option<&str>, apply: bool) -> Vec<Report> {
    let mut reports = vec![cpu_governor(root, apply), irq_affinity(root, irq_cores, apply)];
    reports.extend(FILE_TUNERS.iter().map(|tuner| file_tuner(root, tuner, apply)));
    reports.push(disk_scheduler(root, data_dir, apply));
    reports.extend(limits());
    reports
}

pub fn to_json(reports: &[Report]) -> Value {
    Value::Array(
        reports
            .iter()
            .map(|r| json!({"tuner": r.tuner, "status": r.status.label(), "current": r.current, "wanted": r.wanted, "why": r.why}))
            .collect(),
    )
}

/// The human report: one line per tuner.
pub fn table(reports: &[Report]) -> String {
    let mut table = crate::admin::Table::new(&["TUNER", "STATUS", "CURRENT", "WANTED"]);
    for r in reports {
        table.row(vec![r.tuner.into(), r.status.label(), r.current.clone(), r.wanted.clone()]);
    }
    table.render()
}

/// The default root: the machine itself.
pub fn machine_root() -> PathBuf {
    PathBuf::from("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bracketed_choice_is_read() {
        assert_eq!(selected("always [madvise] never"), "madvise");
        assert_eq!(selected("[none] mq-deadline"), "none");
        assert_eq!(selected("60"), "60");
    }
}
