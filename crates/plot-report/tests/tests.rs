//! Integration tests for `plot-report`.

// Rendering real PNGs and decoding them: size, and pixels of each series colour in the plot area.
mod render;
// Reading `training_log.jsonl` files.
mod read;
// TensorBoard event files: written, read back, damage detected.
mod tensorboard;
