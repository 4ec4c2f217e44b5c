"""The backbone: a Hugging Face T5 encoder-decoder, with the knowledge tree mask on the encoder.

``transformers`` 5 takes a 4-D boolean mask [B, 1, L, L] on T5's encoder self-attention; the
decoder's cross-attention needs the plain 2-D padding mask. So we run the encoder ourselves and
hand ``encoder_outputs`` to the decoder, in training and in decoding alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from kp4sr.errors import ConfigError
from kp4sr.tree_mask import encoder_mask

# From-scratch sizes. ``t5-small`` is the paper's shape; ``tiny`` is what CPU tests afford.
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(d_model=128, d_ff=512, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=32),
    "small": dict(d_model=256, d_ff=1024, num_layers=4, num_decoder_layers=4, num_heads=4, d_kv=64),
    "t5-small": dict(
        d_model=512, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8, d_kv=64
    ),
}


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

    From scratch, input and output embeddings are untied by default: a tied T5 scales its logits
    by d_model^-0.5, which slowed learning a large item softmax a lot in our measurements.
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
            # untied output logits would otherwise have a std of ~sqrt(d_model)
            model.lm_head.weight.data.normal_(0.0, std)
        return model
    check_backbone(backbone)
    try:
        model = T5ForConditionalGeneration.from_pretrained(backbone)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load a T5 checkpoint from {backbone}: {e}") from None
    if model.get_input_embeddings().num_embeddings < vocab_size:
        model.resize_token_embeddings(vocab_size)
    return model


@dataclass
class Batch:
    """A padded batch: encoder inputs, the knowledge tree, and (in training) the target IDs."""

    input_ids: torch.Tensor  # [B, L]
    node_of_token: torch.Tensor  # [B, L], PAD_NODE on padding
    parents: torch.Tensor  # [B, n_nodes], padded with ROOT_PARENT
    labels: torch.Tensor | None = None  # [B, T], -100 on padding

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device, non_blocking=True),
            self.node_of_token.to(device, non_blocking=True),
            self.parents.to(device, non_blocking=True),
            None if self.labels is None else self.labels.to(device, non_blocking=True),
        )


def encode(model: T5ForConditionalGeneration, batch: Batch, tree_mask: bool) -> BaseModelOutput:
    """Run the encoder under the knowledge tree mask (or full attention without PD)."""
    mask4d = encoder_mask(batch.node_of_token, batch.parents, tree=tree_mask)  # [B, 1, L, L]
    return model.get_encoder()(input_ids=batch.input_ids, attention_mask=mask4d, return_dict=True)


def padding_mask(batch: Batch) -> torch.Tensor:
    """[B, L] 1 on real tokens: the decoder's cross-attention mask."""
    return (batch.node_of_token >= 0).long()


def loss(model: T5ForConditionalGeneration, batch: Batch, tree_mask: bool) -> torch.Tensor:
    """Cross-entropy of the target item's ID tokens (and </s>)."""
    enc = encode(model, batch, tree_mask)
    out = model(
        encoder_outputs=enc,
        attention_mask=padding_mask(batch),
        labels=batch.labels,
        return_dict=True,
    )
    return out.loss
