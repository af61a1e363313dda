//! Which items of a failed batch to refuse: the decision, apart from any store.
//!
//! A batch is many callers' items in one transaction, so one item that can never
//! be stored (it violates a constraint, say) would fail the batch on every retry
//! and stop all ingest behind it. [`settle`] commits what it can and isolates such
//! items by bisection: the whole set first; on a failure about the data, each half
//! on its own, down to single items. One bad item among `n` costs about
//! `2·log2(n)` extra transactions, and every other item is committed, in order.
//! A transient failure (a full disk, a lock) stops it at once: nothing is refused
//! for a fault of the store, and the caller retries the items still pending later.

/// What became of one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate<E> {
    /// Not committed yet (a transient failure stopped the attempt).
    Pending,
    Committed,
    /// Failed on its own with an error about its data: it can never be stored.
    Refused(E),
}

/// Commit the pending items of `fates` through `commit` (one transaction of the
/// items whose indices it is given, in order), refusing only those that fail on
/// their own with a non-transient error. Returns the first transient error, with
/// every item committed before it marked [`Fate::Committed`] and the rest still
/// [`Fate::Pending`].
pub fn settle<E>(
    fates: &mut [Fate<E>],
    commit: &mut impl FnMut(&[usize]) -> Result<(), E>,
    transient: &impl Fn(&E) -> bool,
) -> Result<(), E> {
    let pending: Vec<usize> = (0..fates.len()).filter(|&i| matches!(fates[i], Fate::Pending)).collect();
    if pending.is_empty() {
        return Ok(());
    }
    bisect(&pending, fates, commit, transient)
}

fn bisect<E>(
    items: &[usize],
    fates: &mut [Fate<E>],
    commit: &mut impl FnMut(&[usize]) -> Result<(), E>,
    transient: &impl Fn(&E) -> bool,
) -> Result<(), E> {
    match commit(items) {
        Ok(()) => {
            for &i in items {
                fates[i] = Fate::Committed;
            }
            Ok(())
        }
        Err(e) if transient(&e) => Err(e),
        Err(e) => match items {
            [one] => {
                fates[*one] = Fate::Refused(e);
                Ok(())
            }
            // The left half first: items keep their order across transactions.
            _ => {
                let (left, right) = items.split_at(items.len() / 2);
                bisect(left, fates, commit, transient)?;
                bisect(right, fates, commit, transient)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Fail {
        Full,
        Constraint(usize),
    }

    /// A store that refuses any transaction holding one of `bad`, fails the first
    /// `full` transactions for want of space, and records what it committed.
    struct FakeStore {
        bad: Vec<usize>,
        full: usize,
        calls: usize,
        committed: Vec<usize>,
    }

    impl FakeStore {
        fn new(bad: &[usize], full: usize) -> Self {
            Self { bad: bad.to_vec(), full, calls: 0, committed: Vec::new() }
        }

        fn commit(&mut self, items: &[usize]) -> Result<(), Fail> {
            self.calls += 1;
            if self.full > 0 {
                self.full -= 1;
                return Err(Fail::Full);
            }
            if let Some(b) = items.iter().find(|i| self.bad.contains(i)) {
                return Err(Fail::Constraint(*b));
            }
            self.committed.extend_from_slice(items);
            Ok(())
        }
    }

    fn run(store: &mut FakeStore, fates: &mut [Fate<Fail>]) -> Result<(), Fail> {
        settle(fates, &mut |items: &[usize]| store.commit(items), &|e: &Fail| *e == Fail::Full)
    }

    #[test]
    fn a_good_batch_is_one_transaction() {
        let mut store = FakeStore::new(&[], 0);
        let mut fates = vec![Fate::Pending; 100];
        run(&mut store, &mut fates).unwrap();
        assert_eq!(store.calls, 1);
        assert!(fates.iter().all(|f| *f == Fate::Committed));
        assert_eq!(store.committed, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn one_bad_item_is_refused_and_every_other_committed_in_order() {
        for bad in [0, 1, 37, 63, 99] {
            let mut store = FakeStore::new(&[bad], 0);
            let mut fates = vec![Fate::Pending; 100];
            run(&mut store, &mut fates).unwrap();
            for (i, f) in fates.iter().enumerate() {
                let want = if i == bad { Fate::Refused(Fail::Constraint(bad)) } else { Fate::Committed };
                assert_eq!(*f, want, "item {i} with {bad} bad");
            }
            let expected: Vec<usize> = (0..100).filter(|&i| i != bad).collect();
            assert_eq!(store.committed, expected, "order kept");
            // log2(100) rounds of at most two transactions each, plus the first.
            assert!(store.calls <= 1 + 2 * 7, "{} transactions for one bad item", store.calls);
        }
    }

    #[test]
    fn several_bad_items_and_a_batch_of_one() {
        let mut store = FakeStore::new(&[3, 4, 9], 0);
        let mut fates = vec![Fate::Pending; 10];
        run(&mut store, &mut fates).unwrap();
        let refused: Vec<usize> = (0..10).filter(|&i| matches!(fates[i], Fate::Refused(_))).collect();
        assert_eq!(refused, vec![3, 4, 9]);
        assert_eq!(store.committed, vec![0, 1, 2, 5, 6, 7, 8]);

        let mut store = FakeStore::new(&[0], 0);
        let mut fates = vec![Fate::Pending];
        run(&mut store, &mut fates).unwrap();
        assert_eq!(fates, vec![Fate::Refused(Fail::Constraint(0))]);
        assert_eq!(store.calls, 1);
    }

    #[test]
    fn a_transient_failure_refuses_nothing_and_leaves_the_rest_pending() {
        let mut store = FakeStore::new(&[], 3);
        let mut fates = vec![Fate::Pending; 8];
        for _ in 0..3 {
            assert_eq!(run(&mut store, &mut fates), Err(Fail::Full));
            assert!(fates.iter().all(|f| *f == Fate::Pending));
        }
        run(&mut store, &mut fates).unwrap();
        assert!(fates.iter().all(|f| *f == Fate::Committed));
        assert_eq!(store.calls, 4);
    }

    #[test]
    fn a_transient_failure_in_the_middle_of_isolating_resumes_where_it_stopped() {
        // Item 6 is bad; the disk fills up after the left half went in.
        let mut store = FakeStore::new(&[6], 0);
        let mut fates = vec![Fate::Pending; 8];
        let mut calls = 0;
        let r = settle(
            &mut fates,
            &mut |items: &[usize]| {
                calls += 1;
                // 1: all (refused), 2: left half (committed), 3: right half: full.
                if calls == 3 { Err(Fail::Full) } else { store.commit(items) }
            },
            &|e: &Fail| *e == Fail::Full,
        );
        assert_eq!(r, Err(Fail::Full));
        assert_eq!(&fates[..4], &[Fate::Committed, Fate::Committed, Fate::Committed, Fate::Committed]);
        assert!(fates[4..].iter().all(|f| *f == Fate::Pending));
        // The retry takes only what is pending.
        run(&mut store, &mut fates).unwrap();
        assert_eq!(fates[6], Fate::Refused(Fail::Constraint(6)));
        assert_eq!(store.committed, vec![0, 1, 2, 3, 4, 5, 7]);
    }
}
