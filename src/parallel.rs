//! The one work queue: items run on a few threads, largest first, and the first error stops
//! the handing out of new work. Used for layer blobs (`build`) and blob uploads (`push`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Result, anyhow};

/// Runs `job(i)` for every `i` in `0..sizes.len()` on `workers` threads, the largest `sizes[i]`
/// first (ties in index order), and returns the results in index order. After the first error
/// no new item starts; items already running finish; that first error is returned.
pub fn largest_first<T: Send>(
    sizes: &[u64],
    workers: usize,
    job: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(sizes[i]), i));
    let results: Vec<Mutex<Option<T>>> = sizes.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let workers = workers.max(1).min(sizes.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return;
                    };
                    match job(i) {
                        Ok(r) => *lock(&results[i]) = Some(r),
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            lock(&first_error).get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    results
        .into_iter()
        .map(|r| r.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect::<Option<Vec<T>>>()
        .ok_or_else(|| anyhow!("internal error: a work item neither finished nor failed"))
}

/// A poisoned lock only means another worker panicked; the data (a slot) is still usable, and
/// the panic itself reaches the caller through the thread scope.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_in_index_order_for_any_worker_count() {
        let sizes = [3, 10, 1, 7, 7];
        for workers in [0, 1, 2, 9] {
            let got = largest_first(&sizes, workers, |i| Ok(i * 10)).unwrap();
            assert_eq!(got, vec![0, 10, 20, 30, 40]);
        }
    }

    #[test]
    fn one_worker_takes_largest_first() {
        let started = Mutex::new(Vec::new());
        largest_first(&[3, 10, 1, 7, 7], 1, |i| {
            started.lock().unwrap().push(i);
            Ok(())
        })
        .unwrap();
        assert_eq!(started.into_inner().unwrap(), vec![1, 3, 4, 0, 2]);
    }

    #[test]
    fn first_error_stops_new_work() {
        let ran = AtomicUsize::new(0);
        let err = largest_first(&[5, 4, 3, 2, 1], 1, |i| {
            ran.fetch_add(1, Ordering::Relaxed);
            if i == 1 { Err(anyhow!("item {i} failed")) } else { Ok(()) }
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "item 1 failed");
        assert_eq!(ran.into_inner(), 2, "nothing starts after the failure");
    }

    #[test]
    fn empty_input() {
        assert!(largest_first::<()>(&[], 4, |_| unreachable!()).unwrap().is_empty());
    }
}
