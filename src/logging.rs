//! `[logging] level`: the log filter, set in the config (and so by the fleet) and changed live.
//!
//! `main` installs the tracing subscriber with a reloadable filter and registers its handle
//! here ([`install`]); the supervisor applies the effective config's level at start and after
//! every change ([`apply`]). Without `level` the filter `main` chose stays (`RUST_LOG`, else
//! `info`). The level is a comma-separated list of `LEVEL` and `TARGET=LEVEL` directives
//! (`info`, `debug`, `warn,vitalgate::uplink=debug`); an invalid one is a configuration problem,
//! never applied.
//!
//! The filter is a `tracing_subscriber::filter::Targets`, not an `EnvFilter`: the same
//! directives for levels and module targets, without `EnvFilter`'s span and field-value
//! matching, whose regular-expression DFA builder weighed about 0.5 MB in the production
//! binary (issue 18, lean binary).

use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use tracing_subscriber::filter::Targets;

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// The log filter (`LEVEL` and `TARGET=LEVEL` directives); unset keeps `RUST_LOG` or `info`.
    pub level: Option<String>,
}

/// Swaps the running filter; installed once by `main`.
type Setter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static SETTER: OnceLock<Setter> = OnceLock::new();
/// The filter `main` started with, restored when `level` is removed again.
static INITIAL: OnceLock<String> = OnceLock::new();
/// The level last applied (nothing is done when it does not change).
static CURRENT: Mutex<Option<String>> = Mutex::new(None);

/// Checks a level directive; the message says what was wrong.
pub fn check(level: &str) -> Result<(), String> {
    parse(level).map(|_| ())
}

/// The filter for a level directive (`main` builds the running filter with it); the error
/// says what was wrong. Blanks around directives are allowed (`warn, vitalgate=debug`); an
/// empty directive, target or level (`loud=`: `Targets` would read it as `ERROR`), a span or
/// field filter (`[span]`, `target[{field}]`) or an unknown level is refused rather than
/// silently meaning something else.
pub fn parse(level: &str) -> Result<Targets, String> {
    if level.trim().is_empty() {
        return Err("empty; use e.g. \"info\" or \"warn,vitalgate::uplink=debug\"".into());
    }
    let directives: Vec<&str> = level.split(',').map(str::trim).collect();
    if let Some(bad) = directives.iter().find(|d| {
        d.is_empty()
            || d.starts_with('=')
            || d.ends_with('=')
            || d.contains(['[', ']', '{', '}', ' '])
    }) {
        return Err(format!(
            "{level:?} is not a log filter: directive {bad:?} is not LEVEL or TARGET=LEVEL"
        ));
    }
    directives
        .join(",")
        .parse::<Targets>()
        .map_err(|e| format!("{level:?} is not a log filter: {e}"))
}

/// Registers the running subscriber's filter setter (`main`, once); `initial` is its filter.
pub fn install(initial: &str, set: Setter) {
    let _ = INITIAL.set(initial.to_owned());
    let _ = SETTER.set(set);
}

/// Applies `config`'s level to the running subscriber, when it changed. Returns the level now
/// in force when it was changed (for the log and the audit), `None` when nothing changed.
pub fn apply(config: &LoggingConfig) -> Option<String> {
    let setter = SETTER.get()?;
    let wanted = config
        .level
        .clone()
        .or_else(|| INITIAL.get().cloned())
        .unwrap_or_else(|| "info".into());
    let mut current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
    let previous = current.clone().or_else(|| INITIAL.get().cloned());
    if previous.as_deref() == Some(wanted.as_str()) {
        return None;
    }
    match setter(&wanted) {
        Ok(()) => {
            *current = Some(wanted.clone());
            Some(wanted)
        }
        Err(e) => {
            tracing::error!(error = %e, "log level not changed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_levels_and_per_module_directives_are_valid() {
        assert_eq!(check("debug"), Ok(()));
        assert_eq!(check("warn,vitalgate::uplink=debug"), Ok(()));
    }

    #[test]
    fn nonsense_and_empty_levels_are_refused() {
        assert!(check("loud=").is_err());
        assert!(check("vitalgate=loud").is_err());
        assert!(check("[").is_err());
        assert!(check("info,,debug").is_err());
        assert!(check(" ").is_err());
    }

    #[test]
    fn a_per_module_directive_overrides_the_default_level_for_that_module_only() {
        use tracing::Level;
        let f = parse("warn, vitalgate::uplink=debug").unwrap();
        assert!(f.would_enable("vitalgate::uplink::session", &Level::DEBUG));
        assert!(!f.would_enable("vitalgate::ingest", &Level::INFO));
        assert!(f.would_enable("vitalgate::ingest", &Level::WARN));
        assert!(!f.would_enable("rustls::client", &Level::INFO));
    }

    #[test]
    fn a_bare_level_applies_to_every_target() {
        use tracing::Level;
        let f = parse("info").unwrap();
        assert!(f.would_enable("rumqttc::state", &Level::INFO));
        assert!(!f.would_enable("vitalgate::store", &Level::DEBUG));
        assert!(!parse("off")
            .unwrap()
            .would_enable("vitalgate", &Level::ERROR));
    }
}
