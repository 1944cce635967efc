//! Gap repair for relays: reading the deltas a relay missed (a tick gap on `:out`, a
//! subscriber reconnect, a new owner) from the log with `XRANGE`, delivering them before
//! anything that arrived meanwhile, and sending again the ops the log shows were never
//! applied.

use super::*;

impl Shard {
    /// The subscriber reconnected: every relay reads what it may have missed.
    pub(in crate::server::fleet) fn relays_repair_all(&self) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        let repairs: Vec<(RoomId, u64)> = fleet
            .rooms
            .borrow_mut()
            .iter_mut()
            .filter_map(|(id, r)| match r {
                FleetRoom::Relayed(relay) if !relay.repairing => {
                    let last = relay.tick?;
                    relay.repairing = true;
                    Some((id.clone(), last + 1))
                }
                _ => None,
            })
            .collect();
        for (room, from) in repairs {
            info!(%room, from, "subscriber reconnected: reading missed deltas from the log");
            self.spawn_repair(room, from);
        }
    }

    pub(super) fn spawn_repair(&self, room: RoomId, from: u64) {
        let Some(me) = self.me() else {
            return;
        };
        ShardMetrics::add(&self.metrics().fleet.gap_repairs, 1);
        glommio::spawn_local(repair(me, room, from)).detach();
    }
}

/// Reads the log from `from` on and delivers it, then what waited meanwhile.
async fn repair(shard: Rc<Shard>, room: RoomId, from: u64) {
    let Some(fleet) = shard.fleet.as_ref() else {
        return;
    };
    let entries = read_log(fleet, &room, from, None).await;
    let mut rejoin = false;
    // Members to register with a newer owner the log shows (its announcement was lost).
    let mut owner_rejoins = None;
    match entries {
        Ok(entries) => {
            if entries.first().is_some_and(|e| e.tick != from) {
                warn!(%room, from, "the log no longer holds the gap: full snapshots");
                rejoin = true;
            } else {
                for entry in entries {
                    let deliver = {
                        let mut rooms = fleet.rooms.borrow_mut();
                        let Some(FleetRoom::Relayed(relay)) = rooms.get_mut(&room) else {
                            return;
                        };
                        // The log is one history (an append checks the epoch): an entry
                        // of an older epoch than the relay saw on `:out` is still the
                        // next delta, not a stale owner's.
                        let next = relay.tick.map_or(entry.tick, |t| t + 1);
                        if entry.tick != next {
                            false
                        } else {
                            if relay.owner_changes(entry.epoch) {
                                info!(%room, epoch = entry.epoch, "the log shows a new owner");
                                owner_rejoins = Some(relay.new_owner(entry.epoch));
                                // What the log does not ack by its end goes to that owner.
                                relay.resend = true;
                            }
                            relay.tick = Some(entry.tick);
                            true
                        }
                    };
                    if deliver {
                        shard.relay_deliver_delta(
                            &room,
                            entry.tick,
                            entry.epoch,
                            &entry.raw_ops,
                            &entry.acks,
                        );
                    }
                }
            }
        }
        Err(error) => {
            warn!(%room, cause = %error, "gap repair failed: full snapshots");
            rejoin = true;
        }
    }
    let (buffered, rejoins, resend, unresolved) = {
        let mut rooms = fleet.rooms.borrow_mut();
        let Some(FleetRoom::Relayed(relay)) = rooms.get_mut(&room) else {
            return;
        };
        relay.repairing = false;
        let rejoins = if rejoin {
            relay.await_snapshots()
        } else {
            owner_rejoins.unwrap_or_default()
        };
        // What the log did not ack was never logged: send it again, unless the log could
        // not be read (then its fate is unknown).
        let (resend, unresolved) = match (std::mem::take(&mut relay.resend), rejoin) {
            (true, false) => (relay.take_ops(), Vec::new()),
            (true, true) => (Vec::new(), relay.take_ops()),
            (false, _) => (Vec::new(), Vec::new()),
        };
        (
            std::mem::take(&mut relay.buffered),
            rejoins,
            resend,
            unresolved,
        )
    };
    if rejoin {
        // Before any delta delivered from here on (one path per shard, in order): the
        // snapshot supersedes the deltas before it, which would show a tick gap.
        for (origin, _) in &rejoins {
            shard.send(
                origin.conn.shard,
                MeshMsg::AwaitSnapshot {
                    room: room.clone(),
                    conn: origin.conn.id,
                },
            );
        }
    }
    shard.relay_rejoin(&room, rejoins);
    for (origin, seq, _) in unresolved {
        shard.answer_unavailable(&room, origin, Some(seq), false);
    }
    if !resend.is_empty() {
        info!(%room, ops = resend.len(), "sending ops the old owner never logged to the new one");
        shard.relay_resend(&room, resend);
    }
    for msg in buffered {
        // A later message may start another repair: keep the rest waiting behind it.
        let repairing = matches!(
            fleet.rooms.borrow().get(&room),
            Some(FleetRoom::Relayed(relay)) if relay.repairing
        );
        if repairing {
            if let Some(FleetRoom::Relayed(relay)) = fleet.rooms.borrow_mut().get_mut(&room) {
                relay.buffered.push_back(msg);
            }
            continue;
        }
        shard.relay_process(&room, msg);
    }
}
