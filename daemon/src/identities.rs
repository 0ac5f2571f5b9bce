//! Security identities, as Cilium's: one number per distinct set of a
//! pod's security labels (its `k8s:` labels and its namespace), shared by
//! every pod with that set, so that policies can name peers by identity
//! and a pod joining a known set costs no policy change. Numbers are this
//! node's, from [`FIRST_IDENTITY`] (below it, Cilium's reserved ones:
//! host, world, ...), and stay with their set while a pod holds it.

use std::collections::BTreeMap;

use palisade_api::EndpointRegistration;
use palisade_policy::select::POD_NAMESPACE_LABEL;

/// The first identity given to a label set (Cilium's first cluster-scope one).
pub const FIRST_IDENTITY: u32 = 256;
/// The last identity given (Cilium's cluster-scope range ends here).
pub const LAST_IDENTITY: u32 = 65_535;

/// A pod's security labels: `k8s:KEY` → value, its namespace included.
pub type LabelSet = BTreeMap<String, String>;

/// Why no identity could be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("every identity from {FIRST_IDENTITY} to {LAST_IDENTITY} is in use")]
pub struct IdentitiesExhausted;

/// The security labels of a registered pod (namespace `default` when the
/// runtime named none).
pub fn security_labels(registration: &EndpointRegistration) -> LabelSet {
    let mut labels: LabelSet = registration
        .labels
        .iter()
        .map(|(key, value)| (format!("k8s:{key}"), value.clone()))
        .collect();
    labels.insert(
        POD_NAMESPACE_LABEL.to_owned(),
        registration
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
    );
    labels
}

/// The identities in use and how many endpoints hold each.
#[derive(Debug, Default)]
pub struct Identities {
    by_labels: BTreeMap<LabelSet, (u32, usize)>,
    by_number: BTreeMap<u32, LabelSet>,
}

impl Identities {
    /// The identity of `labels` for one more holder: the set's own when it
    /// has one; else `wanted` (a saved number) when free, else the lowest
    /// free number.
    ///
    /// # Errors
    ///
    /// When every number is in use.
    pub fn acquire(
        &mut self,
        labels: &LabelSet,
        wanted: Option<u32>,
    ) -> Result<u32, IdentitiesExhausted> {
        if let Some((number, holders)) = self.by_labels.get_mut(labels) {
            *holders += 1;
            return Ok(*number);
        }
        let number = match wanted {
            Some(wanted)
                if (FIRST_IDENTITY..=LAST_IDENTITY).contains(&wanted)
                    && !self.by_number.contains_key(&wanted) =>
            {
                wanted
            }
            _ => self.lowest_free().ok_or(IdentitiesExhausted)?,
        };
        self.by_labels.insert(labels.clone(), (number, 1));
        self.by_number.insert(number, labels.clone());
        Ok(number)
    }

    /// One holder of `labels` fewer; the number is free once none is left.
    pub fn release(&mut self, labels: &LabelSet) {
        if let Some((number, holders)) = self.by_labels.get_mut(labels) {
            *holders -= 1;
            if *holders == 0 {
                let number = *number;
                self.by_labels.remove(labels);
                self.by_number.remove(&number);
            }
        }
    }

    fn lowest_free(&self) -> Option<u32> {
        let mut candidate = FIRST_IDENTITY;
        for used in self.by_number.keys().copied() {
            if used > candidate {
                break;
            }
            if used == candidate {
                candidate = candidate.checked_add(1)?;
            }
        }
        (candidate <= LAST_IDENTITY).then_some(candidate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(namespace: &str, app: &str) -> LabelSet {
        LabelSet::from([
            ("k8s:app".to_owned(), app.to_owned()),
            (POD_NAMESPACE_LABEL.to_owned(), namespace.to_owned()),
        ])
    }

    #[test]
    fn one_identity_per_label_set_freed_with_its_last_holder() {
        let mut identities = Identities::default();
        let web = identities.acquire(&set("shop", "web"), None).expect("web");
        assert_eq!(web, FIRST_IDENTITY);
        assert_eq!(identities.acquire(&set("shop", "web"), None), Ok(web));
        let db = identities.acquire(&set("shop", "db"), None).expect("db");
        assert_eq!(db, FIRST_IDENTITY + 1);
        let other = identities
            .acquire(&set("other", "web"), None)
            .expect("namespace");
        assert_eq!(other, FIRST_IDENTITY + 2);
        identities.release(&set("shop", "web"));
        assert_eq!(
            identities.by_number.get(&web),
            Some(&set("shop", "web")),
            "one holder left"
        );
        identities.release(&set("shop", "web"));
        assert_eq!(identities.by_number.get(&web), None);
        // The lowest free number goes to the next new set.
        assert_eq!(identities.acquire(&set("shop", "cache"), None), Ok(web));
    }

    #[test]
    fn a_saved_number_is_kept_when_free_and_never_taken_from_another_set() {
        let mut identities = Identities::default();
        assert_eq!(identities.acquire(&set("shop", "web"), Some(300)), Ok(300));
        assert_eq!(
            identities.acquire(&set("shop", "db"), Some(300)),
            Ok(FIRST_IDENTITY)
        );
        assert_eq!(identities.acquire(&set("shop", "web"), Some(999)), Ok(300));
        assert_eq!(
            identities.acquire(&set("shop", "x"), Some(7)),
            Ok(FIRST_IDENTITY + 1)
        );
    }

    #[test]
    fn numbers_run_out_at_the_end_of_the_range() {
        let mut identities = Identities::default();
        for number in FIRST_IDENTITY..LAST_IDENTITY {
            let labels = LabelSet::from([("k8s:n".to_owned(), number.to_string())]);
            identities.by_labels.insert(labels.clone(), (number, 1));
            identities.by_number.insert(number, labels);
        }
        assert_eq!(
            identities.acquire(&set("shop", "web"), None),
            Ok(LAST_IDENTITY)
        );
        assert_eq!(
            identities.acquire(&set("shop", "db"), None),
            Err(IdentitiesExhausted)
        );
    }
}
