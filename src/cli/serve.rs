//! `ringmq serve`: settings from defaults, `--config FILE`, `RINGMQ_*` variables and flags,
//! in that order of precedence (later wins).

use clap::Args;
use ringmq::config::BrokerConfig;
use std::path::PathBuf;

#[derive(Args)]
pub struct ServeArgs {
    /// Kafka listener address (default 127.0.0.1:9092).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Admin HTTP listener: /metrics, /health, /ready (default 127.0.0.1:9644).
    #[arg(long, value_name = "HOST:PORT")]
    admin_listen: Option<String>,
    /// Address clients are told to connect to (default: the listen address).
    #[arg(long, value_name = "HOST:PORT")]
    advertised_listener: Option<String>,
    /// Data directory (default ./ringmq-data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Number of shards, one pinned executor per core (default: every available core).
    #[arg(long, value_name = "N")]
    cores: Option<usize>,
    /// This node's id in the cluster (default 0).
    #[arg(long, value_name = "N")]
    node_id: Option<i32>,
    /// The controller quorum, as ID@HOST:PORT,… (default: none, a one-node broker).
    #[arg(long, value_name = "ID@HOST:PORT,...")]
    controllers: Option<String>,
    /// Where this node's controller listens, if it is one of the controllers (default: its
    /// address in --controllers).
    #[arg(long, value_name = "HOST:PORT")]
    controller_listen: Option<String>,
    /// A listener for other brokers (replica fetches, transaction markers), apart from the
    /// clients' (default: they use the Kafka listener).
    #[arg(long, value_name = "HOST:PORT")]
    peer_listen: Option<String>,
    /// A TOML file of settings (keys as listed by the config reference).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Any other setting, as KEY=VALUE; may be repeated.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    settings: Vec<String>,
}

pub fn run(args: ServeArgs) -> Result<(), String> {
    let config = assemble(args)?;
    ringmq::server::serve(config).map_err(|e| e.to_string())
}

fn assemble(args: ServeArgs) -> Result<BrokerConfig, String> {
    let mut config = BrokerConfig::defaults();
    if let Some(path) = &args.config {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("config file {}: {e}", path.display()))?;
        config.apply_toml(&path.display().to_string(), &text).map_err(|e| e.to_string())?;
    }
    config.apply_env(|name| std::env::var(name).ok()).map_err(|e| e.to_string())?;
    let mut flags: Vec<(String, String)> = Vec::new();
    flags.extend(args.listen.map(|v| ("listen".into(), v)));
    flags.extend(args.admin_listen.map(|v| ("admin_listen".into(), v)));
    flags.extend(args.advertised_listener.map(|v| ("advertised_listener".into(), v)));
    flags.extend(args.data_dir.map(|v| ("data_dir".into(), v.display().to_string())));
    flags.extend(args.cores.map(|v| ("cores".into(), v.to_string())));
    flags.extend(args.node_id.map(|v| ("node_id".into(), v.to_string())));
    flags.extend(args.controllers.map(|v| ("controller_quorum_voters".into(), v)));
    flags.extend(args.controller_listen.map(|v| ("controller_listen".into(), v)));
    flags.extend(args.peer_listen.map(|v| ("peer_listen".into(), v)));
    for setting in &args.settings {
        let (key, value) =
            setting.split_once('=').ok_or_else(|| format!("--set {setting}: expected KEY=VALUE"))?;
        flags.push((key.trim().into(), value.trim().into()));
    }
    for (key, value) in flags {
        config.set(&key, &value).map_err(|e| e.to_string())?;
    }
    Ok(config)
}
