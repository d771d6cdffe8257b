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

/// `abm.AccountState`, fields in schema order: what a restore reads for every account.
pub(crate) fn account_state(datum: &[u8]) -> Option<AccountState> {
    let r = &mut Reader::new(datum);
    let kind = |r: &mut Reader<'_>| Some(EventKind::ALL[r.symbol(EventKind::ALL.len())?]);
    let stage = |r: &mut Reader<'_>| Some(JourneyStage::ALL[r.symbol(JourneyStage::ALL.len())?]);
    let state = AccountState {
        account_id: r.string()?,
        tier: Tier::ALL[r.symbol(Tier::ALL.len())?],
        as_of: r.optional_long()?,
        engagement: r.double()?,
        rule_points: r.array(|r| Some(RuleContribution { rule: r.string()?, points: r.double()? }))?,
        armed: r.boolean()?,
        threshold_crossings: r.long()?,
        hand_raiser_crossings: r.long()?,
        contacts: r.array(|r| {
            Some(EngagedContact {
                contact_id: r.string()?,
                persona: r.string()?,
                title: r.optional_string()?,
                last_engaged_at: r.long()?,
            })
        })?,
        window_events: r.array(|r| Some(WindowEvent { kind: kind(r)?, occurred_at: r.long()? }))?,
        cap_counts: r.array(|r| {
            Some(CapCount { contact_key: r.string()?, rule: r.string()?, day: r.int()?, count: r.int()? })
        })?,
        seen_events: r.array(|r| Some(SeenEvent { id_hash: r.long()?, applied_at: r.long()? }))?,
        recent_events: r.array(|r| {
            Some(RecentEvent {
                event_id: r.string()?,
                kind: kind(r)?,
                occurred_at: r.long()?,
                rule: r.optional_string()?,
                points: r.double()?,
                contact_id: r.optional_string()?,
                detail: r.string()?,
            })
        })?,
        events_applied: r.long()?,
        duplicates: r.long()?,
        chunks: r.array(|r| {
            Some(StateChunkRef { structure: StateStructure::ALL[r.symbol(StateStructure::ALL.len())?], id: r.long()? })
        })?,
        opportunities: r.array(|r| {
            Some(OpportunityState {
                opportunity_id: r.string()?,
                stage: OpportunityStage::ALL[r.symbol(OpportunityStage::ALL.len())?],
                stage_name: r.optional_string()?,
                amount: r.double()?,
                currency: r.string()?,
                created_at: r.long()?,
                updated_at: r.long()?,
            })
        })?,
        first_applied_at: r.optional_long()?,
        stage: stage(r)?,
        stage_entered_at: r.optional_long()?,
        journey_transitions: r.long()?,
        last_hand_raiser_at: r.optional_long()?,
        stage_entries: r.array(|r| {
            Some(StageEntry {
                stage: stage(r)?,
                first_entered_at: r.long()?,
                first_sequence: r.long()?,
                last_sequence: r.long()?,
            })
        })?,
        model_version: r.optional_string()?,
    };
    r.is_empty().then_some(state)
}
