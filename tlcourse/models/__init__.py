"""Backbones: a small registry in the spirit of timm's, with the surgery transfer learning needs.

- :mod:`~tlcourse.models.registry`: what each backbone is (:class:`BackboneSpec`,
  :func:`backbone_spec`, its :class:`Preprocessing`, its stages and ``early_stage``);
- :mod:`~tlcourse.models.weights`: where pretrained weights come from, offline included;
- :mod:`~tlcourse.models.build`: :func:`build_backbone`;
- :mod:`~tlcourse.models.surgery`: heads, freezing, stages, parameter groups;
- :mod:`~tlcourse.models.state`: what a state_dict says (backbone, outputs, fingerprint).
"""

from tlcourse.models.build import build_backbone
from tlcourse.models.registry import (
    BACKBONES,
    DEFAULT_BACKBONE,
    BackboneSpec,
    Preprocessing,
    backbone_spec,
)
from tlcourse.models.state import (
    describe_state_dict,
    model_info,
    state_dict_fingerprint,
)
from tlcourse.models.surgery import (
    backbone_parameters,
    check_head,
    check_input_size,
    count_parameters,
    freeze_backbone,
    head_of,
    head_parameters,
    num_outputs,
    param_groups,
    replace_head,
    stage_layers,
    stage_modules,
    stage_outputs,
    unfreeze,
)
from tlcourse.models.weights import (
    WeightsUnavailableError,
    hub_checkpoint_path,
    lite_weights_path,
    stage_weights,
    weights_status,
)

__all__ = [
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "BackboneSpec",
    "Preprocessing",
    "WeightsUnavailableError",
    "backbone_parameters",
    "backbone_spec",
    "build_backbone",
    "check_head",
    "check_input_size",
    "count_parameters",
    "describe_state_dict",
    "freeze_backbone",
    "head_of",
    "head_parameters",
    "hub_checkpoint_path",
    "lite_weights_path",
    "model_info",
    "num_outputs",
    "param_groups",
    "replace_head",
    "stage_layers",
    "stage_modules",
    "stage_outputs",
    "stage_weights",
    "state_dict_fingerprint",
    "unfreeze",
    "weights_status",
]
