"""DDP: two gloo ranks on CPU derive identical masks (fqns carry DDP's 'module.' prefix)."""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(r'''
    import os, sys
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    def worker(rank, world, port, out, helpers):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        torch.set_num_threads(1)
        sys.path.insert(0, helpers)
        from testkit import make_tiny_bert, batch, loss_of
        from sparse.optim import SparseOptimizer
        model = torch.nn.parallel.DistributedDataParallel(make_tiny_bert())
        opt = SparseOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-2), model, {"name": "ddp", "pruning": [{
            "pattern": {"type": "nm", "n": 2, "m": 4, "transposable": True, "solver": "exact"},
            "targets": {"include": [r"encoder\.layer"]},
            "schedule": {"type": "oneshot", "at_step": 2}, "refresh_every": 2}]})
        for step in range(5):
            x, y = batch(100 * rank + step)  # different data per rank: DDP averages the gradients
            loss_of(model, x, y).backward()
            opt.step()
            opt.zero_grad()
        masks = opt.masks
        assert len(masks) == 12 and all(k.startswith("module.bert.encoder.layer.") for k in masks)
        flat = torch.cat([m.flatten() for _, m in sorted(masks.items())]).to(torch.uint8)
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        same = all(torch.equal(g, gathered[0]) for g in gathered)
        w = torch.cat([p.detach().flatten() for p in model.parameters()])
        ws = [torch.zeros_like(w) for _ in range(world)]
        dist.all_gather(ws, w)
        if rank == 0:
            with open(out + ".res", "w") as f:
                f.write(f"{same} {all(torch.equal(a, ws[0]) for a in ws)} {opt.step_count}")
        dist.barrier()
        dist.destroy_process_group()
        # torch 2.14's gloo teardown at interpreter exit sometimes aborts ("terminate called without an
        # active exception", ~1 run in 25, after destroy_process_group returned); the result is written.
        os._exit(0)

    if __name__ == "__main__":
        import socket
        s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
        mp.spawn(worker, args=(2, port, sys.argv[1], sys.argv[2]), nprocs=2, join=True)
''')


def test_ddp_ranks_agree_on_masks(tmp_path):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/: testkit.py
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT)
    res = tmp_path / "result"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(res.with_suffix("")), here], capture_output=True, text=True,
                          timeout=240, env=env, cwd=here)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert res.with_suffix(".res").read_text() == "True True 5"
