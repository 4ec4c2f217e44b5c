"""The backbone: a Hugging Face T5 encoder-decoder, with the knowledge tree mask on the encoder.

``transformers`` 5 takes a 4-D boolean mask [B, 1, L, L] on T5's encoder self-attention; the
decoder's cross-attention needs the plain 2-D padding mask. So we run the encoder ourselves and
hand ``encoder_outputs`` to the decoder, in training and in decoding alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import MethodType

import torch
from transformers import AttentionInterface, T5Config, T5ForConditionalGeneration
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.t5.modeling_t5 import T5Attention, T5DenseActDense

from kp4sr import tree_blocks
from kp4sr.errors import ConfigError
from kp4sr.tree_mask import ROOT, encoder_mask

log = logging.getLogger(__name__)

# From-scratch sizes. ``t5-small`` is the paper's shape; ``tiny`` is what CPU tests afford.
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(d_model=128, d_ff=512, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=32),
    "small": dict(d_model=256, d_ff=1024, num_layers=4, num_decoder_layers=4, num_heads=4, d_kv=64),
    "t5-small": dict(
        d_model=512, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8, d_kv=64
    ),
}


# The attention implementation our models run (registered with transformers below).
ATTENTION = "kp4sr_sdpa"
# When the encoder computes tree-masked attention group by group (kp4sr.tree_blocks): "auto"
# where it measured faster (a CPU), or always, or never. Kept in the model's config.
TREE_BLOCKS = ("auto", "on", "off")
# What the decoder's cross-attention reads: every encoder token, or the MPP's tokens only.
CROSS_ATTENTION = ("all", "mpp")
# Training precision: "auto" is bf16 autocast on a GPU and fp32 on a CPU; "bf16" and "fp32" force
# one. Weights, optimizer state and evaluation stay fp32 either way.
PRECISIONS = ("auto", "fp32", "bf16")


def kp4sr_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_bias: torch.Tensor | None = None,
    kp4sr_shared: dict[str, torch.Tensor] | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """T5 attention through PyTorch SDPA (as ``transformers``' ``sdpa``), with three shortcuts.

    - Encoder self-attention under the tree mask, when :func:`encode` put a plan in
      ``kp4sr_shared["blocks"]`` (by default on a CPU): attention group by group, each history
      item's knowledge only against its own subtree (:mod:`kp4sr.tree_blocks`).
    - Otherwise, encoder self-attention under a 4-D mask (without PD, or on a GPU): every
      layer adds the same relative position bias [1, H, L, L] to the same boolean mask
      [B, 1, L, L]. ``transformers`` rebuilds that [B, H, L, L] float mask in every layer with a
      three-way broadcast ``where``, which costs more than the attention itself for a small
      model on a CPU. Here the additive 0 / dtype-min mask and the contiguous bias are made once
      per forward and kept in ``kp4sr_shared`` (a dict :func:`encode` passes for one call);
      their sum has the bias wherever a token may attend, as before. It is built once for the
      batch, except in evaluation on a CPU: there it is built per sample, just before that
      sample's attention, so that its 4 MB (H=4, L=512) are still in cache when SDPA reads them
      (faster there in our measurements at 512 tokens; with gradients the batched call measured
      faster). ``kp4sr_shared["per_sample"]`` overrides the choice; the tests check both.
    - Beam search: the K beams of a user ask cross-attention queries [B*K, H, T, d] of one copy
      of that user's encoder keys [B, H, L, d] (see :func:`kp4sr.decoding.beam_search`). The
      beams are folded into the query length, so the keys are never copied K times. T5's
      cross-attention has no position bias, so nothing else changes.
    """
    if query.shape[0] != key.shape[0]:
        return _beams_folded(module, query, key, value, attention_mask, scaling)
    blocks = None if kp4sr_shared is None else kp4sr_shared.get("blocks")
    if blocks is not None and position_bias is not None and query.shape[2] == key.shape[2]:
        if "block_masks" not in kp4sr_shared:
            kp4sr_shared["block_masks"] = tree_blocks.masks(blocks, position_bias)
        masks = kp4sr_shared["block_masks"]
        return tree_blocks.attention(query, key, value, blocks, masks, scaling, dropout), None
    if (
        kp4sr_shared is not None
        and position_bias is not None
        and attention_mask is not None
        and attention_mask.dtype == torch.bool
        and query.shape[2] == key.shape[2]
    ):
        if "additive" not in kp4sr_shared:
            kp4sr_shared["additive"] = additive_mask(attention_mask, position_bias.dtype)
            kp4sr_shared["bias"] = position_bias.contiguous()  # T5's bias is a permuted view
        additive, bias = kp4sr_shared["additive"], kp4sr_shared["bias"]
        sdpa = torch.nn.functional.scaled_dot_product_attention
        cpu_eval = query.device.type == "cpu" and not torch.is_grad_enabled()
        if not kp4sr_shared.get("per_sample", cpu_eval):
            if "mask" not in kp4sr_shared:
                kp4sr_shared["mask"] = additive + bias
            mask = kp4sr_shared["mask"]
            out = sdpa(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
            return out.transpose(1, 2).contiguous(), None
        b, h, length, d = query.shape
        out = query.new_empty(b, length, h, d)
        for k in range(b):
            one = slice(k, k + 1)
            o = sdpa(
                query[one],
                key[one],
                value[one],
                attn_mask=additive[one] + bias,
                dropout_p=dropout,
                scale=scaling,
            )
            out[k] = o[0].transpose(0, 1)
        return out, None
    return sdpa_attention_forward(
        module,
        query,
        key,
        value,
        attention_mask,
        dropout=dropout,
        scaling=scaling,
        position_bias=position_bias,
        **kwargs,
    )


def _beams_folded(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
) -> tuple[torch.Tensor, None]:
    """Cross-attention of [B*K, H, T, d] queries (K beams per user, beams of a user adjacent)
    to [B, H, L, d] keys: one SDPA call on [B, H, K*T, d] queries."""
    if getattr(module, "has_relative_attention_bias", False) or query.shape[0] % key.shape[0]:
        raise ValueError("beams can be folded only into T5 cross-attention (no position bias)")
    b, (bk, h, t, d) = key.shape[0], query.shape
    k = bk // b
    q = query.reshape(b, k, h, t, d).transpose(1, 2).reshape(b, h, k * t, d)
    mask = None
    if attention_mask is not None:  # [B*K, 1, T, L]: the same padding mask for every beam
        mask = attention_mask[::k, :, :1, :]
    out = torch.nn.functional.scaled_dot_product_attention(
        q, key, value, attn_mask=mask, scale=scaling
    )  # [B, H, K*T, d]
    return out.reshape(b, h, k, t, d).permute(0, 2, 3, 1, 4).reshape(bk, t, h, d), None


AttentionInterface.register(ATTENTION, kp4sr_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def use_fast_paths(model: T5ForConditionalGeneration) -> T5ForConditionalGeneration:
    """Switch a T5 (ours or a loaded checkpoint) to :func:`kp4sr_attention`; its feed-forward
    ReLU to work in place (on the output of ``wi``, which backward does not need: one [B, L,
    d_ff] tensor fewer to allocate and fill per layer); and its relative position bias to
    :func:`toeplitz_bias`. Same numbers. Its dropout layers become :class:`FastDropout`: the
    same distribution from cheaper random bits on a CPU (other masks than ``nn.Dropout``'s)."""
    model.set_attn_implementation(ATTENTION)
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is torch.nn.Dropout:
                setattr(module, name, FastDropout(child.p, child.inplace))
        if isinstance(module, T5DenseActDense) and type(module.act) is torch.nn.ReLU:
            module.act = torch.nn.ReLU(inplace=True)
        if isinstance(module, T5Attention) and module.has_relative_attention_bias:
            module.compute_bias = MethodType(toeplitz_bias, module)
    return model


class FastDropout(torch.nn.Dropout):
    """``nn.Dropout`` whose training mask, on a CPU, comes from 16-bit slices of 64-bit random
    words: one draw of the generator per four elements instead of one Bernoulli draw each.

    With it a CPU training step of the tiny T5 at ML-100k's setting ran 1.10-1.17x faster than
    with ``nn.Dropout`` (``benchmarks/precision.py``). Each element is kept with probability
    ``1 - p`` rounded to 1/65,536 (independent 16-bit lanes of the generator's words), kept
    values scaled by ``1 / (1 - p)``; the same seeded torch generator, so runs stay reproducible
    and resumable. On a GPU and in evaluation it is ``nn.Dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.device.type != "cpu" or not 0.0 < self.p < 1.0:
            return super().forward(x)
        return x.mul_(keep_mask(x, self.p)) if self.inplace else x * keep_mask(x, self.p)


def use_torch_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Put ``nn.Dropout`` back where :func:`use_fast_paths` put :class:`FastDropout` (stock
    references in tests and benchmarks)."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is FastDropout:
                setattr(module, name, torch.nn.Dropout(child.p, child.inplace))
    return model


def keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """A dropout mask shaped like ``x`` (in its dtype): 0 with probability ``p`` (to 1/65,536),
    else ``1 / (1 - p)``."""
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    lanes = words.view(torch.int16)[:n].view(x.shape)  # uniform on [-32768, 32767]
    keep = lanes >= round(p * 65536) - 32768
    return keep.to(x.dtype).mul_(1.0 / (1.0 - p))


def toeplitz_bias(
    module: T5Attention,
    query_length: int,
    key_length: int,
    device: torch.device | None = None,
    past_seen_tokens: int = 0,
) -> torch.Tensor:
    """T5's relative position bias [1, H, Lq, Lk], as ``T5Attention.compute_bias`` gives it.

    The bias depends only on key - query position, so the bucket function (logs) and the
    embedding run on the Lq + Lk - 1 distinct offsets instead of on all Lq x Lk pairs, and one
    gather spreads them over the square: at 512 tokens a few times cheaper than T5's own,
    forward and backward, with the same values."""
    emb = module.relative_attention_bias
    device = emb.weight.device if device is None else device
    first = -(query_length - 1 + past_seen_tokens)  # the smallest key - query offset
    offsets = torch.arange(first, key_length - past_seen_tokens, device=device)
    buckets = module._relative_position_bucket(
        offsets,
        bidirectional=not module.is_decoder,
        num_buckets=module.relative_attention_num_buckets,
        max_distance=module.relative_attention_max_distance,
    )
    per_offset = emb(buckets).t()  # [H, Lq + Lk - 1]
    q = torch.arange(query_length, device=device)[:, None]
    k = torch.arange(key_length, device=device)[None, :]
    index = (k - q + (query_length - 1)).reshape(-1)
    return per_offset.index_select(1, index).view(1, -1, query_length, key_length)


def is_preset(backbone: str) -> bool:
    return backbone in SIZES


def check_backbone(backbone: str) -> None:
    """A preset, an existing local folder, or a hub name (``org/name``, used where online)."""
    if is_preset(backbone) or Path(backbone).is_dir():
        return
    looks_like_path = backbone.startswith((".", "/", "~")) or Path(backbone).suffix != ""
    if looks_like_path or backbone.count("/") > 1:
        raise ConfigError(
            f"--backbone {backbone!r} is neither a size preset ({', '.join(SIZES)}) nor a local "
            "Hugging Face T5 checkpoint folder"
        )


def build_model(
    backbone: str,
    vocab_size: int,
    pad_id: int,
    eos_id: int,
    dropout: float = 0.1,
    tie_embeddings: bool = False,
) -> T5ForConditionalGeneration:
    """A T5 at a size preset initialised from scratch, or loaded from a local checkpoint folder.

    In ``transformers`` 5 a T5's output layer is always its input embedding (``T5Config``
    forces ``tie_word_embeddings``; the flag passed only sets ``scale_decoder_outputs``), so
    ``tie_embeddings`` chooses the original T5's d_model^-0.5 scaling of the decoder output
    before the logits (True) or none (False, the default).
    A loaded checkpoint's embeddings are resized to ``vocab_size`` (item tokens added).
    """
    if is_preset(backbone):
        cfg = T5Config(
            vocab_size=vocab_size,
            dropout_rate=dropout,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
            decoder_start_token_id=pad_id,
            tie_word_embeddings=tie_embeddings,
            feed_forward_proj="relu",
            **SIZES[backbone],
        )
        model = T5ForConditionalGeneration(cfg)
        std = cfg.d_model**-0.5
        # T5 initialises embeddings with std 1: AdamW (steps ~lr) then needs thousands of
        # updates per token to move an item's embedding, and items are rare tokens. Every
        # T5 layer starts with an RMS norm, so a smaller scale changes nothing else.
        model.shared.weight.data.normal_(0.0, std)
        if not tie_embeddings:
            # lm_head.weight *is* shared.weight, so this draws the same tensor again; kept so
            # that seeded runs still reproduce the results published before we noticed
            model.lm_head.weight.data.normal_(0.0, std)
        return use_fast_paths(model)
    check_backbone(backbone)
    try:
        model = T5ForConditionalGeneration.from_pretrained(backbone)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load a T5 checkpoint from {backbone}: {e}") from None
    if model.get_input_embeddings().num_embeddings < vocab_size:
        model.resize_token_embeddings(vocab_size)
    return use_fast_paths(model)


@dataclass
class Batch:
    """A padded batch: encoder inputs, the knowledge tree, and (in training) the target IDs."""

    input_ids: torch.Tensor  # [B, L]
    node_of_token: torch.Tensor  # [B, L], PAD_NODE on padding
    parents: torch.Tensor  # [B, n_nodes], padded with ROOT_PARENT
    labels: torch.Tensor | None = None  # [B, T], -100 on padding
    # [B, vocab] bool, training only: first-token logits left out of the softmax (the items the
    # user had before the target, with --train-exclude-seen)
    exclude: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(
            self.input_ids.to(device, non_blocking=True),
            self.node_of_token.to(device, non_blocking=True),
            self.parents.to(device, non_blocking=True),
            move(self.labels),
            move(self.exclude),
        )


# The recency embedding (``--recency-embeddings``): its module's name on the T5 model, whose
# weights save as ``RECENCY.weight`` beside T5's own, and the model config key of its slots.
RECENCY = "kp4sr_recency"


def add_recency(model: T5ForConditionalGeneration, slots: int) -> T5ForConditionalGeneration:
    """Give ``model`` a learned embedding per history position counted from the end (1 = the
    most recent item, .., ``slots``), added to the input embeddings of each history item's ID
    tokens in the MPP (:func:`recency_slots`).

    Why: T5 sees only relative token distances, and our T5 ranks the same whether the history
    is in time order, reversed or shuffled, where SASRec, with a learned embedding per
    position, loses under reversal (research log, try 37). Zero-initialised, so a warm start
    begins exactly as the earlier run's model."""
    table = torch.nn.Embedding(slots + 1, model.config.d_model, padding_idx=0)
    torch.nn.init.zeros_(table.weight)
    setattr(model, RECENCY, table.to(model.device))
    model.config.kp4sr_recency = slots
    return model


# The knowledge-aware item embeddings (``--item-knowledge``): the module's name on the T5
# model (its weights and pairs save beside T5's own) and the model config key of its size.
ITEM_KNOWLEDGE = "kp4sr_item_knowledge"


class ItemKnowledge(torch.nn.Module):
    """A vector per KG attribute (a tail entity that several items share: a genre, a director,
    an actor) and which item tokens have which attributes (``rows``, ``attrs``: one entry per
    pair, saved with the weights so that a run folder needs no dataset to rebuild it).

    :meth:`vectors` is each token's mean attribute vector (zero for tokens without any).
    :func:`add_item_knowledge` adds it to the item tokens' input embeddings and to their output
    embedding, so an item's tied vector becomes "its ID plus what the KG says of it", as in
    the input and output layers of a knowledge-aware SASRec (``BaselineConfig.item_knowledge``).
    """

    def __init__(
        self, n_attrs: int, d_model: int, vocab: int, rows: torch.Tensor, attrs: torch.Tensor
    ):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(max(1, n_attrs), d_model))  # zero: a warm
        # start begins exactly as its base
        self.register_buffer("rows", rows.long())
        self.register_buffer("attrs", attrs.long())
        counts = torch.bincount(rows.long(), minlength=vocab).clamp(min=1)
        self.register_buffer("inv_counts", 1.0 / counts.float(), persistent=False)
        self.vocab = vocab

    def vectors(self) -> torch.Tensor:
        """[vocab, d] each token's mean attribute vector."""
        out = self.weight.new_zeros(self.vocab, self.weight.shape[1])
        out = out.index_add(0, self.rows, self.weight[self.attrs])
        return out * self.inv_counts[:, None].to(out.dtype)


def add_item_knowledge(
    model: T5ForConditionalGeneration, rows: torch.Tensor, attrs: torch.Tensor, n_attrs: int
) -> T5ForConditionalGeneration:
    """Give ``model`` knowledge-aware item embeddings (:class:`ItemKnowledge`): token ``rows[k]``
    has attribute ``attrs[k]``.

    Hooks on the shared embedding (encoder and decoder inputs) and on the output layer add each
    token's mean attribute vector to its embedding and the matching term to its logit. Why:
    the knowledge prompts tell the encoder about the history items only, while the items to
    rank are scored by their ID vectors alone, which know nothing of the KG; a knowledge-aware
    SASRec gains from exactly this (research log, try 40)."""
    vocab = model.get_input_embeddings().num_embeddings
    table = ItemKnowledge(n_attrs, model.config.d_model, vocab, rows, attrs).to(model.device)
    setattr(model, ITEM_KNOWLEDGE, table)
    model.config.kp4sr_item_knowledge = int(table.weight.shape[0])

    def embed_hook(_mod: torch.nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        return out + table.vectors().to(out.dtype)[inputs[0]]

    def head_hook(_mod: torch.nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        h = inputs[0]
        return out + h @ table.vectors().to(h.dtype).T

    # T5's encoder and decoder hold embedding modules of their own (sharing the weight), so
    # each gets the hook: on ``model.shared`` alone it would reach neither stack's input
    inputs = [model.get_input_embeddings()]
    inputs += [
        model.get_encoder().get_input_embeddings(),
        model.get_decoder().get_input_embeddings(),
    ]
    for module in {id(m): m for m in inputs}.values():
        module.register_forward_hook(embed_hook)
    model.get_output_embeddings().register_forward_hook(head_hook)
    return model


def recency_slots(node_of_token: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
    """[B, L] each token's recency slot: for the tokens of history item node j (1..K, oldest
    first, as the prompt builder numbers them) K - j + 1, so the most recent item is 1 however
    long the history; 0 for every other token (the MPP's words, knowledge, padding)."""
    k = (parents == ROOT).sum(1, keepdim=True)  # item nodes are the root's children
    is_item = (node_of_token >= 1) & (node_of_token <= k)
    return torch.where(is_item, k - node_of_token + 1, torch.zeros_like(node_of_token))


def set_tree_blocks(model: T5ForConditionalGeneration, mode: str) -> None:
    """Choose when :func:`encode` uses tree blocks for this model: one of ``TREE_BLOCKS``."""
    if mode not in TREE_BLOCKS:
        raise ValueError(f"tree blocks {mode!r}: expected one of {', '.join(TREE_BLOCKS)}")
    model.config.kp4sr_tree_blocks = mode


def train_in_bf16(precision: str, device: torch.device) -> bool:
    """Whether training runs under bf16 autocast. On a CPU only when asked: it measured about
    1.3-1.4x faster per step on an AVX-512 BF16 CPU; where the CPU has no bf16 instructions
    oneDNN emulates them and it may well be slower than fp32 (not measured here; warned)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return device.type == "cuda"
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        log.warning("--precision bf16: this CPU has no bf16 instructions, it may be slower")
    return precision == "bf16"


def cpu_has_bf16() -> bool:
    """Whether oneDNN finds bf16 instructions (AVX-512 BF16 or AMX) on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def encode(
    model: T5ForConditionalGeneration,
    batch: Batch,
    tree_mask: bool,
    blocks: bool | None = None,
) -> BaseModelOutput:
    """Run the encoder under the knowledge tree mask (or full attention without PD).

    ``blocks``: compute the tree-masked attention group by group (:mod:`kp4sr.tree_blocks`)
    instead of over the whole L x L square. By default as :func:`set_tree_blocks` chose for the
    model, else "auto": where it measured faster, on a CPU, for training and evaluation alike
    (not measured on a GPU, so off there); only ever under our attention. Outputs at padding
    positions are then zero instead of (unused) noise.
    """
    attn = model.get_encoder().config._attn_implementation
    if blocks is None:
        mode = getattr(model.config, "kp4sr_tree_blocks", "auto")
        cpu = batch.input_ids.device.type == "cpu"
        blocks = attn == ATTENTION and (mode == "on" or (mode == "auto" and cpu))
    elif blocks and attn != ATTENTION:
        raise ValueError(f"tree blocks need the {ATTENTION} attention, not {attn}")
    shared: dict = {}  # what every layer shares, built by the first (kp4sr_attention)
    mask4d = None
    if blocks and tree_mask:  # the plan replaces the [B, 1, L, L] mask
        plan = tree_blocks.plan(batch.node_of_token.cpu(), batch.parents.cpu())
        shared["blocks"] = plan.to(batch.input_ids.device)
    else:
        mask4d = encoder_mask(batch.node_of_token, batch.parents, tree=tree_mask)
        if attn == "eager":
            # transformers' eager T5 adds the mask to the scores: booleans would add 0 and 1
            mask4d = additive_mask(mask4d, model.dtype)
    inputs: dict[str, torch.Tensor] = {"input_ids": batch.input_ids}
    recency = getattr(model, RECENCY, None)
    if recency is not None:
        slots = recency_slots(batch.node_of_token, batch.parents)
        slots = slots.clamp(max=recency.num_embeddings - 1)  # older than the table: its last
        embeds = model.get_input_embeddings()(batch.input_ids) + recency(slots)
        inputs = {"inputs_embeds": embeds}
    return model.get_encoder()(
        **inputs,
        attention_mask=mask4d,
        return_dict=True,
        kp4sr_shared=shared,
    )


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean attention mask (True = may attend) as the 0 / dtype-min float mask that is
    added to attention scores."""
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, torch.finfo(dtype).min)


def padding_mask(batch: Batch) -> torch.Tensor:
    """[B, L] 1 on real tokens."""
    return (batch.node_of_token >= 0).long()


def set_cross_attention(model: T5ForConditionalGeneration, mode: str) -> None:
    """What the decoder reads of the encoder's output: one of ``CROSS_ATTENTION``."""
    if mode not in CROSS_ATTENTION:
        raise ValueError(f"cross attention {mode!r}: expected one of {', '.join(CROSS_ATTENTION)}")
    model.config.kp4sr_cross_attention = mode


def cross_mask(model: T5ForConditionalGeneration, batch: Batch) -> torch.Tensor:
    """[B, L] the decoder's cross-attention mask, 1 where it may read the encoder's output.

    ``all`` (the default): every real token. ``mpp``: the MPP's tokens only (the root's, with
    the closing ``</s>``, and the history items' IDs), so knowledge reaches the decoder only
    through the item ID tokens that attended to it in the encoder, not as tokens of its own."""
    real = batch.node_of_token >= 0
    if getattr(model.config, "kp4sr_cross_attention", "all") == "all":
        return real.long()
    node = batch.node_of_token.clamp(min=0)
    parent = batch.parents.gather(1, node)  # the root's parent is ROOT_PARENT, an item's 0
    return (real & ((node == 0) | (parent == 0))).long()


def loss(model: T5ForConditionalGeneration, batch: Batch, tree_mask: bool) -> torch.Tensor:
    """Cross-entropy of the target item's ID tokens (and </s>).

    With ``batch.exclude`` the first token's softmax runs over the tokens not excluded only:
    the ranking never offers an item the user already had, so the loss need not teach the model
    to push those items down from a five-item window that cannot show most of them.
    """
    enc = encode(model, batch, tree_mask)
    if batch.exclude is None:
        out = model(
            encoder_outputs=enc,
            attention_mask=cross_mask(model, batch),
            labels=batch.labels,
            return_dict=True,
        )
        return out.loss
    logits = model(
        encoder_outputs=enc,
        attention_mask=cross_mask(model, batch),
        decoder_input_ids=model._shift_right(batch.labels),
        return_dict=True,
    ).logits
    first = logits[:, 0].masked_fill(batch.exclude, float("-inf"))
    logits = torch.cat([first[:, None], logits[:, 1:]], dim=1).float()
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), batch.labels.flatten(), ignore_index=-100
    )
