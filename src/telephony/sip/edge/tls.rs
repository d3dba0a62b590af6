//! SIP over TLS: the listener's side (calldesk's certificate, on the TCP port) and the trust
//! anchors that the trunk's and the phones' certificates must chain to when calldesk connects
//! to them (rsipstack's TLS client, which takes them as PEM).
//!
//! Only signalling is encrypted: calldesk passes the phones' SDP through untouched, so SRTP
//! (or not) is for the phones and the trunk to agree on.

use std::sync::Arc;

use base64::Engine as _;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use super::super::config::TlsIdentity;

/// The first byte of a TLS connection: a handshake record (RFC 8446 §5.1). A SIP message
/// starts with a letter, a keepalive with CR.
pub(super) const HANDSHAKE_RECORD: u8 = 0x16;

/// The acceptor of calldesk's TLS listener: `identity`, no client certificates (who may
/// connect is the allow list's business).
pub(in super::super) fn acceptor(identity: &TlsIdentity) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(&identity.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--sip-tls-cert: {e}"))?;
    if certs.is_empty() {
        return Err("--sip-tls-cert holds no PEM certificate".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(&identity.key_pem)
        .map_err(|e| format!("--sip-tls-key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("SIP TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("--sip-tls-cert / --sip-tls-key: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The trust anchors for rsipstack's TLS client, as PEM: `ca_pem` (`--sip-tls-ca`) checked
/// to hold certificates, else the system's.
pub(in super::super) fn trust_anchors(ca_pem: Option<&[u8]>) -> Result<Vec<u8>, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    if let Some(pem) = ca_pem {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--sip-tls-ca: {e}"))?;
        if certs.is_empty() {
            return Err("--sip-tls-ca holds no PEM certificate".to_owned());
        }
        return Ok(pem.to_vec());
    }
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        tracing::warn!(errors = ?found.errors, "no system trust anchors found: TLS peers cannot be verified without --sip-tls-ca");
    }
    let mut pem = Vec::new();
    for cert in found.certs {
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        let text = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        for line in text.as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    Ok(pem)
}
