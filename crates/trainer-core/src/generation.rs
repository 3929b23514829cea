//! [`Generation`]: feeding tokens to a model one step at a time with a key/value cache, on the frozen weights as
//! they are stored (no merge, no f32 copy of the model), for text generation.

use crate::adapter::Adapter;
use crate::engine::{self, KvCache};
use crate::error::{Error, Result};
use crate::model::Model;

/// A model (with an optional adapter, applied unmerged) and the key/value cache of the tokens fed so far. Each
/// [`Generation::feed`] runs only the new tokens through the model, attending to the cached ones.
pub struct Generation<'a> {
    model: &'a Model,
    adapter: Option<&'a Adapter>,
    cache: KvCache,
}

impl std::fmt::Debug for Generation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("len", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Starts a generation with `adapter` (if any) applied. CPU only (the engine's path).
    pub fn generation<'a>(&'a self, adapter: Option<&'a Adapter>) -> Result<Generation<'a>> {
        if !self.device().is_cpu() {
            return Err(Error::model(
                self.source(),
                "generation with a key/value cache runs on the CPU engine; load the model on the CPU",
            ));
        }
        if let Some(a) = adapter {
            a.check_fits(self)?;
        }
        Ok(Generation {
            model: self,
            adapter,
            cache: KvCache::default(),
        })
    }
}

impl Generation<'_> {
    /// Feeds `ids` (at least one token) after the tokens fed so far and returns the logits (`vocab_size` values)
    /// of the next token after the last of them.
    pub fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.model.check_ids(ids, "ids")?;
        let cache = &mut self.cache;
        self.model.with_net(self.adapter, |net| {
            Ok(engine::decode_step(net, cache, ids)?)
        })
    }

    /// Tokens fed so far.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.cache.len() == 0
    }

    /// Bytes the key/value cache and its buffers hold.
    pub fn cache_bytes(&self) -> u64 {
        self.cache.bytes() as u64
    }
}

#[cfg(test)]
#[path = "generation_tests.rs"]
mod tests;
