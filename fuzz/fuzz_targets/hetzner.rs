//! The Hetzner client's response parsing: each response body type the client decodes (as it
//! does, with serde_json), servers converted as the provider converts them, and the
//! rate-limit headers (`name: value` lines); the first byte picks which.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use rgrid_cloud::hetzner::types::{
    ActionResponse, CreateServerResponse, ErrorResponse, GetServerResponse, ListServersResponse,
};
use rgrid_cloud::hetzner::{to_cloud_server, RateLimit};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 6 {
        0 => {
            if let Ok(list) = serde_json::from_slice::<ListServersResponse>(body) {
                for server in list.servers {
                    let _ = to_cloud_server(server);
                }
            }
        }
        1 => {
            if let Ok(got) = serde_json::from_slice::<GetServerResponse>(body) {
                let _ = to_cloud_server(got.server);
            }
        }
        2 => {
            if let Ok(created) = serde_json::from_slice::<CreateServerResponse>(body) {
                let _ = to_cloud_server(created.server);
            }
        }
        3 => {
            let _ = serde_json::from_slice::<ActionResponse>(body);
        }
        4 => {
            let _ = serde_json::from_slice::<ErrorResponse>(body);
        }
        _ => {
            let Ok(text) = std::str::from_utf8(body) else {
                return;
            };
            let header = |name: &str| {
                text.lines().find_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    key.trim().eq_ignore_ascii_case(name).then_some(value)
                })
            };
            let mut rate = RateLimit::default();
            for now_secs in [0, 1_700_000_000, u64::from(u32::MAX)] {
                let now = UNIX_EPOCH + Duration::from_secs(now_secs);
                let _ = rate.note(header, now);
                let _ = rate.wait_before_next(now);
            }
        }
    }
});
