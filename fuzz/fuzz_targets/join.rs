//! Join handling: the head's checks of a join request (token form, certificate signing
//! request, node name), on a token line, a name line and a CSR (PEM text, or DER bytes that
//! are wrapped as PEM). A request the checks pass is signed by a real CA: signing must then
//! succeed (the head consumes the token before it signs), and the certificate names the node
//! the head chose, whatever the CSR asked for.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rgrid_core::protocol::JoinRequest;
use rgrid_core::tls::{pem_certs, ClusterCa, PeerIdentity};
use rgrid_core::NodeId;
use rgrid_head::join::check_join;

fn ca() -> &'static ClusterCa {
    static CA: OnceLock<ClusterCa> = OnceLock::new();
    CA.get_or_init(|| ClusterCa::generate("fuzz").expect("a CA"))
}

/// `token \n name \n csr`; a CSR that is not PEM text is taken as DER.
fn request(data: &[u8]) -> Option<JoinRequest> {
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let token = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let name = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let csr = parts.next().unwrap_or_default();
    let csr_pem = match std::str::from_utf8(csr) {
        Ok(text) if text.contains("-----BEGIN") => text.to_owned(),
        _ => pem_wrap(csr),
    };
    Some(JoinRequest {
        token,
        csr_pem,
        name,
    })
}

fn pem_wrap(der: &[u8]) -> String {
    let b64 = base64(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE REQUEST-----\n");
    pem
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some(join) = request(data) else {
        return;
    };
    let node = NodeId::new();
    let Ok(checked) = check_join(&join, node) else {
        return;
    };
    assert!(!checked.name.is_empty() && checked.name.len() <= 63);
    let cert = ca()
        .sign_node_csr(&join.csr_pem, node, std::time::Duration::from_secs(30 * 86_400))
        .expect("a CSR the checks pass signs");
    let der = pem_certs(&cert, "node").expect("the certificate is PEM");
    assert_eq!(
        PeerIdentity::from_cert(&der[0]),
        Some(PeerIdentity::Node(node))
    );
});
