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
        let policy = self.config.policy(unit);
        if policy.is_some_and(|p| p.name == unit) {
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
        // Instances come and go (a template started 10,000 times over a month): past the
        // limit, a listed template's instances share its name, others are `other`.
        policy.map_or_else(|| OTHER.to_owned(), |p| p.name.clone())
    }

    /// How many units were given their own name (the bound is `max_units`).
    #[must_use]
    pub(crate) fn len(&self) -> usize {
        self.named
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
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
        // Listed units never fold; a listed template's instances fold to the template.
        assert_eq!(of("web.service"), "web.service");
        for unit in ["app@1.service", "app@2.service", "app@3.service"] {
            assert_eq!(of(unit), "app@.service");
        }
        assert_eq!(names.of(None), NONE);
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn template_instances_keep_their_name_while_there_is_room() {
        let config = config::parse(
            "c.toml",
            "[[unit]]\nname = \"app@.service\"\n[metrics]\nmax_units = 2\n",
        )
        .expect("valid");
        let names = Names::new(Arc::new(config));
        assert_eq!(names.of(Some("app@1.service")), "app@1.service");
        assert_eq!(names.of(Some("app@2.service")), "app@2.service");
        assert_eq!(names.of(Some("app@1.service")), "app@1.service");
        // Started again and again, instances never grow the label set past the bound.
        for n in 3..10_000 {
            assert_eq!(names.of(Some(&format!("app@{n}.service"))), "app@.service");
        }
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn a_limit_of_zero_names_only_configured_units() {
        let config = config::parse("c.toml", "[metrics]\nmax_units = 0\n").expect("valid");
        let names = Names::new(Arc::new(config));
        assert_eq!(names.of(Some("a.service")), OTHER);
    }
}
