//! `gateway demo`: mock replicas started in-process behind the gateway, configured from
//! `config/demo.toml`, so the whole path can be tried with one command and no setup.

use std::net::SocketAddr;
use std::time::Duration;

use loadtest::{MockConfig, MockReplica};

use crate::config::{self, ConfigError};

/// The demo configuration, embedded so the binary works from any directory.
pub const DEMO_TOML: &str = include_str!("../../config/demo.toml");

/// The demo's API key (its SHA-256 is in `config/demo.toml`). For the demo only.
pub const DEMO_KEY: &str = "sk-demo-0123456789";

/// Mock replicas for every replica of `DEMO_TOML`, and the config rewritten to point at them.
pub async fn prepare(
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    auth: bool,
) -> anyhow::Result<(config::Config, Vec<MockReplica>)> {
    let mut file = config::parse_file(DEMO_TOML)?;
    if let Some(a) = file.auth.as_mut() {
        a.enabled = Some(auth);
    }
    let mut mocks = Vec::new();
    for m in &mut file.models {
        let model = m.name.clone().unwrap_or_default();
        for v in &mut m.versions {
            let version = v.name.clone().unwrap_or_default();
            for r in &mut v.replicas {
                let mock = MockReplica::start(
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    MockConfig {
                        model: model.clone(),
                        root: format!("/opt/deployments/{model}/{version}"),
                        ttft: Duration::from_millis(150),
                        inter_token: Duration::from_millis(40),
                        tokens: 24,
                        ..MockConfig::default()
                    },
                )
                .await?;
                r.url = Some(mock.url());
                mocks.push(mock);
            }
        }
    }
    if let Some(l) = listen {
        file.server.listen = Some(l.to_string());
    }
    if let Some(l) = admin_listen {
        file.server.admin_listen = Some(l.to_string());
    }
    let cfg = config::validate::validate(&file).map_err(ConfigError::Invalid)?;
    Ok((cfg, mocks))
}
