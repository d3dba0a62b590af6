//! The two media moves of third-party call control (RFC 3725) that a consultation and a
//! conference make between legs already answered: [`offer_to`] (a description in a
//! re-INVITE, its answer back) and [`join`] (Flow IV again, between two answered legs: an
//! offerless re-INVITE to one, its 200's offer to the other, the answer in the first's ACK).
//!
//! Each leaves `last_sdp` as what calldesk last sent on the leg, which hold and a restart use.

use rsipstack::sip::{Response, StatusCodeKind};
use tracing::Instrument;

use super::conformance::invite_headers;
use super::engine::Engine;
use super::leg::Leg;
use super::outcome::status_detail;
use super::sdp;

/// re-INVITEs `leg` with `offer` (another leg's description, restamped for this one) and
/// ACKs its 200: returns the answer. Refused (or unanswered), the leg is as it was.
pub(super) async fn offer_to(
    engine: &Engine,
    leg: &mut Leg,
    offer: &str,
) -> Result<String, String> {
    let body = sdp::restamp(offer, &mut leg.origin);
    let response = reinvite(engine, leg, Some(body.clone())).await?;
    leg.ack(engine, &response, None).await;
    if !sdp::has_media(response.body()) {
        return Err(format!("the {} answered without SDP", leg.role.name()));
    }
    leg.last_sdp = Some(body);
    Ok(String::from_utf8_lossy(response.body()).into_owned())
}

/// Connects `offerer`'s media with `answerer`'s: an offerless re-INVITE to `offerer`, its
/// 200's offer to `answerer` ([`offer_to`]), `answerer`'s answer in `offerer`'s ACK.
/// Refused by `answerer`, `offerer` gets back in its ACK what it had last (its media
/// unchanged); refused by `offerer`, nothing was changed.
pub(super) async fn join(
    engine: &Engine,
    offerer: &mut Leg,
    answerer: &mut Leg,
) -> Result<(), String> {
    let response = reinvite(engine, offerer, None).await?;
    if !sdp::has_media(response.body()) {
        // An answer to nothing: ACK it as it is and leave both legs as they were.
        offerer.ack(engine, &response, None).await;
        let name = offerer.role.name();
        return Err(format!("the {name} offered no SDP in its 200 OK"));
    }
    let offer = String::from_utf8_lossy(response.body()).into_owned();
    match offer_to(engine, answerer, &offer).await {
        Ok(answer) => {
            let to_offerer = sdp::restamp(&answer, &mut offerer.origin);
            offerer
                .ack(engine, &response, Some(to_offerer.clone()))
                .await;
            offerer.last_sdp = Some(to_offerer);
            Ok(())
        }
        Err(why) => {
            // The 200 carried an offer: its ACK must carry an answer. What calldesk sent
            // last keeps the leg's media as it was.
            let previous = offerer
                .last_sdp
                .clone()
                .map(|last| sdp::restamp(&last, &mut offerer.origin));
            offerer.ack(engine, &response, previous).await;
            Err(why)
        }
    }
}

/// re-INVITEs `leg` (with `body`, or without an offer), retrying once on 491: its 2xx.
async fn reinvite(
    engine: &Engine,
    leg: &mut Leg,
    body: Option<String>,
) -> Result<Response, String> {
    let with_sdp = body.is_some();
    let result = leg
        .dialog(engine)?
        .clone()
        .reinvite_with_glare_retry(
            Some(invite_headers(with_sdp)),
            body.map(String::into_bytes),
            2,
        )
        .instrument(tracing::debug_span!("sip.reinvite", leg = leg.role.name()))
        .await;
    let name = leg.role.name();
    match result {
        Ok(Some(response)) if response.status_code.kind() == StatusCodeKind::Successful => {
            Ok(response)
        }
        Ok(Some(response)) => Err(format!("{name}: {}", status_detail(&response))),
        Ok(None) => Err(format!("{name}: no response to the re-INVITE")),
        Err(rsipstack::Error::Error(text)) if text.contains("491") => {
            Err(format!("{name}: 491 Request Pending"))
        }
        Err(_) => Err(format!("{name}: re-INVITE failed")),
    }
}
