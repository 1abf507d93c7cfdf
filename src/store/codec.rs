//! How a log entry's body is stored: as received (codec 0), zstd (codec 1), or zstd against a
//! built-in dictionary of the shape of Meta's webhook JSON (codec 2, what new entries use). A
//! delivery is a single 1–3 KB JSON document, too small for zstd to learn its own keys from, so
//! without a dictionary most of each frame spells out the same key names and envelope again;
//! the dictionary holds them once. It is written from Meta's documented payloads (the
//! `messages`, `referral` and `statuses` shapes, in Meta's order and in sorted order), not from
//! any traffic, so it favours no sender's text. A stored codec's dictionary never changes: a new
//! dictionary gets a new codec number, and every older one keeps decoding.

/// The body is stored as it was received.
pub const RAW: i64 = 0;
/// zstd with no dictionary (entries written before codec 2).
pub const ZSTD: i64 = 1;
/// zstd against [`META_V1`].
pub const ZSTD_META_V1: i64 = 2;

/// zstd's fast level -3, which stores literals without Huffman coding and so builds no entropy
/// tables per frame. Against level 1 (used until this change) on 3,000 bodies of a `loadgen --mix
/// real` run (1,988 B raw on average): 1,120 B stored instead of 776, compressed at 468 MB/s
/// instead of 180 (about 4 µs a body instead of 11) and decompressed at 2.1 GB/s instead of 0.5.
/// Entropy-table building was a third of zstd's ~11% of the server's samples under load; the
/// bytes budget had room for the larger frames. The level is not part of the stored format.
///
/// Since 2026-12-05 the fast level -5. `zstd -b --fast=N -i2 -D <META_V1>` on 1,000 bodies
/// taken from a server's log after a `loadgen --mix real` run (1,988 B raw on average):
///
/// | level | stored B / body | compression |
/// |---|---|---|
/// | -3 | 1,111 | 460 MB/s |
/// | **-5** | 1,144 | 650 MB/s |
/// | -7 | 1,194 | 694 MB/s |
/// | -12 | 1,244 | 846 MB/s |
///
/// -5 compresses a body in ~3.1 µs instead of ~4.3 for 33 more bytes (3%); past it each µs
/// costs far more bytes.
const LEVEL: i32 = -5;

/// Largest body an entry may unpack to. Bodies are at most `max_body_bytes` (3 MB by default);
/// the bound only guards against a corrupt frame header.
const MAX_UNPACKED: usize = 64 * 1024 * 1024;

/// A zstd raw-content dictionary: Meta's webhook envelopes with their values left empty. zstd
/// finds matches nearer the end of a dictionary more cheaply, so the commonest shapes (a
/// referral message, then statuses) come last. Frozen: see the module comment.
pub const META_V1: &str = concat!(
    // Other message types and status details, which appear less often.
    r#""type":"image","image":{"caption":"","mime_type":"image\/jpeg","sha256":"","id":""},"#,
    r#""type":"button","button":{"payload":"","text":""},"type":"interactive","#,
    r#""context":{"from":"","id":"wamid.","status":"sent","status":"read","status":"failed","#,
    r#""errors":[{"code":131047,"title":"","message":"","error_data":{"details":""}}],"#,
    r#""origin":{"type":"utility"},"origin":{"type":"service"},"category":"utility","#,
    r#""category":"service","pricing_model":"CBP","billable":false"#,
    // Sorted keys, as some serializers re-emit Meta's payload.
    r#"{"entry":[{"changes":[{"field":"messages","value":{"messaging_product":"whatsapp","#,
    r#""metadata":{"display_phone_number":"","phone_number_id":""},"statuses":[{"#,
    r#""conversation":{"expiration_timestamp":"","id":"","origin":{"type":"marketing"}},"#,
    r#""id":"wamid.","pricing":{"billable":true,"category":"marketing","pricing_model":"PMP"},"#,
    r#""recipient_id":"","recipient_user_id":"","status":"delivered","timestamp":""}]}}],"#,
    r#""id":""}],"object":"whatsapp_business_account"}"#,
    r#"{"entry":[{"changes":[{"field":"messages","value":{"contacts":[{"profile":{"name":""},"#,
    r#""user_id":"","wa_id":""}],"messages":[{"from":"","from_user_id":"","id":"wamid.","#,
    r#""referral":{"body":"","ctwa_clid":"","headline":"","#,
    r#""image_url":"https:\/\/scontent.xx.fbcdn.net\/v\/","media_type":"image","ref":"","#,
    r#""source_id":"","source_type":"ad","source_url":"https:\/\/fb.me\/"},"#,
    r#""text":{"body":""},"timestamp":"","type":"text"}],"messaging_product":"whatsapp","#,
    r#""metadata":{"display_phone_number":"","phone_number_id":""}}}],"id":""}],"#,
    r#""object":"whatsapp_business_account"}"#,
    // Meta's documented order: statuses, then a message with a referral.
    r#"{"object":"whatsapp_business_account","entry":[{"id":"","changes":[{"value":{"#,
    r#""messaging_product":"whatsapp","metadata":{"display_phone_number":"","#,
    r#""phone_number_id":""},"statuses":[{"id":"wamid.HBgL","status":"delivered","#,
    r#""timestamp":"","recipient_id":"","recipient_user_id":"","conversation":{"id":"","#,
    r#""expiration_timestamp":"","origin":{"type":"marketing"}},"pricing":{"billable":true,"#,
    r#""pricing_model":"PMP","category":"marketing"}}]},"field":"messages"}]}]}"#,
    r#"{"object":"whatsapp_business_account","entry":[{"id":"","changes":[{"value":{"#,
    r#""messaging_product":"whatsapp","metadata":{"display_phone_number":"","#,
    r#""phone_number_id":""},"contacts":[{"profile":{"name":""},"wa_id":"","user_id":""}],"#,
    r#""messages":[{"referral":{"source_url":"https:\/\/fb.me\/","source_id":"","#,
    r#""source_type":"ad","headline":"","body":"","media_type":"image","#,
    r#""image_url":"https:\/\/scontent.xx.fbcdn.net\/v\/","video_url":"https:\/\/","#,
    r#""thumbnail_url":"https:\/\/","ctwa_clid":"","ref":""},"from":"","from_user_id":"","#,
    r#""id":"wamid.HBgM","timestamp":"","type":"text","text":{"body":""}}]},"#,
    r#""field":"messages"}]}]}"#,
);

/// The dictionary digested once for compression (shared by every thread: it is read-only).
fn encoder() -> &'static zstd::dict::EncoderDictionary<'static> {
    static DICT: std::sync::OnceLock<zstd::dict::EncoderDictionary<'static>> =
        std::sync::OnceLock::new();
    DICT.get_or_init(|| zstd::dict::EncoderDictionary::copy(META_V1.as_bytes(), LEVEL))
}

/// The dictionary digested once for decompression.
fn decoder() -> &'static zstd::dict::DecoderDictionary<'static> {
    static DICT: std::sync::OnceLock<zstd::dict::DecoderDictionary<'static>> =
        std::sync::OnceLock::new();
    DICT.get_or_init(|| zstd::dict::DecoderDictionary::copy(META_V1.as_bytes()))
}

/// `raw` as it is to be stored: its codec and bytes. A body the codec would not shrink is
/// stored as it is.
pub fn pack(raw: &[u8]) -> (i64, Vec<u8>) {
    // A compression context is costly to make (its tables): one per thread, reused.
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            std::cell::RefCell::new(zstd::bulk::Compressor::with_prepared_dictionary(encoder()).ok());
    }
    let packed = COMPRESSOR.with(|c| match c.borrow_mut().as_mut() {
        Some(c) => c.compress(raw).ok(),
        None => zstd::bulk::Compressor::with_prepared_dictionary(encoder())
            .and_then(|mut c| c.compress(raw))
            .ok(),
    });
    match packed {
        Some(packed) if packed.len() < raw.len() => (ZSTD_META_V1, packed),
        _ => (RAW, raw.to_vec()),
    }
}

/// Unpacks stored bodies. Keep one for a run of bodies (the projector, a reextract or erasure
/// scan): a decompression context is costly to make, and is made on first use, once per codec.
pub struct Unpacker {
    plain: Option<zstd::bulk::Decompressor<'static>>,
    meta_v1: Option<zstd::bulk::Decompressor<'static>>,
}

impl Unpacker {
    pub fn new() -> Self {
        Self {
            plain: None,
            meta_v1: None,
        }
    }

    pub fn unpack(&mut self, codec: i64, body: Vec<u8>) -> std::io::Result<Vec<u8>> {
        let slot = match codec {
            RAW => return Ok(body),
            ZSTD => &mut self.plain,
            ZSTD_META_V1 => &mut self.meta_v1,
            other => return Err(std::io::Error::other(format!("unknown codec {other}"))),
        };
        let d = match slot {
            Some(d) => d,
            None if codec == ZSTD => slot.insert(zstd::bulk::Decompressor::new()?),
            None => slot.insert(zstd::bulk::Decompressor::with_prepared_dictionary(
                decoder(),
            )?),
        };
        let size = zstd::zstd_safe::get_frame_content_size(&body)
            .ok()
            .flatten()
            .map_or(MAX_UNPACKED, |n| (n as usize).min(MAX_UNPACKED));
        d.decompress(&body, size)
    }
}

impl Default for Unpacker {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &[u8] = br#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550001234","phone_number_id":"106540352242922"},"statuses":[{"id":"wamid.HBgLMTU1NTAwMDEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA","status":"read","timestamp":"1763798400","recipient_id":"4915112345678","recipient_user_id":"US.13491208655302741918"}]},"field":"messages"}]}]}"#;

    #[test]
    fn bodies_round_trip_through_the_dictionary() {
        let (codec, packed) = pack(STATUS);
        assert_eq!(codec, ZSTD_META_V1);
        assert_eq!(Unpacker::new().unpack(codec, packed).unwrap(), STATUS);
        // Incompressible input is stored as it is.
        assert_eq!(pack(b"x"), (RAW, b"x".to_vec()));
    }

    #[test]
    fn the_dictionary_shrinks_a_single_delivery() {
        let plain = zstd::bulk::compress(STATUS, LEVEL).unwrap();
        let (_, packed) = pack(STATUS);
        assert!(
            packed.len() * 3 < plain.len() * 2,
            "{} bytes with the dictionary, {} without",
            packed.len(),
            plain.len()
        );
    }

    #[test]
    fn entries_written_without_the_dictionary_still_unpack() {
        let plain = zstd::bulk::compress(STATUS, LEVEL).unwrap();
        let mut unpacker = Unpacker::new();
        assert_eq!(unpacker.unpack(ZSTD, plain.clone()).unwrap(), STATUS);
        let (codec, packed) = pack(STATUS);
        assert_eq!(unpacker.unpack(codec, packed).unwrap(), STATUS);
        assert_eq!(unpacker.unpack(RAW, STATUS.to_vec()).unwrap(), STATUS);
        assert!(unpacker.unpack(7, plain).is_err());
    }

    /// A frame written with `META_V1` when it shipped, and the dictionary's digest then. If this
    /// fails, the dictionary was edited, and log entries stored with codec 2 no longer unpack
    /// (the frame only catches edits to the parts it used; the digest catches any): add a new
    /// codec instead.
    #[test]
    fn the_shipped_dictionary_is_frozen() {
        use sha2::Digest;
        let frame = hex::decode(FROZEN_FRAME).unwrap();
        assert_eq!(Unpacker::new().unpack(ZSTD_META_V1, frame).unwrap(), STATUS);
        assert_eq!(
            hex::encode(sha2::Sha256::digest(META_V1.as_bytes())),
            "b7e02e0a4cd1e216244251d93066972369d6b0740462490b25d42c5752a372fd"
        );
    }

    const FROZEN_FRAME: &str = concat!(
        "28b52ffd60b000ed0400a2481a1a804b7330e9251da14b715ecf0c5cdbc2429b4829654e9581950e",
        "00f47d9e33aa1ae4fb263e8050d0319a78bf7ed34eb407cd7952348689c66e7979590d96b690a42d",
        "35080a2c2dd2b21caa41401423b5e44a5387bbbdbc5374aaf113efb655f568d1897bf7def98f0f00",
        "cc6e18ef055b42eff170853ff28187640e3e8219084692430f55acd10b40039c6b16e0379f1079aa",
        "19f2bc66416621",
    );
}
