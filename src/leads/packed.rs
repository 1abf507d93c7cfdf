//! A lead packed into one allocation: what extraction yields and what the writer hands to the
//! projector in memory. Extraction reads a lead's fields in place from the parsed body (a
//! borrowed [`NewLead`]) and copies them once, into here. An owned [`NewLead`] would be some
//! twenty separately allocated strings; the hand-off holds up to
//! 8,192 leads (and the projector as many again) whenever the projection runs behind, and those
//! strings made up most of the service's peak memory under load. Packed, a lead is its text in
//! one buffer plus the field boundaries; the projector reads it in place through a [`LeadView`],
//! one log entry at a time, inside its transaction. Peak RSS at 64 connections went from
//! 65–68 MB to 53–56, and on a database of 2M leads (where the projection lags) from 89 to 62 MB
//! (issue 12's note).
use super::extract::{NewLead, NewReferral};

/// The lead's text fields, in the order [`PackedLead::pack`] and [`PackedLead::unpack`] walk them.
const FIELDS: usize = 21;

/// The `leads` column of each field, in that order (the projector's `INSERT` lists them so).
pub const FIELD_COLUMNS: [&str; FIELDS] = [
    "wamid",
    "waba_id",
    "phone_number_id",
    "display_phone_number",
    "wa_id",
    "user_id",
    "profile_name",
    "message_type",
    "text",
    "source_url",
    "source_id",
    "source_type",
    "headline",
    "body",
    "media_type",
    "image_url",
    "video_url",
    "thumbnail_url",
    "ctwa_clid",
    "ref",
    "welcome_message",
];
const WAMID: usize = 0;
const SOURCE_ID: usize = 10;
const SOURCE_TYPE: usize = 11;
const CTWA_CLID: usize = 18;
const REF: usize = 19;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedLead {
    /// Every present field's text, one after another.
    text: Box<str>,
    /// Where each field ends in `text` (it starts where the previous one ends).
    ends: [usize; FIELDS],
    /// Bit `i` is set when field `i` is present (so an empty string stays distinct from none).
    present: u32,
    timestamp: Option<i64>,
}

/// A lead's fields, borrowed from a [`NewLead`] or a [`PackedLead`]: what the projector reads to
/// insert a lead and route it, without an owned string per field.
#[derive(Debug, Clone, Copy)]
pub struct LeadView<'a> {
    /// One per [`FIELD_COLUMNS`], in its order.
    pub fields: [Option<&'a str>; FIELDS],
    pub timestamp: Option<i64>,
}

impl<'a> LeadView<'a> {
    pub fn wamid(&self) -> &'a str {
        self.fields[WAMID].unwrap_or_default()
    }
    pub fn source_id(&self) -> Option<&'a str> {
        self.fields[SOURCE_ID]
    }
    pub fn source_type(&self) -> Option<&'a str> {
        self.fields[SOURCE_TYPE]
    }
    pub fn ctwa_clid(&self) -> Option<&'a str> {
        self.fields[CTWA_CLID]
    }
    pub fn ref_(&self) -> Option<&'a str> {
        self.fields[REF]
    }
}

impl<'a, S: AsRef<str>> From<&'a NewLead<S>> for LeadView<'a> {
    fn from(lead: &'a NewLead<S>) -> Self {
        let r = &lead.referral;
        Self {
            fields: [
                Some(lead.wamid.as_ref()),
                lead.waba_id.as_ref().map(AsRef::as_ref),
                lead.phone_number_id.as_ref().map(AsRef::as_ref),
                lead.display_phone_number.as_ref().map(AsRef::as_ref),
                lead.wa_id.as_ref().map(AsRef::as_ref),
                lead.user_id.as_ref().map(AsRef::as_ref),
                lead.profile_name.as_ref().map(AsRef::as_ref),
                lead.message_type.as_ref().map(AsRef::as_ref),
                lead.text.as_ref().map(AsRef::as_ref),
                r.source_url.as_ref().map(AsRef::as_ref),
                r.source_id.as_ref().map(AsRef::as_ref),
                r.source_type.as_ref().map(AsRef::as_ref),
                r.headline.as_ref().map(AsRef::as_ref),
                r.body.as_ref().map(AsRef::as_ref),
                r.media_type.as_ref().map(AsRef::as_ref),
                r.image_url.as_ref().map(AsRef::as_ref),
                r.video_url.as_ref().map(AsRef::as_ref),
                r.thumbnail_url.as_ref().map(AsRef::as_ref),
                r.ctwa_clid.as_ref().map(AsRef::as_ref),
                r.ref_.as_ref().map(AsRef::as_ref),
                r.welcome_message.as_ref().map(AsRef::as_ref),
            ],
            timestamp: lead.timestamp,
        }
    }
}

impl PackedLead {
    pub fn pack<S: AsRef<str>>(lead: &NewLead<S>) -> Self {
        let LeadView { fields, timestamp } = LeadView::from(lead);
        let mut text = String::with_capacity(fields.iter().flatten().map(|f| f.len()).sum());
        let mut ends = [0; FIELDS];
        let mut present = 0;
        for (i, field) in fields.into_iter().enumerate() {
            if let Some(field) = field {
                text.push_str(field);
                present |= 1 << i;
            }
            ends[i] = text.len();
        }
        Self {
            text: text.into_boxed_str(),
            ends,
            present,
            timestamp,
        }
    }

    /// The lead's fields, borrowed from the buffer.
    pub fn view(&self) -> LeadView<'_> {
        LeadView {
            fields: std::array::from_fn(|i| self.field(i)),
            timestamp: self.timestamp,
        }
    }

    /// The lead as owned strings (for tests and tools; the store reads [`Self::view`]).
    pub fn unpack(&self) -> NewLead {
        let mut fields = self.view().fields.into_iter();
        let mut next = || fields.next().flatten().map(str::to_owned);
        NewLead {
            wamid: next().unwrap_or_default(),
            waba_id: next(),
            phone_number_id: next(),
            display_phone_number: next(),
            wa_id: next(),
            user_id: next(),
            profile_name: next(),
            message_type: next(),
            text: next(),
            timestamp: self.timestamp,
            referral: NewReferral {
                source_url: next(),
                source_id: next(),
                source_type: next(),
                headline: next(),
                body: next(),
                media_type: next(),
                image_url: next(),
                video_url: next(),
                thumbnail_url: next(),
                ctwa_clid: next(),
                ref_: next(),
                welcome_message: next(),
            },
        }
    }

    fn field(&self, i: usize) -> Option<&str> {
        if self.present & (1 << i) == 0 {
            return None;
        }
        let start = i.checked_sub(1).map_or(0, |prev| self.ends[prev]);
        self.text.get(start..self.ends[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_field_is_read_as_its_own_column() {
        // Every field holds its column's name, so a field listed out of order shows.
        let named = |c: &str| Some(c.to_owned());
        let lead = NewLead {
            wamid: "wamid".into(),
            waba_id: named("waba_id"),
            phone_number_id: named("phone_number_id"),
            display_phone_number: named("display_phone_number"),
            wa_id: named("wa_id"),
            user_id: named("user_id"),
            profile_name: named("profile_name"),
            message_type: named("message_type"),
            text: named("text"),
            timestamp: None,
            referral: NewReferral {
                source_url: named("source_url"),
                source_id: named("source_id"),
                source_type: named("source_type"),
                headline: named("headline"),
                body: named("body"),
                media_type: named("media_type"),
                image_url: named("image_url"),
                video_url: named("video_url"),
                thumbnail_url: named("thumbnail_url"),
                ctwa_clid: named("ctwa_clid"),
                ref_: named("ref"),
                welcome_message: named("welcome_message"),
            },
        };
        let view = LeadView::from(&lead);
        assert_eq!(view.fields, FIELD_COLUMNS.map(Some));
        assert_eq!(PackedLead::pack(&lead).view().fields, view.fields);
        assert_eq!(
            [
                view.wamid(),
                view.source_id().unwrap(),
                view.source_type().unwrap()
            ],
            ["wamid", "source_id", "source_type"]
        );
        assert_eq!(
            [view.ctwa_clid().unwrap(), view.ref_().unwrap()],
            ["ctwa_clid", "ref"]
        );
    }

    #[test]
    fn every_field_comes_back_where_it_was() {
        // A distinct value in every field, so a field read back into another's place fails.
        let full = NewLead {
            wamid: "wamid.1".into(),
            waba_id: Some("waba".into()),
            phone_number_id: Some("pni".into()),
            display_phone_number: Some("+1 555".into()),
            wa_id: Some("wa".into()),
            user_id: Some("US.1".into()),
            profile_name: Some("Zoë ✓".into()),
            message_type: Some("text".into()),
            text: Some("hi".into()),
            timestamp: Some(1_700_000_000),
            referral: NewReferral {
                source_url: Some("https://fb.me/x".into()),
                source_id: Some("ad-1".into()),
                source_type: Some("ad".into()),
                headline: Some("head".into()),
                body: Some("body".into()),
                media_type: Some("image".into()),
                image_url: Some("https://img".into()),
                video_url: Some("https://vid".into()),
                thumbnail_url: Some("https://thumb".into()),
                ctwa_clid: Some("clid".into()),
                ref_: Some("ref".into()),
                welcome_message: Some("welcome".into()),
            },
        };
        assert_eq!(PackedLead::pack(&full).unpack(), full);
        // Absent fields stay absent, and an empty one stays present.
        let sparse = NewLead {
            wamid: "wamid.2".into(),
            wa_id: Some(String::new()),
            referral: NewReferral {
                ctwa_clid: Some("clid".into()),
                welcome_message: Some(String::new()),
                ..NewReferral::default()
            },
            ..NewLead::default()
        };
        assert_eq!(PackedLead::pack(&sparse).unpack(), sparse);
        assert_eq!(
            PackedLead::pack(&NewLead::<String>::default()).unpack(),
            NewLead::default()
        );
    }

    #[test]
    fn a_packed_lead_is_one_buffer_of_its_text() {
        let lead: NewLead = NewLead {
            wamid: "wamid.3".into(),
            referral: NewReferral {
                ctwa_clid: Some("abc".into()),
                ..NewReferral::default()
            },
            ..NewLead::default()
        };
        assert_eq!(&*PackedLead::pack(&lead).text, "wamid.3abc");
    }
}
