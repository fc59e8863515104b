"""FSDP2 (``fully_shard``): two gloo ranks on CPU, masks as DTensors.

One 2-rank run (tiny BERT and a small MLP; ~20 s of CPU, half of it imports) writes
its findings to a JSON file; the tests below check them. Launcher as in test_optim_ddp.py: a script run
in a subprocess with a timeout, so a hang fails instead of blocking CI; it imports once and forks the
two ranks (``start_method="fork"``) rather than spawning, which halves the CPU time.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

RECIPE = {"name": "fsdp", "pruning": [
    # 2:4 on the attention projections (rows split across ranks, groups whole: shard-local)
    {"name": "attn", "pattern": {"type": "nm", "n": 2, "m": 4},
     "targets": {"include": [r"attention\.self\.(query|key|value)$"]},
     "schedule": {"type": "oneshot", "at_step": 0}, "refresh_every": 2},
    # SR-STE transposable 2:4 on the FFN input (128 rows -> 64 per rank: tiles whole: shard-local)
    {"name": "ffn", "pattern": {"type": "nm", "n": 2, "m": 4, "transposable": True, "solver": "exact"},
     "method": {"type": "srste", "lambda": 0.01},
     "targets": {"include": [r"intermediate\.dense$"]},
     "schedule": {"type": "oneshot", "at_step": 2}, "refresh_every": 1},
    # unstructured ranks the whole weight: gathered for the mask computation
    {"name": "out", "pattern": {"type": "unstructured", "sparsity": 0.6},
     "targets": {"include": [r"output\.dense$"], "exclude": [r"attention"]},
     "schedule": {"type": "oneshot", "at_step": 1}, "refresh_every": 3}]}


SCRIPT = textwrap.dedent(r'''
    import json, os, sys, traceback
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    RECIPE = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipe.json")))

    def shard(model, mesh):
        from torch.distributed.fsdp import fully_shard
        for layer in model.bert.encoder.layer:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model

    def mean_loss(loss):
        t = loss.detach().clone()
        dist.all_reduce(t)
        return float(t) / dist.get_world_size()

    def train(model, opt, steps, first, rank, loss_of, batch):
        losses = []
        for step in range(first, first + steps):
            x, y = batch(100 * rank + step)
            loss = loss_of(model, x, y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(mean_loss(loss))
        return losses

    def full_masks(opt):
        return {k: (m.full_tensor() if hasattr(m, "full_tensor") else m) for k, m in opt.masks.items()}

    def worker(rank, world, port, out):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        torch.set_num_threads(1)
        res = {}
        try:
            run(rank, world, out, res)
        except Exception:
            res["error"] = traceback.format_exc()
        with open(f"{out}.{rank}.json", "w") as f:
            json.dump(res, f)
        dist.barrier()
        dist.destroy_process_group()
        os._exit(0)  # torch 2.14's gloo teardown at exit sometimes aborts (see test_optim_ddp.py)

    def run(rank, world, out, res):
        import time
        t0 = time.perf_counter()
        def lap(what):
            res.setdefault("laps", []).append((what, round(time.perf_counter() - t0, 2)))
        from torch.distributed.tensor import DTensor, init_device_mesh
        from testkit import make_tiny_bert, batch, loss_of
        from sparse.optim import SparseOptimizer
        from sparse.pruning.patterns import pattern_from_recipe
        from sparse.recipe import load_recipe
        from sparse.distributed.checkpoint import save_sharded, load_sharded, save_full_pretrained
        mesh = init_device_mesh("cpu", (world,))
        recipe = load_recipe(RECIPE)
        patterns = {e.name: pattern_from_recipe(e.pattern) for e in recipe.pruning}

        # --- masks at construction (oneshot at step 0) equal the single-process masks of the same init
        plain = make_tiny_bert()
        plain_opt = SparseOptimizer(torch.optim.AdamW(plain.parameters(), lr=1e-2), plain, recipe)
        model = shard(make_tiny_bert(), mesh)
        opt = SparseOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-2), model, recipe)
        masks = opt.masks
        res["dtensor_masks"] = all(isinstance(m, DTensor) and m.placements == model.get_parameter(k).placements
                                   for k, m in masks.items())
        res["init_equal"] = sorted(masks) == sorted(plain_opt.masks) and all(
            torch.equal(masks[k].full_tensor(), plain_opt.masks[k]) for k in masks)
        res["sharding"] = {r["fqn"]: r["sharding"] for r in opt.report()}

        lap('init')
        # --- FSDP run vs DDP run: same data per rank, same recipe, same init
        ddp = torch.nn.parallel.DistributedDataParallel(make_tiny_bert())
        ddp_opt = SparseOptimizer(torch.optim.AdamW(ddp.parameters(), lr=1e-2), ddp, recipe)
        res["ddp_losses"] = train(ddp, ddp_opt, 6, 0, rank, loss_of, batch)
        ddp_masks = {k[len("module."):]: m.clone() for k, m in ddp_opt.masks.items()}
        res["ddp_losses"] += train(ddp, ddp_opt, 2, 6, rank, loss_of, batch)
        res["fsdp_losses"] = train(model, opt, 6, 0, rank, loss_of, batch)
        # masks of the same weights: each entry's mask recomputed from the gathered weight on one rank
        fm = full_masks(opt)
        res["local_rows"] = {k: m.to_local().shape[0] for k, m in opt.masks.items()}
        ok = {}
        for t in opt._targets:
            src = t.mask_source().full_tensor()
            ok[t.fqn] = bool(torch.equal(patterns[t.entry.name].mask(src, t.sparsity), fm[t.fqn]))
        res["same_weights_equal"] = ok  # refresh at step 6 for every entry: the masks of the current weights
        res["report_valid"] = all(r["valid"] for r in opt.report())
        # DDP's weights differ from these by float rounding (sum order of the gradient average): masks
        # agree up to near-ties
        res["ddp_mask_agreement"] = {k: float((fm[k] == ddp_masks[k]).float().mean()) for k in fm}

        lap('train')
        # --- sharded checkpoint at step 6, then 2 more steps; a fresh model resumes and repeats them
        ck = out + "_ckpt"
        save_sharded(ck, model, opt)
        if rank == 0:
            torch.save({k: v for k, v in fm.items()}, out + "_masks.pt")
            x, y = batch(100 * 0 + 6)
            torch.save({"x": x, "y": y}, out + "_batch.pt")
        with torch.no_grad():
            res["loss_at_6"] = float(loss_of(model, *batch(100 * rank + 6)))
        res["after_save_losses"] = train(model, opt, 2, 6, rank, loss_of, batch)
        model2 = shard(make_tiny_bert(seed=5), mesh)
        opt2 = SparseOptimizer(torch.optim.AdamW(model2.parameters(), lr=1e-2), model2, recipe)
        load_sharded(ck, model2, opt2)
        res["resumed_step"] = opt2.step_count
        res["resumed_masks_equal"] = all(torch.equal(m, fm[k]) for k, m in full_masks(opt2).items())
        res["resumed_losses"] = train(model2, opt2, 2, 6, rank, loss_of, batch)
        save_full_pretrained(model2, out + "_hf")

        lap('ckpt')
        # --- the Hugging Face Trainer callback, driven by transformers' CallbackHandler in the Trainer's
        # event order, on an FSDP2 model (what accelerate hands the callbacks with FSDP2 on GPUs)
        from transformers.trainer_callback import CallbackHandler, TrainerControl, TrainerState
        from sparse.integrations.hf_trainer import SparseTrainerCallback
        hf = shard(make_tiny_bert(), mesh)
        hopt = torch.optim.AdamW(hf.parameters(), lr=1e-2)
        cb = SparseTrainerCallback({"name": "cb", "pruning": [{
            "pattern": {"type": "nm", "n": 2, "m": 4, "transposable": True, "solver": "exact"},
            "schedule": {"type": "oneshot", "at_step": 1}, "refresh_every": 2}]})
        handler = CallbackHandler([cb], hf, None, hopt, None)
        state, control = TrainerState(), TrainerControl()
        handler.on_train_begin(None, state, control)
        for step in range(3):
            loss_of(hf, *batch(100 * rank + step)).backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
            handler.on_pre_optimizer_step(None, state, control)
            hopt.step()
            handler.on_optimizer_step(None, state, control)
            hopt.zero_grad()
        res["callback"] = {"step": cb.sparse.step_count, "n": len(cb.sparse.masks),
                           "dtensor": all(isinstance(m, DTensor) for m in cb.sparse.masks.values()),
                           "valid": all(r["valid"] for r in cb.sparse.report())}
        lap("callback")

        # --- small MLP: 200 steps with refreshes; and the error when gathering is disabled
        torch.manual_seed(0)
        mlp = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16),
                                  torch.nn.ReLU(), torch.nn.Linear(16, 12))
        from torch.distributed.fsdp import fully_shard
        fully_shard(mlp, mesh=mesh)
        mlp_recipe = {"name": "mlp", "pruning": [
            {"name": "t", "pattern": {"type": "nm", "n": 2, "m": 4, "transposable": True, "solver": "exact"},
             "method": {"type": "srste"}, "targets": {"include": [r"^0$"]},
             "schedule": {"type": "oneshot", "at_step": 0}, "refresh_every": 7},
            {"name": "nm", "pattern": {"type": "nm", "n": 1, "m": 4}, "targets": {"include": [r"^2$"]},
             "schedule": {"type": "oneshot", "at_step": 0}, "refresh_every": 5},
            {"name": "blk", "pattern": {"type": "block", "block": [4, 4], "sparsity": 0.5},
             "targets": {"include": [r"^4$"]},
             "schedule": {"type": "cubic", "initial_sparsity": 0.0, "start_step": 0, "end_step": 100,
                          "frequency": 10}, "refresh_every": 10}]}
        mopt = SparseOptimizer(torch.optim.SGD(mlp.parameters(), lr=0.05, momentum=0.9), mlp, mlp_recipe)
        g = torch.Generator().manual_seed(rank)
        first = None
        for step in range(200):
            x = torch.randn(16, 32, generator=g)
            loss = (mlp(x) - x[:, :12]).pow(2).mean()
            loss.backward()
            mopt.step()
            mopt.zero_grad()
            first = first if first is not None else mean_loss(loss)
        rows = mopt.report()
        res["mlp"] = {"step": mopt.step_count, "valid": [r["valid"] for r in rows],
                      "mask_sparsity": [round(r["mask_sparsity"], 4) for r in rows],
                      "sharding": [r["sharding"] for r in rows], "first": first, "last": mean_loss(loss)}
        lap('mlp')
        errors = {}
        for name, pattern in (("tiles", {"type": "nm", "n": 2, "m": 4, "transposable": True}),
                              ("unstructured", {"type": "unstructured", "sparsity": 0.5})):
            try:  # layer 4 is [12, 16]: 6 rows per rank, tiles of 4 rows straddle the boundary
                SparseOptimizer(torch.optim.SGD(mlp.parameters(), lr=0.1), mlp,
                                {"pruning": [{"pattern": pattern, "targets": {"include": [r"^4$"]}}]},
                                allow_gather=False)
                errors[name] = None
            except ValueError as exc:
                errors[name] = str(exc)
        res["errors"] = errors

    if __name__ == "__main__":
        import socket
        sys.path.insert(0, sys.argv[2])
        s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
        # import once here and fork: the ranks inherit the imports (no process group exists yet)
        import transformers.models.bert.modeling_bert, sparse.optim, sparse.distributed.checkpoint  # noqa: F401
        import testkit, torch.distributed.fsdp, transformers.trainer_callback  # noqa: F401
        mp.start_processes(worker, args=(2, port, sys.argv[1]), nprocs=2, join=True, start_method="fork")
''')


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/: testkit.py
    script = tmp / "fsdp_script.py"
    script.write_text(SCRIPT)
    (tmp / "recipe.json").write_text(json.dumps(RECIPE))
    out = str(tmp / "run")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [here, os.path.dirname(here), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script), out, here], capture_output=True, text=True, timeout=300,
                          env=env, cwd=here)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = [json.loads(open(f"{out}.{r}.json").read()) for r in range(2)]
    for r in res:
        assert "error" not in r, r["error"]
    return out, res


def test_masks_are_dtensors_equal_to_single_process(fsdp_run):
    _, res = fsdp_run
    for r in res:
        assert r["dtensor_masks"] and r["init_equal"]
        assert all(r["same_weights_equal"].values()), r["same_weights_equal"]
        assert r["report_valid"]
    rows = res[0]["local_rows"]
    assert rows["bert.encoder.layer.0.attention.self.query.weight"] == 32  # 64 rows, half per rank
    assert rows["bert.encoder.layer.0.intermediate.dense.weight"] == 64
    sharding = res[0]["sharding"]
    assert sharding["bert.encoder.layer.1.attention.self.key.weight"] == "shard-local"
    assert sharding["bert.encoder.layer.1.intermediate.dense.weight"] == "shard-local"
    assert sharding["bert.encoder.layer.1.output.dense.weight"].startswith("gathered (pattern unstructured 60%")


def test_loss_trajectory_matches_ddp(fsdp_run):
    _, res = fsdp_run
    fsdp, ddp = res[0]["fsdp_losses"] + res[0]["after_save_losses"], res[0]["ddp_losses"]
    assert len(fsdp) == len(ddp) == 8
    assert max(abs(a - b) for a, b in zip(fsdp, ddp)) < 1e-4, (fsdp, ddp)
    agreement = res[0]["ddp_mask_agreement"]
    assert len(agreement) == 10 and min(agreement.values()) > 0.99, agreement


def test_resume_from_sharded_checkpoint(fsdp_run):
    _, res = fsdp_run
    for r in res:
        assert r["resumed_step"] == 6 and r["resumed_masks_equal"]
        assert r["resumed_losses"] == r["after_save_losses"]  # the same steps on the same state: bit-equal


def test_sharded_checkpoint_loads_in_one_process(fsdp_run):
    """Another number of ranks: the 2-rank checkpoint resumes in this (non-distributed) process."""
    from testkit import loss_of, make_tiny_bert

    from sparse.distributed.checkpoint import load_sharded
    from sparse.optim import SparseOptimizer

    out, res = fsdp_run
    model = make_tiny_bert(seed=3)
    opt = SparseOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-2), model, RECIPE)
    load_sharded(out + "_ckpt", model, opt)
    saved = torch.load(out + "_masks.pt", weights_only=True)
    assert opt.step_count == 6 and sorted(opt.masks) == sorted(saved)
    assert all(torch.equal(opt.masks[k], saved[k]) for k in saved)
    assert all(r["valid"] for r in opt.report())
    b = torch.load(out + "_batch.pt", weights_only=True)
    with torch.no_grad():
        loss = float(loss_of(model, b["x"], b["y"]))
    assert abs(loss - res[0]["loss_at_6"]) < 1e-5  # the same weights as rank 0 at step 6


def test_full_hf_folder_from_sharded_model(fsdp_run):
    from transformers import BertForSequenceClassification

    out, _ = fsdp_run
    model = BertForSequenceClassification.from_pretrained(out + "_hf")
    saved = torch.load(out + "_masks.pt", weights_only=True)
    w = dict(model.named_parameters())
    for k, m in saved.items():  # the weights inside the masks saved before the last two steps (refreshed since)
        assert w[k].shape == m.shape
    assert float((w["bert.encoder.layer.0.attention.self.query.weight"] == 0).float().mean()) == 0.5


def test_200_steps_with_refresh_keep_masks_valid(fsdp_run):
    _, res = fsdp_run
    for r in res:
        mlp = r["mlp"]
        assert mlp["step"] == 200 and all(mlp["valid"]), mlp
        assert mlp["mask_sparsity"] == [0.5, 0.75, 0.5]
        assert mlp["sharding"][:2] == ["shard-local", "shard-local"] and mlp["sharding"][2].startswith("gathered")
        assert mlp["last"] < mlp["first"]


def test_trainer_callback_on_fsdp2_model(fsdp_run):
    _, res = fsdp_run
    for r in res:
        assert r["callback"] == {"step": 3, "n": 12, "dtensor": True, "valid": True}


def test_gather_disabled_error_names_layer_and_reason(fsdp_run):
    _, res = fsdp_run
    errors = res[0]["errors"]
    assert "cannot be computed shard-locally" in errors["tiles"] and "allow_gather=True" in errors["tiles"]
    assert "6 rows" in errors["tiles"] and "m=4" in errors["tiles"] and "4.weight" in errors["tiles"]
    assert "ranks the whole weight" in errors["unstructured"]


