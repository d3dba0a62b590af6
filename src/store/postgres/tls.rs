//! TLS to PostgreSQL: libpq's `sslmode`, `sslrootcert`, `sslcert` and `sslkey` in
//! `--database-url`, and the rustls connector they describe.
//!
//! tokio-postgres reads `sslmode` itself but knows only `disable`, `prefer` and `require`, and
//! refuses the other three parameters; so they are taken out of the URL here (both of its forms:
//! `postgres://…?sslmode=…` and `host=… sslmode=…`), and what they ask for becomes a rustls
//! `ClientConfig` for `tokio-postgres-rustls`, on ring (the provider the server's TLS uses).
//! What each mode checks is libpq's:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (the default) | if the server offers it | with `sslrootcert`: its chain; else nothing |
//! | `require` | always | with `sslrootcert`: its chain; else nothing |
//! | `verify-ca` | always | its chain, to `sslrootcert` or the system's roots |
//! | `verify-full` | always | its chain and that it names the host of the URL |
//!
//! `sslrootcert=system` is the system's roots, and then (as libpq 16 has it) `verify-full` is
//! the default and a weaker mode is refused. `sslcert` and `sslkey` (both or neither) are the
//! client certificate presented when the server asks for one. libpq's default files under
//! `~/.postgresql/` are not read: a parameter names every file. A Unix-socket host never uses
//! TLS, as with libpq.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio_postgres::config::Host;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::{
    self,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// libpq's `sslmode` values but `allow` (plaintext first, then TLS), which tokio-postgres
/// cannot do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(
                    "sslmode=allow is not supported (it tries plaintext first): use \
                            prefer, require, verify-ca or verify-full"
                        .into(),
                )
            }
            other => {
                return Err(format!(
                    "sslmode={other:?} is not one of disable, prefer, require, verify-ca, \
                     verify-full"
                ))
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the CAs that the server's certificate must chain to come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    /// `sslrootcert=FILE`: PEM certificates.
    File(PathBuf),
    /// `sslrootcert=system`, or `verify-*` without `sslrootcert`: the system's CA store.
    System,
}

/// The URL's TLS parameters, as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsParams {
    /// `sslmode`; None: not given (libpq's default applies).
    mode: Option<SslMode>,
    /// `sslrootcert`.
    root_cert: Option<Roots>,
    /// `sslcert`: the client certificate (PEM chain).
    cert: Option<PathBuf>,
    /// `sslkey`: its private key (PEM, unencrypted).
    key: Option<PathBuf>,
}

/// The parameters this file reads; tokio-postgres gets the rest.
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl TlsParams {
    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "sslmode" => self.mode = Some(SslMode::parse(value)?),
            "sslrootcert" if value == "system" => self.root_cert = Some(Roots::System),
            "sslrootcert" => self.root_cert = Some(Roots::File(value.into())),
            "sslcert" => self.cert = Some(value.into()),
            "sslkey" => self.key = Some(value.into()),
            _ => {}
        }
        Ok(())
    }

    /// The mode in effect: the one given, else libpq's default (`prefer`; `verify-full` with
    /// `sslrootcert=system`). A Unix-socket-only URL never uses TLS.
    pub fn mode(&self, hosts: &[Host]) -> Result<SslMode, String> {
        if !hosts.is_empty() && hosts.iter().all(|h| matches!(h, Host::Unix(_))) {
            return Ok(SslMode::Disable);
        }
        let system = self.root_cert == Some(Roots::System);
        match self.mode {
            None if system => Ok(SslMode::VerifyFull),
            Some(mode) if system && mode != SslMode::VerifyFull => Err(format!(
                "sslmode={} may not be used with sslrootcert=system (use verify-full)",
                mode.name()
            )),
            mode => Ok(mode.unwrap_or(SslMode::Prefer)),
        }
    }

    /// tokio-postgres's mode and the connector for `mode`. Reads the files the parameters name.
    pub fn connector(
        &self,
        mode: SslMode,
    ) -> Result<(tokio_postgres::config::SslMode, MakeRustlsConnect), String> {
        use tokio_postgres::config::SslMode as Pg;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let algorithms = provider.signature_verification_algorithms;
        if mode == SslMode::Disable {
            let config = builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOrNothing {
                    roots: None,
                    algorithms,
                }))
                .with_no_client_auth();
            return Ok((Pg::Disable, MakeRustlsConnect::new(config)));
        }
        let roots = match (&self.root_cert, mode) {
            (Some(roots), _) => Some(roots.clone()),
            (None, SslMode::VerifyCa | SslMode::VerifyFull) => Some(Roots::System),
            (None, _) => None,
        };
        let roots = roots.map(|r| load_roots(&r, mode)).transpose()?;
        let builder = match (roots, mode) {
            (Some(roots), SslMode::VerifyFull) => builder.with_root_certificates(roots),
            (roots, _) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOrNothing {
                    roots: roots.map(Arc::new),
                    algorithms,
                })),
        };
        let mut config = match (&self.cert, &self.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let certs = read_certs(cert, "sslcert")?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("sslkey {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| format!("sslcert/sslkey: {e}"))?
            }
            (Some(_), None) => return Err("sslcert needs sslkey (its private key)".into()),
            (None, Some(_)) => return Err("sslkey needs sslcert (its certificate)".into()),
        };
        // What libpq sends, and what PostgreSQL 17's direct TLS (sslnegotiation=direct) requires.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        let pg_mode = match mode {
            SslMode::Disable => Pg::Disable,
            SslMode::Prefer => Pg::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Pg::Require,
        };
        Ok((pg_mode, MakeRustlsConnect::new(config)))
    }
}

/// Takes the TLS parameters out of a PostgreSQL URL (`postgres://` or `postgresql://`, whose
/// parameters follow `?`) or connection string (`key=value` pairs): what remains, for
/// tokio-postgres, and the parameters. The last of a repeated parameter wins, as with libpq.
pub fn split(url: &str) -> Result<(String, TlsParams), String> {
    let mut params = TlsParams::default();
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if !is_url {
        let mut kept = Vec::new();
        for (key, value) in key_values(url)? {
            if TLS_KEYS.contains(&key.as_str()) {
                params.set(&key, &value)?;
            } else {
                kept.push(format!(
                    "{key}='{}'",
                    value.replace('\\', "\\\\").replace('\'', "\\'")
                ));
            }
        }
        return Ok((kept.join(" "), params));
    }
    // As tokio-postgres reads a URL: the user and password end at the first `@`, the
    // parameters start at the first `?` after it.
    let after_credentials = url.find('@').map_or(0, |at| at + 1);
    let Some(query_at) = url[after_credentials..]
        .find('?')
        .map(|q| q + after_credentials)
    else {
        return Ok((url.to_owned(), params));
    };
    let mut kept = Vec::new();
    for pair in url[query_at + 1..].split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key)?;
        if TLS_KEYS.contains(&key.as_str()) {
            params.set(&key, &decode(value)?)?;
        } else {
            kept.push(pair);
        }
    }
    let rest = &url[..query_at];
    Ok(match kept.is_empty() {
        true => (rest.to_owned(), params),
        false => (format!("{rest}?{}", kept.join("&")), params),
    })
}

/// A URL's percent-encoded parameter key or value.
fn decode(text: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "a parameter of the URL is not UTF-8 once percent-decoded".into())
}

/// The `key=value` pairs of a connection string, as libpq (and tokio-postgres) read them:
/// spaces around `=` allowed, a value in single quotes or up to the next space, `\` escaping
/// the next character.
fn key_values(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            return match chars.peek() {
                None => Ok(pairs),
                Some(_) => Err("a connection string parameter has no name".into()),
            };
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("connection string parameter {key:?} has no `=`"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let quoted = chars.next_if_eq(&'\'').is_some();
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => value.extend(chars.next()),
                Some('\'') if quoted => break,
                Some(c) if !quoted && c.is_whitespace() => break,
                Some(c) => value.push(c),
                None if quoted => {
                    return Err(format!(
                        "connection string parameter {key:?}: unterminated quote"
                    ))
                }
                None => break,
            }
        }
        pairs.push((key, value));
    }
}

/// The CA certificates of `roots`.
fn load_roots(roots: &Roots, mode: SslMode) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            let (added, _) = store.add_parsable_certificates(read_certs(path, "sslrootcert")?);
            if added == 0 {
                return Err(format!(
                    "sslrootcert {}: no usable CA certificate in it",
                    path.display()
                ));
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(format!(
                    "sslmode={} checks the server's certificate, and without sslrootcert=FILE \
                     that is against the system's CA certificates, but none were found{}",
                    mode.name(),
                    found
                        .errors
                        .first()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ));
            }
        }
    }
    Ok(store)
}

/// The PEM certificates of `path` (the parameter `what`); at least one.
fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// Every mode but `verify-full` (whose names rustls checks itself): with roots (`verify-ca`,
/// and `prefer`/`require` with `sslrootcert`) the server's certificate must chain to one of
/// them, the name it holds not checked; without (`prefer`/`require` alone: libpq's meaning)
/// the server is not authenticated. Either way the handshake's signatures are checked, so the
/// session's keys are the certificate holder's.
#[derive(Debug)]
struct ChainOrNothing {
    /// The roots the chain must reach; None: any certificate.
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOrNothing {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What a failed connection's TLS error means, in words that say what to change; None if the
/// error is not about TLS.
pub fn describe(e: &tokio_postgres::Error) -> Option<String> {
    use std::error::Error;
    if let Some(db) = e.as_db_error() {
        // pg_hba.conf has `hostssl` lines only: a plaintext connection matches none.
        return db.message().ends_with("no encryption").then(|| {
            format!(
                "{} ({}): the server accepts only TLS connections; remove sslmode=disable (or \
                 set sslmode=verify-full)",
                db.message(),
                db.code().code()
            )
        });
    }
    let source = e.source()?;
    if let Some(rustls) = source
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return Some(format!("TLS handshake failed: {}", tls_words(rustls)));
    }
    let text = source.to_string();
    (text == "server does not support TLS").then(|| {
        "the server does not support TLS (ssl = off), and the sslmode asks for it: turn ssl on \
         in PostgreSQL, or set sslmode=prefer or disable"
            .into()
    })
}

/// A rustls error of a handshake with PostgreSQL, said as what to change.
fn tls_words(e: &rustls::Error) -> String {
    use rustls::{CertificateError, Error};
    match e {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the server's certificate is not signed by a CA that sslrootcert (or, without it, \
             the system) trusts (unknown CA)"
                .into()
        }
        Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected,
            presented,
        }) => format!(
            "the server's certificate does not name the host {} (host name mismatch; it names \
             {}): connect by a name it holds, or use sslmode=verify-ca, which checks the CA only",
            server_name(expected),
            if presented.is_empty() {
                "no host".into()
            } else {
                presented
                    .iter()
                    .map(|name| presented_name(name))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        Error::InvalidCertificate(CertificateError::NotValidForName) => {
            "the server's certificate does not name the host of the URL (host name mismatch): \
             connect by a name it holds, or use sslmode=verify-ca, which checks the CA only"
                .into()
        }
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the server's certificate has expired".into(),
        Error::AlertReceived(alert) => format!(
            "the server refused it ({alert:?}); if it asks for a client certificate, give \
             sslcert and sslkey"
        ),
        other => other.to_string(),
    }
}

/// A name the certificate holds, as rustls words it (`DnsName("db.example")`,
/// `IpAddress(10.0.0.1)`): the name alone.
fn presented_name(name: &str) -> &str {
    match (name.find('('), name.rfind(')')) {
        (Some(open), Some(close)) if open < close => name[open + 1..close].trim_matches('"'),
        _ => name,
    }
}

/// A server name as the URL gave it.
fn server_name(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(dns) => dns.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_ok(url: &str) -> (String, TlsParams) {
        split(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn a_urls_tls_parameters_are_taken_out_and_the_rest_kept() {
        let (rest, params) = split_ok(
            "postgres://u:p%3Fw@db.example:5432/calldesk?application_name=x&sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fca.pem&connect_timeout=3&sslcert=/c.pem&sslkey=/k.pem",
        );
        assert_eq!(
            rest,
            "postgres://u:p%3Fw@db.example:5432/calldesk?application_name=x&connect_timeout=3"
        );
        assert_eq!(params.mode, Some(SslMode::VerifyFull));
        assert_eq!(params.root_cert, Some(Roots::File("/etc/ca.pem".into())));
        assert_eq!(params.cert, Some("/c.pem".into()));
        assert_eq!(params.key, Some("/k.pem".into()));
        // Only TLS parameters: no `?` left.
        let (rest, _) = split_ok("postgresql://db/calldesk?sslmode=require");
        assert_eq!(rest, "postgresql://db/calldesk");
        // None at all, and a `?` in the password (before the `@`) is not the query.
        let url = "postgres://u:a?b@db/calldesk";
        assert_eq!(split_ok(url), (url.to_owned(), TlsParams::default()));
        parsed(&split_ok(url).0);
    }

    #[test]
    fn a_connection_strings_tls_parameters_are_taken_out_and_the_rest_kept() {
        let (rest, params) = split_ok(
            "host=db.example  port = 5432 password='it\\'s' sslmode = verify-ca \
             sslrootcert='/a b/ca.pem' user=c\\ d",
        );
        assert_eq!(params.mode, Some(SslMode::VerifyCa));
        assert_eq!(params.root_cert, Some(Roots::File("/a b/ca.pem".into())));
        let config = parsed(&rest);
        assert_eq!(config.get_user(), Some("c d"));
        assert_eq!(config.get_ports(), [5432]);
        assert!(split("host=db sslmode='verify-full").is_err());
        assert!(split("host").is_err());
    }

    #[test]
    fn the_names_a_certificate_holds_are_said_plainly() {
        assert_eq!(presented_name("DnsName(\"db.example\")"), "db.example");
        assert_eq!(presented_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(presented_name("odd"), "odd");
    }

    #[test]
    fn modes_are_libpqs() {
        let tcp = [Host::Tcp("db".into())];
        let params = |url: &str| split_ok(url).1;
        assert_eq!(params("host=db").mode(&tcp), Ok(SslMode::Prefer));
        assert_eq!(
            params("host=db sslrootcert=system").mode(&tcp),
            Ok(SslMode::VerifyFull)
        );
        assert!(params("host=db sslrootcert=system sslmode=require")
            .mode(&tcp)
            .is_err());
        // A Unix socket never uses TLS.
        let unix = [Host::Unix("/run/postgresql".into())];
        assert_eq!(
            params("sslmode=verify-full").mode(&unix),
            Ok(SslMode::Disable)
        );
        assert!(split("host=db sslmode=allow")
            .unwrap_err()
            .contains("not supported"));
        assert!(split("host=db sslmode=verify_full")
            .unwrap_err()
            .contains("not one of"));
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_files_must_hold_certificates() {
        let dir = tempfile::tempdir().expect("temp dir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let (_, params) = split_ok(&format!("host=db sslcert={}", empty.display()));
        assert!(params
            .connector(SslMode::Require)
            .err()
            .is_some_and(|e| e.contains("needs sslkey")));
        let (_, params) = split_ok(&format!("host=db sslrootcert={}", empty.display()));
        let refused = params.connector(SslMode::VerifyFull).err();
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains("no PEM certificate")),
            "{refused:?}"
        );
        // disable reads nothing.
        assert!(params.connector(SslMode::Disable).is_ok());
    }

    /// What tokio-postgres's parser makes of what `split` leaves.
    fn parsed(s: &str) -> tokio_postgres::Config {
        s.parse()
            .unwrap_or_else(|e| panic!("tokio-postgres refuses {s:?}: {e}"))
    }
}
