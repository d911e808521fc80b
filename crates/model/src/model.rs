//! A loaded model of any architecture: its decoder (found in the registry, `arch/`), the
//! kernel set it runs with, and the forward pass through the execution layer (`exec`).

use std::path::Path;
use std::sync::Arc;

use tuili_core::ThreadPool;
use tuili_formats::{GgufFile, Load, Safetensors};
use tuili_kernels::cpu::{self, Isa};
use tuili_kv::KvCache;

use crate::arch;
use crate::batch::{Contiguous, Logits, OutRows, SeqSpan};
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::exec::{self, Decoder, Handoff, KvAccess, Observe, Reduce, Scratch};
use crate::hf::HfExtras;
use crate::shard::{check_same_model, stage_layers, Fingerprint, Shard};
use crate::weights::{GgufSource, WeightSource};
use tuili_dist::{Comm, Local};

fn shard_of(comm: &dyn Comm) -> Shard {
    Shard {
        rank: comm.rank(),
        size: comm.size(),
    }
}

/// How a model is split over the processes of a run.
#[derive(Clone)]
pub struct Split {
    /// Every process of the run.
    pub world: Arc<dyn Comm>,
    /// The tensor-parallel group this process computes in (its rank: which part of each
    /// matrix it holds).
    pub tp: Arc<dyn Comm>,
    /// The pipeline: its rank is this process's stage.
    pub pp: Arc<dyn Comm>,
    /// Layers per stage (`--layer-split`); `None`: balanced by bytes
    /// ([`crate::shard::stage_layers`]).
    pub layer_split: Option<Vec<usize>>,
    /// How the tensor-parallel all-reduce sends its parts (`--comm-type`).
    pub reduce: Reduce,
}

impl Split {
    /// One process holding the whole model.
    pub fn whole() -> Split {
        Split::tp(Arc::new(Local))
    }

    /// Tensor parallelism over all of `world`.
    pub fn tp(world: Arc<dyn Comm>) -> Split {
        Split {
            tp: world.clone(),
            world,
            pp: Arc::new(Local),
            layer_split: None,
            reduce: Reduce::F32,
        }
    }

    /// Tensor parallelism in groups of `tp` ranks, and a pipeline of `world.size() / tp`
    /// stages of them: rank `stage · tp + t` is tensor-parallel rank t of stage `stage`. The
    /// residual stream passes between the ranks of the same t, stage to stage.
    pub fn tp_pp(
        world: Arc<dyn Comm>,
        tp: usize,
        layer_split: Option<Vec<usize>>,
    ) -> Result<Split, ModelError> {
        let (rank, size) = (world.rank(), world.size());
        if tp == 0 || !size.is_multiple_of(tp) {
            return Err(ModelError::Dist(tuili_dist::DistError::Launch(format!(
                "{size} processes do not make stages of {tp} tensor-parallel ranks"
            ))));
        }
        let tp_group = world.split(rank / tp)?;
        let pp_group = world.split(rank % tp)?;
        Ok(Split {
            world,
            tp: tp_group,
            pp: pp_group,
            layer_split,
            reduce: Reduce::F32,
        })
    }

    /// Pipeline parallelism over all of `world` (a stage per rank).
    pub fn pp(world: Arc<dyn Comm>, layer_split: Option<Vec<usize>>) -> Split {
        Split {
            pp: world.clone(),
            world,
            tp: Arc::new(Local),
            layer_split,
            reduce: Reduce::F32,
        }
    }

    /// The same split, its all-reduce sent as `reduce`.
    pub fn with_reduce(self, reduce: Reduce) -> Split {
        Split { reduce, ..self }
    }
}

/// Binds this rank's part of the model; in a group, checks first that every rank opened the
/// same model; then, in a pipeline, keeps this stage's layers.
fn bind_checked(
    bind: arch::BindFn,
    cfg: ModelConfig,
    src: &dyn WeightSource,
    split: &Split,
) -> Result<Box<dyn Decoder>, ModelError> {
    let (world, label) = (&*split.world, src.label());
    if split.reduce == Reduce::Q8_0 && !cfg.n_embd.is_multiple_of(32) {
        return Err(ModelError::Shard {
            path: label,
            size: split.tp.size(),
            reason: format!(
                "a Q8_0 all-reduce needs rows of whole 32-value blocks, and n_embd is {}",
                cfg.n_embd
            ),
        });
    }
    let mut dec = if world.size() == 1 {
        bind(cfg, src, Shard::WHOLE)?
    } else {
        let f = Fingerprint::new(src, &cfg);
        let dec = bind(cfg, &f, shard_of(&*split.tp));
        // Every rank takes part in the check, also one that could not bind (its own error
        // then comes first).
        let same = check_same_model(world, f.value(), &label);
        let dec = dec?;
        same.map(|()| dec)?
    };
    let pp = &*split.pp;
    if pp.size() > 1 {
        let c = dec.config();
        let out = dec.output().bytes();
        let layers = dec.matrices().iter().map(|m| m.bytes()).sum::<usize>() - out;
        let ranges = stage_layers(
            c.n_layer,
            pp.size(),
            split.layer_split.as_deref(),
            layers / c.n_layer.max(1),
            out,
        )
        .map_err(|reason| ModelError::Shard {
            path: label.clone(),
            size: pp.size(),
            reason,
        })?;
        dec.keep_layers(ranges[pp.rank()].clone());
    }
    if world.size() > 1 {
        // Each rank's parts of the shared file in mapping areas of their own: the kernel
        // maps no neighbouring rank's pages around them.
        for m in dec.matrices() {
            m.keep_mapped();
        }
    }
    Ok(dec)
}

/// A loaded model: views of its weights in the mapped file(s), bound by its architecture's
/// decoder. Holds no per-request state: the KV cache and the scratch buffers are the caller's.
pub struct Model {
    dec: Box<dyn Decoder>,
    /// How the model is split over the run's processes (alone: all `Local`).
    split: Split,
    /// The file or folder the weights come from.
    label: String,
    /// Kernel set, detected at load; tests switch it to compare against the scalar twins.
    isa: Isa,
}

impl Model {
    /// Binds a GGUF model of any supported architecture, checking names, shapes and types.
    pub fn load(file: Arc<GgufFile>) -> Result<Model, ModelError> {
        Model::load_split(file, Split::whole())
    }

    /// [`Model::load`] for one rank of a tensor-parallel group: binds this rank's part of
    /// every matrix ([`crate::shard`]); every rank of `comm` must load the same model and run
    /// the same forward passes.
    pub fn load_tp(file: Arc<GgufFile>, comm: Arc<dyn Comm>) -> Result<Model, ModelError> {
        Model::load_split(file, Split::tp(comm))
    }

    /// [`Model::load`] for one process of a run split as `split` says (tensor parallelism,
    /// a pipeline stage); every process of the run must load the same model and run the same
    /// forward passes.
    pub fn load_split(file: Arc<GgufFile>, split: Split) -> Result<Model, ModelError> {
        let label = file.path().display().to_string();
        if file.tensors.is_empty() {
            return Err(ModelError::NoWeights { path: label });
        }
        let a = arch::of_gguf(&file)?;
        let cfg = ModelConfig::from_gguf(&file, a.arch)?;
        let dec = bind_checked(a.bind, cfg, &GgufSource(file), &split)?;
        Ok(Model::new(dec, label, split))
    }

    /// [`Model::load`] with the tensors `src` gives (the file's, some replaced: a model
    /// being pruned), alone.
    pub(crate) fn load_from(file: &GgufFile, src: &dyn WeightSource) -> Result<Model, ModelError> {
        let a = arch::of_gguf(file)?;
        let cfg = ModelConfig::from_gguf(file, a.arch)?;
        let split = Split::whole();
        let dec = bind_checked(a.bind, cfg, src, &split)?;
        Ok(Model::new(dec, src.label(), split))
    }

    /// Loads a Hugging Face model folder (`config.json`, safetensors shards), its weights
    /// mapped or read into memory ([`Load`]); also returns what the configs say beyond the
    /// shape.
    pub fn load_hf(dir: &Path, how: Load) -> Result<(Model, HfExtras), ModelError> {
        Model::load_hf_split(dir, how, Split::whole())
    }

    /// [`Model::load_hf`] for one rank of a tensor-parallel group (see [`Model::load_tp`]).
    pub fn load_hf_tp(
        dir: &Path,
        how: Load,
        comm: Arc<dyn Comm>,
    ) -> Result<(Model, HfExtras), ModelError> {
        Model::load_hf_split(dir, how, Split::tp(comm))
    }

    /// [`Model::load_hf`] for one process of a split run (see [`Model::load_split`]).
    pub fn load_hf_split(
        dir: &Path,
        how: Load,
        split: Split,
    ) -> Result<(Model, HfExtras), ModelError> {
        let (a, cfg, extras) = arch::of_hf(dir)?;
        let st = Safetensors::open_dir_with(dir, how)?;
        let src = (a.hf_source)(st, &cfg, &extras);
        let dec = bind_checked(a.bind, cfg, &*src, &split)?;
        Ok((Model::new(dec, src.label(), split), extras))
    }

    fn new(dec: Box<dyn Decoder>, label: String, split: Split) -> Model {
        Model {
            dec,
            split,
            label,
            isa: cpu::detect(),
        }
    }

    /// What this process computes with: the model's configuration, under tensor parallelism
    /// with this rank's heads and hidden units (the vocabulary is always whole), in a
    /// pipeline with this stage's layers (`n_layer` of them from `first_layer`).
    pub fn config(&self) -> &ModelConfig {
        self.dec.config()
    }

    /// Every process of the run (what the front ends broadcast over).
    pub fn comm(&self) -> &dyn Comm {
        &*self.split.world
    }

    /// How the model is split over the run's processes.
    pub fn split(&self) -> &Split {
        &self.split
    }

    /// This process's place in its tensor-parallel group.
    pub fn shard(&self) -> Shard {
        shard_of(&*self.split.tp)
    }

    /// The file or folder the weights come from.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The kernel set in use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Chooses the kernel set (at most what this CPU supports): for comparisons with the
    /// scalar reference.
    pub fn set_isa(&mut self, isa: Isa) {
        self.isa = isa.min(cpu::detect());
    }

    /// The most positions a sequence may hold: `n_ctx`, or less where the architecture
    /// limits positions (GPT-2's learned ones).
    pub fn max_context(&self, n_ctx: usize) -> usize {
        self.dec.max_positions().map_or(n_ctx, |m| n_ctx.min(m))
    }

    /// A KV cache sized for this model and `n_ctx` positions (at most
    /// [`Model::max_context`]).
    pub fn new_cache(&self, n_ctx: usize) -> Result<KvCache, ModelError> {
        let c = self.config();
        Ok(KvCache::new(
            c.n_layer,
            self.max_context(n_ctx),
            c.kv_dim(),
        )?)
    }

    /// Bytes of weights read by one decode step (every matrix once, the embedding row aside).
    pub fn weight_bytes_per_token(&self) -> usize {
        self.dec.matrices().iter().map(|m| m.bytes()).sum()
    }

    /// Runs `tokens` at positions `kv.len()…` of one sequence, appends their keys and values
    /// to `kv`, and returns the requested logits (`[n_out, n_vocab]`).
    pub fn forward<'s>(
        &self,
        tokens: &[u32],
        kv: &mut KvCache,
        scratch: &'s mut Scratch,
        which: Logits,
        pool: &ThreadPool,
    ) -> Result<&'s [f32], ModelError> {
        self.forward_one(tokens, kv, scratch, which, pool, None)
    }

    /// Runs `tokens` as [`Model::forward`] does, without logits, showing every matrix
    /// product's input to `observe` (a pruning method's calibration).
    pub fn observe(
        &self,
        tokens: &[u32],
        kv: &mut KvCache,
        scratch: &mut Scratch,
        observe: &mut (dyn Observe + 'static),
        pool: &ThreadPool,
    ) -> Result<(), ModelError> {
        self.forward_one(tokens, kv, scratch, Logits::None, pool, Some(observe))
            .map(|_| ())
    }

    /// One sequence's tokens through the model, their keys and values appended to `kv`.
    fn forward_one<'s>(
        &self,
        tokens: &[u32],
        kv: &mut KvCache,
        scratch: &'s mut Scratch,
        which: Logits,
        pool: &ThreadPool,
        observe: Option<&mut (dyn Observe + 'static)>,
    ) -> Result<&'s [f32], ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::EmptyBatch);
        }
        let n = tokens.len();
        let spans = [SeqSpan {
            start: 0,
            len: n,
            pos0: kv.len(),
        }];
        let ctx = kv.capacity();
        let n_kv_head = self.config().n_head_kv;
        let logits = exec::forward(
            &*self.dec,
            &*self.split.tp,
            self.split.reduce,
            &*self.split.pp,
            Handoff::Lockstep,
            which.top(),
            self.isa,
            tokens,
            &spans,
            &mut Contiguous { kv, n_kv_head },
            ctx,
            scratch,
            which.rows(n),
            pool,
            observe,
        )?;
        kv.commit(n)?;
        Ok(logits)
    }

    /// Keeps only the first `n` layers (a calibration run that needs no more).
    pub fn keep_first_layers(&mut self, n: usize) {
        self.dec.keep_layers(0..n.min(self.config().n_layer));
    }

    /// Runs a batch of several sequences' tokens (`spans` say whose and at which positions)
    /// through the model: every weight matrix is read once for the whole batch. Keys and
    /// values go to `cache` (a [`crate::KvTarget`] such as a paged pool's batch); returns the logits of the `out` tokens (`[out.len(), n_vocab]`).
    /// `max_ctx` bounds the positions any sequence reaches (scratch sizing). Under pipeline
    /// parallelism, `handoff` says who passes results on ([`Handoff`]); `top`: only the
    /// largest `top` logits of each row must be right ([`Logits::LastTop`]).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_spans<'s>(
        &self,
        handoff: Handoff,
        top: Option<usize>,
        tokens: &[u32],
        spans: &[SeqSpan],
        cache: &mut dyn KvAccess,
        max_ctx: usize,
        scratch: &'s mut Scratch,
        out: OutRows,
        pool: &ThreadPool,
    ) -> Result<&'s [f32], ModelError> {
        exec::forward(
            &*self.dec,
            &*self.split.tp,
            self.split.reduce,
            &*self.split.pp,
            handoff,
            top,
            self.isa,
            tokens,
            spans,
            cache,
            max_ctx,
            scratch,
            out,
            pool,
            None,
        )
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("label", &self.label)
            .field("config", self.config())
            .finish()
    }
}
