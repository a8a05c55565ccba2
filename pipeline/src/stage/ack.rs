//! Acknowledging a batch: once every delivery of an event succeeded its offset is stored, in
//! order per partition; a failed delivery stops the stage before anything after it is stored.

use std::sync::Arc;

use ::metrics::{counter, histogram};
use embedstream_topics::time::now_ms;
use rdkafka::consumer::BaseConsumer;
use tokio::sync::mpsc;

use super::consumer::{StageContext, Tracker};
use super::metrics as m;

use super::flow::{Delivery, Sent};
use crate::error::{Error, Result};

pub(super) async fn ack_loop(
    mut sent: mpsc::Receiver<Sent>,
    consumer: Arc<BaseConsumer<StageContext>>,
    tracker: Arc<Tracker>,
) -> Result<()> {
    while let Some(batch) = sent.recv().await {
        let mut failed = None;
        for (label, topic, delivery) in batch.deliveries {
            let result = match delivery {
                Delivery::Pending(d) => delivered(d, topic).await,
                Delivery::Done(None) => Ok(()),
                Delivery::Done(Some(e)) => Err(e),
            };
            let outcome = match (&result, batch.aborted) {
                (Ok(()), false) => "ok",
                (Ok(()), true) => "aborted",
                (Err(_), _) => "error",
            };
            counter!(m::PRODUCED, "model_version" => label, "result" => outcome).increment(1);
            if let Err(e) = result {
                failed.get_or_insert(e);
            }
        }
        if let Some(error) = failed {
            // Not acknowledged: the offsets stay where they are and the events are
            // re-delivered after the restart this error causes.
            return Err(error);
        }
        if batch.aborted {
            continue;
        }
        histogram!(m::PRODUCE_SECONDS).record(batch.produce_start.elapsed().as_secs_f64());
        let now = now_ms();
        for t in batch.event_times {
            histogram!(m::END_TO_END_SECONDS).record((now - t).max(0) as f64 / 1000.0);
        }
        tracker.complete(&consumer, batch.events);
    }
    Ok(())
}

/// Waits for a record's delivery report.
pub(super) async fn delivered(d: rdkafka::producer::DeliveryFuture, topic: String) -> Result<()> {
    match d.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(Error::produce(&topic)(e)),
        Err(_) => Err(Error::ProducerStopped { topic }),
    }
}
