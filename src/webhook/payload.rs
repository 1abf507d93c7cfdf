//! Serde model of a `whatsapp_business_account` delivery, borrowed from the verified bytes where
//! no unescaping is needed. Every part is optional and unknown fields are ignored, because Meta
//! adds fields and message types all the time. A change's `value` and each message stay raw
//! until needed, so one odd message (or a field of a kind we don't model) never costs the others.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

pub type Str<'a> = Cow<'a, str>;

#[derive(Debug, Deserialize)]
pub struct Delivery<'a> {
    #[serde(borrow, default)]
    pub object: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub entry: Vec<Entry<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct Entry<'a> {
    /// The WhatsApp Business Account id.
    #[serde(borrow, default)]
    pub id: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub changes: Vec<Change<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct Change<'a> {
    #[serde(borrow, default)]
    pub field: Option<Str<'a>>,
    /// Parsed as [`MessagesValue`] only when `field` is `messages`.
    #[serde(borrow, default)]
    pub value: Option<&'a RawValue>,
}

/// The `value` of a `messages` change.
#[derive(Debug, Default, Deserialize)]
pub struct MessagesValue<'a> {
    #[serde(borrow, default)]
    pub metadata: Option<Metadata<'a>>,
    #[serde(borrow, default)]
    pub contacts: Vec<Contact<'a>>,
    /// Each message is parsed on its own; see [`Message`].
    #[serde(borrow, default)]
    pub messages: Vec<&'a RawValue>,
    #[serde(borrow, default)]
    pub statuses: Vec<&'a RawValue>,
    #[serde(borrow, default)]
    pub errors: Vec<&'a RawValue>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Metadata<'a> {
    #[serde(borrow, default)]
    pub display_phone_number: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub phone_number_id: Option<Str<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Contact<'a> {
    #[serde(borrow, default)]
    pub profile: Option<Profile<'a>>,
    #[serde(borrow, default)]
    pub wa_id: Option<Str<'a>>,
    /// The business-scoped user id (BSUID).
    #[serde(borrow, default)]
    pub user_id: Option<Str<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Profile<'a> {
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
}

/// An inbound message. Only what a lead needs is modelled; the rest of any message type stays
/// in the raw event.
#[derive(Debug, Default, Deserialize)]
pub struct Message<'a> {
    #[serde(borrow, default)]
    pub from: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub from_user_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub id: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub timestamp: Option<Str<'a>>,
    #[serde(borrow, default, rename = "type")]
    pub kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub text: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub referral: Option<Referral<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Text<'a> {
    #[serde(borrow, default)]
    pub body: Option<Str<'a>>,
}

/// The Click-to-WhatsApp ad a message came from.
#[derive(Debug, Default, Deserialize)]
pub struct Referral<'a> {
    #[serde(borrow, default)]
    pub source_url: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub source_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub source_type: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub headline: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub body: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub media_type: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub image_url: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub video_url: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub thumbnail_url: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub ctwa_clid: Option<Str<'a>>,
    #[serde(borrow, default, rename = "ref")]
    pub ref_: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub welcome_message: Option<Text2<'a>>,
}

/// `welcome_message: {"text": …}`.
#[derive(Debug, Default, Deserialize)]
pub struct Text2<'a> {
    #[serde(borrow, default)]
    pub text: Option<Str<'a>>,
}
