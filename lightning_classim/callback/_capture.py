"""Capturing what the sources need from a validation step: the scores, the targets, hooked modules' outputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

__all__ = ["Capture"]


class Capture:
    """Where the scores and targets of a validation step come from, and the forward hooks that catch outputs.

    Args:
        num_classes: the width of the scores.
        output_key: key of the scores in a dict returned by ``validation_step``.
        module: the submodule whose forward output holds the scores (a hook), or ``None``.
        target_key: index or key of the targets in a batch.
    """

    def __init__(self, num_classes: int, output_key: str, module: str | None, target_key: int | str) -> None:
        self.num_classes = num_classes
        self.output_key = output_key
        self.module = module
        self.target_key = target_key
        self.active = False
        self.features: dict[str, Tensor] = {}
        self._hooked_scores: Tensor | None = None
        self._handles: list[Any] = []

    # ------------------------------------------------------------------------------------------ hooks

    def attach(
        self,
        scores_layer: nn.Module | None,
        feature_layers: dict[str, nn.Module],
        input_layers: dict[str, nn.Module] | None = None,
    ) -> None:
        """Hook the scores' submodule (if any), the submodules whose outputs sources read and those whose inputs."""
        self.detach()
        if scores_layer is not None:
            self._handles.append(scores_layer.register_forward_hook(self._scores_hook))
        for name, layer in feature_layers.items():
            self._handles.append(layer.register_forward_hook(self._feature_hook(name)))
        for name, layer in (input_layers or {}).items():
            self._handles.append(layer.register_forward_hook(self._input_hook(name)))

    def detach(self) -> None:
        """Remove every hook."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def attached(self) -> bool:
        """Whether hooks are in place."""
        return bool(self._handles)

    def _scores_hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if not self.active:
            return
        out = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(out, dict):
            out = out.get(self.output_key)
        if not isinstance(out, Tensor):
            raise ValueError(
                f"ClassSimilarityCallback(module={self.module!r}) expected the module's output to be a tensor of "
                f"scores (N, {self.num_classes}), but got {type(output).__name__}. Name the module that outputs the "
                "logits (e.g. the final linear layer)."
            )
        self._hooked_scores = (out.flatten(0, -2) if out.ndim > 2 else out).detach()

    def _feature_hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self.active:
                out = output[0] if isinstance(output, (tuple, list)) else output
                if isinstance(out, Tensor):
                    self.features[name] = out.detach()

        return hook

    def _input_hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self.active and inputs and isinstance(inputs[0], Tensor):
                self.features[f"input:{name}"] = inputs[0].detach()
                out = output[0] if isinstance(output, (tuple, list)) else output
                if isinstance(out, Tensor):
                    self.features[f"output:{name}"] = out.detach()

        return hook

    # ------------------------------------------------------------------------------------------ one step

    def scores(self, outputs: Any) -> Tensor:
        """The step's scores ``(N, num_classes)``: from the hook, or from what ``validation_step`` returned.

        Raises:
            ValueError: saying how to provide the scores, when none were found or their width is wrong.
        """
        if self.module is not None:
            scores, self._hooked_scores = self._hooked_scores, None
            if scores is None:
                raise ValueError(
                    f"ClassSimilarityCallback(module={self.module!r}) captured no output in this validation step. "
                    "Name a submodule that runs in the model's forward pass."
                )
        else:
            scores = outputs.get(self.output_key) if isinstance(outputs, dict) else outputs
            if not isinstance(scores, Tensor) or scores.ndim != 2:
                raise ValueError(
                    f"ClassSimilarityCallback found no scores: `validation_step` returned {_describe(outputs)}. Return "
                    f"the scores (a tensor of shape (N, {self.num_classes})) or a dict holding them under "
                    f"'{self.output_key}' (see `output_key=`), or pass `module=` naming the submodule that outputs "
                    "them (e.g. module='fc')."
                )
        if scores.ndim == 2 and scores.shape[1] != self.num_classes:
            raise ValueError(
                f"ClassSimilarityCallback(num_classes={self.num_classes}) got scores of shape {tuple(scores.shape)}. "
                "Set `num_classes` to the classifier's output width, or capture the right output with "
                "`output_key=` or `module=`."
            )
        return scores.detach()

    def targets(self, batch: Any, needing: Sequence[str]) -> Tensor:
        """The batch's targets at ``target_key``.

        Raises:
            ValueError: naming the sources that need them, when there are none there or they are not a tensor.
        """
        key = self.target_key
        try:
            target = batch[key]
        except (KeyError, IndexError, TypeError):
            shape = f"a dict with keys {sorted(batch)}" if isinstance(batch, dict) else type(batch).__name__
            raise ValueError(
                f"Sources {list(needing)} need the targets, but the validation batch ({shape}) has nothing at "
                f"target_key={key!r}. Set `target_key=` to the targets' index or key in the batch."
            ) from None
        if not isinstance(target, Tensor):
            raise ValueError(
                f"Expected the targets at target_key={key!r} of the batch to be a tensor, but got "
                f"{type(target).__name__}. Set `target_key=` to the targets' index or key in the batch."
            )
        return target


def _describe(outputs: Any) -> str:
    if isinstance(outputs, dict):
        return f"a dict with keys {sorted(outputs)}"
    if isinstance(outputs, Tensor):
        return f"a tensor of shape {tuple(outputs.shape)}"
    return type(outputs).__name__
