//! What a local user sends the control socket: JSON bodies of apply, diff
//! and rotate-key, and the query string of observe (with its filters).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_api::{ApplyRequest, FlowQuery, RotateKeyRequest};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<ApplyRequest>(data) {
        for file in &request.files {
            let _ = palisade_policy::policies_from_text(&file.name, &file.content);
        }
    }
    let _ = serde_json::from_slice::<RotateKeyRequest>(data);
    if let Ok(query) = serde_urlencoded::from_bytes::<FlowQuery>(data) {
        let _ = query.filter();
    }
});
