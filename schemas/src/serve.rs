//! Serving an HTTP API: plain HTTP, or HTTPS (rustls) when given a certificate chain and its
//! private key in PEM files. Every server of the platform (the registry, the sinks, the router,
//! `/metrics`) starts here, so one pair of options secures them all.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use tokio_util::sync::CancellationToken;

/// A certificate chain and its private key, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl Tls {
    /// The pair when both are given; an error naming the missing one when only one is.
    pub fn from_options(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<Self>, String> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(Self { cert, key })),
            (None, None) => Ok(None),
            (Some(_), None) => Err("a TLS certificate needs its key (--tls-key)".to_owned()),
            (None, Some(_)) => Err("a TLS key needs its certificate (--tls-cert)".to_owned()),
        }
    }

    /// Reads and checks the files (a bad or mismatched pair fails here, before serving).
    pub async fn config(&self) -> io::Result<RustlsConfig> {
        RustlsConfig::from_pem_file(&self.cert, &self.key)
            .await
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot use the TLS certificate {} with the key {}: {e}",
                        self.cert.display(),
                        self.key.display()
                    ),
                )
            })
    }
}

/// How long open connections get to finish after `shutdown`.
const GRACE: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown`, over TLS when `tls` is given.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<&Tls>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let Some(tls) = tls else {
        return axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    };
    let config = tls.config().await?;
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stopper.graceful_shutdown(Some(GRACE));
    });
    axum_server::from_tcp_rustls(listener.into_std()?, config)?
        .handle(handle)
        .serve(app.into_make_service())
        .await
}
