"""Modules: a drop-in Mamba (v1) mixer and a small language model around it.

`Mamba` has mamba-ssm's constructor arguments, initialisation and state-dict keys (a mamba-ssm
checkpoint loads with strict=True); its scan runs through `ssmgen.selective_scan`. The causal
conv1d is plain PyTorch (`nn.Conv1d` with left padding, as mamba-ssm does without the
causal-conv1d package). `step` decodes one token with an inference cache and matches the full
forward: the conv window in PyTorch, the state update through ssmgen's decode-step kernel
(`selective_state_update`, in place on the fp32 state). `MambaLM.generate(cuda_graph=True)`
captures one decoding step of the whole model into a CUDA graph and replays it per token.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops import selective_scan
from .step import selective_state_update


@dataclass
class InferenceParams:
    """Per-layer decoding state, as mamba-ssm's InferenceParams keeps it."""

    max_seqlen: int
    max_batch_size: int
    seqlen_offset: int = 0
    key_value_memory_dict: dict = field(default_factory=dict)


class Mamba(nn.Module):
    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001,
                 dt_max=0.1, dt_init="random", dt_scale=1.0, dt_init_floor=1e-4, conv_bias=True,
                 bias=False, use_fast_path=True, layer_idx=None, device=None, dtype=None,
                 scan_backend=None, scan_config=None, context_parallel=False,
                 process_group=None):
        """mamba-ssm's arguments; use_fast_path is accepted and ignored (ssmgen's scan is the
        path). scan_backend / scan_config go to ssmgen.selective_scan. context_parallel=True:
        the input is this rank's segment of the sequence (ranks of `process_group`, None = the
        default group, in sequence order); the conv takes its halo from the previous rank and
        the scan runs through ssmgen.distributed.context_parallel_scan (gradients of the
        parameters are this rank's share: DDP or an all-reduce sums them)."""
        fk = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.use_fast_path, self.layer_idx = use_fast_path, layer_idx
        self.scan_backend, self.scan_config = scan_backend, scan_config
        self.context_parallel, self.process_group = context_parallel, process_group
        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **fk)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, bias=conv_bias, kernel_size=d_conv,
                                groups=self.d_inner, padding=d_conv - 1, **fk)
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + d_state * 2, bias=False, **fk)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **fk)
        std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        else:
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        # dt_proj.bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max] (mamba-ssm's init)
        dt = torch.exp(torch.rand(self.d_inner, **fk) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))  # fp32, as mamba-ssm keeps it
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **fk)

    def _ssm_inputs(self, x):
        """x (batch, d_inner, L) after conv and activation -> delta, B, C of the scan."""
        x_dbl = self.x_proj(x.transpose(1, 2))  # (b, L, dt_rank + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # (b, d_inner, L), bias in the scan
        return delta, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()

    def forward(self, hidden_states, inference_params=None):
        """hidden_states (batch, L, d_model) -> same shape."""
        batch, seqlen, _ = hidden_states.shape
        conv_state = ssm_state = None
        if inference_params is not None:
            conv_state, ssm_state = self._states(inference_params, batch)
            if inference_params.seqlen_offset > 0:
                out, _, _ = self.step(hidden_states, conv_state, ssm_state)
                return out
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (b, 2*d_inner, L)
        x, z = xz.chunk(2, dim=1)
        if conv_state is not None:
            conv_state.copy_(F.pad(x, (self.d_conv - x.shape[-1], 0)))
        scan, kw = selective_scan, {}
        if self.context_parallel:
            if inference_params is not None:
                raise ValueError("inference_params: decoding is not context parallel; use a "
                                 "Mamba without context_parallel=True")
            from .distributed import context_parallel_scan, previous_tail

            halo = previous_tail(x, self.d_conv - 1, self.process_group)
            x = F.conv1d(torch.cat([halo, x], -1), self.conv1d.weight, self.conv1d.bias,
                         groups=self.d_inner)
            scan, kw = context_parallel_scan, {"group": self.process_group}
        else:
            x = self.conv1d(x)[..., :seqlen]
        x = self.act(x)
        delta, B, C = self._ssm_inputs(x)
        A = -torch.exp(self.A_log.float())
        y = scan(x, delta, A, B, C, self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(),
                 delta_softplus=True, return_last_state=ssm_state is not None,
                 backend=self.scan_backend, config=self.scan_config, **kw)
        if ssm_state is not None:
            y, last = y
            ssm_state.copy_(last)
        return self.out_proj(y.transpose(1, 2))

    def step(self, hidden_states, conv_state, ssm_state):
        """One token: hidden_states (batch, 1, d_model); updates conv_state and ssm_state in
        place and returns (out, conv_state, ssm_state)."""
        dtype = hidden_states.dtype
        if hidden_states.shape[1] != 1:
            raise ValueError(f"hidden_states: step decodes one token, got L={hidden_states.shape[1]}")
        x, z = self.in_proj(hidden_states.squeeze(1)).chunk(2, dim=-1)
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = x
        x = (conv_state * self.conv1d.weight.squeeze(1)).sum(-1)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = self.act(x).to(dtype)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # dt_bias and softplus inside the step kernel
        A = -torch.exp(self.A_log.float())
        y = selective_state_update(ssm_state, x, dt, A, B, C, self.D.float(), z=z,
                                   dt_bias=self.dt_proj.bias.float(), dt_softplus=True,
                                   backend=self.scan_backend)
        return self.out_proj(y).unsqueeze(1), conv_state, ssm_state

    def allocate_inference_cache(self, batch_size, max_seqlen=None, dtype=None, **kwargs):
        device = self.out_proj.weight.device
        conv = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device,
                           dtype=self.conv1d.weight.dtype if dtype is None else dtype)
        # the state stays fp32 whatever the model's dtype (the scan keeps it in fp32)
        ssm = torch.zeros(batch_size, self.d_inner, self.d_state, device=device,
                          dtype=torch.float32)
        return conv, ssm

    def _states(self, params: InferenceParams, batch):
        if self.layer_idx is None:
            raise ValueError("Mamba(layer_idx=...) is needed to decode with inference_params")
        if self.layer_idx not in params.key_value_memory_dict:
            params.key_value_memory_dict[self.layer_idx] = self.allocate_inference_cache(batch)
        return params.key_value_memory_dict[self.layer_idx]


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) \
            * self.weight


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x))."""

    def __init__(self, d_model, layer_idx, **mixer_kwargs):
        super().__init__()
        self.norm = RMSNorm(d_model)
        self.mixer = Mamba(d_model, layer_idx=layer_idx, **mixer_kwargs)

    def forward(self, x, inference_params=None):
        return x + self.mixer(self.norm(x), inference_params=inference_params)


class Backbone(nn.Module):
    def __init__(self, vocab_size, d_model, n_layer, **mixer_kwargs):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(Block(d_model, i, **mixer_kwargs) for i in range(n_layer))
        self.norm_f = RMSNorm(d_model)

    def forward(self, ids, inference_params=None):
        h = self.embedding(ids)
        for layer in self.layers:
            h = layer(h, inference_params)
        return self.norm_f(h)


class MambaLM(nn.Module):
    """Embedding, n_layer Mamba blocks with residual + RMSNorm, tied head (mamba-ssm's
    MambaLMHeadModel layout: backbone.embedding, backbone.layers.i.{norm,mixer}, backbone.norm_f,
    lm_head)."""

    def __init__(self, vocab_size=256, d_model=128, n_layer=2, **mixer_kwargs):
        super().__init__()
        self.backbone = Backbone(vocab_size, d_model, n_layer, **mixer_kwargs)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.backbone.embedding.weight
        # mamba-ssm's _init_weights: small embeddings (the head is tied to them), and each
        # block's output projection scaled down by sqrt(n_layer) (prenorm residual rescale)
        nn.init.normal_(self.backbone.embedding.weight, std=0.02)
        with torch.no_grad():
            for layer in self.backbone.layers:
                layer.mixer.out_proj.weight /= math.sqrt(n_layer)

    def forward(self, ids, inference_params=None):
        return self.lm_head(self.backbone(ids, inference_params))

    @torch.no_grad()
    def generate(self, prompt, n_new: int, temperature: float = 1.0, generator=None,
                 cuda_graph: bool = False):
        """Prefill with the full forward, then one step per token with the inference cache.
        cuda_graph=True (CUDA only): the decoding step of the whole model is captured once into
        a CUDA graph and replayed per token (sampling stays outside the graph)."""
        if cuda_graph and prompt.device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs the model on a CUDA device, got {prompt.device}")
        if cuda_graph:  # the graph of this batch size, over its own cache tensors
            params, step = self._decode_graph(prompt.shape[0])
            params.seqlen_offset = 0
        else:
            params = InferenceParams(max_seqlen=prompt.shape[1] + n_new,
                                     max_batch_size=prompt.shape[0])
            step = None
        logits = self(prompt, params)[:, -1]  # prefill writes the cache the graph reads
        out = [prompt]
        for i in range(n_new):
            params.seqlen_offset = prompt.shape[1] + i
            probs = torch.softmax(logits.float() / max(temperature, 1e-6), -1)
            nxt = torch.multinomial(probs, 1, generator=generator)
            out.append(nxt)
            logits = step(nxt) if step is not None else self(nxt, params)[:, -1]
        return torch.cat(out, dim=1)

    def _decode_graph(self, batch: int):
        """(params, run) for this batch size, captured on first use and kept on the module:
        capturing costs far more than a token. The graph reads the parameters where they are
        now: updating them in place (optimizer, load_state_dict) is seen; a moved model (another
        head address) captures anew; after replacing other parameters by new tensors, call
        `self._decode_graphs.clear()`."""
        graphs = self.__dict__.setdefault("_decode_graphs", {})
        w = self.lm_head.weight
        key = (batch, w.device, w.dtype, w.data_ptr())
        if key not in graphs:
            params = InferenceParams(max_seqlen=0, max_batch_size=batch)
            graphs[key] = (params, self._graph_step(params, batch))
        return graphs[key]

    def _graph_step(self, params: InferenceParams, batch: int):
        """Captures one decoding step (token ids (batch, 1) -> logits) into a CUDA graph over the
        cache tensors in `params`; returns run(ids) -> logits (a static tensor, overwritten by
        the next run). Warm-up runs (which compile and pick kernel configs, and must not be
        captured) would advance the cache, so it is saved and put back around them."""
        ids = torch.zeros(batch, 1, dtype=torch.long, device=self.lm_head.weight.device)
        cache = params.key_value_memory_dict
        saved = {k: [t.clone() for t in v] for k, v in cache.items()}
        offset, params.seqlen_offset = params.seqlen_offset, max(params.seqlen_offset, 1)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self(ids, params)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self(ids, params)[:, -1]
        for k, v in cache.items():  # a layer's cache made by the warm-up starts at zero
            for i, dst in enumerate(v):
                dst.copy_(saved[k][i]) if k in saved else dst.zero_()
        params.seqlen_offset = offset

        def run(nxt):
            ids.copy_(nxt)
            graph.replay()
            return logits
        return run
