import pytest
import torch

from fibervl.boxes import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    check_boxes,
    clip_boxes_to_image,
    generalized_box_iou,
    inter_union,
    remove_small_boxes,
)


def test_conversions_round_trip_and_known_values():
    b = torch.tensor([[0.0, 0.0, 4.0, 2.0], [1.0, 2.0, 3.0, 8.0]])
    c = box_xyxy_to_cxcywh(b)
    torch.testing.assert_close(c, torch.tensor([[2.0, 1.0, 4.0, 2.0], [2.0, 5.0, 2.0, 6.0]]))
    torch.testing.assert_close(box_cxcywh_to_xyxy(c), b)
    torch.testing.assert_close(box_area(b), torch.tensor([8.0, 12.0]))
    torch.testing.assert_close(box_area(b, pixel_offset=1.0), torch.tensor([15.0, 21.0]))
    assert box_area(torch.tensor([[3.0, 0.0, 1.0, 2.0]])).tolist() == [0.0]  # inside out: no area


def test_iou_and_giou_known_cases():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [4.0, 0.0, 6.0, 2.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 1.0, 0.0]]))
    # legacy: areas 9, intersection 2x2=4 -> 4/14
    torch.testing.assert_close(box_iou(a, b[:1], pixel_offset=1.0), torch.tensor([[4 / 14]]))
    # GIoU: overlapping 1/7 - (9-7)/9; identical 1; disjoint 0 - (12-8)/12
    torch.testing.assert_close(generalized_box_iou(a, b), torch.tensor([[1 / 7 - 2 / 9, 1.0, -1 / 3]]))


def test_bad_boxes_raise():
    with pytest.raises(ValueError, match="negative width"):
        box_iou(torch.tensor([[2.0, 0.0, 1.0, 1.0]]), torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"shape \[N, 4\]"):
        check_boxes(torch.zeros(3, 5))


def test_clip_and_remove_small():
    b = torch.tensor([[-5.0, 3.0, 50.0, 70.0], [10.0, 10.0, 10.5, 30.0]])
    torch.testing.assert_close(clip_boxes_to_image(b, (60, 40)), torch.tensor([[0.0, 3.0, 40.0, 60.0], [10.0, 10.0, 10.5, 30.0]]))
    torch.testing.assert_close(clip_boxes_to_image(b, (60, 40), 1.0)[0], torch.tensor([0.0, 3.0, 39.0, 59.0]))
    assert remove_small_boxes(b, 1.0).tolist() == [0]
    assert remove_small_boxes(b, 1.0, pixel_offset=1.0).tolist() == [0, 1]


def test_empty_boxes_have_iou_zero_not_nan():
    """A zero-area box (a degenerate annotation or prediction) is a miss: IoU and GIoU 0 against
    another empty box, and the gradient stays finite, so a mean or an arg-max over IoUs is safe."""
    point = torch.tensor([[5.0, 5.0, 5.0, 5.0]], requires_grad=True)
    line = torch.tensor([[5.0, 5.0, 9.0, 5.0]])
    square = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    iou = box_iou(point, torch.cat([point.detach(), line, square]))
    assert iou.tolist() == [[0.0, 0.0, 0.0]]
    iou.sum().backward()
    assert torch.isfinite(point.grad).all()
    torch.testing.assert_close(generalized_box_iou(point.detach(), torch.cat([point.detach(), line])),
                               torch.tensor([[0.0, 0.0]]))
    # an empty box far from another: disjoint, GIoU -1 (its enclosing box has an area)
    torch.testing.assert_close(generalized_box_iou(point.detach(), torch.tensor([[8.0, 8.0, 8.0, 9.0]])),
                               torch.tensor([[-1.0]]))
    # legacy widths (x2 - x1 + 1): a one-pixel box is not empty
    assert box_iou(point.detach(), point.detach(), pixel_offset=1.0).item() == 1.0


def test_non_degenerate_iou_is_the_plain_ratio():
    """Guarding empty pairs must not move any other IoU by a bit (the metrics and ATSS read them)."""
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=gen) * 100
    boxes = torch.cat([xy, xy + torch.rand(50, 2, generator=gen) * 30 + 0.5], 1)
    for offset in (0.0, 1.0):
        inter, union = inter_union(boxes, boxes[:20], offset)
        assert torch.equal(box_iou(boxes, boxes[:20], pixel_offset=offset), inter / union)
