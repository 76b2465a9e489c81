//! `[logging] level`: the log filter, set in the config (and so by the fleet) and changed live.
//!
//! `main` installs the tracing subscriber with a reloadable filter and registers its handle
//! here ([`install`]); the supervisor applies the effective config's level at start and after
//! every change ([`apply`]). Without `level` the filter `main` chose stays (`RUST_LOG`, else
//! `info`). The level is a `tracing_subscriber::EnvFilter` directive (`info`, `debug`,
//! `warn,vitalgate::uplink=debug`); an invalid one is a configuration problem, never applied.

use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// The log filter (an `EnvFilter` directive); unset keeps `RUST_LOG` or `info`.
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
    if level.trim().is_empty() {
        return Err("empty; use e.g. \"info\" or \"warn,vitalgate::uplink=debug\"".into());
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(|_| ())
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
        assert!(check("loud=").is_err() || check("[").is_err());
        assert!(check(" ").is_err());
    }
}
