//! Label selector parsing (`rgrid submit --selector`): what parses has a label key and prints
//! back as a selector that parses to the same requirement.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rgrid_core::task::{is_label_part, LabelRequirement};

fuzz_target!(|text: &str| {
    let Ok(requirement) = text.parse::<LabelRequirement>() else {
        return;
    };
    let key = match &requirement {
        LabelRequirement::Equals { key, .. }
        | LabelRequirement::NotEquals { key, .. }
        | LabelRequirement::In { key, .. }
        | LabelRequirement::Exists { key } => key,
    };
    assert!(is_label_part(key), "{text:?} gave the key {key:?}");
    let printed = requirement.to_string();
    assert_eq!(
        printed.parse::<LabelRequirement>().as_ref(),
        Ok(&requirement),
        "{text:?} printed as {printed:?}"
    );
});
