//! Integration tests for `checkpoint-policy`.

// Table-driven scenarios: each row is a run and the actions expected at each step.
mod scenarios;
