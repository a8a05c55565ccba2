//! The migrator behind the router's admin API: each command is the `migrate` command of the
//! same name, refused (409) when the migration's state does not allow it.

use embedstream_router::admin::{Command, CommandError, CommandFuture, Migrations};

use super::Migrator;
use crate::error::Error;

impl Migrations for Migrator {
    fn status(&self) -> serde_json::Value {
        serde_json::to_value(Migrator::status(self)).unwrap_or_default()
    }

    fn apply(&self, command: Command) -> CommandFuture<'_> {
        Box::pin(async move {
            let applied = match command {
                Command::Start { from, to } => self.start(&from, &to).await,
                Command::Weight {
                    consumer,
                    new,
                    adapter,
                    fuse,
                    force,
                } => {
                    let adapter = adapter.map(|name| super::plan::AdapterRead { name, fuse });
                    self.weight(&consumer, new, adapter.as_ref(), force).await
                }
                Command::Canary { consumer, share } => self.canary(&consumer, share).await,
                Command::Cutover { consumer, force } => {
                    self.cutover(consumer.as_deref(), force).await
                }
                Command::Rollback { consumer } => self.rollback(consumer.as_deref()).await,
                Command::Decommission => self.decommission().await,
            };
            match applied {
                Ok(applied) => Ok(serde_json::to_value(applied).unwrap_or_default()),
                Err(Error::Refused { refused }) => Err(CommandError::Refused(refused.to_string())),
                Err(e) => Err(CommandError::Failed(e.to_string())),
            }
        })
    }
}
