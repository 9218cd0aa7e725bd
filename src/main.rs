//! The `ringmq` binary: one command, subcommands per job.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mimalloc: every request allocates its decoded form, its answer and its batches' headers.
/// At max produce the allocator's share of the broker's CPU went from 7.0% (glibc's malloc
/// and free) to 3.8% (`perf record`, 8 connections with 5 requests in flight).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;

#[derive(Parser)]
#[command(name = "ringmq", version, about = "A Kafka-compatible message broker, thread-per-core")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log level or tracing filter (e.g. debug, or info,ringmq::log=trace); overrides the
    /// RINGMQ_LOG environment variable. Default: info.
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    /// How log lines are written to stderr: text, or json (one object per event, with its
    /// fields).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (Kafka listener on 127.0.0.1:9092, data in ./ringmq-data by default).
    Serve(cli::serve::ServeArgs),
    /// The configuration reference.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Inspect partition logs on disk.
    #[command(subcommand)]
    Log(cli::log::LogCommand),
    /// Manage topics of any Kafka-compatible broker.
    Topic {
        #[command(subcommand)]
        command: ringmq::admin::TopicCommand,
        #[command(flatten)]
        connection: ringmq::admin::Connection,
    },
    /// Consumer groups of any Kafka-compatible broker: list, describe (with lag), reset
    /// offsets, delete.
    Group {
        #[command(subcommand)]
        command: ringmq::admin::GroupCommand,
        #[command(flatten)]
        connection: ringmq::admin::Connection,
    },
    /// Write lines from stdin (or a file) to a topic of any Kafka-compatible broker, one
    /// record per line.
    Produce {
        #[command(flatten)]
        args: ringmq::admin::ProduceArgs,
        #[command(flatten)]
        connection: ringmq::admin::Connection,
    },
    /// Print a topic's records (kcat-style --format, or JSON lines with --json).
    Consume {
        #[command(flatten)]
        args: ringmq::admin::ConsumeArgs,
        #[command(flatten)]
        connection: ringmq::admin::Connection,
    },
    /// The cluster: brokers, controller, partitions needing attention; decommissioning.
    Cluster {
        #[command(subcommand)]
        command: ringmq::admin::ClusterCommand,
        #[command(flatten)]
        connection: ringmq::admin::Connection,
    },
    /// Check this machine for a thread-per-core broker; with --apply, tune it (a dry run
    /// otherwise). See tuning/README.md.
    Tune {
        /// Change what is not as wanted (needs root); without it nothing changes.
        #[arg(long)]
        apply: bool,
        /// The data directory whose disk is checked.
        #[arg(long, default_value = "./ringmq-data")]
        data_dir: std::path::PathBuf,
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
        /// Cores without a shard (e.g. "3" or "2-3"), where network interrupts are steered.
        #[arg(long, value_name = "LIST")]
        irq_cores: Option<String>,
        /// Read /proc and /sys under this directory instead of / (for tests).
        #[arg(long, hide = true)]
        root: Option<std::path::PathBuf>,
    },
    /// Load-test any Kafka-compatible broker; measure this machine's baselines.
    #[command(subcommand)]
    Bench(ringmq::bench::BenchCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print every setting with its default and meaning (TOML keys; `RINGMQ_<KEY>` in the
    /// environment; `--set KEY=VALUE` on `serve`).
    Defaults,
}

/// Logs at info, but of the Raft library only its errors, and not its retries of an
/// unreachable peer (every half second while one is down); the controller logs leader changes
/// and fencing itself. Nor what the runtime says of a test ringmq fails on purpose
/// (`io::QUIET_LOGS`).
const DEFAULT_LOG_FILTER: &str = "info,openraft=error,openraft::replication=off";

/// The commands whose output is meant for a terminal or a pipe: not the broker, not the load
/// generator (their sockets must never end the process).
fn prints_to_a_pipe(command: &Command) -> bool {
    !matches!(command, Command::Serve(_) | Command::Bench(_))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match &cli.log_level {
        Some(level) => match tracing_subscriber::EnvFilter::try_new(level) {
            Ok(filter) => filter,
            Err(error) => {
                eprintln!("ringmq: --log-level {level}: {error}");
                return ExitCode::FAILURE;
            }
        },
        None => tracing_subscriber::EnvFilter::try_from_env("RINGMQ_LOG")
            .unwrap_or_else(|_| format!("{DEFAULT_LOG_FILTER},{}", ringmq::io::QUIET_LOGS).into()),
    };
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    if prints_to_a_pipe(&cli.command) {
        // Rust ignores SIGPIPE, so a reader that went away (`ringmq log dump … | head`) made
        // the next print panic. These commands own no connection a SIGPIPE could hit (their
        // sockets send with MSG_NOSIGNAL): let it end them quietly, as it ends `cat`.
        // SAFETY: restoring a signal's default disposition, before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Serve(args) => cli::serve::run(args),
        Command::Log(command) => cli::log::run(command),
        Command::Bench(command) => ringmq::bench::run(command),
        Command::Topic { command, connection } => ringmq::admin::topic(command, &connection),
        Command::Group { command, connection } => ringmq::admin::group(command, &connection),
        Command::Produce { args, connection } => ringmq::admin::produce(args, &connection),
        Command::Consume { args, connection } => ringmq::admin::consume(args, &connection),
        Command::Cluster { command, connection } => ringmq::admin::cluster(command, &connection),
        Command::Tune { apply, data_dir, json, irq_cores, root } => {
            let root = root.unwrap_or_else(ringmq::tune::machine_root);
            let reports = ringmq::tune::run(&root, &data_dir, irq_cores.as_deref(), apply);
            if json {
                println!("{}", ringmq::tune::to_json(&reports));
            } else {
                print!("{}", ringmq::tune::table(&reports));
            }
            let failed = reports.iter().any(|r| matches!(r.status, ringmq::tune::Status::Failed(_)));
            if failed { Err("some tuners failed (see above)".into()) } else { Ok(()) }
        }
        Command::Config(ConfigCommand::Defaults) => {
            for setting in ringmq::config::SETTINGS {
                println!("{} = {:?}\n    {}", setting.key, setting.default, setting.meaning);
            }
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ringmq: {error}");
            ExitCode::FAILURE
        }
    }
}
