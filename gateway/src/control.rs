//! The control plane's one publish path. Reloads (file change, SIGHUP, `POST /admin/reload`),
//! deployment-link switches, operator canary changes and guard rollbacks all end the same way:
//! config text -> parse -> validate (every error) -> new snapshot -> one swap. A change made
//! through the admin API or the guard is first written back into the config file (with
//! `toml_edit`, so comments and layout survive; temp file + rename), so a restart keeps it and
//! other instances watching the same file converge. Every operator change is audited.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use toml_edit::{value, DocumentMut, InlineTable, Item, Value};

use crate::config::{self, Config};
use crate::state::AppState;

/// Where the configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// The file, when there is one (changes are written back to it).
    pub path: Option<PathBuf>,
    /// The text the current snapshot was built from.
    pub text: String,
}

/// The result of the last reload attempt, for operators.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    pub trigger: String,
    pub ok: bool,
    pub errors: Vec<String>,
    pub restart_required: Vec<String>,
    pub at_unix: u64,
}

/// Serialises changes, so two operators (or an operator and the guard) cannot interleave.
#[derive(Default)]
pub struct Control {
    pub source: Mutex<Source>,
    pub last_reload: Mutex<ReloadStatus>,
    edit: tokio::sync::Mutex<()>,
}

/// What a successful reload changed.
#[derive(Debug, Clone, Default)]
pub struct Reloaded {
    pub changed: bool,
    pub restart_required: Vec<String>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Settings read once at start: a new value needs a restart.
fn restart_required(old: &Config, new: &Config) -> Vec<String> {
    let mut r = Vec::new();
    if old.server.listen != new.server.listen {
        r.push("server.listen".to_owned());
    }
    if old.server.admin_listen != new.server.admin_listen {
        r.push("server.admin_listen".to_owned());
    }
    if old.server.header_read_timeout != new.server.header_read_timeout {
        r.push("server.header_read_timeout".to_owned());
    }
    if old.limits.redis != new.limits.redis {
        r.push("limits.redis_url (and the other Redis settings)".to_owned());
    }
    if old.server.tls.is_some() != new.server.tls.is_some() {
        r.push("server.tls (turning TLS on or off)".to_owned());
    }
    r
}

/// Re-reads the source (the file, if any) and publishes it if it is valid. An invalid source
/// changes nothing and returns every error.
pub fn reload(app: &AppState, trigger: &str) -> Result<Reloaded, Vec<String>> {
    let (path, old_text) = {
        let s = app.control.source.lock().unwrap_or_else(|p| p.into_inner());
        (s.path.clone(), s.text.clone())
    };
    let text = match &path {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| vec![format!("cannot read {}: {e}", p.display())]),
        None => Ok(old_text.clone()),
    };
    let result = text.and_then(|t| apply_text(app, &t).map(|r| (r, t)));
    let mut status = ReloadStatus {
        trigger: trigger.to_owned(),
        at_unix: unix_now(),
        ..ReloadStatus::default()
    };
    let out = match result {
        Ok((r, _)) => {
            status.ok = true;
            status.restart_required = r.restart_required.clone();
            app.metrics.config_reloads.with_label_values(&["ok"]).inc();
            if r.changed {
                tracing::info!(trigger, restart_required = ?r.restart_required, "configuration reloaded");
            }
            for field in &r.restart_required {
                tracing::warn!(field = %field, "changed, but takes effect only after a restart");
            }
            Ok(r)
        }
        Err(errors) => {
            status.errors = errors.clone();
            app.metrics
                .config_reloads
                .with_label_values(&["error"])
                .inc();
            tracing::error!(trigger, errors = ?errors, "configuration reload failed; the old configuration stays");
            Err(errors)
        }
    };
    *app.control
        .last_reload
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = status;
    out
}

/// Validates `text` and, if valid, publishes it and records it as the source.
fn apply_text(app: &AppState, text: &str) -> Result<Reloaded, Vec<String>> {
    let cfg = config::parse(text).map_err(|e| match e {
        config::ConfigError::Invalid(errs) => errs,
        other => vec![other.to_string()],
    })?;
    let old = app.snapshot();
    let restart = restart_required(&old.config, &cfg);
    let same_links = cfg
        .models
        .iter()
        .zip(old.config.models.iter())
        .all(|(a, b)| a.stable == b.stable && a.name == b.name)
        && cfg.models.len() == old.config.models.len();
    let changed = {
        let s = app.control.source.lock().unwrap_or_else(|p| p.into_inner());
        s.text != text || !same_links
    };
    if let (Some(tls), Some(paths)) = (&app.tls, &cfg.server.tls) {
        if let Err(e) = tls.refresh(Some(paths)) {
            return Err(vec![format!("server.tls: {e}")]);
        }
    }
    if changed {
        app.publish(cfg);
        app.control
            .source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .text = text.to_owned();
    }
    Ok(Reloaded {
        changed,
        restart_required: restart,
    })
}

/// An operator's change to a model's canary.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Set {
        version: String,
        weight_percent: f64,
        sticky: Option<String>,
    },
    Weight(f64),
    Promote,
    Rollback,
}

/// Why a change was refused.
#[derive(Debug)]
pub enum ChangeError {
    /// No such model.
    NotFound(String),
    /// The change would make an invalid config (every error).
    Invalid(Vec<String>),
    /// It could not be carried out (file, link).
    Failed(String),
}

/// The canary as a JSON value (for answers and the audit log).
fn canary_json(cfg: &Config, model: &str) -> serde_json::Value {
    let Some(m) = cfg.models.iter().find(|m| m.name == model) else {
        return serde_json::Value::Null;
    };
    serde_json::json!({
        "stable": m.versions.get(m.stable).map(|v| v.name.clone()),
        "canary": m.canary.as_ref().map(|c| serde_json::json!({
            "version": m.versions.get(c.version).map(|v| v.name.clone()),
            "weight_percent": c.weight_percent,
        })),
    })
}

/// Applies `change` to `model`: edits the config text, validates it, writes it back, switches
/// the deployment link on a promotion, publishes, and audits. Returns the model's canary after.
pub async fn change_canary(
    app: &AppState,
    model: &str,
    change: Change,
    who: &str,
    reason: Option<&str>,
) -> Result<serde_json::Value, ChangeError> {
    let _serial = app.control.edit.lock().await;
    let snapshot = app.snapshot();
    let Some(mcfg) = snapshot.config.models.iter().find(|m| m.name == model) else {
        return Err(ChangeError::NotFound(model.to_owned()));
    };
    let before = canary_json(&snapshot.config, model);
    let (path, text) = {
        let s = app.control.source.lock().unwrap_or_else(|p| p.into_inner());
        (s.path.clone(), s.text.clone())
    };
    // Start from the file as it is now, so an operator's own edits are not overwritten.
    let text = match &path {
        Some(p) => std::fs::read_to_string(p).unwrap_or(text),
        None => text,
    };
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| ChangeError::Failed(format!("the config file does not parse: {e}")))?;
    let table = model_table(&mut doc, model)
        .ok_or_else(|| ChangeError::Failed(format!("model {model:?} is not in the config file")))?;
    let canary_version = mcfg
        .canary
        .as_ref()
        .and_then(|c| mcfg.versions.get(c.version))
        .map(|v| v.name.clone());
    let action;
    match &change {
        Change::Set {
            version,
            weight_percent,
            sticky,
        } => {
            action = "set_canary";
            set_canary_field(table, "version", value(version.as_str()));
            set_canary_field(table, "weight_percent", value(*weight_percent));
            if let Some(s) = sticky {
                set_canary_field(table, "sticky", value(s.as_str()));
            }
        }
        Change::Weight(w) => {
            action = "set_weight";
            if canary_version.is_none() {
                return Err(ChangeError::Invalid(vec![format!(
                    "models.{model}.canary: no canary version is configured"
                )]));
            }
            set_canary_field(table, "weight_percent", value(*w));
        }
        Change::Rollback => {
            action = "rollback";
            if canary_version.is_none() {
                return Err(ChangeError::Invalid(vec![format!(
                    "models.{model}.canary: no canary to roll back"
                )]));
            }
            set_canary_field(table, "weight_percent", value(0.0));
        }
        Change::Promote => {
            action = "promote";
            let Some(v) = canary_version.clone() else {
                return Err(ChangeError::Invalid(vec![format!(
                    "models.{model}.canary: no canary to promote"
                )]));
            };
            // The canary becomes stable; its entry stays, at weight 0, for the next release.
            if mcfg.deploy_dir.is_none() {
                table["stable"] = value(v.as_str());
            }
            set_canary_field(table, "weight_percent", value(0.0));
        }
    }
    let new_text = doc.to_string();
    // Validate before touching anything. A promotion with a deployment directory is checked
    // against the link as it will be.
    if change != Change::Promote || mcfg.deploy_dir.is_none() {
        config::parse(&new_text).map_err(|e| match e {
            config::ConfigError::Invalid(errs) => ChangeError::Invalid(errs),
            other => ChangeError::Invalid(vec![other.to_string()]),
        })?;
    }
    if change == Change::Promote {
        if let (Some(dir), Some(v)) = (&mcfg.deploy_dir, &canary_version) {
            crate::canary::versions::switch(dir, v).map_err(ChangeError::Failed)?;
        }
    }
    if let Some(p) = &path {
        write_atomic(p, &new_text).map_err(ChangeError::Failed)?;
    }
    let cfg = config::parse(&new_text).map_err(|e| ChangeError::Invalid(vec![e.to_string()]))?;
    let after = canary_json(&cfg, model);
    app.publish(cfg);
    app.control
        .source
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .text = new_text;
    audit(app, who, action, model, &before, &after, reason);
    Ok(after)
}

fn model_table<'d>(doc: &'d mut DocumentMut, model: &str) -> Option<&'d mut toml_edit::Table> {
    doc.get_mut("models")?
        .as_array_of_tables_mut()?
        .iter_mut()
        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(model))
}

/// Sets one field of the model's `canary`, whether it is written as an inline table
/// (`canary = { ... }`) or a sub-table (`[models.canary]`), creating it if absent.
fn set_canary_field(table: &mut toml_edit::Table, key: &str, v: Item) {
    let Item::Value(v) = v else { return };
    match table.get_mut("canary") {
        Some(Item::Value(Value::InlineTable(t))) => {
            t.insert(key, v);
        }
        Some(Item::Table(t)) => {
            t.insert(key, Item::Value(v));
        }
        _ => {
            let mut t = InlineTable::new();
            t.insert(key, v);
            table.insert("canary", Item::Value(Value::InlineTable(t)));
        }
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config.toml".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot replace {}: {e}", path.display())
    })
}

/// Appends an operator change to the audit trail: the log (target "audit") and, when
/// `server.audit_log` is set, that file as one JSON line.
pub fn audit(
    app: &AppState,
    who: &str,
    action: &str,
    model: &str,
    before: &serde_json::Value,
    after: &serde_json::Value,
    reason: Option<&str>,
) {
    let entry = serde_json::json!({
        "at_unix": unix_now(), "who": who, "action": action, "model": model,
        "before": before, "after": after, "reason": reason,
    });
    tracing::info!(target: "audit", who, action, model, before = %before, after = %after,
        reason = reason.unwrap_or(""), "operator change");
    if let Some(path) = app.snapshot().config.server.audit_log.clone() {
        use std::io::Write;
        let line = format!("{entry}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            tracing::error!(path = %path.display(), error = %e, "cannot write the audit log");
        }
    }
}

/// Watches the config file and every model's `current` link; reloads on a change (debounced:
/// the file must read the same twice, 200 ms apart, so a half-written file is not applied).
///
/// Its timer also measures the scheduler: how late it fired goes to
/// `gateway_event_loop_lag_seconds`, a sample every 250 ms with no wake-up of its own.
pub async fn watch(app: std::sync::Arc<AppState>, stop: tokio_util::sync::CancellationToken) {
    loop {
        let due = tokio::time::Instant::now() + std::time::Duration::from_millis(250);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(due) => {}
        }
        let late = tokio::time::Instant::now().saturating_duration_since(due);
        app.metrics.event_loop_lag.observe(late.as_secs_f64());
        if let Some(tls) = &app.tls {
            if let Err(e) = tls.refresh(None) {
                tracing::warn!(error = %e, "TLS files unreadable or invalid; the old certificate stays");
            }
        }
        if needs_reload(&app) {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            if needs_reload(&app) {
                let _ = reload(&app, "watch");
            }
        }
    }
}

fn needs_reload(app: &AppState) -> bool {
    let (path, text) = {
        let s = app.control.source.lock().unwrap_or_else(|p| p.into_inner());
        (s.path.clone(), s.text.clone())
    };
    if let Some(p) = &path {
        // A file being replaced may be briefly absent: not a change.
        if let Ok(now) = std::fs::read_to_string(p) {
            if now != text {
                return true;
            }
        }
    }
    let snap = app.snapshot();
    snap.config.models.iter().any(|m| {
        let Some(dir) = &m.deploy_dir else {
            return false;
        };
        match crate::canary::versions::current(dir) {
            // A link to a version the config does not declare cannot be applied; the reload
            // would only fail again. `gateway versions verify` reports it.
            Ok(v) => {
                m.versions.iter().any(|x| x.name == v)
                    && m.versions.get(m.stable).is_none_or(|s| s.name != v)
            }
            Err(_) => false,
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    fn app() -> Arc<AppState> {
        Arc::new(AppState::new(
            crate::config::parse(crate::config::validate::tests::MIN).unwrap(),
        ))
    }

    /// Lateness is measured from when the timer was due, not from when it was set: with the
    /// clock paused, time moves only to the next timer, so every sample is exactly 0.
    #[tokio::test(start_paused = true)]
    async fn a_timer_that_fires_on_time_is_not_late() {
        let app = app();
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch(app.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        stop.cancel();
        task.await.unwrap();
        let lag = &app.metrics.event_loop_lag;
        assert_eq!(lag.get_sample_count(), 4);
        assert_eq!(lag.get_sample_sum(), 0.0);
    }

    /// A thread held past the timer: the sample is at least how long it was held beyond it.
    #[test]
    fn a_thread_held_past_the_timer_is_reported_as_that_late() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let app = app();
        rt.block_on(async {
            let stop = CancellationToken::new();
            let task = tokio::spawn(watch(app.clone(), stop.clone()));
            // The watch sets its timer, due 250 ms from now...
            tokio::task::yield_now().await;
            // ...and the only thread is held for 600 ms.
            std::thread::sleep(Duration::from_millis(600));
            tokio::time::sleep(Duration::from_millis(20)).await;
            stop.cancel();
            task.await.unwrap();
        });
        let lag = &app.metrics.event_loop_lag;
        assert!(lag.get_sample_count() >= 1);
        assert!(
            lag.get_sample_sum() >= 0.35,
            "lag {} s",
            lag.get_sample_sum()
        );
    }
}
