"""Where a textual-inversion step's time goes at small batches: the GPU's kernels, or the host launching them.

    python -m benchmarks.step_overhead --arch sd15 --batch 1 8 32      # on a GPU
    python -m benchmarks.step_overhead --arch tiny --batch 2           # anywhere (no graph rows on the CPU)

One step here is what the trainer's step computes, without the trainer around it: the text encoder's forward with
a learned offset on its token embeddings, the UNet's forward, the loss and the backward to that offset (frozen
weights, no weight gradients). Rows, side by side on one model:
- `eager`: the step as PyTorch runs it, the device synchronised only where the clock is read;
- `kernels`: the sum of the step's GPU kernel times and their count (torch.profiler, one step): the GPU's busy
  time, so `eager` over `kernels` is how much of the step the GPU waits on the host;
- `graph`: the same step captured once as a CUDA graph and replayed (no compile: PyTorch's own capture), with the
  relative difference of its gradient from the eager one's on the same inputs, so a capture that computes
  something else shows; captured with and without the text encoder, in case one of them cannot be captured.
On an H200 (2026-12-04, BENCHMARKS.md) the eager step at batch 1 took 86 ms of which its kernels ran 21: the host's
launches of ~3,000 kernels set the time below batch ~24, and the captured graph ran 4x faster at 1, 1.5x at 8.
"""

from __future__ import annotations

import argparse
import datetime
import time

import torch
import torch.nn.functional as F

from .architectures import build


class _Hooks(list):
    """The forward hooks a step installed, removed together."""

    def remove(self) -> None:
        for hook in self:
            hook.remove()


def text_encoders(pipe) -> list:
    """The pipeline's text encoders: SD's one, SDXL's two."""
    return [te for te in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if te is not None]


def make_step(pipe, batch: int, with_text: bool, device: str, dtype: torch.dtype):
    """(step, offset, hooks): `step()` runs one forward and backward; the gradient lands in `offset.grad`, one
    learned offset on every text encoder's token embeddings (SDXL's two: the offset is their widths side by side),
    or with `with_text` False on the UNet's context. `hooks.remove()` takes the offset out of the encoders."""
    unet = pipe.unet
    encoders = text_encoders(pipe)
    xl = len(encoders) == 2
    size = unet.config.sample_size  # (SD 1.5's 64: 512x512 pictures; SDXL's 128: 1024x1024)
    g = torch.Generator(device="cpu").manual_seed(0)
    latents = torch.randn(batch, unet.config.in_channels, size, size, generator=g).to(device, dtype)
    noise = torch.randn(latents.shape, generator=g).to(device, dtype)
    timesteps = torch.randint(0, 1000, (batch,), generator=g).to(device)
    length = pipe.tokenizer.model_max_length
    ids = torch.randint(0, encoders[0].config.vocab_size, (batch, length), generator=g).to(device)
    widths = [te.config.hidden_size for te in encoders]
    extra = {}
    if xl:  # SDXL's size and crop conditioning: the pictures' size, uncropped
        pixels = size * pipe.vae_scale_factor
        time_ids = torch.tensor([[pixels, pixels, 0, 0, pixels, pixels]] * batch).to(device, dtype)
    hooks = _Hooks()
    if with_text:
        offset = torch.zeros(1, length, sum(widths), device=device, dtype=dtype, requires_grad=True)
        edges = [sum(widths[:i]) for i in range(len(widths) + 1)]
        for te, a, b in zip(encoders, edges, edges[1:]):
            hooks.append(te.get_input_embeddings().register_forward_hook(
                lambda m, i, out, a=a, b=b: out + offset[..., a:b]))

        def context():
            if not xl:
                return encoders[0](ids)[0], extra
            outs = [te(ids, output_hidden_states=True) for te in encoders]  # (as the SDXL pipeline conditions)
            extra["added_cond_kwargs"] = {"text_embeds": outs[1].text_embeds, "time_ids": time_ids}
            return torch.cat([out.hidden_states[-2] for out in outs], dim=-1), extra
    else:
        hidden = torch.randn(batch, length, unet.config.cross_attention_dim, generator=g).to(device, dtype)
        offset = torch.zeros_like(hidden, requires_grad=True)
        if xl:
            pooled = torch.randn(batch, widths[1], generator=g).to(device, dtype)
            extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}

        def context():
            return hidden + offset, extra

    def step():
        hidden_states, kwargs = context()
        pred = unet(latents, timesteps, hidden_states, **kwargs).sample
        F.mse_loss(pred.float(), noise.float()).backward()

    return step, offset, hooks


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def eager_ms(step, offset, device: str, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        offset.grad = None
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        offset.grad = None
        step()
    _sync(device)
    return (time.perf_counter() - started) / steps * 1e3


def kernel_ms(step, offset, top: int = 0) -> tuple[float, int]:
    """(sum of the GPU kernels' times in ms, their count) over one step; `top` > 0 prints the kernels that took
    the most time (summed over their calls)."""
    from torch.profiler import ProfilerActivity, profile

    offset.grad = None
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    if top:
        total: dict[str, list[float]] = {}
        for e in kernels:
            entry = total.setdefault(e.name, [0.0, 0])
            entry[0] += e.device_time / 1e3
            entry[1] += 1
        for name, (ms, calls) in sorted(total.items(), key=lambda kv: -kv[1][0])[:top]:
            print(f"#   {ms:8.2f} ms {calls:5d}x  {name[:110]}", flush=True)
    return sum(e.device_time for e in kernels) / 1e3, len(kernels)


def graph_ms(step, offset, steps: int) -> tuple[float, float]:
    """(ms per replay of the captured step, relative difference of its gradient from an eager step's)."""
    offset.grad = None
    step()
    reference = offset.grad.detach().float().clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
        for _ in range(3):
            offset.grad = None
            step()
    torch.cuda.current_stream().wait_stream(side)
    offset.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    graph.replay()
    torch.cuda.synchronize()
    diff = ((offset.grad.float() - reference).norm() / reference.norm().clamp(min=1e-30)).item()
    started = time.perf_counter()
    for _ in range(steps):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps * 1e3, diff


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("tiny", "tiny-xl", "sd15", "sdxl"), default="sd15")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--top", type=int, default=15, help="list the N kernels that took the most time, at the largest "
                   "batch with the text encoder (0: none)")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    pipe = build(args.arch, device, dtype)
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"# step_overhead {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC arch={args.arch} "
          f"device={name} dtype={dtype} torch={torch.__version__}", flush=True)
    print(f"{'batch':>5} {'text':>5} {'eager ms':>9} {'kernels ms':>10} {'kernels':>8} {'graph ms':>9} "
          f"{'graph/eager':>11} {'grad diff':>9}", flush=True)
    for batch in args.batch:
        for with_text in (True, False):
            step, offset, hook = make_step(pipe, batch, with_text, device, dtype)
            row = f"{batch:>5} {'yes' if with_text else 'no':>5}"
            try:
                eager = eager_ms(step, offset, device, args.warmup, args.steps)
                row += f" {eager:>9.1f}"
                if cuda:
                    try:
                        shown = args.top if with_text and batch == max(args.batch) else 0
                        busy, count = kernel_ms(step, offset, shown)
                        row += f" {busy:>10.1f} {count:>8}"
                    except Exception as e:  # noqa: BLE001 (the profiler's failure leaves the graph row)
                        row += f" {'-':>10} {'-':>8}"
                        print(f"# profiler failed: {type(e).__name__}: {e}", flush=True)
                    replay, diff = graph_ms(step, offset, args.steps)
                    row += f" {replay:>9.1f} {eager / replay:>10.2f}x {diff:>9.1e}"
            except Exception as e:  # noqa: BLE001 (the row says what failed; the next still runs)
                row += f"   failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            finally:
                hook.remove()
            print(row, flush=True)
            if cuda:
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
