//! `EventService`: Emit, List, and Tail (a server stream resumable by seq).

use std::pin::Pin;
use std::time::{Duration, Instant};

use opsloop_core::domain::input::NewEvent;
use opsloop_core::proto::v1 as pb;
use opsloop_core::proto::v1::event_service_server::EventService;
use opsloop_core::workflow::{self, EventFilter};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{Api, invalid, respond};
use crate::convert;

/// How often a tail looks for new events.
const TAIL_POLL: Duration = Duration::from_millis(200);
/// How long a tail waits for a missing seq (a transaction that took its
/// number but has not committed yet) before treating it as a rolled-back gap.
const GAP_WAIT: Duration = Duration::from_secs(2);

type TailStream = Pin<Box<dyn Stream<Item = Result<pb::TailEventsResponse, Status>> + Send>>;

fn filter_from(req: &pb::ListEventsRequest) -> Result<EventFilter, Status> {
    Ok(EventFilter {
        kind_pattern: req.kind_pattern.clone(),
        after_seq: req.since_seq,
        since: req
            .since
            .as_ref()
            .map(|t| convert::from_ts("since", t))
            .transpose()?,
        source: req.source.clone(),
        mission_id: convert::opt_uuid("mission_id", req.mission_id.as_ref())?,
        limit: workflow::page_size(req.page_size),
    })
}

async fn max_seq(db: &DatabaseConnection) -> Result<i64, Status> {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT COALESCE(MAX(seq), 0) AS seq FROM events",
        ))
        .await
        .map_err(|e| Status::from(workflow::WorkflowError::Db(e)))?;
    Ok(match row {
        Some(row) => row
            .try_get::<i64>("", "seq")
            .map_err(|e| Status::from(workflow::WorkflowError::Db(e)))?,
        None => 0,
    })
}

/// Streams events after `cursor` in seq order without gaps or duplicates:
/// a missing seq is waited for (up to [`GAP_WAIT`]) before later ones are
/// sent, because on PostgreSQL numbers are taken before commit.
async fn tail(
    db: DatabaseConnection,
    mut cursor: i64,
    kind_pattern: Option<String>,
    tx: mpsc::Sender<Result<pb::TailEventsResponse, Status>>,
    shutdown: CancellationToken,
) {
    let mut gap_since: Option<Instant> = None;
    loop {
        let filter = EventFilter {
            after_seq: Some(cursor),
            limit: 500,
            ..Default::default()
        };
        let batch = match workflow::list_events(&db, &filter).await {
            Ok(batch) => batch,
            Err(error) => {
                let _ = tx.send(Err(Status::from(error))).await;
                return;
            }
        };
        let full = batch.len() == 500;
        for event in batch {
            if event.seq != cursor + 1 {
                let since = *gap_since.get_or_insert_with(Instant::now);
                if since.elapsed() < GAP_WAIT {
                    break;
                }
            }
            gap_since = None;
            cursor = event.seq;
            let wanted = match &kind_pattern {
                Some(p) => glob_match(p, &event.kind),
                None => true,
            };
            if wanted
                && tx
                    .send(Ok(pb::TailEventsResponse {
                        event: Some(convert::event(&event)),
                    }))
                    .await
                    .is_err()
            {
                return;
            }
        }
        if full && gap_since.is_none() {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            _ = tokio::time::sleep(TAIL_POLL) => {}
        }
    }
}

/// The glob of `kind_pattern`: `*` any run, `?` one character.
pub(super) fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    go(&p, &t)
}

#[tonic::async_trait]
impl EventService for Api {
    async fn emit_event(
        &self,
        request: Request<pb::EmitEventRequest>,
    ) -> Result<Response<pb::EmitEventResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let mut event = NewEvent::parse(
                &req.kind,
                &req.source,
                &req.payload_json,
                &req.tags,
                req.cost_usd,
                &self.limits,
            )
            .map_err(invalid)?;
            event.mission_id = convert::opt_uuid("mission_id", req.mission_id.as_ref())?;
            event.step_id = convert::opt_uuid("step_id", req.step_id.as_ref())?;
            event.proposal_id = convert::opt_uuid("proposal_id", req.proposal_id.as_ref())?;
            let stored = workflow::append_event(&self.db, event, self.now()).await?;
            Ok(pb::EmitEventResponse {
                event: Some(convert::event(&stored)),
            })
        })
        .await
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let mut filter = filter_from(&req)?;
            if !req.page_token.is_empty() {
                let seq: i64 = req.page_token.parse().map_err(|_| {
                    convert::invalid("page_token", "not a token from a previous response")
                })?;
                filter.after_seq = Some(filter.after_seq.map_or(seq, |s| s.max(seq)));
            }
            let events = workflow::list_events(&self.db, &filter).await?;
            let next_page_token = match events.last() {
                Some(last) if events.len() as u64 == filter.limit => last.seq.to_string(),
                _ => String::new(),
            };
            Ok(pb::ListEventsResponse {
                events: events.iter().map(convert::event).collect(),
                next_page_token,
            })
        })
        .await
    }

    type TailEventsStream = TailStream;

    async fn tail_events(
        &self,
        request: Request<pb::TailEventsRequest>,
    ) -> Result<Response<Self::TailEventsStream>, Status> {
        respond(async {
            let req = request.into_inner();
            if let Some(p) = &req.kind_pattern {
                workflow::events::glob_to_like(p).map_err(invalid)?;
            }
            let cursor = match req.from_seq {
                Some(seq) if seq >= 0 => seq,
                Some(_) => return Err(convert::invalid("from_seq", "must not be negative")),
                None => max_seq(&self.db).await?,
            };
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(tail(
                self.db.clone(),
                cursor,
                req.kind_pattern,
                tx,
                self.shutdown.clone(),
            ));
            Ok(Box::pin(ReceiverStream::new(rx)) as TailStream)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("mission.*", "mission.succeeded"));
        assert!(glob_match("step.?ailed", "step.failed"));
        assert!(!glob_match("mission.*", "step.started"));
        assert!(glob_match("*", ""));
    }
}
