"""Fine-grained (detection / grounding) part of FIBER: FPN, DyHead grounding head, ATSS, losses,
post-processing, in plain PyTorch (no torchvision, no compiled ops). Box geometry (IoU, areas,
clipping, the legacy pixel offset) is :mod:`fibervl.boxes`."""

from .anchors import AnchorGenerator
from .atss import atss_assign
from .box_coder import BoxCoder
from .deform_conv import ModulatedDeformConv2d, modulated_deform_conv2d
from .detector import DetectorOutput, GroundingDetector
from .dyhead import DeformConvGN, DyHeadBlock, DyHeadTower, DyReLU, h_sigmoid
from .fpn import FPN
from .head import GroundingHead, GroundingHeadOutput, Scale
from .location import LocationPrior, location_code
from .losses import GroundingLoss, GroundingTarget, centerness_targets, giou_loss, token_sigmoid_focal_loss
from .nms import batched_nms, nms
from .postprocess import (CLASS_SCORES, Detections, GroundingPostProcessor, exclusive_class_scores,
                          positive_map_from_label_tokens, token_scores_to_class_scores)

__all__ = [
    "AnchorGenerator", "atss_assign", "BoxCoder", "ModulatedDeformConv2d", "modulated_deform_conv2d", "DetectorOutput",
    "GroundingDetector", "DeformConvGN", "DyHeadBlock", "DyHeadTower", "DyReLU", "h_sigmoid", "FPN",
    "GroundingHead", "GroundingHeadOutput", "Scale", "LocationPrior", "location_code",
    "GroundingLoss", "GroundingTarget", "centerness_targets",
    "giou_loss", "token_sigmoid_focal_loss", "batched_nms", "nms", "Detections", "GroundingPostProcessor",
    "positive_map_from_label_tokens", "token_scores_to_class_scores", "exclusive_class_scores", "CLASS_SCORES",
]
