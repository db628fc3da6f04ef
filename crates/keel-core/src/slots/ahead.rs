//! Consumers ahead of the next primary (postgresql-slots.md H3, R5), measured on the primary for every major.
//!
//! A logical walsender sends up to the primary's own flush position, not up to what the standbys have flushed,
//! so a consumer can confirm (and receive) changes a failover candidate does not have yet. Promoting that
//! candidate then loses them for the consumer, and its new commits below the consumer's position are skipped.
//! PostgreSQL 17+ can hold consumers back (`synchronized_standby_slots`); on every major Keel measures it:
//! for each logical slot S and each failover candidate C,
//!
//! - `bytes`: how far S's `confirmed_flush_lsn` is ahead of C's flushed WAL (0 when not ahead);
//! - `sent_beyond`: the walsender serving S (`pg_replication_slots.active_pid = pg_stat_replication.pid`) has
//!   already sent a change past C's flushed WAL: the consumer may hold it, confirmed or not.
//!
//! C's flushed WAL is its walsender's `flush_lsn` on the primary; a candidate not streaming from the primary
//! (cascading, or disconnected) is measured against the position it last published in its member key, and
//! that source is reported.

use serde::Serialize;

use crate::lsn::Lsn;
use crate::view::ClusterView;

/// One logical slot on the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSlot {
    pub name: String,
    pub confirmed_flush: Option<Lsn>,
    /// `sent_lsn` of the walsender holding the slot; `None` when no walsender holds it.
    pub sent: Option<Lsn>,
}

/// One standby streaming from the primary (`pg_stat_replication`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walsender {
    pub application_name: String,
    pub flush: Option<Lsn>,
}

/// Where a candidate's flushed position came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlushSource {
    /// Its walsender on the primary (`pg_stat_replication.flush_lsn`).
    Walsender,
    /// Not streaming from the primary: what it last published (`receive_lsn`, else `xlog_location`).
    Published,
    Unknown,
}

/// A consumer against one failover candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsumerAhead {
    pub slot: String,
    pub member: String,
    /// Bytes `confirmed_flush_lsn` is ahead of the candidate's flushed WAL; `None` when either is unknown.
    pub bytes: Option<u64>,
    /// A change the candidate lacks was already sent to the consumer.
    pub sent_beyond: bool,
    pub candidate_flush: Option<Lsn>,
    pub source: FlushSource,
}

/// A failover candidate: a member other than `leader` that may be promoted (no `nofailover`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    /// What it last published (`receive_lsn`, else `xlog_location`).
    pub published: Option<Lsn>,
}

/// The failover candidates of `view` as seen by the primary `leader`. Pure.
pub fn candidates(view: &ClusterView, leader: &str) -> Vec<Candidate> {
    view.members
        .values()
        .filter(|m| m.name != leader && !m.tags.no_failover())
        .map(|m| Candidate { name: m.name.clone(), published: m.receive_lsn.or(m.xlog_location) })
        .collect()
}

/// Every (slot, candidate) pair, slots then candidates in the given order. Pure.
pub fn consumers_ahead(
    slots: &[ConsumerSlot],
    candidates: &[Candidate],
    walsenders: &[Walsender],
) -> Vec<ConsumerAhead> {
    let mut out = Vec::with_capacity(slots.len() * candidates.len());
    for s in slots {
        for c in candidates {
            let streaming = walsenders.iter().find(|w| w.application_name == c.name).and_then(|w| w.flush);
            let (flush, source) = match (streaming, c.published) {
                (Some(f), _) => (Some(f), FlushSource::Walsender),
                (None, Some(p)) => (Some(p), FlushSource::Published),
                (None, None) => (None, FlushSource::Unknown),
            };
            let bytes = match (s.confirmed_flush, flush) {
                (Some(cf), Some(f)) => Some(cf.saturating_sub(f)),
                _ => None,
            };
            let sent_beyond = match (s.sent, flush) {
                (Some(sent), Some(f)) => sent > f,
                // Unknown flush: a sent change may be one the candidate lacks; say so only if one was sent.
                (Some(_), None) => true,
                _ => false,
            };
            out.push(ConsumerAhead {
                slot: s.name.clone(),
                member: c.name.clone(),
                bytes,
                sent_beyond,
                candidate_flush: flush,
                source,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(name: &str, cf: Option<u64>, sent: Option<u64>) -> ConsumerSlot {
        ConsumerSlot { name: name.into(), confirmed_flush: cf.map(Lsn), sent: sent.map(Lsn) }
    }

    /// confirmed_flush, sent, walsender flush, published → bytes, sent_beyond, source.
    type Row = (Option<u64>, Option<u64>, Option<u64>, Option<u64>, Option<u64>, bool, FlushSource);

    #[test]
    fn ahead_of_each_candidate() {
        use FlushSource::*;
        let table: &[Row] = &[
            // The candidate has everything the consumer confirmed and was sent.
            (Some(100), Some(150), Some(200), None, Some(0), false, Walsender),
            (Some(200), Some(200), Some(200), None, Some(0), false, Walsender),
            // Sent beyond the candidate, not yet confirmed.
            (Some(100), Some(300), Some(200), None, Some(0), true, Walsender),
            // Confirmed beyond the candidate: the bytes the consumer would lose.
            (Some(500), Some(600), Some(200), None, Some(300), true, Walsender),
            // No walsender holds the slot: nothing sent.
            (Some(500), None, Some(200), None, Some(300), false, Walsender),
            // Not streaming from the primary: its published position stands in; the walsender wins when both exist.
            (Some(500), None, None, Some(450), Some(50), false, Published),
            (Some(500), None, Some(500), Some(10), Some(0), false, Walsender),
            // Nothing known about the candidate.
            (Some(500), Some(500), None, None, None, true, Unknown),
            (Some(500), None, None, None, None, false, Unknown),
            // A slot without confirmed_flush (never used).
            (None, None, Some(200), None, None, false, Walsender),
        ];
        for (i, (cf, sent, flush, published, bytes, beyond, source)) in table.iter().enumerate() {
            let walsenders: Vec<super::Walsender> = flush
                .map(|f| super::Walsender { application_name: "n2".into(), flush: Some(Lsn(f)) })
                .into_iter()
                .collect();
            let cands = [Candidate { name: "n2".into(), published: published.map(Lsn) }];
            let got = consumers_ahead(&[slot("cdc", *cf, *sent)], &cands, &walsenders);
            assert_eq!(got.len(), 1, "row {i}");
            assert_eq!((got[0].bytes, got[0].sent_beyond, got[0].source), (*bytes, *beyond, *source), "row {i}");
        }
    }

    #[test]
    fn every_slot_against_every_candidate() {
        let cands =
            [Candidate { name: "n2".into(), published: None }, Candidate { name: "n3".into(), published: None }];
        let ws = [
            Walsender { application_name: "n2".into(), flush: Some(Lsn(100)) },
            Walsender { application_name: "n3".into(), flush: Some(Lsn(400)) },
            Walsender { application_name: "pg_recvlogical".into(), flush: Some(Lsn(1)) },
        ];
        let got = consumers_ahead(&[slot("a", Some(300), None), slot("b", Some(50), None)], &cands, &ws);
        let pairs: Vec<(&str, &str, Option<u64>)> =
            got.iter().map(|a| (a.slot.as_str(), a.member.as_str(), a.bytes)).collect();
        assert_eq!(
            pairs,
            vec![("a", "n2", Some(200)), ("a", "n3", Some(0)), ("b", "n2", Some(0)), ("b", "n3", Some(0))]
        );
    }
}
