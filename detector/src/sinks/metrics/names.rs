//! The `name` label's values, bounded. Every unit a `[[unit]]` lists (or an instance of a listed
//! template) is named as systemd names it; the first `max_units` other units seen are named
//! too; any later one is `other`. A death outside any unit is `none`. Neither word can be a unit
//! (a unit name has a type suffix such as `.service`), so none of them hides a real unit.
//!
//! The set only grows while the daemon runs: a name, once given, keeps its own series (a
//! Prometheus series that changes value mid-life would break `rate()`).

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError},
};

use crate::config::Config;

/// The label value for units past the limit.
pub(crate) const OTHER: &str = "other";
/// The label value for deaths outside any systemd unit.
pub(crate) const NONE: &str = "none";

/// Decides each unit's `name` label value.
pub(crate) struct Names {
    config: Arc<Config>,
    max_units: usize,
    /// Units outside the configuration that were given their own name.
    named: Mutex<HashSet<String>>,
}

impl Names {
    #[must_use]
    pub(crate) fn new(config: Arc<Config>) -> Self {
        Self {
            max_units: config.metrics.max_units,
            config,
            named: Mutex::new(HashSet::new()),
        }
    }

    /// The label value for `unit` (None: no unit).
    #[must_use]
    pub(crate) fn of(&self, unit: Option<&str>) -> String {
        let Some(unit) = unit else {
            return NONE.to_owned();
        };
        if self.config.policy(unit).is_some() {
            return unit.to_owned();
        }
        let mut named = self.named.lock().unwrap_or_else(PoisonError::into_inner);
        if named.contains(unit) {
            return unit.to_owned();
        }
        if named.len() < self.max_units {
            named.insert(unit.to_owned());
            return unit.to_owned();
        }
        OTHER.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{NONE, Names, OTHER};
    use crate::config;

    #[test]
    fn configured_units_keep_their_name_and_the_rest_fold_past_the_limit() {
        let config = config::parse(
            "c.toml",
            "[[unit]]\nname = \"web.service\"\n[[unit]]\nname = \"app@.service\"\n\
             [metrics]\nmax_units = 2\n",
        )
        .expect("valid");
        let names = Names::new(Arc::new(config));
        let of = |u: &str| names.of(Some(u));
        assert_eq!(of("a.service"), "a.service");
        assert_eq!(of("b.scope"), "b.scope");
        // The limit is reached: a third unlisted unit folds, the first two keep their names.
        assert_eq!(of("c.service"), OTHER);
        assert_eq!(of("a.service"), "a.service");
        assert_eq!(of("b.scope"), "b.scope");
        // Listed units and a listed template's instances never fold.
        for unit in [
            "web.service",
            "app@1.service",
            "app@2.service",
            "app@3.service",
        ] {
            assert_eq!(of(unit), unit);
        }
        assert_eq!(names.of(None), NONE);
    }

    #[test]
    fn a_limit_of_zero_names_only_configured_units() {
        let config = config::parse("c.toml", "[metrics]\nmax_units = 0\n").expect("valid");
        let names = Names::new(Arc::new(config));
        assert_eq!(names.of(Some("a.service")), OTHER);
    }
}
