import json

import pytest
import torch
from PIL import Image

from fibervl.data import DataError, ProcessedDataset, Processor, Sample
from fibervl.data.shapes import SHAPES
from fibervl.data.transforms import Resize


def test_downscaled_huge_image_rescales_boxes(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 2000), (10, 20, 30)).save(path, quality=50)
    s = Sample("1", 1, image_path=path, width=4000, height=2000,
               boxes=torch.tensor([[400.0, 200, 800, 1000]]), category_ids=torch.tensor([1]))
    out = Processor(max_side=1000)(s)
    assert out.pixel_values.shape == (3, 500, 1000)
    assert torch.allclose(out.sample.boxes, torch.tensor([[100.0, 50, 200, 250]]))


def test_exif_rotation_that_contradicts_annotation_is_refused(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.jpg"
    Image.new("RGB", (40, 30)).save(path, exif=exif.tobytes())
    s = Sample("rec7", 1, image_path=path, width=40, height=30, boxes=torch.tensor([[0.0, 0, 10, 10]]),
               category_ids=torch.tensor([1]))
    with pytest.raises(DataError, match=r"rot\.jpg \[record rec7\]: image is 30x40 .* annotation says 40x30"):
        Processor()(s)
    skipping = Processor(skip_bad=True)
    assert skipping(s) is None and skipping.skipped.total == 1


def test_processed_dataset_with_dataloader(shapes):
    from fibervl.data import Collator, Tokenizer

    ds = ProcessedDataset(shapes.vqa("val"), Processor(Resize(64)))
    loader = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=Collator(Tokenizer.from_pretrained(shapes.tokenizer_dir)))
    batch = next(iter(loader))
    assert batch.pixel_values.shape == (5, 3, 64, 64) and len(batch.answers) == 5 and all(len(a) == 10 for a in batch.answers)
    assert batch.input_ids[:, 0].eq(0).all()


def test_color_and_shape_answers_match_the_annotations(shapes_dir):
    """The test detection file stores each object's colour; check VQA answers against it."""
    det = json.loads((shapes_dir / "detection" / "instances_test.json").read_text())
    objects: dict[int, list[tuple[str, str, str]]] = {}
    for a in det["annotations"]:
        objects.setdefault(a["image_id"], []).append(
            (SHAPES[a["category_id"] - 1], a["attributes"]["color"], a["attributes"]["size"]))
    questions = json.loads((shapes_dir / "vqa" / "v2_OpenEnded_shapes_test_questions.json").read_text())["questions"]
    qs = {q["question_id"]: q for q in questions}
    anns = json.loads((shapes_dir / "vqa" / "v2_shapes_test_annotations.json").read_text())["annotations"]
    checked = 0
    for a in anns:
        q = qs[a["question_id"]]["question"]
        objs = objects[a["image_id"]]
        for shape in SHAPES:
            if q == f"what color is the {shape}?":
                assert [o[1] for o in objs if o[0] == shape] == [a["multiple_choice_answer"]]
                checked += 1
        if q.startswith("what shape is the ") and q.endswith(" object?"):
            words = q[len("what shape is the "):-len(" object?")].split()
            match = [o for o in objs if o[1] == words[-1] and (len(words) == 1 or o[2] == words[0])]
            assert [o[0] for o in match] == [a["multiple_choice_answer"]]
            checked += 1
        if q.startswith("is there a") and q.endswith("?") and len(q.split()) == 5:
            color, shape = q.rstrip("?").split()[-2:]
            if shape in SHAPES and color not in ("small", "medium", "large"):
                assert a["multiple_choice_answer"] == ("yes" if any(o[:2] == (shape, color) for o in objs) else "no")
                checked += 1
    assert checked >= 5


def test_retrieval_lists(shapes):
    paths, texts, t2i, i2t = shapes.captions("test").retrieval_lists()
    assert len(paths) * 5 == len(texts) == len(t2i)
    assert all(t2i[t] == i for i, ts in enumerate(i2t) for t in ts)


def test_iterable_dataset_splits_shards_among_workers(tmp_path):
    import io
    import tarfile

    from fibervl.data import ProcessedIterableDataset, WebDatasetReader

    for k in range(4):
        with tarfile.open(tmp_path / f"s{k}.tar", "w") as tar:
            for j in range(3):
                buf = io.BytesIO()
                Image.new("RGB", (8, 8)).save(buf, "PNG")
                for name, data in ((f"{k}{j}.png", buf.getvalue()), (f"{k}{j}.txt", f"caption {k}{j}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    reader = WebDatasetReader(str(tmp_path / "s*.tar"))
    seen = []
    for rank in (0, 1):
        ds = ProcessedIterableDataset(reader, Processor(Resize(8)), rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        seen += [item.sample.text for item in loader]
    assert sorted(seen) == sorted(f"caption {k}{j}" for k in range(4) for j in range(3))
