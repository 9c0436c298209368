//! Config parsing: the head's and the node's TOML files (the head's holds the autoscaler's
//! section), parsed by the real types and validated; the first byte picks which.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rgrid_head::config::HeadConfig;
use rgrid_node::NodeConfig;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    if kind % 2 == 0 {
        if let Ok(config) = toml::from_str::<HeadConfig>(text) {
            let _ = config.validate();
            let _ = config.objects.max_object_bytes();
            let _ = config.database_url();
        }
    } else if let Ok(config) = toml::from_str::<NodeConfig>(text) {
        let _ = config.validate();
    }
});
