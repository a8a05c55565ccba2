//! Migrations against the real broker and registry: the backfill killed with -9 and resumed
//! beside a dual-writing stage; the gate, forced cutover and rollback as other processes see
//! them; the admin API's token; the consistency checker re-queueing what the new version misses.

mod backfill;
mod canary;
mod canary_join;
mod check;
mod commands;

use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use embedstream_pipeline::control::ControlLog;
use embedstream_schemas::Codec;
use embedstream_schemas::records::EmbeddingRecord;
use tokio_util::sync::CancellationToken;

use crate::stage::Platform;

pub const MPNET: &str = "mpnet-base-v2@1";

/// The command line of `embedstream migrate <args>` on the platform.
pub fn migrate_command(p: &Platform, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_embedstream"));
    cmd.arg("migrate")
        .args(p.args())
        .args(["--partitions", "3"])
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn")
        .env_remove("EMBEDSTREAM_ADMIN_URL")
        .stdin(Stdio::null());
    cmd
}

/// `embedstream migrate <args>` on the platform, run to the end.
pub fn migrate(p: &Platform, args: &[&str]) -> Output {
    migrate_command(p, args).output().unwrap()
}

/// `migrate start` to MPNet, then waits until the running stage (logging to `stage_log`)
/// writes both versions.
pub async fn start_dual_write(p: &Platform, stage_log: &std::path::Path) {
    ok(&migrate(
        p,
        &["start", "--from", crate::stage::MINILM, "--to", MPNET],
    ));
    crate::stage::wait_log_count(
        stage_log,
        "Writing a new model version",
        2,
        Duration::from_secs(180),
    )
    .await;
}

/// Every record of a version's topic, per key in order: `(partition of the topic, record or
/// tombstone)`.
pub async fn version_records(
    p: &Platform,
    model: &str,
) -> HashMap<String, Vec<(i32, Option<EmbeddingRecord>)>> {
    let codec = Codec::new(&p.registry);
    let mut out: HashMap<String, Vec<(i32, Option<EmbeddingRecord>)>> = HashMap::new();
    for (key, value, partition, _) in p.read_all(&p.names.embeddings(&model.parse().unwrap())) {
        let record = match value {
            None => None,
            Some(v) => Some(codec.decode::<EmbeddingRecord>(&v).await.unwrap()),
        };
        out.entry(String::from_utf8(key.unwrap()).unwrap())
            .or_default()
            .push((partition, record));
    }
    out
}

/// Asserts success and returns stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh follower of the platform's control log (as any restarted process would read it).
pub async fn control(p: &Platform, token: &CancellationToken) -> ControlLog {
    ControlLog::open(
        &p.kafka,
        Codec::new(&p.registry),
        &p.names.control(),
        token.clone(),
    )
    .await
    .unwrap()
}

/// The id of the migration in progress, as `log` has it.
pub fn current_migration_id(log: &ControlLog) -> String {
    log.state()
        .current_migration()
        .expect("a migration in progress")
        .migration_id
        .clone()
}

/// Registers MiniLM as the active version (what `up` does on a new platform).
pub async fn activate_minilm(p: &Platform) {
    set_minilm_state(p, embedstream_schemas::records::ModelState::Active).await;
}

/// Writes MiniLM's state to the control log.
pub async fn set_minilm_state(p: &Platform, state: embedstream_schemas::records::ModelState) {
    let token = CancellationToken::new();
    let log = control(p, &token).await;
    let spec = embedstream_topics::catalog::lookup(&crate::stage::MINILM.parse().unwrap()).unwrap();
    log.set_model_state(&spec, state, "test").await.unwrap();
    token.cancel();
}

/// A child killed with SIGKILL (and reaped) when asked, or when the test ends.
pub struct Killed(pub std::process::Child);

impl Killed {
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
