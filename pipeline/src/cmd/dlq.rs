//! `embedstream dlq list|replay`: reading `items.dlq` and sending chosen dead letters back to
//! `items` once their cause is fixed.

use embedstream_pipeline::dlq::{self, Action, DlqSource, ReplayOptions, Selection};
use tokio_util::sync::CancellationToken;

use super::platform::PlatformArgs;

/// Which letters: every option given must match.
#[derive(Debug, Clone, clap::Args)]
pub struct SelectionArgs {
    /// Error kind (repeatable), e.g. `text_too_long`.
    #[arg(long = "kind")]
    kinds: Vec<String>,
    /// Item id, the original key (repeatable).
    #[arg(long = "item")]
    items: Vec<String>,
    /// First offset of `items.dlq` to take.
    #[arg(long)]
    from_offset: Option<i64>,
    /// Offset of `items.dlq` to stop before.
    #[arg(long)]
    to_offset: Option<i64>,
    /// At most this many letters (a replay takes at most 10000 per run unless given: run it
    /// again for more, what it sent is superseded then).
    #[arg(long)]
    limit: Option<usize>,
}

impl SelectionArgs {
    fn selection(&self, default_limit: Option<usize>) -> Selection {
        Selection {
            kinds: self.kinds.clone(),
            items: self.items.clone(),
            from_offset: self.from_offset,
            to_offset: self.to_offset,
            limit: self.limit.or(default_limit),
        }
    }
}

/// `embedstream dlq …`.
#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// Print the selected dead letters as JSON lines (without their bytes).
    List {
        #[command(flatten)]
        platform: PlatformArgs,
        #[command(flatten)]
        select: SelectionArgs,
    },
    /// Send the selected dead letters' original records back to `items`, each to the partition
    /// it was read from. A letter whose item has a later record on `items` is superseded and
    /// skipped, and a letter whose bytes were cut cannot be sent; one JSON line per letter says
    /// what was done.
    Replay {
        #[command(flatten)]
        platform: PlatformArgs,
        #[command(flatten)]
        select: SelectionArgs,
        /// Say what would be sent; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Send superseded letters too: their old event then wins over the item's later ones.
        #[arg(long)]
        include_superseded: bool,
    },
}

fn source(platform: &PlatformArgs) -> anyhow::Result<DlqSource> {
    Ok(DlqSource {
        kafka: platform.kafka()?,
        registry_url: platform.registry_url.clone(),
        names: platform.names(),
    })
}

/// Runs the command until done or `shutdown`.
pub async fn run(command: DlqCommand, shutdown: CancellationToken) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { platform, select } => {
            let mut out = Vec::new();
            let n = dlq::list(
                &source(&platform)?,
                &select.selection(None),
                &shutdown,
                |l| {
                    out.push(l);
                },
            )
            .await?;
            for line in out {
                println!("{}", serde_json::to_string(&line)?);
            }
            eprintln!("{n} dead letter(s)");
        }
        DlqCommand::Replay {
            platform,
            select,
            dry_run,
            include_superseded,
        } => {
            let options = ReplayOptions {
                dry_run,
                include_superseded,
            };
            let lines = dlq::replay(
                &source(&platform)?,
                &select.selection(Some(10_000)),
                options,
                &shutdown,
            )
            .await?;
            let mut counts = std::collections::BTreeMap::<String, usize>::new();
            for line in &lines {
                println!("{}", serde_json::to_string(line)?);
                *counts.entry(action_name(line.action)).or_default() += 1;
            }
            eprintln!("{counts:?}");
        }
    }
    Ok(())
}

fn action_name(action: Action) -> String {
    serde_json::to_value(action)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
