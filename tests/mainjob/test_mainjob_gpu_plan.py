"""``--preset gpu-small`` as far as a CPU can check it: the preset's own settings (the
full-difficulty data set, batch 64, 4 loader workers, cached prefixes read by worker processes)
run every stage of the job end to end, with the steps and the data cut to a micro scale and the
device set to the CPU. CI has no GPU; this is what keeps the GPU preset from breaking unseen."""

import dataclasses
import json

import pytest
import yaml

from fibervl.mainjob.job import TASK_STAGES, run_job
from fibervl.mainjob.presets import get_job_preset
from fibervl.modeling.factory import create_model


# 4 workers on a 2-core CI machine: torch warns, and the point is to run the preset's own number
@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_gpu_small_settings_run_every_stage_at_micro_scale(tmp_path):
    gpu = get_job_preset("gpu-small")
    two_steps = lambda plan: dataclasses.replace(plan, steps=2)  # noqa: E731
    micro = dataclasses.replace(
        # the image stage reads one item per image: 40 images hold no batch of the preset's 64
        gpu, data=dataclasses.replace(gpu.data, size=40), image=dataclasses.replace(gpu.image, steps=2, batch_size=16),
        itc_steps=2, coarse=two_steps(gpu.coarse),
        fine=two_steps(gpu.fine), tasks={name: two_steps(plan) for name, plan in gpu.tasks.items()},
        num_eval=8, device="cpu")
    results = run_job(micro, tmp_path, echo=lambda line: None)

    assert set(results["tasks"]) == set(TASK_STAGES) | {"detection_zero_shot"}
    assert set(results["stages"]) == {"data", "image", "coarse-itc", "coarse", "fine", *TASK_STAGES}
    # the preset's data: 2-8 objects on every background kind
    data = json.loads((tmp_path / "data" / "dataset.json").read_text())["config"]
    assert (data["min_objects"], data["max_objects"]) == (2, 8) and len(data["backgrounds"]) == 5
    # its loaders and batch sizes were the ones used
    for stage, batch in (("coarse", gpu.coarse.batch_size), ("fine", gpu.fine.batch_size),
                         ("vqa", gpu.tasks["vqa"].batch_size)):
        train = yaml.safe_load((tmp_path / "stages" / stage / "config.yaml").read_text())["train"]
        assert (train["batch_size"], train["num_workers"]) == (batch, gpu.workers), stage
    for stage in ("fine", *TASK_STAGES):
        assert sum(p.numel() for p in create_model(tmp_path / "stages" / stage / "model").parameters()) > 0
    assert (tmp_path / "report.md").is_file()
