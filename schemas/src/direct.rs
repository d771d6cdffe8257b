//! Direct decoders for the records on the hottest paths: straight from the datum into the
//! struct, without serde's field-by-field visitor. Each handles only datums written with the
//! record's current schema and returns `None` on anything else; [`crate::decode`] then uses the
//! codec, which resolves other schema versions and reports errors. Property tests
//! (`schemas/tests/codec.rs`) hold each equal to the codec on valid and arbitrary input.

use crate::binary::Reader;
use crate::records::*;

/// `abm.EngagementEvent`, fields in schema order.
pub(crate) fn engagement_event(datum: &[u8]) -> Option<EngagementEvent> {
    let r = &mut Reader::new(datum);
    let event = EngagementEvent {
        event_id: r.string()?,
        kind: EventKind::ALL[r.symbol(EventKind::ALL.len())?],
        occurred_at: r.long()?,
        received_at: r.long()?,
        source: r.string()?,
        account_id: r.optional_string()?,
        domain: r.optional_string()?,
        contact: r.optional(|r| {
            Some(Contact {
                contact_id: r.optional_string()?,
                email: r.optional_string()?,
                title: r.optional_string()?,
                persona: r.optional_string()?,
            })
        })?,
        web_visit: r.optional(|r| {
            Some(WebVisit { url: r.string()?, referrer: r.optional_string()?, title: r.optional_string()? })
        })?,
        ad_click: r.optional(|r| {
            Some(AdClick { channel: r.string()?, campaign: r.optional_string()?, creative: r.optional_string()? })
        })?,
        email: r.optional(|r| {
            Some(EmailEvent {
                action: EmailAction::ALL[r.symbol(EmailAction::ALL.len())?],
                campaign: r.optional_string()?,
            })
        })?,
        demo_request: r.optional(|r| Some(DemoRequest { form: r.string()? }))?,
        content_download: r.optional(|r| Some(ContentDownload { asset: r.string()? }))?,
        webinar: r.optional(|r| Some(Webinar { webinar_id: r.string()?, action: r.string()? }))?,
        meeting: r.optional(|r| Some(Meeting { meeting_id: r.string()? }))?,
        intent: r.optional(|r| Some(Intent { topic: r.string()?, strength: r.double()? }))?,
        opportunity: r.optional(|r| {
            Some(Opportunity {
                opportunity_id: r.string()?,
                stage: OpportunityStage::ALL[r.symbol(OpportunityStage::ALL.len())?],
                stage_name: r.optional_string()?,
                amount: r.double()?,
                currency: r.string()?,
            })
        })?,
    };
    r.is_empty().then_some(event)
}
