//! `ringmq tune`: a dry run on this machine reports every tuner and changes nothing; `--apply`
//! is exercised on a mirror of /proc and /sys in a temporary directory, where it can be undone.

use serde_json::Value;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

const TUNERS: [&str; 12] = [
    "cpu-governor",
    "irq-affinity",
    "swappiness",
    "aio-max-nr",
    "somaxconn",
    "tcp-max-syn-backlog",
    "rmem-max",
    "wmem-max",
    "transparent-hugepages",
    "disk-scheduler",
    "memlock-limit",
    "open-files-limit",
];

/// `ringmq tune --json ARGS`: tuner → status.
fn tune(args: &[&str]) -> HashMap<String, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .arg("tune")
        .arg("--json")
        .args(args)
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let reports: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    reports
        .as_array()
        .expect("a list")
        .iter()
        .map(|r| {
            (
                r["tuner"].as_str().expect("tuner").to_string(),
                r["status"].as_str().expect("status").to_string(),
            )
        })
        .collect()
}

#[test]
fn a_dry_run_on_this_machine_reports_every_tuner_and_changes_nothing() {
    let watched =
        ["/proc/sys/vm/swappiness", "/proc/sys/fs/aio-max-nr", "/sys/kernel/mm/transparent_hugepage/enabled"];
    let before: Vec<Option<String>> = watched.iter().map(|p| std::fs::read_to_string(p).ok()).collect();
    let data = tempfile::tempdir().expect("dir");
    let reports = tune(&["--data-dir", &data.path().display().to_string()]);
    for tuner in TUNERS {
        let status = reports.get(tuner).unwrap_or_else(|| panic!("{tuner} reported"));
        assert!(["ok", "would change", "manual", "n/a"].contains(&status.as_str()), "{tuner}: {status}");
    }
    let after: Vec<Option<String>> = watched.iter().map(|p| std::fs::read_to_string(p).ok()).collect();
    assert_eq!(before, after, "a dry run changes nothing");
}

fn put(root: &Path, path: &str, value: &str) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
    std::fs::write(path, value).expect("write");
}

fn get(root: &Path, path: &str) -> String {
    std::fs::read_to_string(root.join(path)).expect("read").trim().to_string()
}

#[test]
fn apply_changes_a_mirror_of_proc_and_sys_and_reports_it() {
    let root = tempfile::tempdir().expect("root");
    let data = tempfile::tempdir().expect("data");
    let device = std::fs::metadata(data.path()).expect("stat").dev();
    let (major, minor) = (libc::major(device), libc::minor(device));
    let root_path = root.path();
    let files = [
        ("proc/sys/vm/swappiness", "60"),
        ("proc/sys/fs/aio-max-nr", "65536"),
        ("proc/sys/net/core/somaxconn", "128"),
        ("proc/sys/net/ipv4/tcp_max_syn_backlog", "128"),
        ("proc/sys/net/core/rmem_max", "212992"),
        ("proc/sys/net/core/wmem_max", "212992"),
        ("sys/kernel/mm/transparent_hugepage/enabled", "always [madvise] never"),
        ("sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", "powersave"),
        ("sys/devices/system/cpu/cpu1/cpufreq/scaling_governor", "powersave"),
        (
            "proc/interrupts",
            "           CPU0       CPU1\n 40:   10   20   PCI-MSIX   virtio2-input.0\n 41:  1 2 PCI-MSIX virtio0-config\n",
        ),
        ("proc/irq/40/smp_affinity_list", "0-1"),
        ("proc/irq/41/smp_affinity_list", "0-1"),
    ];
    for (path, value) in files {
        put(root_path, path, value);
    }
    put(root_path, &format!("sys/dev/block/{major}:{minor}/queue/scheduler"), "[mq-deadline] none");
    let common = [
        "--root",
        &root_path.display().to_string(),
        "--data-dir",
        &data.path().display().to_string(),
        "--irq-cores",
        "1",
    ];

    let dry = tune(&common);
    // Every tuner but the process limits, which only the service unit changes.
    for tuner in &TUNERS[..10] {
        assert_eq!(dry[*tuner], "would change", "{tuner}");
    }
    assert_eq!(get(root_path, "proc/sys/vm/swappiness"), "60", "a dry run writes nothing");

    let mut apply = common.to_vec();
    apply.push("--apply");
    let applied = tune(&apply);
    assert_eq!(applied["swappiness"], "changed");
    assert_eq!(get(root_path, "proc/sys/vm/swappiness"), "1");
    assert_eq!(get(root_path, "proc/sys/fs/aio-max-nr"), "1048576");
    assert_eq!(get(root_path, "sys/devices/system/cpu/cpu1/cpufreq/scaling_governor"), "performance");
    assert_eq!(get(root_path, "proc/irq/40/smp_affinity_list"), "1", "the NIC queue's IRQ moved");
    assert_eq!(get(root_path, "proc/irq/41/smp_affinity_list"), "0-1", "other IRQs stay");
    assert_eq!(get(root_path, &format!("sys/dev/block/{major}:{minor}/queue/scheduler")), "none");

    let again = tune(&common);
    for tuner in [
        "cpu-governor",
        "irq-affinity",
        "swappiness",
        "aio-max-nr",
        "transparent-hugepages",
        "disk-scheduler",
    ] {
        assert_eq!(again[tuner], "ok", "{tuner} after --apply");
    }
}

#[test]
fn the_sample_production_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/ringmq.toml");
    let text = std::fs::read_to_string(path).expect("tuning/ringmq.toml");
    let mut config = ringmq::config::BrokerConfig::defaults();
    config.apply_toml(path, &text).expect("every key is known and every value valid");
    config.validate().expect("valid as a whole");
    assert_eq!(config.admin_listen.port(), 9644);
}
