//! The `keel` command line.
//!
//! Surface: `keel run CONFIG`, `keel validate CONFIG`, `keel demo`, and patronictl-style control commands as
//! `keel -c CONFIG <command>` (the configuration also comes from `KEEL_CONFIG` or `PATRONICTL_CONFIG_FILE`).
//!
//! To add a command: add a variant (with an `Args` struct) to [`Command`] or [`CtlCommand`] and a match arm in
//! [`dispatch`] / [`ctl`] that calls a function returning an [`ExitCode`]-style `u8`. Control commands get the
//! resolved configuration path from [`Cli::config_path`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config};

pub mod ctl;
pub mod demo;
pub mod dsn;
pub mod edit_config;
pub mod flush;
pub mod history;
pub mod list;
pub mod members;
pub mod output;
pub mod pause;
pub mod reinit;
pub mod reload;
pub mod remove;
pub mod rest;
pub mod restart;
pub mod slots_cmd;
pub mod switchover;
pub mod timefmt;
pub mod tls;
pub mod version;

/// Exit status for success.
pub const EXIT_OK: u8 = 0;
/// Exit status for a bad configuration, a bad invocation or a command that is not implemented.
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "keel", version, about = "Keel: PostgreSQL high availability, configured like Patroni")]
pub struct Cli {
    /// Configuration file for control commands (also KEEL_CONFIG or PATRONICTL_CONFIG_FILE).
    #[arg(short = 'c', long = "config", global = true, env = "KEEL_CONFIG", value_name = "CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The configuration path for control commands: `-c`, else `KEEL_CONFIG`, else `PATRONICTL_CONFIG_FILE`.
    pub fn config_path(&self) -> Option<PathBuf> {
        self.config
            .clone()
            .or_else(|| std::env::var_os("PATRONICTL_CONFIG_FILE").filter(|v| !v.is_empty()).map(PathBuf::from))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent for the node described by CONFIG.
    Run(ConfigArg),
    /// Check CONFIG and print a one-line summary (warnings on stderr).
    Validate(ConfigArg),
    /// Start a local demonstration cluster: etcd and three nodes on loopback, until Ctrl-C.
    Demo(demo::DemoArgs),
    /// The fence `keel run` starts beside itself (internal): kills PostgreSQL in DATA_DIR when an armed deadline
    /// passes.
    #[command(hide = true)]
    Fence(FenceArgs),
    #[command(flatten)]
    Ctl(CtlCommand),
}

#[derive(Debug, Args)]
pub struct FenceArgs {
    /// The data directory whose postmaster the fence guards.
    #[arg(long)]
    pub data_dir: PathBuf,
}

/// A positional configuration file.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Patroni-style YAML configuration file.
    pub config: PathBuf,
}

/// Placeholder arguments for commands not implemented yet: accepts anything, so scripts get a clear
/// "not implemented yet" rather than a usage error. Replace with real arguments when implementing a command.
#[derive(Debug, Args, Default)]
pub struct RestArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub args: Vec<String>,
}

/// patronictl's commands, run against the cluster named by `-c CONFIG`. They never prompt: see [`ctl`].
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// List the members of the cluster.
    List(list::ListArgs),
    /// The cluster as a tree of cascading replicas.
    Topology(list::ListArgs),
    /// Planned switchover to a replica.
    Switchover(switchover::SwitchoverArgs),
    /// Manual failover to a replica.
    Failover(switchover::FailoverArgs),
    /// Edit the cluster-wide (dynamic) configuration.
    EditConfig(edit_config::EditConfigArgs),
    /// Show the cluster-wide (dynamic) configuration.
    ShowConfig(edit_config::ShowConfigArgs),
    /// Stop automatic failover (maintenance mode).
    Pause(pause::PauseArgs),
    /// Resume automatic failover.
    Resume(pause::PauseArgs),
    /// Restart PostgreSQL on members.
    Restart(restart::RestartArgs),
    /// Rebuild a replica from the leader.
    Reinit(reinit::ReinitArgs),
    /// Reload the configuration of members.
    Reload(reload::ReloadArgs),
    /// Timeline history of the cluster.
    History(history::HistoryArgs),
    /// The connection string of a member.
    Dsn(dsn::DsnArgs),
    /// Remove the cluster from the store.
    Remove(remove::RemoveArgs),
    /// Cancel scheduled actions: `flush [CLUSTER] [MEMBER...] restart|switchover`.
    Flush(flush::FlushArgs),
    /// Keel's version, and the versions members report.
    Version(version::VersionArgs),
    /// Replication slots on every member (positions, lag, readiness); `slots recreate NAME` after a
    /// continuity break.
    Slots(slots_cmd::SlotsArgs),
}

impl CtlCommand {
    pub fn name(&self) -> &'static str {
        match self {
            CtlCommand::List(_) => "list",
            CtlCommand::Topology(_) => "topology",
            CtlCommand::Switchover(_) => "switchover",
            CtlCommand::Failover(_) => "failover",
            CtlCommand::EditConfig(_) => "edit-config",
            CtlCommand::ShowConfig(_) => "show-config",
            CtlCommand::Pause(_) => "pause",
            CtlCommand::Resume(_) => "resume",
            CtlCommand::Restart(_) => "restart",
            CtlCommand::Reinit(_) => "reinit",
            CtlCommand::Reload(_) => "reload",
            CtlCommand::History(_) => "history",
            CtlCommand::Dsn(_) => "dsn",
            CtlCommand::Remove(_) => "remove",
            CtlCommand::Flush(_) => "flush",
            CtlCommand::Version(_) => "version",
            CtlCommand::Slots(_) => "slots",
        }
    }
}

/// Entry point for `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    ExitCode::from(dispatch(&cli))
}

/// Runs a parsed command line and returns the exit status.
pub fn dispatch(cli: &Cli) -> u8 {
    match &cli.command {
        Command::Validate(a) => validate(&a.config),
        Command::Run(a) => run_agent(&a.config),
        Command::Demo(a) => demo::run(a),
        Command::Fence(a) => {
            crate::fence::process::run(&a.data_dir);
            0
        }
        Command::Ctl(c) => ctl(cli, c),
    }
}

fn ctl(cli: &Cli, command: &CtlCommand) -> u8 {
    let Some(path) = cli.config_path() else {
        eprintln!(
            "error: `keel {}` needs a configuration: -c CONFIG, KEEL_CONFIG or PATRONICTL_CONFIG_FILE",
            command.name()
        );
        return EXIT_USAGE;
    };
    ctl::run_async(run_ctl(path, command))
}

/// Runs one control command against the store of the cluster in the configuration at `path`.
async fn run_ctl(path: PathBuf, command: &CtlCommand) -> ctl::CtlResult {
    use ctl::Ctl;
    let open = |cluster: &Option<String>| Ctl::open(&path, cluster.as_deref());
    match command {
        CtlCommand::List(a) => list::list(&open(&a.cluster_name)?, a, false).await,
        CtlCommand::Topology(a) => list::list(&open(&a.cluster_name)?, a, true).await,
        CtlCommand::Switchover(a) => switchover::switchover(&open(&a.cluster_name)?, a).await,
        CtlCommand::Failover(a) => switchover::failover(&open(&a.cluster_name)?, a).await,
        CtlCommand::EditConfig(a) => edit_config::edit_config(&open(&a.cluster_name)?, a).await,
        CtlCommand::ShowConfig(a) => edit_config::show_config(&open(&a.cluster_name)?).await,
        CtlCommand::Pause(a) => pause::toggle_pause(&open(&a.cluster_name)?, a, true).await,
        CtlCommand::Resume(a) => pause::toggle_pause(&open(&a.cluster_name)?, a, false).await,
        CtlCommand::Restart(a) => restart::restart(&open(&None)?, a).await,
        CtlCommand::Reinit(a) => reinit::reinit(&open(&None)?, a).await,
        CtlCommand::Reload(a) => reload::reload(&open(&None)?, a).await,
        CtlCommand::History(a) => history::history(&open(&a.cluster_name)?, a).await,
        CtlCommand::Dsn(a) => dsn::dsn(&open(&None)?, a).await,
        CtlCommand::Remove(a) => remove::remove(&open(&None)?, a).await,
        CtlCommand::Flush(a) => flush::flush(&open(&None)?, a).await,
        CtlCommand::Version(a) => version::version(&open(&None)?, a).await,
        CtlCommand::Slots(a) => slots_cmd::slots(&open(&None)?, a).await,
    }
}

/// `keel run CONFIG`: the agent, logging to stderr (`RUST_LOG` adjusts the level; default `info`).
fn run_agent(path: &std::path::Path) -> u8 {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(crate::node::run(path)) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            tracing::error!("{e:#}");
            1
        }
    }
}

/// `keel validate CONFIG`.
pub fn validate(path: &std::path::Path) -> u8 {
    match Config::load(path, &config::env::from_process()) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            if let Err(e) = loaded.config.etcd_security() {
                eprintln!("error: {}: {e}", path.display());
                return EXIT_USAGE;
            }
            if let Err(e) = crate::api::tls::from_config(&loaded.config.restapi) {
                eprintln!("error: {}: {e}", path.display());
                return EXIT_USAGE;
            }
            let access = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(crate::api::access::from_config(&loaded.config.restapi)));
            if let Err(e) = access {
                eprintln!("error: {}: {e}", path.display());
                return EXIT_USAGE;
            }
            println!("ok: {}", loaded.config.summary());
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_USAGE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_the_command_surface() {
        let cli = Cli::try_parse_from(["keel", "validate", "a.yml"]).unwrap();
        assert!(matches!(cli.command, Command::Validate(ref a) if a.config.as_path() == std::path::Path::new("a.yml")));
        let cli = Cli::try_parse_from(["keel", "-c", "a.yml", "list"]).unwrap();
        assert!(matches!(cli.command, Command::Ctl(CtlCommand::List(_))));
        assert_eq!(cli.config_path(), Some(PathBuf::from("a.yml")));
        let cli = Cli::try_parse_from(["keel", "switchover", "--candidate", "n2", "-c", "b.yml"]).unwrap();
        assert!(matches!(cli.command, Command::Ctl(CtlCommand::Switchover(_))));
        assert!(Cli::try_parse_from(["keel", "run"]).is_err());
        assert!(Cli::try_parse_from(["keel", "demo"]).is_ok());
        assert!(Cli::try_parse_from(["keel", "edit-config"]).is_ok());
    }
}
