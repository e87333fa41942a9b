"""Two-process gloo DDP through torchrun, compared with one process over the same global batch."""

import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
# rendezvous on the loopback address only, on a free port torchrun picks
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0",
            "--nproc_per_node", "2"]


def _env(**extra: str) -> dict:
    return dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{HERE}", OMP_NUM_THREADS="1", **extra)


def test_two_process_ddp_matches_single_process(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{HERE}", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "engine_worker.py"), "ddp", str(tmp_path)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    # all_gather_with_grad with unequal sizes: rank 0 has 1 row of 1s, rank 1 two rows of 2s
    for rank in (0, 1):
        got = torch.load(tmp_path / f"gather_rank{rank}_world2.pt", weights_only=True)
        assert torch.equal(got["gathered"], torch.tensor([[1.0, 1.0], [2.0, 2.0], [2.0, 2.0]]))
        assert torch.equal(got["no_grad"], got["gathered"] * 10)
        assert got["offset"] == (0, 1)[rank]
        # both ranks' losses weight the gathered rows by arange: the local slice gets 2x its weights
        weights = torch.arange(6.0).reshape(3, 2)
        local = weights[:1] if rank == 0 else weights[1:]
        assert torch.equal(got["grad"], 2 * local)

    from engine_worker import ddp_cases

    ddp_cases(tmp_path)  # the same cases in this single process (world size 1)
    for kind in ("itc", "regression"):
        r0 = torch.load(tmp_path / f"{kind}_rank0_world2.pt", weights_only=True)
        r1 = torch.load(tmp_path / f"{kind}_rank1_world2.pt", weights_only=True)
        single = torch.load(tmp_path / f"{kind}_rank0_world1.pt", weights_only=True)
        assert r0.keys() == single.keys()
        for k in r0:
            if k == "task.running_loss":  # a rank-local statistic of the toy task, not synchronised
                continue
            assert torch.equal(r0[k], r1[k]), f"{kind}: {k} differs between ranks"
            if k.startswith("task.queue.") and k.endswith(("image", "text")):
                # same features, enqueued in rank order rather than sample order: compare as sets
                proj = torch.linspace(1.0, 2.0, r0[k].shape[1])  # rows are unit vectors: sort by a projection
                a = r0[k][(r0[k] @ proj).argsort()]
                b = single[k][(single[k] @ proj).argsort()]
                assert torch.allclose(a, b, atol=1e-6), f"{kind}: {k}"
                continue
            assert torch.allclose(r0[k].float(), single[k].float(), atol=1e-6, rtol=1e-5), (
                f"{kind}: {k} DDP vs single max diff {(r0[k].float() - single[k].float()).abs().max()}"
            )
        init = {"itc": ("image_enc.weight",), "regression": ("backbone.weight",)}[kind]
        for k in init:  # the comparison is meaningful only if training moved the weights
            from engine_toys import DualEncoder, ToyModel

            fresh = (DualEncoder() if kind == "itc" else ToyModel()).state_dict()[k]
            assert not torch.allclose(r0[k], fresh, atol=1e-4)


def test_coarse_step_draws_the_same_hard_negatives_at_any_world_size(tmp_path: Path) -> None:
    """fiber-tiny's coarse step on 8 pairs: 2 gloo processes with 4 pairs each choose exactly the
    ITM hard negatives (and MLM masks and word swaps) one process chooses with all 8, in both of two steps, and
    give its losses and (DDP-averaged) gradients up to float rounding. The batch has pairs of one
    image on different ranks, and ranks whose texts are padded to different lengths."""
    single = subprocess.run([sys.executable, str(HERE / "ddp_worker.py"), "coarse", str(tmp_path)], env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr[-3000:]
    res = subprocess.run([*TORCHRUN, str(HERE / "ddp_worker.py"), "coarse", str(tmp_path)], env=_env(),
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    one = torch.load(tmp_path / "coarse_rank0_world1.pt", weights_only=True)
    r0, r1 = (torch.load(tmp_path / f"coarse_rank{r}_world2.pt", weights_only=True) for r in (0, 1))
    for step in (0, 1):
        for kind in ("neg_text", "neg_image"):
            chosen = torch.cat([r0[f"{kind}.{step}"], r1[f"{kind}.{step}"]])
            assert torch.equal(chosen, one[f"{kind}.{step}"]), (kind, step, chosen, one[f"{kind}.{step}"])
            assert chosen[0] != 7 and chosen[7] != 0 and chosen[3] != 4 and chosen[4] != 3  # same image
        for key in ("loss", "itc", "itm", "mlm", "itm_swap"):  # each rank's loss is a mean over its half
            both = (r0[f"{key}.{step}"] + r1[f"{key}.{step}"]) / 2
            torch.testing.assert_close(both, one[f"{key}.{step}"], rtol=1e-5, atol=0, msg=f"{key} at step {step}")
        grads = [k for k in one if k.startswith("grad.") and k.endswith(f".{step}")]
        assert grads and set(grads) == {k for k in r0 if k.startswith("grad.") and k.endswith(f".{step}")}
        largest = max(one[k].abs().max().item() for k in grads)
        for k in grads:
            assert torch.equal(r0[k], r1[k]), k
            # the same sums in other orders (4 rows instead of 8): float rounding only
            torch.testing.assert_close(r0[k], one[k], rtol=1e-4, atol=1e-5 * largest, msg=k)
    assert not torch.equal(one["neg_text.0"], one["neg_text.1"])  # each step draws anew
    assert one["itm_swap.0"] > 0.1  # the captions were swapped and scored


TRAIN_ARGS = ["max_steps=12", "batch_size=4", "grad_accum_steps=2", "ckpt_every=3", "keep_last=0", "clip_grad_norm=1.0",
              "optim.lr=1e-2", "schedule.warmup=2", "log_every=1", "progress_bar=false", "device=cpu", "seed=3"]


def _start_training(run_dir: Path, *more: str, torchrun: tuple[str, ...] = (), **env: str) -> subprocess.Popen:
    """The toy regression under torchrun, 2 gloo processes; 5 micro-batches of 4 per rank and
    epoch in windows of 2, 2 and 1, so steps 7, 8, 9 are micro-steps 11-12, 13-14, 15."""
    return subprocess.Popen([*TORCHRUN, *torchrun, str(HERE / "ddp_worker.py"), "train", f"run_dir={run_dir}",
                             *TRAIN_ARGS, *more], env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str, float]:
    """Return code, output and the time it ended."""
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"torchrun still running after 90 s: {proc.communicate()[1][-3000:]}")
    return proc.returncode, out + err, time.time()


def _final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    ck = run_dir / "checkpoints" / "step_00000012"
    out = {f"model.{k}": v for k, v in load_file(str(ck / "model.safetensors")).items()}
    state = torch.load(ck / "state.pt", weights_only=True)
    out.update({f"task.{k}": v for k, v in state["task"].items()})
    for i, st in state["optimizer"]["state"].items():
        out.update({f"adam.{i}.{k}": v for k, v in st.items()})
    return out


def test_a_killed_worker_stops_the_job_which_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    """Rank 0 (the one that writes checkpoints) SIGKILLs itself inside step 8 of 12, checkpoints
    every 3 steps. torchrun names the dead worker; the survivor stops at once (gloo sees the
    closed connection; nobody waits for the process group timeout or torchrun's 30 s SIGTERM
    grace) and says that a worker died and how to resume; resuming from step 6 ends with the
    weights, optimizer and task state of an uninterrupted two-process run (run alongside). So
    does a torchrun that restarts the workers itself (--max-restarts, resume=auto; its store
    must not be shared with the workers' process group, pytorch#135712)."""
    run_dir, stamp = tmp_path / "killed", tmp_path / "death"
    whole = _start_training(tmp_path / "whole")
    # (restarted at step 6, the workers take 10 more micro-steps: rank 1 does not reach its 14th again)
    restarted = _start_training(tmp_path / "restarted", "resume=auto", torchrun=("--max-restarts", "1"),
                                DIE_AT_MICRO_STEP="14", DIE_RANK="1", DIE_STAMP=str(tmp_path / "death2"),
                                TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    killed = _start_training(run_dir, DIE_AT_MICRO_STEP="14", DIE_RANK="0", DIE_STAMP=str(stamp))
    rc, log, ended = _finish(killed)
    assert rc != 0 and stamp.is_file(), log[-3000:]
    assert ended - float(stamp.read_text()) < 10, ended - float(stamp.read_text())
    assert "exitcode  : -9" in log and "Signal 9 (SIGKILL) received by PID" in log, log[-3000:]  # torchrun
    last = run_dir / "checkpoints" / "step_00000006"
    assert ("rank 1 stopped in step 8: another worker died or stopped answering (RuntimeError: " in log
            and f"The last checkpoint is {last}. To continue from it, start the same command again with --resume" in log), log[-3000:]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == last.name
    rc, whole_log, _ = _finish(whole)
    assert rc == 0, whole_log[-3000:]
    rc, restarted_log, _ = _finish(restarted)
    assert rc == 0 and "rank 0 stopped in step 8: another worker died" in restarted_log, restarted_log[-3000:]
    assert "resumed from" in restarted_log and "at step 6" in restarted_log, restarted_log[-3000:]
    rc, log, _ = _finish(_start_training(run_dir, "--resume"))
    assert rc == 0 and f"resumed from {last} at step 6" in log, log[-3000:]
    want = _final_state(tmp_path / "whole")
    for name in ("killed", "restarted"):
        got = _final_state(tmp_path / name)
        assert want.keys() == got.keys()
        for k in want:
            assert torch.equal(got[k], want[k]), (name, k)


def test_the_stop_message_tells_a_lost_worker_from_an_error_of_its_own(tmp_path: Path) -> None:
    from fibervl.engine.distributed import stopped_worker_message

    lost = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv operation")
    text = stopped_worker_message(lost, 4, tmp_path / "step_00000003", tmp_path)
    assert text.startswith("rank 0 stopped in step 5: another worker died or stopped answering (RuntimeError: [gloo")
    assert f"The last checkpoint is {tmp_path / 'step_00000003'}. To continue from it" in text
    own = stopped_worker_message(ValueError("shapes differ\nmore lines"), 0, None, tmp_path)
    assert own == (f"rank 0 stopped in step 1: ValueError: shapes differ. No checkpoint has been written in "
                   f"{tmp_path} yet: the run must start again.")
