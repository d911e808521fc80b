//! The serving loop's settings.

use tuili_kv::KvType;

use crate::sched::SchedConfig;

/// Settings of the serving loop.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Bytes of keys and values in the paged pool.
    pub kv_memory: usize,
    pub kv_type: KvType,
    /// Positions per block (a power of two).
    pub block_size: usize,
    pub sched: SchedConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            kv_memory: 1 << 30,
            kv_type: KvType::F16,
            block_size: 16,
            sched: SchedConfig::default(),
        }
    }
}
