"""PyTorch side of `cargo xtask bench diffusion`, `cargo xtask bench decomp` and `cargo xtask bench image`.

Times the same workloads as `benches/benches/diffusion.rs`, `benches/benches/decomp.rs` and
`benches/benches/image.rs`
(the criterion suites of the Rust crates) with PyTorch on the CPU, with the same number of
threads. Suite `diffusion`:

* `mlp/train-step/batch=1000`: one Adam step of the 2-D residual MLP of Du et al. 2023;
* `mlp-energy/train-step/batch=1000`: the same network as an energy model, E = |g(x, t) - x|^2,
  with the MSE on eps_hat = dE/dx (`create_graph=True`: the backward pass differentiates an
  input gradient);
* `unet/forward/<cfg>/batch=48`: the improved-diffusion U-Net of Decomp Diffusion, forward
  pass under `torch.no_grad()` in eval mode (16 images x 3 components = 48 denoiser images);
* `unet/train-step/<cfg>/batch=16`: one Adam step of that U-Net with an x0-prediction MSE loss.

Suite `decomp` (the whole Decomp Diffusion model: latent encoder + shared U-Net, K = 3):

* `decomp/train-step/<cfg>/batch=16`: encoder in training mode (batch-norm batch statistics),
  the 3 factors as one batch of 48 denoiser images, mean over factors, x0 MSE, backward, Adam;
* `decomp/forward/<cfg>/batch=16`: the composed prediction from given latents, eval mode,
  no grad (one DDIM sampling step of 16 images);
* `decomp/encode/<cfg>/batch=16`: the encoder alone, eval mode, no grad.

Suite `image` (the text-conditioned U-Net of the image-composition recipe: text encoder,
coordinate channels, pooled prompt vector and cross-attention to the token states; as a score
model and as an energy model E = |g - x|^2 with eps_hat = dE/dx):

* `text-unet/train-step/batch=32`, `text-unet-energy/train-step/batch=32`: one Adam step of
  text encoder and U-Net with the eps MSE (the energy model's with `create_graph=True`);
* `text-unet/guided/chains=64`, `text-unet-energy/guided/chains=64`: one classifier-free-guided
  prediction for 64 chains (the empty prompt and the prompt encoded, the U-Net on 128 rows),
  without parameter gradients.

Each workload: 3 warm-up calls, then the median wall time of 10 calls (`time.perf_counter`).
The last line of stdout is one JSON object:
`{"torch": version, "threads": N, "results": {"<criterion group>/recompose": seconds, ...},
"background_cores": {"<same key>": cores}}`, where `background_cores` is the mean number of
cores other processes kept busy while that workload was timed (from /proc/stat; a timing taken
on a busy machine is repeated up to twice, and the quietest kept). Progress goes to stderr.

With `--serve`, the script instead serves the one workload `--only` selects (it must select
exactly one), so that `cargo xtask bench decomp` can interleave it with the Rust side a few
calls at a time while both processes stay warm: after 3 warm-up calls it prints `ready`, then
for each line holding a call count n it makes n calls and prints their wall times in seconds,
space-separated, on one line; it exits at the end of its input or on an empty line. This is
the protocol of the Rust server `bench-steps`.

With `--device cuda` (or `cuda:N`) every model and tensor lives on that GPU: float32 with TF32
off, cuDNN's autotuner on, and each timed call ends with `torch.cuda.synchronize()`, so that its
wall time covers its kernels. `--batch N` sets the image batch of the decomp suite (default 16;
it appears in the keys).

Usage: python torchbench.py [--suite diffusion|decomp|image] [--threads N] [--only SUBSTRING] [--serve]
       [--device cpu|cuda|cuda:N] [--batch N]
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

WARMUP = 3
REPEATS = 10


def busy_seconds():
    """CPU seconds all processes have spent busy since boot (Linux), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal ...
    busy = sum(int(v) for i, v in enumerate(fields[1:9]) if i not in (3, 4))
    return busy / os.sysconf("SC_CLK_TCK")


# Per workload: the mean number of cores other processes kept busy while it was timed.
BACKGROUND = {}

# A timing during which other processes kept more cores than this busy is repeated (up to
# `ATTEMPTS` times in all; the quietest attempt is kept): with every core in use, a busy
# neighbour slows PyTorch's thread pool down many times over.
QUIET_CORES = 0.25
ATTEMPTS = 3


# Set by `--device`: where models and tensors live.
DEVICE = torch.device("cpu")


def on_device(t):
    """`t` (made on the CPU by the seeded generator) moved to the device."""
    return t.to(DEVICE)


def synchronized(fn):
    """`fn`, waiting for the GPU's queue to drain before it returns (a no-op on the CPU)."""
    if DEVICE.type != "cuda":
        return fn

    def call():
        out = fn()
        torch.cuda.synchronize(DEVICE)
        return out

    return call


# Set by `--serve`: the workload `--only` selects is served instead of timed.
SERVING = False
SERVED = []


def serve(fn):
    """Makes calls of `fn` on request (the `--serve` protocol of the module docs)."""
    for _ in range(WARMUP):
        fn()
    print("ready", flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            break
        times = []
        for _ in range(int(line)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        print(" ".join(f"{t:.6f}" for t in times), flush=True)


def median_seconds(key, fn):
    fn = synchronized(fn)
    if SERVING:
        if SERVED:
            sys.exit(f"--serve: more than one workload selected ({SERVED[0]}, {key})")
        SERVED.append(key)
        serve(fn)
        return math.nan
    for _ in range(WARMUP):
        fn()
    best = None
    for attempt in range(ATTEMPTS):
        busy0, own0, wall0 = busy_seconds(), time.process_time(), time.perf_counter()
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        busy1, own1, wall1 = busy_seconds(), time.process_time(), time.perf_counter()
        others = None
        if busy0 is not None and busy1 is not None:
            others = max(0.0, ((busy1 - busy0) - (own1 - own0)) / (wall1 - wall0))
        result = statistics.median(times)
        load = "unknown" if others is None else f"{others:.2f}"
        print(f"{key}: {result * 1e3:.2f} ms (other processes: {load} cores)", file=sys.stderr)
        if best is None or (others is not None and others < best[1]):
            best = (result, others)
        if others is None or others <= QUIET_CORES:
            break
        if attempt + 1 < ATTEMPTS:
            print(f"{key}: the machine was busy, timing again", file=sys.stderr)
    if best[1] is not None:
        BACKGROUND[key] = best[1]
    return best[0]


def num_params(module):
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# The residual MLP of the 2-D experiments (Du et al. 2023).


class MlpBlock(nn.Module):
    def __init__(self, hidden, block_hidden, temb):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, block_hidden)
        self.time_proj = nn.Linear(temb, block_hidden)
        self.fc2 = nn.Linear(block_hidden, block_hidden)
        self.fc3 = nn.Linear(block_hidden, hidden)

    def forward(self, h, e):
        y = F.silu(self.norm(h))
        y = F.silu(self.fc1(y) + self.time_proj(e))
        y = F.silu(self.fc2(y))
        return h + self.fc3(y)


class ResidualMlp(nn.Module):
    def __init__(self, data_dim=2, hidden=128, block_hidden=256, num_blocks=4, temb=32, steps=100):
        super().__init__()
        self.input = nn.Linear(data_dim, hidden)
        self.time_embed = nn.Embedding(steps, temb)
        self.blocks = nn.ModuleList(MlpBlock(hidden, block_hidden, temb) for _ in range(num_blocks))
        self.output = nn.Linear(hidden, data_dim)

    def forward(self, x, t):
        e = self.time_embed(t)
        h = self.input(x)
        for block in self.blocks:
            h = block(h, e)
        return self.output(h)


# ---------------------------------------------------------------------------------------------
# The U-Net of Decomp Diffusion (improved-diffusion's UNetModel with resblock_updown, 16-group
# GroupNorm, emb = cat(cond, time embedding)), denoiser only.


def group_norm(channels):
    return nn.GroupNorm(16, channels, eps=1e-5)


def sinusoidal(t, dim, max_period=10000.0):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, emb_dim, dropout, resample=None):
        super().__init__()
        self.norm1 = group_norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = group_norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)
        self.resample = resample

    def _resample(self, x):
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def forward(self, x, emb):
        h = F.silu(self.norm1(x))
        h = self._resample(h)
        x = self._resample(x)
        h = self.conv1(h)
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class CrossAttention(nn.Module):
    """Attention from the feature map to token states (latent diffusion's arrangement): Q from
    the normalized features, K and V from the states, padded tokens masked by a key bias."""

    def __init__(self, channels, context_dim, num_heads):
        super().__init__()
        self.heads = num_heads
        self.norm = group_norm(channels)
        self.q = nn.Conv1d(channels, channels, 1)
        self.kv = nn.Conv1d(context_dim, 2 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x, ctx):
        states, bias = ctx  # [B, D, L], [B, 1, L]
        b, c, hh, ww = x.shape
        n, length, d = hh * ww, states.shape[2], c // self.heads
        q = self.q(self.norm(x).reshape(b, c, n)).reshape(b * self.heads, d, n) / math.sqrt(d)
        kv = self.kv(states)
        k = kv[:, :c].reshape(b * self.heads, d, length)
        v = kv[:, c:].reshape(b * self.heads, d, length)
        bias = bias[:, None].expand(b, self.heads, 1, length).reshape(b * self.heads, 1, length)
        w = (torch.einsum("bct,bcs->bts", q, k) + bias).softmax(dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, n)
        return x + self.proj_out(a).reshape(b, c, hh, ww)


class AttentionBlock(nn.Module):
    def __init__(self, channels, num_heads, context_dim=0):
        super().__init__()
        assert channels % num_heads == 0
        self.heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        self.cross = CrossAttention(channels, context_dim, num_heads) if context_dim else None

    def forward(self, x, emb=None, ctx=None):
        b, c, hh, ww = x.shape
        n = hh * ww
        qkv = self.qkv(self.norm(x).reshape(b, c, n))
        ch = c // self.heads
        # Legacy ordering: heads outermost, then (q, k, v) per head.
        q, k, v = qkv.reshape(b * self.heads, 3 * ch, n).split(ch, dim=1)
        scale = 1.0 / math.sqrt(math.sqrt(ch))
        w = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, n)
        x = x + self.proj_out(a).reshape(b, c, hh, ww)
        return x if self.cross is None else self.cross(x, ctx)


class Sequence(nn.ModuleList):
    def forward(self, h, emb, ctx=None):
        for layer in self:
            if isinstance(layer, AttentionBlock):
                h = layer(h, emb, ctx)
            elif isinstance(layer, ResBlock):
                h = layer(h, emb)
            else:
                h = layer(h)
        return h


class UNet(nn.Module):
    def __init__(
        self,
        image_size,
        model_channels,
        attention_ds,
        num_heads=1,
        num_head_channels=None,
        channel_mult=(1, 2),
        num_res_blocks=1,
        cond_dim=32,
        in_channels=3,
        dropout=0.0,
        time_embed_dim=None,
        coord_channels=False,
        context_dim=0,
    ):
        super().__init__()
        self.image_size = image_size
        self.model_channels = model_channels
        self.coord_channels = coord_channels
        temb = cond_dim if time_embed_dim is None else time_embed_dim
        emb_dim = cond_dim + temb

        def heads(ch):
            if num_head_channels is None:
                return num_heads
            assert ch % num_head_channels == 0
            return ch // num_head_channels

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, temb), nn.SiLU(), nn.Linear(temb, temb)
        )
        ch = model_channels * channel_mult[0]
        first_in = in_channels + (2 if coord_channels else 0)
        self.input_blocks = nn.ModuleList([Sequence([nn.Conv2d(first_in, ch, 3, padding=1)])])
        skip_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                out = model_channels * mult
                layers = [ResBlock(ch, out, emb_dim, dropout)]
                ch = out
                if ds in attention_ds:
                    layers.append(AttentionBlock(ch, heads(ch), context_dim))
                self.input_blocks.append(Sequence(layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(Sequence([ResBlock(ch, ch, emb_dim, dropout, "down")]))
                skip_chans.append(ch)
                ds *= 2
        self.middle_block = Sequence(
            [
                ResBlock(ch, ch, emb_dim, dropout),
                AttentionBlock(ch, heads(ch), context_dim),
                ResBlock(ch, ch, emb_dim, dropout),
            ]
        )
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                out = model_channels * mult
                layers = [ResBlock(ch + skip_chans.pop(), out, emb_dim, dropout)]
                ch = out
                if ds in attention_ds:
                    layers.append(AttentionBlock(ch, heads(ch), context_dim))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, ch, emb_dim, dropout, "up"))
                    ds //= 2
                self.output_blocks.append(Sequence(layers))
        self.out_norm = group_norm(ch)
        self.out_conv = nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def forward(self, x, t, cond, ctx=None):
        temb = self.time_embed(sinusoidal(t, self.model_channels))
        emb = torch.cat([cond, temb], dim=1)
        skips = []
        h = x
        if self.coord_channels:
            # Column and row planes in [-1, 1] (CoordConv).
            b, _, hh, ww = x.shape
            cols = torch.linspace(-1.0, 1.0, ww, device=x.device).expand(b, 1, hh, ww)
            rows = torch.linspace(-1.0, 1.0, hh, device=x.device)[:, None].expand(b, 1, hh, ww)
            h = torch.cat([x, cols, rows], dim=1)
        for block in self.input_blocks:
            h = block(h, emb, ctx)
            skips.append(h)
        h = self.middle_block(h, emb, ctx)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, ctx)
        return self.out_conv(F.silu(self.out_norm(h)))


# The four small configurations of the reference benchmark, with the reference's denoiser
# parameter counts (shared/reference/decomp-diffusion/README.md).
UNET_CONFIGS = [
    ("a-32px-32ch", dict(image_size=32, model_channels=32, attention_ds=(2,), num_head_channels=64), 710_051),
    ("b-32px-16ch", dict(image_size=32, model_channels=16, attention_ds=(2,), num_heads=1), 188_659),
    ("c-16px-32ch", dict(image_size=16, model_channels=32, attention_ds=(1, 2), num_heads=1), 722_915),
    ("d-16px-32ch-attn8", dict(image_size=16, model_channels=32, attention_ds=(2,), num_head_channels=64), 710_051),
]

MLP_PARAMS = 565_506


def perturb(model, gen):
    # Move the zero-initialized layers off zero, as the Rust benchmark does; then move the model
    # to the device.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    model.to(DEVICE)


def train_step(model, opt, loss_fn):
    def step():
        opt.zero_grad()
        loss = loss_fn(model)
        loss.backward()
        opt.step()

    return step


def bench_mlp(results, gen, wanted):
    batch = 1000
    key = f"mlp/train-step/batch={batch}/recompose"
    model = ResidualMlp().to(DEVICE)
    n = num_params(model)
    assert n == MLP_PARAMS, f"mlp: {n} parameters, expected {MLP_PARAMS}"
    print(f"mlp: {n} parameters (expected {MLP_PARAMS})", file=sys.stderr)
    if not wanted(key):
        return
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = on_device(torch.randn(batch, 2, generator=gen))
    target = on_device(torch.randn(batch, 2, generator=gen))
    t = on_device(torch.randint(0, 100, (batch,), generator=gen))
    results[key] = median_seconds(
        key, train_step(model, opt, lambda m: F.mse_loss(m(x, t), target))
    )


def bench_energy_mlp(results, gen, wanted):
    """The energy parameterization: E = |g(x, t) - x|^2, eps_hat = dE/dx, MSE on eps_hat."""
    batch = 1000
    key = f"mlp-energy/train-step/batch={batch}/recompose"
    if not wanted(key):
        return
    model = ResidualMlp().to(DEVICE)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = on_device(torch.randn(batch, 2, generator=gen))
    target = on_device(torch.randn(batch, 2, generator=gen))
    t = on_device(torch.randint(0, 100, (batch,), generator=gen))

    def loss(m):
        xr = x.clone().requires_grad_(True)
        energy = (m(xr, t) - xr).pow(2).sum()
        (eps_hat,) = torch.autograd.grad(energy, xr, create_graph=True)
        return F.mse_loss(eps_hat, target)

    results[key] = median_seconds(key, train_step(model, opt, loss))


def bench_unet(results, gen, wanted):
    cond_dim = 32
    for name, cfg, expected in UNET_CONFIGS:
        torch.manual_seed(0)
        model = UNet(cond_dim=cond_dim, **cfg)
        n = num_params(model)
        assert n == expected, f"unet {name}: {n} parameters, expected {expected}"
        print(f"unet {name}: {n} parameters (reference denoiser: {expected})", file=sys.stderr)
        perturb(model, gen)
        s = cfg["image_size"]

        batch = 48
        key = f"unet/forward/{name}/batch={batch}/recompose"
        if wanted(key):
            x = on_device(torch.randn(batch, 3, s, s, generator=gen))
            t = on_device(torch.randint(0, 1000, (batch,), generator=gen))
            cond = on_device(torch.randn(batch, cond_dim, generator=gen).relu())
            model.eval()

            def forward():
                with torch.no_grad():
                    return model(x, t, cond)

            results[key] = median_seconds(key, forward)

        batch = 16
        key = f"unet/train-step/{name}/batch={batch}/recompose"
        if wanted(key):
            model.train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            x = on_device(torch.randn(batch, 3, s, s, generator=gen))
            x0 = on_device(torch.randn(batch, 3, s, s, generator=gen))
            t = on_device(torch.randint(0, 1000, (batch,), generator=gen))
            cond = on_device(torch.randn(batch, cond_dim, generator=gen).relu())
            results[key] = median_seconds(
                key, train_step(model, opt, lambda m: F.mse_loss(m(x, t, cond), x0))
            )


# ---------------------------------------------------------------------------------------------
# The text-conditioned U-Net of the image-composition recipe: a pre-norm transformer text
# encoder (CLIP's arrangement without the causal mask; exact GELU; mean of the token states over
# the real tokens as the pooled vector) and the U-Net above with coordinate channels, the pooled
# vector joined to the time embedding, and cross-attention to the token states in every
# attention block.


class EncoderLayer(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.layer_norm1 = nn.LayerNorm(width)
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)
        self.layer_norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x, key_bias):
        n, length, width = x.shape
        d = width // self.heads
        h = self.layer_norm1(x)

        def split(t):
            return t.reshape(n, length, self.heads, d).transpose(1, 2)

        q = split(self.q_proj(h)) / math.sqrt(d)
        k, v = split(self.k_proj(h)), split(self.v_proj(h))
        w = (q @ k.transpose(-1, -2) + key_bias).softmax(dim=-1)
        a = (w @ v).transpose(1, 2).reshape(n, length, width)
        x = x + self.out_proj(a)
        return x + self.fc2(F.gelu(self.fc1(self.layer_norm2(x))))


class TextEncoder(nn.Module):
    def __init__(self, vocab_size, max_len, width=64, layers=2, heads=4):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(max_len, width)
        self.layers = nn.ModuleList([EncoderLayer(width, heads) for _ in range(layers)])
        self.final_layer_norm = nn.LayerNorm(width)

    def forward(self, ids, mask):
        x = self.token_embedding(ids) + self.position_embedding.weight[: ids.shape[1]]
        key_bias = torch.zeros(mask.shape, device=ids.device).masked_fill(~mask, -math.inf)
        for layer in self.layers:
            x = layer(x, key_bias[:, None, None, :])
        states = self.final_layer_norm(x)
        m = mask.float()[..., None]
        return states, (states * m).sum(1) / m.sum(1), key_bias[:, None, :]


# The recipe's word-level tokenizer: <pad> 0, <unk> 1, <|startoftext|> 2, <|endoftext|> 3, then
# the shapes-text words; prompts as "<|startoftext|> words <|endoftext|>" padded to 8 tokens.
TEXT_WORDS = ["red", "green", "blue", "yellow", "circle", "square", "triangle",
              "top", "bottom", "left", "right"]
TEXT_LEN = 8
TEXT_PROMPTS = ["red circle top left", "blue square bottom right", "green", "triangle", "",
                "yellow triangle top right", "bottom left", "yellow circle"]
# Parameters of the recipe's score model, text encoder included (the Rust model's count; the
# bench crate's tests check that the two agree).
TEXT_UNET_PARAMS = 1_486_243


def encode_prompts(prompts):
    ids = []
    for p in prompts:
        row = [2] + [4 + TEXT_WORDS.index(w) for w in p.split()] + [3]
        ids.append(row + [0] * (TEXT_LEN - len(row)))
    return torch.tensor(ids, dtype=torch.long)


class TextUNet(nn.Module):
    def __init__(self, energy):
        super().__init__()
        self.energy = energy
        self.text_encoder = TextEncoder(4 + len(TEXT_WORDS), TEXT_LEN)
        self.unet = UNet(
            image_size=32,
            model_channels=32,
            attention_ds=(4,),
            num_head_channels=32,
            channel_mult=(1, 2, 2),
            cond_dim=64,
            time_embed_dim=128,
            coord_channels=True,
            context_dim=64,
        )

    def condition(self, ids):
        states, pooled, key_bias = self.text_encoder(ids, ids != 0)
        return pooled, (states.transpose(1, 2), key_bias)

    def predict(self, x, t, cond, create_graph):
        """The network's prediction under a condition; for an energy model the input gradient
        of E = |g - x|^2 (a graph to differentiate again when training)."""
        if not self.energy:
            return self.unet(x, t, *cond)
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            energy = (self.unet(xr, t, *cond) - xr).pow(2).sum()
            (grad,) = torch.autograd.grad(energy, xr, create_graph=create_graph)
        return grad

    def forward(self, x, t, ids):
        return self.predict(x, t, self.condition(ids), create_graph=True)


def bench_image(results, gen, wanted):
    for energy in (False, True):
        name = "text-unet-energy" if energy else "text-unet"
        torch.manual_seed(0)
        model = TextUNet(energy)
        n = num_params(model)
        assert n == TEXT_UNET_PARAMS, f"{name}: {n} parameters, expected {TEXT_UNET_PARAMS}"
        print(f"{name}: {n} parameters", file=sys.stderr)
        perturb(model, gen)

        batch = 32
        key = f"{name}/train-step/batch={batch}/recompose"
        if wanted(key):
            model.train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            x = on_device(torch.randn(batch, 3, 32, 32, generator=gen))
            target = on_device(torch.randn(batch, 3, 32, 32, generator=gen))
            t = on_device(torch.randint(0, 1000, (batch,), generator=gen))
            ids = on_device(encode_prompts([TEXT_PROMPTS[i % 8] for i in range(batch)]))
            results[key] = median_seconds(
                key, train_step(model, opt, lambda m: F.mse_loss(m(x, t, ids), target))
            )

        chains = 64
        key = f"{name}/guided/chains={chains}/recompose"
        if wanted(key):
            # Sampling needs no parameter gradients: autograd records the input gradient only.
            model.eval().requires_grad_(False)
            x = on_device(torch.randn(chains, 3, 32, 32, generator=gen))
            t = on_device(torch.full((2 * chains,), 500))
            rows = on_device(torch.tensor([0] * chains + [1] * chains))
            ids = on_device(encode_prompts(["", TEXT_PROMPTS[0]]))

            def guided():
                with torch.no_grad():
                    pooled, (states, bias) = model.condition(ids)
                    cond = (pooled[rows], (states[rows], bias[rows]))
                    if not energy:
                        y = model.predict(torch.cat([x, x]), t, cond, create_graph=False)
                if energy:
                    y = model.predict(torch.cat([x, x]), t, cond, create_graph=False).detach()
                uncond, prompted = y[:chains], y[chains:]
                return uncond + 4.0 * (prompted - uncond)

            results[key] = median_seconds(key, guided)


# ---------------------------------------------------------------------------------------------
# Decomp Diffusion: the latent encoder (conv stem, three ResNet basic blocks with batch norm and
# stride-2 convs, Linear to K*d, ReLU) and the shared U-Net above, conditioned on one factor's
# latent per denoiser image.


class BasicBlock(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + x)


class Encoder(nn.Module):
    def __init__(self, image_size, channels, latent):
        super().__init__()
        e = channels
        side = image_size
        layers = [nn.Conv2d(3, e, 3, padding=1), nn.ReLU()]
        for width in (e, 2 * e, 4 * e):
            layers += [BasicBlock(width), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU()]
            side = (side + 1) // 2
        layers += [nn.Flatten(), nn.Linear(8 * e * side * side, latent), nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Decomp(nn.Module):
    def __init__(self, image_size, components=3, latent_dim=32, enc_channels=64, **unet):
        super().__init__()
        self.k, self.d = components, latent_dim
        self.unet = UNet(image_size=image_size, cond_dim=latent_dim, **unet)
        self.encoder = Encoder(image_size, enc_channels, components * latent_dim)

    def denoise(self, x_t, t, z):
        b = x_t.shape[0]
        # Image-major batch of B*K: b0k0, b0k1, ..., each row with its own factor's latent.
        xs = x_t.repeat_interleave(self.k, dim=0)
        ts = t.repeat_interleave(self.k, dim=0)
        out = self.unet(xs, ts, z.reshape(b * self.k, self.d))
        return out.reshape(b, self.k, *x_t.shape[1:]).mean(dim=1)


# Whole-model parameter counts of the reference benchmark (denoiser + latent encoder).
DECOMP_PARAMS = {
    "a-32px-32ch": 4_597_635,
    "b-32px-16ch": 4_076_243,
    "c-16px-32ch": 4_020_675,
    "d-16px-32ch-attn8": 4_007_811,
}


def bench_decomp(results, gen, wanted, batch=16):
    for name, cfg, _ in UNET_CONFIGS:
        torch.manual_seed(0)
        cfg = dict(cfg)
        s = cfg.pop("image_size")
        model = Decomp(s, **cfg)
        n = num_params(model)
        expected = DECOMP_PARAMS[name]
        assert n == expected, f"decomp {name}: {n} parameters, expected {expected}"
        print(f"decomp {name}: {n} parameters (reference: {expected})", file=sys.stderr)
        perturb(model, gen)
        x0 = on_device(0.5 + 0.25 * torch.randn(batch, 3, s, s, generator=gen))
        noise = on_device(torch.randn(batch, 3, s, s, generator=gen))
        t = on_device(torch.randint(0, 1000, (batch,), generator=gen))
        x_t = 0.6 * x0 + 0.8 * noise

        key = f"decomp/train-step/{name}/batch={batch}/recompose"
        if wanted(key):
            model.train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)

            def loss(m):
                return F.mse_loss(m.denoise(x_t, t, m.encoder(x0)), x0)

            results[key] = median_seconds(key, train_step(model, opt, loss))

        model.eval()
        with torch.no_grad():
            z = model.encoder(x0)
        key = f"decomp/forward/{name}/batch={batch}/recompose"
        if wanted(key):

            def forward():
                with torch.no_grad():
                    return model.denoise(x_t, t, z)

            results[key] = median_seconds(key, forward)

        key = f"decomp/encode/{name}/batch={batch}/recompose"
        if wanted(key):

            def encode():
                with torch.no_grad():
                    return model.encoder(x0)

            results[key] = median_seconds(key, encode)


def default_threads():
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=("diffusion", "decomp", "image"), default="diffusion")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--only", default=None, help="run only workloads whose id contains this")
    parser.add_argument(
        "--serve", action="store_true", help="serve the one selected workload (module docs)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch", type=int, default=16, help="image batch of the decomp suite")
    args = parser.parse_args()
    if args.batch < 1:
        parser.error("--batch must be positive")
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda":
        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: no CUDA device here")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    if args.serve:
        if args.only is None:
            parser.error("--serve needs --only to select one workload")
        global SERVING
        SERVING = True

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    results = {}

    def wanted(key):
        return args.only is None or args.only in key

    if args.suite == "diffusion":
        bench_mlp(results, gen, wanted)
        bench_energy_mlp(results, gen, wanted)
        bench_unet(results, gen, wanted)
    elif args.suite == "image":
        bench_image(results, gen, wanted)
    else:
        bench_decomp(results, gen, wanted, args.batch)
    if args.serve:
        if not SERVED:
            sys.exit(f"--serve: --only {args.only!r} selects no workload")
        return
    report = {
        "torch": torch.__version__,
        "device": str(DEVICE),
        "threads": torch.get_num_threads(),
        "results": results,
        "background_cores": BACKGROUND,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
