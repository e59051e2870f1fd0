"""``aptune merge``: an adapter and its backbone written out as one plain fine-tuned checkpoint.

The output is a VideoMAE fine-tuned-layout ``.safetensors`` file (aptune's state-dict
names: ``patch_embed.*``, ``blocks.*``, ``fc_norm.*``, ``head.*`` and the
position table ``pos_embed``) that ``aptune.create_model(arch, method="linear"
or "full", pretrained=OUT)`` -- or the original VideoMAE code -- loads with no
extra modules.

Which adapters can be merged:

* every method declaring ``mergeable``; one with modules of its own folds them with its
  ``merge(model)``: ``lora``'s low-rank update goes into each block's qkv weight
  (:func:`aptune.methods.lora.merge_lora`), so the result runs at the backbone's cost
  and gives the adapter model's logits (up to float rounding);
* ``linear``, ``bitfit`` and ``full``: nothing to fold; the checkpoint is the backbone
  with the trained tensors (head, ``fc_norm``, the biases or everything) in place.
* an adapter with an attentive head (``model.head: attentive``) cannot be merged, whatever its
  method: the output is a plain VideoMAE checkpoint, whose head pools by the mean;
* ``apt``, ``vpt-*`` and ``adaptformer`` cannot be merged: prompts add keys,
  values or tokens that no weight of the backbone can express, and AdaptFormer's
  bottleneck sits behind a ReLU.  They raise :class:`~aptune.errors.CheckpointError`
  in one line, with the reason the method gives (``NOT_MERGEABLE_BECAUSE``); use their adapter file with :func:`aptune.model_from_adapter`.

The header metadata (strings) holds ``format`` (``aptune-merged``),
``format_version``, ``aptune_version``, ``arch`` (JSON, everything needed to
rebuild the backbone: ``create_model(pretrained=OUT)`` reads it, so no arch is needed),
``class_names`` (JSON), ``preprocess`` (JSON) and ``merged_from`` (JSON: the
adapter's method options and file name).  The file is written atomically.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aptune.adapters import adapter_metadata, model_from_adapter, read_adapter
from aptune.errors import CheckpointError, ConfigError
from aptune.fileio import save_safetensors_atomically
from aptune.methods import METHODS, method_to_dict, methods_that

MERGED_FORMAT = "aptune-merged"
MERGED_FORMAT_VERSION = 1
MERGEABLE_METHODS = methods_that("mergeable")


def merge_adapter(
    adapter: str | Path, pretrained: str | Path | None, output: str | Path, *, allow_backbone_mismatch: bool = False
) -> Path:
    """Rebuild ``adapter``'s model on ``pretrained``, fold it in and write ``output``.

    ``pretrained`` must be the backbone the adapter was trained on (its fingerprint is
    checked); ``allow_backbone_mismatch=True`` merges into other weights with a warning.

    ``pretrained`` may be None only for a ``full`` adapter (which holds every
    tensor); other adapters hold only what they trained.
    """
    adapter, output = Path(adapter), Path(output)
    if output.suffix != ".safetensors":
        raise ConfigError(f"{output}: the merged checkpoint is written as safetensors; name it *.safetensors")
    _, meta = read_adapter(adapter)
    method = (meta.get("method") or {}).get("name")
    if method not in MERGEABLE_METHODS:
        raise CheckpointError(
            f"{adapter}: a '{method}' adapter cannot be merged into the backbone "
            f"weights ({_why_not(method)}); load it with aptune.model_from_adapter"
        )
    head = (meta.get("arch") or {}).get("head", "linear")
    if head != "linear":
        raise CheckpointError(
            f"{adapter}: an adapter with head={head!r} cannot be merged (a merged file is a plain VideoMAE "
            "checkpoint, whose head pools by the mean); load it with aptune.model_from_adapter"
        )
    if pretrained is None and method != "full":
        raise ConfigError(
            f"{adapter}: a '{method}' adapter holds only its trained tensors; "
            "give the backbone it was trained on (--pretrained)"
        )

    model = model_from_adapter(adapter, pretrained=pretrained, allow_backbone_mismatch=allow_backbone_mismatch)
    source = method_to_dict(model.tuning_method)
    fold = getattr(model.tuning_method, "merge", None)  # a method with modules of its own folds them
    if fold is not None:
        fold(model)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    state["pos_embed"] = model.pos_embed.detach().contiguous().cpu()  # a buffer outside state_dict
    leftover = [name for name, _ in model.named_extensions()]
    if leftover:  # a bug, not user input: the checkpoint would not load as a plain model
        raise RuntimeError(f"the merged model still has method modules: {leftover}")

    metadata = adapter_metadata(model, meta.get("preprocess"))
    metadata.pop("method")
    metadata.update(
        format=MERGED_FORMAT,
        format_version=str(MERGED_FORMAT_VERSION),
        merged_from=json.dumps({"adapter": adapter.name, "method": source}),
    )
    save_safetensors_atomically(state, output, metadata)
    return output


def _why_not(method: str | None) -> str:
    reason = getattr(METHODS.get(method), "NOT_MERGEABLE_BECAUSE", None)
    return reason or f"mergeable methods: {', '.join(MERGEABLE_METHODS)}"


# ---------------------------------------------------------------------- CLI
def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="fold a LoRA adapter into its backbone and write one plain checkpoint",
        description="Write an adapter and its backbone as one VideoMAE fine-tuned-layout "
        ".safetensors checkpoint that loads with method linear or full. LoRA is folded into "
        "the qkv weights; linear/full adapters are written as they are; prompt methods "
        "(apt, vpt) and adaptformer cannot be merged. See docs/bench.md.",
    )
    parser.add_argument("--adapter", required=True, help="adapter .safetensors from aptune train")
    parser.add_argument(
        "--pretrained",
        help="the backbone the adapter was trained on (any format create_model reads; optional for a 'full' adapter)",
    )
    parser.add_argument("--output", required=True, help="where to write OUT.safetensors")
    parser.add_argument(
        "--allow-backbone-mismatch",
        action="store_true",
        help="merge even if --pretrained is not the backbone the adapter was trained on "
        "(its recorded fingerprint differs): a warning instead of an error",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = merge_adapter(
        args.adapter, args.pretrained, args.output, allow_backbone_mismatch=args.allow_backbone_mismatch
    )
    print(f"wrote {path}")
    return 0
