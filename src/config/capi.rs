//! `[capi]`: reporting conversions to Meta's Conversions API for Business Messaging. Without a
//! `dataset_id` the feature is off: no events are queued and the conversion routes answer 409.

use serde::Deserialize;

use super::ConfigError;

/// `[capi]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CapiSettings {
    /// The WABA's dataset (`POST /v1/dataset` creates it); events go to `/{dataset_id}/events`.
    /// Digits, quoted or not (`CTWA_CAPI__DATASET_ID=123` works).
    #[serde(deserialize_with = "super::values::text")]
    pub dataset_id: Option<String>,
    /// Routes every event to Events Manager → Test Events, for trying the set-up.
    #[serde(deserialize_with = "super::values::text")]
    pub test_event_code: Option<String>,
    /// Queue a `LeadSubmitted` for every new lead that has a `ctwa_clid`, in the projector's
    /// transaction.
    pub auto_lead_submitted: bool,
}

impl CapiSettings {
    /// Checks what was written: a dataset id is Graph's numeric id.
    pub(super) fn checked(mut self) -> Result<Self, ConfigError> {
        self.dataset_id = self
            .dataset_id
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty());
        if let Some(id) = &self.dataset_id {
            if !id.bytes().all(|b| b.is_ascii_digit()) || id.len() > 32 {
                return Err(ConfigError::Invalid(
                    "capi.dataset_id: expected the dataset's numeric id (POST /v1/dataset returns it)"
                        .into(),
                ));
            }
        }
        self.test_event_code = self
            .test_event_code
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty());
        if self.auto_lead_submitted && self.dataset_id.is_none() {
            return Err(ConfigError::Invalid(
                "capi.auto_lead_submitted needs capi.dataset_id".into(),
            ));
        }
        Ok(self)
    }

    /// Whether conversions can be sent at all.
    pub fn enabled(&self) -> bool {
        self.dataset_id.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dataset_id_must_be_numeric_and_auto_needs_one() {
        let ok = CapiSettings {
            dataset_id: Some(" 1234567890 ".into()),
            ..Default::default()
        }
        .checked()
        .unwrap();
        assert_eq!(ok.dataset_id.as_deref(), Some("1234567890"));
        assert!(ok.enabled());
        let bad = CapiSettings {
            dataset_id: Some("12/../me".into()),
            ..Default::default()
        };
        assert!(bad.checked().is_err());
        let auto = CapiSettings {
            auto_lead_submitted: true,
            ..Default::default()
        };
        assert!(auto.checked().is_err());
        assert!(!CapiSettings::default().checked().unwrap().enabled());
    }

    #[test]
    fn a_dataset_id_may_be_written_as_a_number() {
        let toml = "[webhook]\nverify_token = \"v\"\napp_secrets = [\"s\"]\n[api]\ntoken = \"t\"\n\
                    [graph]\naccess_token = \"g\"\nwaba_id = \"1\"\n[capi]\ndataset_id = 1234567890\n";
        let settings = crate::config::Settings::from_toml(toml).expect("valid");
        assert_eq!(settings.capi.dataset_id.as_deref(), Some("1234567890"));
    }
}
