//! Workers sharing Redis: pipeline runs queued on a Redis stream, taken by worker processes
//! through a consumer group (`XREADGROUP`), kept with a heartbeat (`XCLAIM … JUSTID` of the
//! worker's own entry, which resets its idle time), and taken over from a worker that died
//! (`XAUTOCLAIM` of an entry idle longer than the claim timeout). A taken-over run goes on
//! from its ledger rows and journals (`Host::resume_pipeline`): no stage that ended runs
//! again, an interrupted agent run resumes where it stopped. No home-made broker: the
//! stream, the group and its pending-entries list are Redis's own.
//!
//! Workers share the state store (Redis) and the data directory (the ledger and the
//! artifacts' blobs): the ledger is one SQLite file, so the workers of one pipeline queue run
//! where that file is.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::AsyncCommands;
use redis::streams::{StreamAutoClaimReply, StreamReadReply};

use super::record::Event;
use super::run::{Observer, RunOptions};
use super::spec::Pipeline;
use crate::error::Error;
use crate::host::Host;

/// The stream pipeline runs are queued on.
pub const QUEUE: &str = "warden:pipelines";
/// The consumer group of the workers.
pub const GROUP: &str = "warden-workers";

/// How a worker runs.
#[derive(Clone)]
pub struct WorkerOptions {
    /// The worker's consumer name in the group (default: `<machine>-<pid>`).
    pub name: String,
    /// An entry idle this long belongs to a worker that stopped: another takes it over.
    pub claim_after: Duration,
    /// How often a worker marks the entry it runs as alive (well under `claim_after`).
    pub heartbeat: Duration,
    /// Stop after this many runs (`None`: run until stopped).
    pub max_runs: Option<usize>,
    /// Sees each event the runs record.
    pub observer: Option<Observer>,
}

impl Default for WorkerOptions {
    fn default() -> WorkerOptions {
        WorkerOptions {
            name: format!("{}-{}", crate::context::machine_name(), std::process::id()),
            claim_after: Duration::from_secs(10),
            heartbeat: Duration::from_secs(2),
            max_runs: None,
            observer: None,
        }
    }
}

impl std::fmt::Debug for WorkerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerOptions")
            .field("name", &self.name)
            .field("claim_after", &self.claim_after)
            .field("heartbeat", &self.heartbeat)
            .field("max_runs", &self.max_runs)
            .finish_non_exhaustive()
    }
}

fn failed(op: &str, e: &redis::RedisError) -> Error {
    Error::State(crate::state::StateError::Backend {
        backend: "redis",
        source: format!("`{op}` on the pipeline queue `{QUEUE}`: {e}").into(),
    })
}

async fn connect(url: &str) -> Result<redis::aio::MultiplexedConnection, Error> {
    let client = redis::Client::open(url).map_err(|e| failed("open", &e))?;
    // `XREADGROUP … BLOCK` waits on the server: the reply may take the block's length.
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| failed("connect", &e))
}

async fn ensure_group(conn: &mut redis::aio::MultiplexedConnection) -> Result<(), Error> {
    let created: redis::RedisResult<()> = conn.xgroup_create_mkstream(QUEUE, GROUP, "0").await;
    match created {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(failed("XGROUP CREATE", &e)),
    }
}

impl Host {
    /// Queue a run of `pipeline` for the workers on the Redis at `url`: its start is recorded
    /// now (by no process: any worker may take it), its id returned.
    pub async fn enqueue_pipeline(
        &self,
        url: &str,
        pipeline: &Pipeline,
        options: RunOptions,
    ) -> Result<String, Error> {
        let run = self.record_queued(pipeline, options).await?;
        let mut conn = connect(url).await?;
        ensure_group(&mut conn).await?;
        let _: String = conn
            .xadd(QUEUE, "*", &[("run", run.as_str())])
            .await
            .map_err(|e| failed("XADD", &e))?;
        Ok(run)
    }

    /// Work the queue on the Redis at `url` until `max_runs` runs ended (or forever): take a
    /// run another worker left (idle past `claim_after`) or the next queued one, run it with a
    /// heartbeat on its entry, acknowledge it when it ends. Returns the runs it finished.
    pub async fn work(&self, url: &str, options: WorkerOptions) -> Result<Vec<String>, Error> {
        let mut conn = connect(url).await?;
        ensure_group(&mut conn).await?;
        let claim_ms = u64::try_from(options.claim_after.as_millis()).unwrap_or(u64::MAX);
        let mut done = Vec::new();
        while options.max_runs.is_none_or(|max| done.len() < max) {
            // A run a stopped worker left comes first: it is the oldest work.
            let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(QUEUE)
                .arg(GROUP)
                .arg(&options.name)
                .arg(claim_ms)
                .arg("0-0")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await
                .map_err(|e| failed("XAUTOCLAIM", &e))?;
            let entry = match claimed.claimed.into_iter().next() {
                Some(entry) => Some((entry, true)),
                None => {
                    let read: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg(GROUP)
                        .arg(&options.name)
                        .arg("COUNT")
                        .arg(1)
                        .arg("BLOCK")
                        .arg(500)
                        .arg("STREAMS")
                        .arg(QUEUE)
                        .arg(">")
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| failed("XREADGROUP", &e))?;
                    read.and_then(|r| r.keys.into_iter().next())
                        .and_then(|k| k.ids.into_iter().next())
                        .map(|entry| (entry, false))
                }
            };
            let Some((entry, taken_over)) = entry else {
                continue;
            };
            let run: Option<String> = entry.get("run");
            let Some(run) = run else {
                // Not an entry of ours: acknowledged so it is not claimed forever.
                let _: redis::RedisResult<u64> = conn.xack(QUEUE, GROUP, &[&entry.id]).await;
                continue;
            };
            tracing::info!(worker = %options.name, %run, taken_over, "taking pipeline run");
            let beat = {
                let mut conn = conn.clone();
                let (id, name, every) = (entry.id.clone(), options.name.clone(), options.heartbeat);
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(every).await;
                        let _: redis::RedisResult<redis::Value> = redis::cmd("XCLAIM")
                            .arg(QUEUE)
                            .arg(GROUP)
                            .arg(&name)
                            .arg(0)
                            .arg(&id)
                            .arg("JUSTID")
                            .query_async(&mut conn)
                            .await;
                    }
                })
            };
            let result = self.resume_pipeline(&run, options.observer.clone()).await;
            beat.abort();
            match result {
                Ok(_) => {}
                // Ended already (a worker died between its end and its acknowledgement).
                Err(Error::Pipeline(crate::error::PipelineError::Ended { .. })) => {}
                Err(error) => {
                    tracing::warn!(worker = %options.name, %run, %error, "pipeline run not finished; left for another worker");
                    continue;
                }
            }
            let _: u64 = conn
                .xack(QUEUE, GROUP, &[&entry.id])
                .await
                .map_err(|e| failed("XACK", &e))?;
            done.push(run);
        }
        Ok(done)
    }

    /// A run's start, recorded with no process: queued.
    async fn record_queued(
        &self,
        pipeline: &Pipeline,
        options: RunOptions,
    ) -> Result<String, Error> {
        let params = pipeline
            .bind_params(&options.params)
            .map_err(crate::error::PipelineError::Param)?;
        if !options.overrides.is_empty() {
            return Err(crate::error::PipelineError::Param(
                "a queued run takes no `--override`: run it with `warden pipeline run`".into(),
            )
            .into());
        }
        let run = crate::id::TaskId::new(&format!("pl-{}", uuid::Uuid::now_v7().simple()))?;
        let start = Event::Start {
            name: pipeline.name.clone(),
            digest: pipeline.digest.clone(),
            source: pipeline.source.clone(),
            params,
            overrides: BTreeMap::new(),
            host: String::new(),
            pid: 0,
            deadline_ms: super::run::deadline_of(pipeline),
            by: options.actor,
        };
        super::run::record_event(self, &run, &start).await?;
        Ok(run.to_string())
    }
}
