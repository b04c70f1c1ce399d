//! What a review's evidence cannot show, and what it inferred, said in
//! its header (T16): a finding of "unused" is only as good as the records
//! of the window, so every hole in them is named.

use bulkhead_manifest::App;

use super::evidence::{Gap, HOUR_MS};
use super::{Evidence, GrantReport, METER_DAYS, Status, time};

/// What the window's records cannot show.
pub(super) fn window(app: &App, evidence: &Evidence) -> Vec<String> {
    let since = evidence.window.since_ms;
    let mut notes = Vec::new();
    if evidence.window.is_short() {
        notes.push(
            "the window is shorter than the meter's hour: whether a function ran in it cannot be told, so no grant is called unused and nothing is suggested"
                .to_string(),
        );
    }
    let served = evidence.first_deploy_ms.filter(|t| *t > since);
    match (evidence.trail_start_ms, served) {
        (None, _) => notes.push("the audit trail is empty: nothing was recorded".to_string()),
        (Some(start), served) if start > since => notes.push(format!(
            "the audit trail starts at {}{}, after the window's start: the app was served here for less time than the window, or older records are gone; nothing before is known",
            time(start),
            served.map_or_else(String::new, |t| format!(" (first served in `{}` at {})", app.env, time(t)))
        )),
        (_, Some(first)) => notes.push(format!(
            "the app was first served in `{}` at {}, after the window's start: nothing was used before",
            app.env,
            time(first)
        )),
        _ => {}
    }
    if !evidence.metered {
        notes.push(
            "metering is off (`[limits] metering = false`): calls are not counted, so a function is known to have run only from its capability records"
                .to_string(),
        );
    } else {
        let early: u64 = evidence
            .functions
            .values()
            .map(|f| f.calls_first_hour)
            .sum();
        if early > 0 {
            notes.push(format!(
                "the meter counts calls per hour: {early} call(s) in the hour from {} may be from before the window",
                time(since - since.rem_euclid(HOUR_MS))
            ));
        }
        let kept_from = evidence.window.until_ms - METER_DAYS * 24 * HOUR_MS;
        if since < kept_from {
            notes.push(format!(
                "the meter keeps {METER_DAYS} days: calls before {} are not counted",
                time(kept_from)
            ));
        }
    }
    let mut lost = false;
    for gap in &evidence.gaps {
        let text = match gap {
            Gap::Dropped { events, time_ms } => {
                lost = true;
                format!(
                    "{events} audit event(s) were dropped before they were written (record at {})",
                    time(*time_ms)
                )
            }
            Gap::Suppressed { events, time_ms } => {
                lost = true;
                format!(
                    "{events} audit event(s) were counted, not written, over the trail's size budget (record at {})",
                    time(*time_ms)
                )
            }
            Gap::Full { kind, time_ms } => {
                lost = true;
                format!(
                    "the audit trail reached its size budget at {} (`{kind}`): later events were counted, not written; raise `[audit] max_size`",
                    time(*time_ms)
                )
            }
            Gap::ChainBroken { time_ms } => format!(
                "the audit chain was found broken at {}: run `bulkhead audit verify`",
                time(*time_ms)
            ),
            Gap::FoldedOther { function, events } => {
                lost = true;
                format!(
                    "{events} capability event(s) of `{function}` were folded without saying which capability (past a call's key cap)"
                )
            }
        };
        notes.push(text);
    }
    if lost {
        notes.push(
            "because events went unrecorded, a grant shown unused may have been used".to_string(),
        );
    }
    notes
}

/// One note per kind of inference the grants rest on.
pub(super) fn inferences(grants: &[GrantReport]) -> Vec<String> {
    let count = |pred: &dyn Fn(&GrantReport) -> bool| grants.iter().filter(|g| pred(g)).count();
    let mut notes = Vec::new();
    let folded = count(&|g| g.inferred.iter().any(|i| i.contains("folded")));
    if folded > 0 {
        notes.push(format!(
            "{folded} grant(s) used only or partly per folded counts: the uses are counted, their times are their calls' ends"
        ));
    }
    let uncertain = count(&|g| g.status == Status::Uncertain);
    if uncertain > 0 {
        notes.push(format!(
            "{uncertain} grant(s) have no recorded use but are uncertain, not unused: their function's calls may fall outside the window or the window is too short to tell; not suggested for removal"
        ));
    }
    let refused = count(&|g| g.status == Status::RefusedOnly);
    if refused > 0 {
        notes.push(format!(
            "{refused} grant(s) were never used but were tried and refused: inferred as wanted, not suggested for removal"
        ));
    }
    notes
}
