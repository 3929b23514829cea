//! Pure checkpoint and stopping decisions for a training run.
//!
//! After every optimizer step the trainer hands the [`Policy`] an [`Event`] (step, epoch, losses,
//! pending user requests) and carries out the [`Action`]s it returns: save a checkpoint folder (the
//! [`SaveReason`] names it), delete one (retention), or stop. At the end it calls
//! [`Policy::finish`] for the final save. The policy never touches files, prints or reads a clock,
//! so every rule is table-testable, and its whole state serializes for exact resume.
//!
//! The rules (all optional, all changeable mid-run with [`Policy::update`]; steps are optimizer
//! steps): periodic saves every `n` steps, gated until the loss first drops under a value; the
//! original's loss-threshold saves, repeated on each real improvement (10% relative by default, the
//! original's absolute 0.09 as an option); epoch-end saves including the last; best-eval saves;
//! save-now; stop at a (smoothed) loss, at an epoch, on a non-finite loss, or on request;
//! keep-last-k and keep-best-k retention. `docs/checkpoints.md` explains each and what was fixed.
//!
//! ```
//! use checkpoint_policy::{Action, Event, LossSave, Policy, SaveReason, Settings, StopReason};
//!
//! let mut policy = Policy::new(Settings {
//!     save_every: Some(2),
//!     loss_save: Some(LossSave { threshold: 1.5, patience: 1, ..LossSave::default() }),
//!     stop_at_loss: Some(1.0),
//!     ..Settings::default()
//! })?;
//! let actions = policy.decide(&Event::new(2, 0.5, 2.0));
//! assert_eq!(actions, vec![Action::Save { reason: SaveReason::Periodic, name: "checkpoint-2".into() }]);
//! let actions = policy.decide(&Event::new(3, 0.75, 1.4));
//! assert_eq!(actions, vec![Action::Save { reason: SaveReason::Loss, name: "checkpoint-3-loss-1.40".into() }]);
//! let actions = policy.decide(&Event::new(4, 1.0, 0.9).with_epoch_end());
//! assert_eq!(actions[0], Action::Save { reason: SaveReason::Loss, name: "checkpoint-4-loss-0.90".into() });
//! assert_eq!(actions[1], Action::Stop { reason: StopReason::AtLoss });
//! assert_eq!(policy.finish(4, 1.0, 0.9), vec![]); // step 4 is saved and the run already stopped
//!
//! // Resume exactly: the policy is plain serde data.
//! let json = serde_json::to_string(&policy).unwrap();
//! let restored: Policy = serde_json::from_str(&json).unwrap();
//! assert_eq!(restored, policy);
//! # Ok::<(), checkpoint_policy::Error>(())
//! ```

mod error;
mod event;
mod policy;
mod retention;
mod settings;

pub use error::Error;
pub use event::{Action, Checkpoint, Event, SaveReason, StopReason};
pub use policy::Policy;
pub use settings::{Improvement, LossSave, Settings};
