"""Forward cost of fusion in the backbone against fusion in the detection head (GLIP-style).

    python bench/head_fusion_flops.py [--preset fiber-tiny-fine] [--text-len 40] [--max-layers 4]

Counts the multiply-adds of one ``model.detect`` call (one image-text pair, the detector's whole
forward: backbones, FPN, head; ``fibervl.modeling.flops.count_flops``, attention included) for
the preset as it is (fusion in the backbone) and for the preset with ``fusion.num_layers=0`` and
``detection.head_fusion_layers`` K = 0 .. ``--max-layers``, so that K can be chosen for equal
cost. The image is the preset's size; the text is ``--text-len`` tokens, all real.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fibervl.config import FiberConfig, get_preset  # noqa: E402
from fibervl.modeling.fiber import FiberModel  # noqa: E402
from fibervl.modeling.flops import count_flops  # noqa: E402


def detect_gmac(config: FiberConfig, text_len: int) -> float:
    """Multiply-adds (1e9) of one forward ``detect`` of one image-text pair."""
    torch.manual_seed(0)
    model = FiberModel(config).eval()
    size = config.vision.image_size
    images = torch.randn(1, 3, size, size)
    ids = torch.randint(3, config.text.vocab_size, (1, text_len))
    mask = torch.ones(1, text_len, dtype=torch.long)
    return count_flops(model.detect, images, ids, mask) / 2e9


def head_fused(config: FiberConfig, layers: int) -> FiberConfig:
    """``config`` with the backbone's fusion off and ``layers`` fusion layers in the head."""
    return config.replace(fusion=dataclasses.replace(config.fusion, num_layers=0),
                          detection=dataclasses.replace(config.detection, head_fusion_layers=layers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="fiber-tiny-fine")
    parser.add_argument("--text-len", type=int, default=40)
    parser.add_argument("--max-layers", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = get_preset(args.preset)
    base = detect_gmac(config, args.text_len)
    print(f"{args.preset}, text {args.text_len} tokens: forward GMAC per image-text pair")
    print(f"  fusion in the backbone ({config.fusion.num_layers} blocks/layers): {base:.4f}")
    for layers in range(args.max_layers + 1):
        gmac = detect_gmac(head_fused(config, layers), args.text_len)
        print(f"  fusion.num_layers=0, detection.head_fusion_layers={layers}: {gmac:.4f} ({gmac / base - 1:+.1%})")


if __name__ == "__main__":
    main()
