//! Keep-last-k and keep-best-k over the policy's own saves.

use std::cmp::{Ordering, Reverse};
use std::collections::BTreeSet;

use crate::Checkpoint;

/// Names of the checkpoints that `keep_last` / `keep_best` no longer keep, oldest first. User and
/// final saves are never candidates, and the newest candidate is always kept (it is the one a
/// resume needs). Without either limit nothing is deleted.
pub(crate) fn deletions(
    checkpoints: &[Checkpoint],
    keep_last: Option<usize>,
    keep_best: Option<usize>,
) -> Vec<String> {
    if keep_last.is_none() && keep_best.is_none() {
        return Vec::new();
    }
    let mut candidates: Vec<&Checkpoint> = checkpoints
        .iter()
        .filter(|c| c.reason.retainable())
        .collect();
    // Newest first.
    candidates.sort_by_key(|c| Reverse(c.step));
    let mut keep: BTreeSet<&str> = BTreeSet::new();
    if let Some(newest) = candidates.first() {
        keep.insert(&newest.name);
    }
    if let Some(k) = keep_last {
        keep.extend(candidates.iter().take(k).map(|c| c.name.as_str()));
    }
    if let Some(k) = keep_best {
        // Checkpoints with an eval loss rank first, by eval loss; the rest by training loss;
        // non-finite values last. The key depends on the checkpoint alone, so deleting others never
        // reorders the ones kept.
        let key = |c: &Checkpoint| match c.eval_loss.filter(|v| v.is_finite()) {
            Some(e) => (0u8, e),
            None if c.loss.is_finite() => (1, c.loss),
            None => (2, 0.0),
        };
        let mut ranked = candidates.clone();
        // Ties keep the newer (the sort is stable and `candidates` is newest first).
        ranked.sort_by(|a, b| {
            let (ka, kb) = (key(a), key(b));
            ka.0.cmp(&kb.0)
                .then(ka.1.partial_cmp(&kb.1).unwrap_or(Ordering::Equal))
        });
        keep.extend(ranked.iter().take(k).map(|c| c.name.as_str()));
    }
    let mut gone: Vec<&Checkpoint> = candidates
        .into_iter()
        .filter(|c| !keep.contains(c.name.as_str()))
        .collect();
    gone.sort_by_key(|c| c.step);
    gone.into_iter().map(|c| c.name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SaveReason;

    fn ck(step: u64, reason: SaveReason, loss: f64, eval: Option<f64>) -> Checkpoint {
        Checkpoint {
            name: reason.folder_name(step, loss),
            step,
            epoch: 0.0,
            reason,
            loss,
            eval_loss: eval,
        }
    }

    #[test]
    fn keep_last_spares_user_and_final() {
        let cs = vec![
            ck(10, SaveReason::Periodic, 2.0, None),
            ck(15, SaveReason::User, 1.9, None),
            ck(20, SaveReason::Periodic, 1.8, None),
            ck(30, SaveReason::Loss, 1.7, None),
            ck(40, SaveReason::Final, 1.6, None),
        ];
        assert_eq!(
            deletions(&cs, Some(1), None),
            vec!["checkpoint-10", "checkpoint-20"]
        );
        assert_eq!(deletions(&cs, Some(2), None), vec!["checkpoint-10"]);
        assert!(deletions(&cs, None, None).is_empty());
    }

    #[test]
    fn keep_best_prefers_eval_loss_then_training_loss() {
        let mixed = vec![
            ck(10, SaveReason::Periodic, 1.0, Some(3.0)),
            ck(20, SaveReason::Periodic, 0.5, None),
            ck(30, SaveReason::Periodic, 3.0, None),
            ck(40, SaveReason::Periodic, 3.0, Some(2.0)),
            ck(50, SaveReason::Periodic, 3.0, None),
        ];
        // 40 has the best eval loss, 50 is newest; 20 is the best without eval.
        assert_eq!(
            deletions(&mixed, None, Some(1)),
            vec!["checkpoint-10", "checkpoint-20", "checkpoint-30"]
        );
        assert_eq!(deletions(&mixed, None, Some(3)), vec!["checkpoint-30"]);
        let with_eval = vec![
            ck(10, SaveReason::Periodic, 1.0, Some(3.0)),
            ck(20, SaveReason::Periodic, 2.0, Some(0.5)),
            ck(30, SaveReason::Periodic, 3.0, Some(1.0)),
        ];
        assert_eq!(deletions(&with_eval, None, Some(1)), vec!["checkpoint-10"]);
        // Union with keep_last.
        assert_eq!(
            deletions(&with_eval, Some(1), Some(1)),
            vec!["checkpoint-10"]
        );
        assert!(deletions(&with_eval, None, Some(3)).is_empty());
    }
}
