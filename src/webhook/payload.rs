//! Serde model of a `whatsapp_business_account` delivery, borrowed from the verified bytes where
//! no unescaping is needed, and tolerant field by field: one odd field never costs a lead.
//! - [`Field`]: a string; a number is kept as its decimal text (ids, phone numbers,
//!   timestamps); any other type is [`Field::Odd`], read as null and reported.
//! - [`Obj`] and [`List`]: an object or array; anything else is odd, read as absent or empty.
//! - Unknown fields are ignored, because Meta adds fields and message types all the time.
//!
//! Two things a typed parse cannot take are handled around it, in `leads::extract`: a lone
//! UTF-16 surrogate escape (`\ud800`) is read as U+FFFD, and for a duplicate key the last value
//! wins, as in `serde_json::Value`.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// What an odd value was, for the log (never the value itself: it may be personal data).
pub type Found = &'static str;

/// A scalar read leniently.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Field<'a> {
    #[default]
    Absent,
    Text(Cow<'a, str>),
    Odd(Found),
}

impl<'a> Field<'a> {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Field::Text(t) => Some(t),
            _ => None,
        }
    }
}

fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Field<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Field<'a>, E> {
                Ok(Field::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field<'a>, E> {
                Ok(Field::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Field<'a>, E> {
                Ok(Field::Text(Cow::Owned(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Field<'a>, E> {
                Ok(Field::Text(Cow::Owned(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Field<'a>, E> {
                Ok(Field::Text(Cow::Owned(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Field<'a>, E> {
                // Written as `serde_json::Value` would write it.
                Ok(
                    serde_json::Number::from_f64(v).map_or(Field::Odd("a number"), |n| {
                        Field::Text(Cow::Owned(n.to_string()))
                    }),
                )
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Field<'a>, E> {
                Ok(Field::Odd("a boolean"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Field<'a>, E> {
                Ok(Field::Absent)
            }
            fn visit_none<E: de::Error>(self) -> Result<Field<'a>, E> {
                Ok(Field::Absent)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Field<'a>, A::Error> {
                drain_seq(seq)?;
                Ok(Field::Odd("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field<'a>, A::Error> {
                drain_map(map)?;
                Ok(Field::Odd("an object"))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// An object read leniently: null is absent, any other non-object is odd.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Obj<T> {
    #[default]
    Absent,
    Some(T),
    Odd(Found),
}

impl<T> Obj<T> {
    pub fn get(&self) -> Option<&T> {
        match self {
            Obj::Some(t) => Some(t),
            _ => None,
        }
    }
}

struct OddVisitor<T>(PhantomData<T>, &'static str);

macro_rules! odd_scalars {
    ($out:ty, $odd:expr, $absent:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<$out, E> {
            Ok($odd("a boolean"))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<$out, E> {
            Ok($odd("a number"))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<$out, E> {
            Ok($odd("a number"))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<$out, E> {
            Ok($odd("a number"))
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<$out, E> {
            Ok($odd("a string"))
        }
        fn visit_unit<E: de::Error>(self) -> Result<$out, E> {
            Ok($absent)
        }
        fn visit_none<E: de::Error>(self) -> Result<$out, E> {
            Ok($absent)
        }
    };
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for OddVisitor<Obj<T>> {
    type Value = Obj<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.1)
    }
    odd_scalars!(Obj<T>, Obj::Odd, Obj::Absent);
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Obj<T>, A::Error> {
        drain_seq(seq)?;
        Ok(Obj::Odd("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Obj::Some)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(OddVisitor::<Obj<T>>(PhantomData, "an object"))
    }
}

/// An array read leniently: null is empty, any other non-array is odd (and empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List<T> {
    pub items: Vec<T>,
    pub odd: Option<Found>,
}

impl<T> Default for List<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            odd: None,
        }
    }
}

fn odd<T>(found: Found) -> List<T> {
    List {
        items: Vec::new(),
        odd: Some(found),
    }
}
impl<'de, T: Deserialize<'de>> Visitor<'de> for OddVisitor<List<T>> {
    type Value = List<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.1)
    }
    odd_scalars!(List<T>, odd, List::default());
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List<T>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(List { items, odd: None })
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<List<T>, A::Error> {
        drain_map(map)?;
        Ok(odd("an object"))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(OddVisitor::<List<T>>(PhantomData, "an array"))
    }
}

#[derive(Debug, Deserialize)]
pub struct Delivery<'a> {
    #[serde(borrow, default)]
    pub object: Field<'a>,
    #[serde(borrow, default)]
    pub entry: List<Obj<Entry<'a>>>,
}

#[derive(Debug, Deserialize)]
pub struct Entry<'a> {
    /// The WhatsApp Business Account id.
    #[serde(borrow, default)]
    pub id: Field<'a>,
    #[serde(borrow, default)]
    pub changes: List<Obj<Change<'a>>>,
}

#[derive(Debug, Deserialize)]
pub struct Change<'a> {
    #[serde(borrow, default)]
    pub field: Field<'a>,
    /// Read in the same pass as the rest of the delivery, whatever `field` says: Meta sends
    /// `value` before `field`, and lexing it once to skip it and again to read it cost a
    /// second pass over most of the body. What is read depends on `field` (`leads::extract`).
    #[serde(borrow, default)]
    pub value: Obj<ChangeValue<'a>>,
}

/// The `value` of a change: the shape of a `messages` change, and the events of an
/// `automatic_events` one (kept as JSON text, read by `leads::detected`).
#[derive(Debug, Default, Deserialize)]
pub struct ChangeValue<'a> {
    #[serde(borrow, default)]
    pub metadata: Obj<Metadata<'a>>,
    #[serde(borrow, default)]
    pub contacts: List<Obj<Contact<'a>>>,
    #[serde(borrow, default)]
    pub messages: List<Obj<Message<'a>>>,
    #[serde(default)]
    pub statuses: List<IgnoredAny>,
    #[serde(borrow, default)]
    pub automatic_events: Option<&'a RawValue>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Metadata<'a> {
    #[serde(borrow, default)]
    pub display_phone_number: Field<'a>,
    #[serde(borrow, default)]
    pub phone_number_id: Field<'a>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Contact<'a> {
    #[serde(borrow, default)]
    pub profile: Obj<Profile<'a>>,
    #[serde(borrow, default)]
    pub wa_id: Field<'a>,
    /// The business-scoped user id (BSUID).
    #[serde(borrow, default)]
    pub user_id: Field<'a>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Profile<'a> {
    #[serde(borrow, default)]
    pub name: Field<'a>,
}

/// An inbound message. Only what a lead needs is modelled; the rest of any message type stays
/// in the raw event.
#[derive(Debug, Default, Deserialize)]
pub struct Message<'a> {
    #[serde(borrow, default)]
    pub from: Field<'a>,
    #[serde(borrow, default)]
    pub from_user_id: Field<'a>,
    #[serde(borrow, default)]
    pub id: Field<'a>,
    #[serde(borrow, default)]
    pub timestamp: Field<'a>,
    #[serde(borrow, default, rename = "type")]
    pub kind: Field<'a>,
    #[serde(borrow, default)]
    pub text: Obj<Text<'a>>,
    #[serde(borrow, default)]
    pub referral: Obj<Referral<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Text<'a> {
    #[serde(borrow, default)]
    pub body: Field<'a>,
}

/// The Click-to-WhatsApp ad a message came from.
#[derive(Debug, Default, Deserialize)]
pub struct Referral<'a> {
    #[serde(borrow, default)]
    pub source_url: Field<'a>,
    #[serde(borrow, default)]
    pub source_id: Field<'a>,
    #[serde(borrow, default)]
    pub source_type: Field<'a>,
    #[serde(borrow, default)]
    pub headline: Field<'a>,
    #[serde(borrow, default)]
    pub body: Field<'a>,
    #[serde(borrow, default)]
    pub media_type: Field<'a>,
    #[serde(borrow, default)]
    pub image_url: Field<'a>,
    #[serde(borrow, default)]
    pub video_url: Field<'a>,
    #[serde(borrow, default)]
    pub thumbnail_url: Field<'a>,
    #[serde(borrow, default)]
    pub ctwa_clid: Field<'a>,
    #[serde(borrow, default, rename = "ref")]
    pub ref_: Field<'a>,
    #[serde(borrow, default)]
    pub welcome_message: Obj<Text2<'a>>,
}

/// `welcome_message: {"text": …}`.
#[derive(Debug, Default, Deserialize)]
pub struct Text2<'a> {
    #[serde(borrow, default)]
    pub text: Field<'a>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_take_numbers_as_text_and_other_types_as_odd() {
        let r: Referral<'_> = serde_json::from_str(
            r#"{"ref": 5, "source_id": 1.5e3, "ctwa_clid": ["a"], "headline": {"x": 1},
                "body": true, "welcome_message": "x", "source_url": null}"#,
        )
        .unwrap();
        assert_eq!(r.ref_.as_str(), Some("5"));
        assert_eq!(
            r.source_id.as_str(),
            Some("1500.0"),
            "as serde_json writes it"
        );
        assert_eq!(r.ctwa_clid, Field::Odd("an array"));
        assert_eq!(r.headline, Field::Odd("an object"));
        assert_eq!(r.body, Field::Odd("a boolean"));
        assert_eq!(r.source_url, Field::Absent);
        assert!(matches!(r.welcome_message, Obj::Odd("a string")));
    }

    #[test]
    fn lists_of_the_wrong_shape_are_odd_and_empty() {
        let v: ChangeValue<'_> =
            serde_json::from_str(r#"{"messages": {"id": "x"}, "contacts": "c"}"#).unwrap();
        assert!(v.messages.items.is_empty());
        assert_eq!(v.messages.odd, Some("an object"));
        assert_eq!(v.contacts.odd, Some("a string"));
    }
}
