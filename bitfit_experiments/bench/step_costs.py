"""What one training step must cost at least, measured on the real model and batch: used by benchmark.py to show
where the time and the memory go (and so which speed/memory targets a machine can reach at a given batch size).

- `linear_shapes`: the (rows, in, out) of every nn.Linear call in one forward pass of a batch, recorded with forward
  hooks (no guessing from the architecture: padding, the pooler's one row per sequence, everything as it runs).
- `gemm_floor_sec`: the time of exactly those matrix products, run alone on random tensors of the same shapes and
  dtype: forward X W^T; when anything below needs gradients, the activation gradient dY W; for full fine-tuning
  also the weight gradient dY^T X. A step can not be faster than this without a faster GEMM, so
  (FLOPs of those products) / (this time) is the share of the machine's matmul peak reachable at these shapes.
- `tensor_footprint`: bytes of the tensors a step keeps alive -- weights, gradients of the trainable parameters,
  optimizer state, and the activations autograd saves for backward (counted with saved_tensors_hooks, storages
  deduplicated, views of parameters excluded). This is what `torch.cuda.max_memory_allocated` sees on a GPU
  (an upper bound of it: gradients appear while saved activations are being freed), without the ~0.5 GB of
  libraries and allocator slack that a CPU process's RSS adds to every fine-tune type alike.

Layer: bench.
"""
import time

import torch


def linear_shapes(model, batch):
    """[(rows, in_features, out_features, weight_trains)] of every Linear call in one forward
    (eval mode, no autograd graph kept: the shapes do not depend on either)."""
    shapes, handles = [], []

    def hook(module, inputs, output):
        x = inputs[0]
        shapes.append((x.numel() // module.in_features, module.in_features, module.out_features,
                       module.weight.requires_grad))

    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            handles.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return shapes


def gemm_plan(shapes, fine_tune_type):
    """The matrix products (m, k, n) of one training step: forward, activation gradients when some parameter
    below a layer trains (every type but frozen), weight gradients when the layer's weight trains."""
    plan = []
    for rows, fan_in, fan_out, weight_trains in shapes:
        plan.append((rows, fan_in, fan_out))               # Y = X W^T
        if fine_tune_type != "frozen":
            plan.append((rows, fan_out, fan_in))           # dX = dY W
        if weight_trains:
            plan.append((fan_out, rows, fan_in))           # dW = dY^T X
    return plan


def gemm_floor_sec(plan, device, dtype=torch.float32, repeats=3):
    """Fastest of `repeats` runs of every product in `plan`, back to back; also returns their FLOPs."""
    operands = [(torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype))
                for m, k, n in plan]
    flops = sum(2 * m * k * n for m, k, n in plan)
    best = float("inf")
    for _ in range(repeats + 1):  # the first run warms up the GEMM kernels' workspaces
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for a, b in operands:
            torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, flops


def saved_activation_bytes(model, batch, loss_fn, autocast):
    """Bytes autograd saves for backward in one training forward of `batch` (distinct storages, parameters and
    their views excluded). The graph is dropped without a backward."""
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    was_training = model.training
    model.train()
    try:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
            loss = loss_fn(model(**inputs).logits, batch["labels"])
        del loss
    finally:
        model.train(was_training)
    return sum(saved.values())


def tensor_footprint(model, optimizer, batch, loss_fn, autocast):
    """MB of weights (+ buffers), gradients of trainable parameters, optimizer state and saved activations."""
    mb = 2 ** 20
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    state = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
                if torch.is_tensor(v))
    saved = saved_activation_bytes(model, batch, loss_fn, autocast)
    out = {"weights_mb": weights / mb, "grads_mb": grads / mb, "optimizer_state_mb": state / mb,
           "saved_activations_mb": saved / mb}
    out["total_mb"] = sum(out.values())
    return out
