import torch
from PIL import Image

from fibervl.data import Collator, Processor, Sample, build_positive_map, detection_to_grounding
from fibervl.data.collate import normalize_positive_map, pad_images
from fibervl.data.prompts import clean_name, detection_prompt
from fibervl.data.text_ops import swap_left_right
from fibervl.data.tokenizer import train_bytelevel_bpe
from fibervl.data.transforms import (
    ColorJitter, Compose, RandomHorizontalFlip, RandomMultiScaleResize, RandomResizedCrop, Resize, crop, hflip,
    to_tensor,
)


def _sample(text="the red star on the left and the blue circle", boxes=((10, 20, 30, 40), (60, 10, 90, 30))):
    k = text.index("the blue circle")
    spans = [[(0, 12)], [(k, k + len("the blue circle"))]]
    return Sample(sample_id="s", image_id=1, text=text, boxes=torch.tensor(boxes, dtype=torch.float32),
                  category_ids=torch.tensor([4, 1]), tokens_positive=spans, answers=["left"] * 10)


def _image(w=100, h=50):
    img = Image.new("RGB", (w, h), (0, 0, 0))
    img.paste((255, 0, 0), (10, 20, 30, 40))
    return img


def test_swap_left_right_words_only():
    text, edits = swap_left_right("Left of the leftmost, right? bright lefty")
    assert text == "Right of the rightmost, left? bright lefty"
    assert len(edits) == 3


def test_flip_moves_boxes_swaps_words_and_spans():
    s = _sample()
    img, out = hflip(_image(), s)
    assert out.text == "the red star on the right and the blue circle"
    assert torch.equal(out.boxes[0], torch.tensor([70.0, 20, 90, 40]))
    # The red square moved with its box.
    assert img.getpixel((80, 30)) == (255, 0, 0) and img.getpixel((20, 30)) == (0, 0, 0)
    # Spans still name the same words after "left" became the longer "right".
    assert [out.text[a:b] for a, b in (out.tokens_positive[0][0], out.tokens_positive[1][0])] == ["the red star", "the blue circle"]
    assert out.answers == ["right"] * 10
    assert s.text.endswith("left and the blue circle")  # input untouched


def test_flip_without_word_swap_and_probability():
    torch.manual_seed(0)
    _, out = RandomHorizontalFlip(p=0.0)(_image(), _sample())
    assert out.text == _sample().text
    _, out = RandomHorizontalFlip(p=1.0, swap_left_right=False)(_image(), _sample())
    assert "left" in out.text and out.boxes[0, 0] == 70


def test_resize_and_multiscale_scale_boxes():
    img, out = Resize(200)(_image(), _sample())
    assert img.size == (200, 200) and torch.allclose(out.boxes[0], torch.tensor([20.0, 80, 60, 160]))
    img, out = Resize(25, keep_ratio=True, max_size=40)(_image(), _sample())
    assert img.size == (40, 20)
    img, out = RandomMultiScaleResize([100])(_image(), _sample())
    assert img.size == (200, 100) and torch.allclose(out.boxes[1], torch.tensor([120.0, 20, 180, 60]))


def test_crop_drops_boxes_that_leave_and_their_spans():
    img, out = crop(_image(), _sample(), 0, 0, 50, 50)
    assert img.size == (50, 50) and out.num_boxes == 1 and out.tokens_positive == [[(0, 12)]]
    out.check()


def test_random_resized_crop_keeps_every_box():
    torch.manual_seed(1)
    for _ in range(20):
        img, out = RandomResizedCrop(64, scale=(0.3, 1.0))(_image(), _sample())
        assert img.size == (64, 64) and out.num_boxes == 2
        assert (out.boxes >= 0).all() and (out.boxes <= 64).all()


def test_color_jitter_is_light_and_keeps_hue():
    torch.manual_seed(0)
    img, _ = ColorJitter()(_image(), _sample())
    r, g, b = img.getpixel((20, 30))
    assert r > 150 and g < 60 and b < 60


def test_positive_map_from_offsets():
    tok = train_bytelevel_bpe(["the red star on the left and the blue circle"] * 20, vocab_size=300)
    s = _sample()
    enc = tok([s.text])
    pm = build_positive_map(enc.offsets[0], s.tokens_positive, enc.input_ids.shape[1])
    assert pm.shape == (2, enc.input_ids.shape[1])
    for i, spans in enumerate(s.tokens_positive):
        words = tok.decode(enc.input_ids[0][pm[i] > 0]).strip()
        assert words == s.text[spans[0][0]:spans[0][1]]
    assert pm[:, 0].sum() == 0 and pm[:, -1].sum() == 0  # <s>, </s> never positive
    assert torch.allclose(normalize_positive_map(pm).sum(-1), torch.ones(2))


def test_processor_and_collator_end_to_end(shapes):
    from fibervl.data.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(shapes.tokenizer_dir)
    proc = Processor(Compose([RandomResizedCrop(96), RandomHorizontalFlip(), ColorJitter()]))
    ground = shapes.grounding("train")
    batch = Collator(tok, max_length=40)([proc(ground[i]) for i in range(4)])
    assert batch.pixel_values.shape == (4, 3, 96, 96) and batch.pixel_mask.all()
    assert batch.input_ids.shape == batch.attention_mask.shape and batch.input_ids.shape[0] == 4
    for b, pm, s in zip(batch.boxes, batch.positive_maps, batch.samples):
        assert pm.shape == (b.shape[0], batch.input_ids.shape[1]) and (pm.sum(-1) > 0).all()
    pair = shapes.nlvr2("val")
    nb = Collator(tok)([Processor(Resize(64))(pair[i]) for i in range(3)])
    assert nb.pixel_values2.shape == (3, 3, 64, 64) and nb.labels.tolist() == [int(pair[i].label) for i in range(3)]


def test_collator_drops_boxes_truncated_away_and_skipped_samples(shapes, tmp_path):
    from fibervl.data.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(shapes.tokenizer_dir)
    s = _sample()
    s.image = _image()
    proc = Processor(Resize(32))
    bad = Sample(sample_id="x", image_id=2, image_path=tmp_path / "missing.jpg")
    skipping = Processor(Resize(32), skip_bad=True)
    batch = Collator(tok, max_length=5)([proc(s), skipping(bad)])
    assert batch.skipped == 1 and skipping.skipped.total == 1
    assert batch.dropped_boxes == 1 and batch.boxes[0].shape == (1, 4)


def test_pad_images_size_divisibility():
    out, mask = pad_images([torch.ones(3, 10, 20), torch.ones(3, 33, 5)], size_divisibility=32)
    assert out.shape == (2, 3, 64, 32) and mask[0].sum() == 200 and mask[1].sum() == 165


def test_detection_prompt_and_grounding():
    assert clean_name("traffic_light (lamp)") == "traffic light"
    text, spans = detection_prompt(["traffic_light", "dog"])
    assert text == "traffic light. dog" and spans == [(0, 13), (15, 18)]
    s = Sample(sample_id="d", image_id=1, boxes=torch.tensor([[0, 0, 5, 5], [1, 1, 2, 2.0]]), category_ids=torch.tensor([7, 2]))
    g = detection_to_grounding(s, {2: "dog", 7: "traffic_light"}, category_ids=[7])
    assert g.text == "traffic light" and g.num_boxes == 1 and g.tokens_positive == [[(0, 13)]]


def test_to_tensor_range():
    t = to_tensor(_image())
    assert t.shape == (3, 50, 100) and t.max() == 1.0 and t.min() == 0.0
