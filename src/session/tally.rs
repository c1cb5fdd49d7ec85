//! What the sessions did at each switch, for `/status`: how many moved to the new master, by what
//! they carried (plain, pubsub, blocking, transaction, tracking, monitor), and how many were
//! closed instead, by reason. Touched only when a session moves or is closed at a switch (a mutex
//! is fine there; never on the byte path). The last few generations are kept.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

const KEPT: usize = 16;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub moved: BTreeMap<&'static str, u64>,
    pub closed: BTreeMap<&'static str, u64>,
}

#[derive(Default)]
pub struct Tally {
    by_generation: Mutex<VecDeque<(u64, Counts)>>,
}

impl Tally {
    pub fn moved(&self, generation: u64, kind: &'static str) {
        self.with(generation, |c| *c.moved.entry(kind).or_default() += 1);
    }

    pub fn closed(&self, generation: u64, reason: &'static str) {
        self.with(generation, |c| *c.closed.entry(reason).or_default() += 1);
    }

    pub fn get(&self, generation: u64) -> Counts {
        let Ok(g) = self.by_generation.lock() else {
            return Counts::default();
        };
        g.iter()
            .find(|(gen_, _)| *gen_ == generation)
            .map(|(_, c)| c.clone())
            .unwrap_or_default()
    }

    fn with(&self, generation: u64, f: impl FnOnce(&mut Counts)) {
        let Ok(mut g) = self.by_generation.lock() else {
            return;
        };
        if let Some((_, c)) = g.iter_mut().find(|(gen_, _)| *gen_ == generation) {
            return f(c);
        }
        let mut c = Counts::default();
        f(&mut c);
        g.push_back((generation, c));
        if g.len() > KEPT {
            g.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_generation_and_only_the_last_few() {
        let t = Tally::default();
        t.moved(2, "pubsub");
        t.moved(2, "pubsub");
        t.closed(2, "switch_transaction");
        assert_eq!(t.get(2).moved["pubsub"], 2);
        assert_eq!(t.get(2).closed["switch_transaction"], 1);
        for g in 3..30 {
            t.moved(g, "plain");
        }
        assert!(t.get(2).moved.is_empty());
        assert_eq!(t.get(29).moved["plain"], 1);
    }
}
