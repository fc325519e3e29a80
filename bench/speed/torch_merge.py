#!/usr/bin/python3
"""The speed benchmark's PyTorch baseline: the same merges done the way the Python tools
(mergekit, FusionBench, the papers' code) do them, tensor by tensor.

    torch_merge.py --recipe R.yml OUT [--seed S] [--threads N] [--max-tensors K]
    torch_merge.py METHOD OUT --base DIR --models DIR [DIR ...] [--weight W] [--density D] [--t T]
                   [--seed S] [--threads N] [--max-tensors K]

--recipe reads a mergekit-style recipe (merge_method, base_model, models with per-model
parameters, global parameters; weld's parameter names and defaults). The second form (METHOD:
linear, task_arithmetic, ties, dare_ties, slerp) is bench/speed/run's, one weight and density for
every model. For each tensor of the base model (in file order) it loads the tensor of every
model, computes in float32 with whole-tensor PyTorch operations, converts to bfloat16 and writes
safetensors shards (at most 5 GB each, like weld's default, with model.safetensors.index.json when
there is more than one). Debian's python3-torch (1.13) has no safetensors library, so the files
are read through a small json+struct parser and torch.frombuffer over an mmap, and written with
json+struct and the tensor's bytes.

Methods (M: mergekit's merge_methods/ and sparsify.py; PR: a mergekit pull request; FB: FusionBench):
  linear            M linear.py: sum(w_i M_i) / sum(w_i)
  task_arithmetic   M generalized_task_arithmetic.py: B + lambda sum(w_i tau_i), tau_i = M_i - B
  ties              M: magnitude (full argsort) trim to density, sign election on the weighted sum,
                    agreeing deltas / their weights
  dare_ties         M: torch.bernoulli(density) drop, L1 rescale, TIES sign election
  dare_linear       M: the same drop and rescale, plain weighted sum
  breadcrumbs       M magnitude_outliers: sort |tau|, drop the top gamma and the smallest, keep density
  breadcrumbs_ties  M: the same with TIES sign election
  della             M della_magprune: per-row rank -> keep probability density +/- epsilon, bernoulli,
                    L1 rescale, sign election, normalized
  della_linear      M: the same drop, weighted sum
  consensus_ta      TALL masks (Wang et al. 2024, tall_masks code) on the task-arithmetic sum:
                    kept where k tasks have |tau_t| > tall_lambda |sum - tau_t|
  consensus_ties    the same on the TIES-merged delta
  sce               M sce.py: topk of the variance across tasks, mean-square weights, sign erase
  model_stock       M model_stock.py: mean pairwise cosine of the flattened task vectors -> t
  nearswap          M nearswap.py: weight = clamp(t / |B - M|, 0, 1), lerp
  slerp             M slerp.py: flattened float32, lerp when |cos| > 0.9995
  nuslerp           M nuslerp.py: slerp of the two task vectors, t = w_2 / (w_1 + w_2), flattened
  multislerp        M multislerp.py: tangent-space barycentre of the unit task vectors, mean norm
  karcher           M karcher.py: Karcher mean of the unit tensors (10 iterations), mean norm
  varm              FuseChat VaRM: w_i = mean(tau_i^2) / sum_j mean(tau_j^2), sum w_i M_i
  mwa               MWA (Choi & Yu): w_i = loss_i^-p / sum_j loss_j^-p (or step_i^p), sum w_i M_i
  ram               M ram.py: changes over epsilon made by one model kept whole, shared ones averaged
  ramplus_tl        M ram.py: RAM with unique changes scaled by 1 + r clamp(shared/unique, 0, alpha)
  arcee_fusion      M arcee_fusion.py: |tau| x row KL of the softmaxes (float32), kept above
                    median + 1.5 IQR (quantiles from a 10^6-element random sample on big tensors)
  localize_stitch   Localize-and-Stitch dataless (He et al.): torch.topk of |tau_i| at density per
                    tensor (the authors rank the whole model), averaged where masks overlap
  pcb               the PCB authors' pcb-merging.py: clamp, exp(N minmax(|tau|)^2) x tanh(tau sum tau),
                    top ratio clamp, minmax weights (not the paper's softmax formulas weld follows)
  widen             WIDEN (Yu et al.) as weld defines it: per column |norm change| and 1 - cos,
                    ranked per model, softmax over models with above-average ones calibrated
  cabs              PR #568: n:m torch.topk per block of each task vector in turn, on untaken positions
  lrp               PR #677 without relevance files: argsort top density by |tau|, weighted mean
  tsv               FB TSVM_utils compute_and_sum_svd_mem_reduction: top 1/N triplets per task
                    (torch.linalg.svd), U and V orthogonalised by SVD, x alpha
  opcm              FB opcm.py: sequential, each task projected off the merged delta's SVD
                    (diagonal + top split_rank block); final rescale to the mean task-vector norm
                    of this tensor (FB: of the whole model)
  doge              FB doge_ta.py: Adam (400 steps, autograd) on a shared delta with the gradient
                    projected off the shared subspace; top-k mask per tensor (FB: whole model)
  core_space        PR #646: rank-min(16, d/4) factors by torch.linalg.svd, shared bases by SVD of
                    the stacked factors, cores averaged
"""
import argparse
import json
import mmap
import os
import struct
import sys
import warnings

import torch

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
SIZES = {"BF16": 2, "F16": 2, "F32": 4}


class SafetensorsFolder:
    """A model folder's safetensors files, memory-mapped: name -> (mmap, dtype, shape, offset)."""

    def __init__(self, folder):
        index = os.path.join(folder, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        self.tensors = {}
        self.order = []
        self._maps = []
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps.append(mm)
            (n,) = struct.unpack("<Q", mm[:8])
            header = json.loads(mm[8 : 8 + n])
            header.pop("__metadata__", None)
            items = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
            for tname, info in items:
                begin, end = info["data_offsets"]
                self.tensors[tname] = (mm, info["dtype"], info["shape"], 8 + n + begin, end - begin)
                self.order.append(tname)

    def get(self, name):
        """The tensor as float32 (a copy, as safetensors' get_tensor + .float() gives)."""
        mm, dtype, shape, offset, nbytes = self.tensors[name]
        count = nbytes // SIZES[dtype]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "buffer is not writable": we only read it
            t = torch.frombuffer(mm, dtype=DTYPES[dtype], count=count, offset=offset)
        return t.reshape(shape).float()


class SafetensorsWriter:
    """Writes tensors in a planned order into shards of at most max_shard bytes."""

    def __init__(self, folder, specs, max_shard=5_000_000_000):
        os.makedirs(folder, exist_ok=True)
        self.folder = folder
        shards, current, size = [], [], 0
        for name, shape in specs:
            nbytes = 2 * prod(shape)
            if current and size + nbytes > max_shard:
                shards.append(current)
                current, size = [], 0
            current.append((name, shape, nbytes))
            size += nbytes
        shards.append(current)
        self.shards = shards
        self.n = len(shards)
        self.shard_of = {}
        self.files = []
        weight_map = {}
        for k, shard in enumerate(shards):
            fname = "model.safetensors" if self.n == 1 else f"model-{k + 1:05d}-of-{self.n:05d}.safetensors"
            header, offset = {}, 0
            for name, shape, nbytes in shard:
                header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + nbytes]}
                offset += nbytes
                self.shard_of[name] = k
                weight_map[name] = fname
            text = json.dumps(header, separators=(",", ":")).encode()
            text += b" " * ((8 - len(text) % 8) % 8)
            f = open(os.path.join(folder, fname), "wb")
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            self.files.append(f)
        if self.n > 1:
            total = sum(nb for shard in shards for _, _, nb in shard)
            with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

    def write(self, name, tensor):
        """Tensors must come in the planned order."""
        data = tensor.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
        self.files[self.shard_of[name]].write(memoryview(data).cast("B"))

    def close(self):
        for f in self.files:
            f.close()


def prod(shape):
    n = 1
    for d in shape:
        n *= d
    return n


# --- mergekit's sparsification (sparsify.py) ---------------------------------------------------

def rescale_sum(tensor, mask, norm):
    """mergekit's rescaled_masked_tensor: keep the L1 norm of the task vector (norm "l1")."""
    masked = tensor * mask
    if norm is None:
        return masked
    before = tensor.abs().sum()
    after = masked.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return masked
    return masked * (before / after)


def magnitude(tensor, density, rescale_norm=None):
    if density >= 1:
        return tensor
    k = int(density * tensor.numel())
    assert k > 0
    mask = torch.zeros_like(tensor)
    topk = torch.argsort(tensor.abs().view(-1), descending=True)[:k]
    mask.view(-1)[topk] = 1
    return rescale_sum(tensor, mask, rescale_norm)


def bernoulli(tensor, density, rescale_norm="l1"):
    if density >= 1:
        return tensor
    mask = torch.bernoulli(torch.full_like(tensor, density))
    return rescale_sum(tensor, mask, rescale_norm)


def magnitude_outliers(tensor, density, rescale_norm=None, gamma=0.01):
    """Model Breadcrumbs: drop the top gamma share (outliers) and the smallest, keep density."""
    if density >= 1:
        return tensor
    n = tensor.numel()
    n_top = int(gamma * n)
    n_bot = n - int(density * n) - n_top
    if n_bot < 0:
        n_top, n_bot = n_top + n_bot, 0
    order = torch.sort(tensor.abs().view(-1)).indices
    mask = torch.zeros_like(tensor)
    mask.view(-1)[order[n_bot:n - n_top]] = 1  # mergekit writes [n_bot:-n_top]
    return rescale_sum(tensor, mask, rescale_norm)


def della_magprune(tensor, density, epsilon, rescale_norm=None):
    """DELLA's MagPrune: per row, keep probability rises linearly with the magnitude's rank."""
    if density >= 1:
        return tensor
    shape = tensor.shape
    rows = tensor if tensor.dim() >= 2 else tensor.unsqueeze(0)
    ranks = torch.argsort(rows.abs(), dim=1).argsort(dim=1).float() + 1
    lo = ranks.min(dim=1, keepdim=True).values
    hi = ranks.max(dim=1, keepdim=True).values
    probs = (density - epsilon) + ((ranks - lo) / (hi - lo)).clamp(0, 1) * 2 * epsilon
    mask = torch.bernoulli(probs)
    return rescale_sum(rows, mask, rescale_norm).reshape(shape)


def top_k_mask(x, k):
    """1 at the k entries of largest |x| (torch.topk), 0 elsewhere."""
    mask = torch.zeros(x.numel(), dtype=torch.bool)
    if k > 0:
        mask[torch.topk(x.abs().view(-1), k).indices] = True
    return mask.view(x.shape)


# --- the recipe --------------------------------------------------------------------------------

# weld's parameter defaults (`weld methods`): global, then per model.
DEFAULTS = {
    "linear": ({"normalize": True}, {}),
    "task_arithmetic": ({"normalize": False, "rescale": False, "lambda": 1.0}, {"density": 1.0}),
    "ties": ({"normalize": True, "rescale": False, "lambda": 1.0}, {"density": 1.0}),
    "dare_ties": ({"normalize": False, "rescale": True, "lambda": 1.0}, {"density": 1.0}),
    "dare_linear": ({"normalize": False, "rescale": True, "lambda": 1.0}, {"density": 1.0}),
    "breadcrumbs": ({"normalize": False, "rescale": False, "lambda": 1.0}, {"density": 1.0, "gamma": 0.01}),
    "breadcrumbs_ties": ({"normalize": False, "rescale": False, "lambda": 1.0}, {"density": 1.0, "gamma": 0.01}),
    "della": ({"normalize": True, "rescale": True, "lambda": 1.0}, {"density": 1.0, "epsilon": 0.15}),
    "della_linear": ({"normalize": False, "rescale": True, "lambda": 1.0}, {"density": 1.0, "epsilon": 0.15}),
    "consensus_ta": ({"normalize": False, "rescale": False, "lambda": 1.0, "k": 2},
                     {"weight": 1.0, "density": 1.0, "tall_lambda": 0.6}),
    "consensus_ties": ({"normalize": False, "rescale": False, "lambda": 1.0, "k": 2},
                       {"weight": 1.0, "density": 1.0, "tall_lambda": 0.6}),
    "sce": ({"select_topk": 1.0}, {}),
    "model_stock": ({"filter_wise": False}, {}),
    "nearswap": ({}, {}),
    "slerp": ({}, {}),
    "nuslerp": ({"nuslerp_flatten": True, "nuslerp_row_wise": False}, {}),
    "multislerp": ({"normalize_weights": True, "eps": 1e-8}, {}),
    "karcher": ({"max_iter": 10, "tol": 1e-5}, {}),
    "varm": ({}, {}),
    "mwa": ({"penalty": 1.0}, {}),
    "ram": ({"epsilon": 1e-5}, {}),
    "ramplus_tl": ({"epsilon": 1e-5, "r": 0.1, "alpha": 0.2}, {}),
    "arcee_fusion": ({}, {}),
    "localize_stitch": ({}, {"density": 0.01}),
    "pcb": ({"ratio": 0.1, "lambda": 1.0}, {}),
    "widen": ({"above_average_value_ratio": 1.0, "score_calibration_value": 1.0}, {}),
    "cabs": ({}, {"weight": 1.0}),
    "lrp": ({"density": 0.7}, {"weight": 1.0}),
    "tsv": ({"alpha": 1.0}, {"weight": 1.0}),
    "opcm": ({"alpha": 0.5}, {}),
    "doge": ({"lambda": 0.07, "density": 0.3, "subspace": 6, "steps": 400, "lr": 1e-4}, {}),
    "core_space": ({"weight": 1.0}, {}),
}


class Recipe:
    """A mergekit-style recipe: the method, the base (or None), the other models and parameters."""

    def __init__(self, method, base, models, params, config_dir=None):
        if method not in METHODS:
            sys.exit(f"torch_merge.py: unknown or unsupported method {method!r}")
        glob, per_model = DEFAULTS[method]
        self.method = method
        self.base = SafetensorsFolder(base) if base else None
        # As mergekit: the base takes no part as a "model" even when the models list names it.
        kept = [(path, p) for path, p in models if not base or os.path.realpath(path) != os.path.realpath(base)]
        self.paths = [path for path, _ in kept]
        self.models = [SafetensorsFolder(path) for path in self.paths]
        self.model_params = [{**per_model, **(p or {})} for _, p in kept]
        self.params = {**glob, **(params or {})}
        self.config_dir = config_dir or base or self.paths[0]

    @staticmethod
    def load(path):
        import yaml  # python3-yaml; only the --recipe way needs it

        with open(path) as f:
            r = yaml.safe_load(f)
        models = [(m["model"], m.get("parameters")) for m in r["models"]]
        return Recipe(r["merge_method"], r.get("base_model"), models, r.get("parameters"))

    def order(self):
        return (self.base or self.models[0]).order

    def shape(self, name):
        return (self.base or self.models[0]).tensors[name][2]

    def merge(self, name):
        return METHODS[self.method](Tensors(self, name))


class Tensors:
    """One tensor of every model (float32) and the recipe's parameters, for a merge function."""

    def __init__(self, recipe, name):
        self.name = name
        self.base = recipe.base.get(name) if recipe.base else None
        self.xs = [m.get(name) for m in recipe.models]
        self.params = recipe.params
        self.model_params = recipe.model_params
        self.paths = recipe.paths

    def g(self, key):
        return self.params[key]

    def each(self, key):
        return [p[key] for p in self.model_params]

    def deltas(self):
        return [x - self.base for x in self.xs]


def stacked(c, values):
    """A list of per-model scalars shaped to broadcast over a stack of the models' tensors."""
    return torch.tensor(values, dtype=torch.float32).view(-1, *([1] * c.xs[0].dim()))


# --- mergekit's methods ------------------------------------------------------------------------

def merge_linear(c):
    w = stacked(c, c.each("weight"))
    res = (torch.stack(c.xs) * w).sum(dim=0)
    return res / w.sum(dim=0) if c.g("normalize") else res


def sign_mask(weighted):
    """TIES sign election (mergekit's get_mask, method "sum")."""
    majority = (weighted.sum(dim=0) >= 0).float() * 2 - 1
    return weighted.sign() == majority


def tall_consensus(c, mixed):
    """TALL masks (Wang et al. 2024): task t keeps j where |tau_t| > lambda_t * |mixed - tau_t|;
    the merged delta survives where at least k tasks keep it."""
    taus = torch.stack(c.deltas())
    lam = stacked(c, c.each("tall_lambda"))
    votes = (taus.abs() > lam * (mixed - taus).abs()).sum(dim=0)
    return mixed * (votes >= c.g("k"))


def gta(sparsify, consensus, tall=False):
    """mergekit's GeneralizedTaskArithmeticMerge with one sparsification and consensus."""

    def merge(c):
        norm = "l1" if c.g("rescale") else None
        deltas = []
        for i, d in enumerate(c.deltas()):
            p = c.model_params[i]
            if sparsify is not None:
                d = sparsify(d, p, norm)
            deltas.append(d)
        deltas = torch.stack(deltas)
        w = stacked(c, c.each("weight"))
        weighted = deltas * w
        if consensus:
            mask = sign_mask(weighted)
            mixed = (weighted * mask).sum(dim=0)
            divisor = (w * mask).sum(dim=0)
            divisor[divisor == 0] = 1
        else:
            mixed = weighted.sum(dim=0)
            divisor = w.sum(dim=0)
            divisor[divisor.abs() < 1e-8] = 1
        if c.g("normalize"):
            mixed = mixed / divisor
        if tall:
            mixed = tall_consensus(c, mixed)
        return c.base + mixed * c.g("lambda")

    return merge


SPARSIFY = {
    "magnitude": lambda d, p, norm: magnitude(d, p["density"], norm),
    "random": lambda d, p, norm: bernoulli(d, p["density"], norm),
    "outliers": lambda d, p, norm: magnitude_outliers(d, p["density"], norm, p["gamma"]),
    "della": lambda d, p, norm: della_magprune(d, p["density"], p["epsilon"], norm),
}


def merge_sce(c):
    tvs = torch.stack(c.deltas())
    density = c.g("select_topk")
    if density < 1:
        var = torch.var(tvs, dim=0, unbiased=False)
        k = int(torch.count_nonzero(var) * density)
        mask = torch.zeros_like(var)
        if k > 0:
            mask.view(-1)[torch.topk(var.abs().view(-1), k).indices] = 1
        tvs = tvs * mask.unsqueeze(0)
    erase = sign_mask(tvs)
    weights = torch.mean(tvs ** 2, dim=list(range(1, tvs.dim())))
    total = weights.sum().item()
    weights = torch.ones_like(weights) / len(weights) if abs(total) < 1e-6 else weights / total
    weights = weights.view(-1, *([1] * (tvs.dim() - 1))) * erase
    return c.base + (tvs * weights).sum(dim=0) / weights.sum(dim=0).clamp(min=1e-6)


def merge_model_stock(c):
    shape = c.base.shape
    if c.g("filter_wise"):
        w0 = c.base if c.base.dim() > 1 else c.base.unsqueeze(0)
        ws = [x if x.dim() > 1 else x.unsqueeze(0) for x in c.xs]
    else:
        w0, ws = c.base.view(-1), [x.view(-1) for x in c.xs]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            norms = torch.norm(offsets[i], dim=-1) * torch.norm(offsets[j], dim=-1)
            cosines.append(((offsets[i] * offsets[j]).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    t = n * cos / (1 + (n - 1) * cos)
    return (t * (sum(ws) / n) + (1 - t) * w0).reshape(shape)


def merge_nearswap(c):
    b = c.xs[0]
    weight = (c.g("t") / (c.base - b).abs().clamp(min=1e-6)).clamp(0, 1)
    return weight * b + (1 - weight) * c.base


def slerp(t, v0, v1, threshold=0.9995, eps=1e-8):
    """mergekit's slerp (it runs in numpy float32; the same operations in torch)."""
    n0, n1 = v0.norm().item(), v1.norm().item()
    u0 = v0 / n0 if n0 > eps else v0
    u1 = v1 / n1 if n1 > eps else v1
    dot = (u0 * u1).sum().item()
    if abs(dot) > threshold:
        return (1 - t) * v0 + t * v1
    theta0 = torch.arccos(torch.tensor(dot))
    sin0 = torch.sin(theta0)
    s0 = torch.sin(theta0 - theta0 * t) / sin0
    s1 = torch.sin(theta0 * t) / sin0
    return s0 * v0 + s1 * v1


def merge_slerp(c):
    return slerp(c.g("t"), c.base, c.xs[0])


def nuslerp(t, v0, v1, dim=-1, flatten=False, eps=1e-8):
    shape = v0.shape
    if flatten:
        v0, v1 = v0.view(-1), v1.view(-1)
    elif dim != -1:
        v0, v1 = v0.transpose(dim, -1), v1.transpose(dim, -1)
    u0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    theta = torch.acos(torch.sum(u0 * u1, dim=-1, keepdim=True).clamp(-1, 1))
    sin = torch.sin(theta)
    colinear = (sin.abs() < eps).squeeze()
    res = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / sin
    res[colinear] = (1 - t) * v0[colinear] + t * v1[colinear]
    if dim != -1 and not flatten:
        res = res.transpose(dim, -1)
    return res.reshape(shape)


def merge_nuslerp(c):
    w = c.each("weight")
    t = 0.5 if abs(sum(w)) < 1e-6 else w[1] / sum(w)
    dim = 0 if c.g("nuslerp_row_wise") else -1
    flatten = c.g("nuslerp_flatten")
    if c.base is None:
        return nuslerp(t, c.xs[0], c.xs[1], dim, flatten)
    return c.base + nuslerp(t, c.xs[0] - c.base, c.xs[1] - c.base, dim, flatten)


def merge_multislerp(c):
    eps = c.g("eps")
    vs = torch.stack(c.deltas() if c.base is not None else c.xs)
    flat = vs.view(vs.shape[0], -1)
    w = torch.tensor(c.each("weight"), dtype=torch.float32)
    if c.g("normalize_weights"):
        w = w / w.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean = mean / torch.norm(mean)  # mergekit's zero-mean fallback is left out
    tangents = units - (units * mean).sum(-1, keepdim=True) * mean
    tangent = (tangents * w.view(-1, 1)).sum(0)
    tnorm = torch.norm(tangent) + eps
    res = (mean * torch.cos(tnorm) + tangent * (torch.sin(tnorm) / tnorm)) * (norms.squeeze(-1) * w).sum()
    res = res.view(vs.shape[1:])
    return res if c.base is None else res + c.base


def merge_karcher(c):
    tol, max_iter = c.g("tol"), int(c.g("max_iter"))
    alphas = [1.0 / len(c.xs)] * len(c.xs)
    norms = [torch.linalg.norm(x).item() for x in c.xs]
    units = [x / n if n > 0 else torch.zeros_like(x) for x, n in zip(c.xs, norms)]
    valid = [i for i, n in enumerate(norms) if n > tol]
    a = [alphas[i] for i in valid]
    a = [v / sum(a) for v in a]
    us = [units[i] for i in valid]
    u = sum(ai * ui for ai, ui in zip(a, us))
    nu = torch.linalg.norm(u).item()
    u = us[0].clone() if nu < tol else u / nu
    for _ in range(max_iter):
        step = torch.zeros_like(u)
        for ai, ui in zip(a, us):
            dot = torch.clamp(torch.dot(u.flatten(), ui.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() >= tol:
                step += ai * (theta / torch.sin(theta)) * (ui - dot * u)
        nstep = torch.linalg.norm(step)
        if nstep.item() < tol:
            break
        u = torch.cos(nstep) * u + torch.sin(nstep) * (step / nstep)
        nu = torch.linalg.norm(u)
        if nu.item() > tol:
            u = u / nu
    return sum(al * n for al, n in zip(alphas, norms)) * u


def ram_vectors(c):
    tv = torch.stack(c.deltas()).view(len(c.xs), -1)
    nonzero = tv.abs() > c.g("epsilon")
    counts = nonzero.sum(dim=0, keepdim=True)
    return tv, nonzero, counts, counts > 1, counts == 1


def merge_ram(c):
    tv, nonzero, counts, overlap, unique = ram_vectors(c)
    tv = tv * nonzero
    merged = (tv * unique + tv * overlap / counts.clamp(min=1)).sum(dim=0)
    return c.base + merged.reshape(c.base.shape)


def merge_ramplus_tl(c):
    tv, nonzero, counts, overlap, unique = ram_vectors(c)
    rho = (nonzero & overlap).sum(dim=1) / (nonzero & unique).sum(dim=1).clamp(min=c.g("epsilon"))
    lam = 1 + c.g("r") * rho.clamp(min=0, max=c.g("alpha"))
    tv = tv * nonzero
    merged = (tv * unique * lam.unsqueeze(-1) + tv * overlap / counts.clamp(min=1)).sum(dim=0)
    return c.base + merged.reshape(c.base.shape)


def approximate_quantiles(x, q):
    """mergekit's: sort (a random sample of 10^6 when larger), pick at floor(q * (n - 1))."""
    flat = x.view(-1)
    if flat.numel() > 1e6:
        flat = flat[torch.randperm(flat.numel())[:1000000]]
    s = torch.sort(flat).values
    return s[(q * (s.numel() - 1)).long()]


def merge_arcee_fusion(c):
    b, x = c.base, c.xs[0]
    p = torch.nn.functional.softmax(x, dim=-1) + 1e-8
    q = torch.nn.functional.softmax(b, dim=-1) + 1e-8
    kl = torch.sum(p * torch.log(p / q), dim=-1)
    scores = (x - b).abs() * kl.unsqueeze(-1)
    median = approximate_quantiles(scores, torch.tensor([0.5]))[0]
    q1, q3 = approximate_quantiles(scores, torch.tensor([0.25, 0.75]))
    mask = (scores >= median + 1.5 * (q3 - q1)).float()
    return b + (x - b) * mask


def merge_cabs(c):
    """mergekit PR #568: n:m pruning of each task vector in turn (models sorted by reference),
    on the positions earlier models did not keep; zero padding ends the last block."""
    out = c.base.clone().view(-1)
    taken = torch.zeros(out.numel(), dtype=torch.bool)
    order = c.params.get("pruning_order")
    order = [c.paths.index(p) for p in order] if order else sorted(range(len(c.xs)), key=lambda i: c.paths[i])
    for i in order:
        p = c.model_params[i]
        n = int(p.get("n_val", c.params.get("default_n_val", 1)))
        m = int(p.get("m_val", c.params.get("default_m_val", 4)))
        cand = (c.xs[i] - c.base).view(-1).masked_fill(taken, 0)
        pad = (-cand.numel()) % m
        blocks = torch.cat([cand, cand.new_zeros(pad)]).view(-1, m)
        keep = torch.zeros_like(blocks, dtype=torch.bool)
        keep.scatter_(1, torch.topk(blocks.abs(), n, dim=1).indices, True)
        keep = keep.view(-1)[: cand.numel()]
        taken |= keep
        out += p["weight"] * cand * keep
    return out.view(c.base.shape)


def merge_lrp(c):
    """mergekit PR #677 without relevance files: each task vector keeps its top density by |delta|
    (a descending argsort), then the weighted mean of the kept task vectors onto the base."""
    base = c.base if c.base is not None else torch.zeros_like(c.xs[0])
    density, n = c.g("density"), base.numel()
    keep = 0 if density <= 0 else n if density >= 1 else max(1, int(density * n))
    w = c.each("weight")
    merged = torch.zeros_like(base)
    for x, wi in zip(c.xs, w):
        d = (x - base).view(-1)
        mask = torch.zeros_like(d)
        mask[torch.argsort(d.abs(), descending=True)[:keep]] = 1
        merged += (wi / sum(w)) * (d * mask).view(base.shape)
    return base + merged


# --- other references: FuseChat, MWA, FusionBench, the papers' code ------------------------------

def merge_varm(c):
    sq = torch.stack([(d ** 2).mean() for d in c.deltas()])
    w = sq / sq.sum() if sq.sum() > 0 else torch.full_like(sq, 1 / len(sq))
    return (torch.stack(c.xs) * w.view(-1, *([1] * c.base.dim()))).sum(dim=0)


def merge_mwa(c):
    p = c.g("penalty")
    if all("loss" in m for m in c.model_params):
        w = torch.tensor(c.each("loss"), dtype=torch.float64) ** -p
    else:
        w = torch.tensor(c.each("step"), dtype=torch.float64) ** p
    w = (w / w.sum()).float()
    return (torch.stack(c.xs) * w.view(-1, *([1] * c.xs[0].dim()))).sum(dim=0)


def merge_localize_stitch(c):
    """Dataless Localize-and-Stitch: each task's top density by |tau| (torch.topk), stitched into
    the base and averaged where the masks overlap (per tensor; the authors rank the whole model)."""
    total = torch.zeros_like(c.base)
    count = torch.zeros_like(c.base)
    for d, density in zip(c.deltas(), c.each("density")):
        mask = top_k_mask(d, int(density * d.numel())) & (d != 0)
        total += d * mask
        count += mask
    return c.base + total / count.clamp(min=1)


def minmax(x, dim):
    lo = x.min(dim=dim, keepdim=True).values
    hi = x.max(dim=dim, keepdim=True).values
    return (x - lo) / (hi - lo)


def clamp_quantiles(x, min_ratio, max_ratio):
    """The PCB authors' clamp: each row clipped between its sorted values at the two ratios."""
    d = x.size(1)
    s = torch.sort(x, dim=1).values
    return torch.clamp(x, s[:, int(d * min_ratio)].unsqueeze(1), s[:, int(d * (1 - max_ratio) - 1)].unsqueeze(1))


def merge_pcb(c):
    """PCB-Merging as the authors' pcb-merging.py computes it, on one tensor's task vectors."""
    tvs = torch.stack(c.deltas()).view(len(c.xs), -1)
    n = tvs.shape[0]
    mags = clamp_quantiles(tvs.abs(), 0.0001, 0.0001)
    intra = torch.exp(n * minmax(mags, 1) ** 2)
    inter = torch.tanh(tvs * tvs.sum(dim=0))
    scale = minmax(clamp_quantiles(intra * inter, 1 - c.g("ratio"), 0), 1)
    merged = (tvs.sign() * mags * scale).sum(dim=0) / scale.sum(dim=0).clamp(min=1e-12)
    return c.base + c.g("lambda") * merged.view(c.base.shape)


def widen_scores(significance, ratio, value):
    """Softmax over the models, with each model's above-average entries set to a fixed score."""
    scores = torch.softmax(significance, dim=0)
    above = significance > significance.mean(dim=1, keepdim=True) * ratio
    return torch.where(above, torch.full_like(scores, value), scores)


def rank_share(x):
    """Each entry's position in a stable ascending sort of its row, over the row's length."""
    order = torch.sort(x, dim=1, stable=True).indices
    return order.argsort(dim=1).float() / x.shape[1]


def merge_widen(c):
    ratio, value = c.g("above_average_value_ratio"), c.g("score_calibration_value")
    deltas = torch.stack(c.deltas())
    if c.base.dim() < 2:
        return c.base + (widen_scores(deltas.abs(), ratio, value) * deltas).sum(dim=0)
    # Columns ([out, in] weights: one per input); token embeddings transposed, one per token.
    embed = any(s in c.name for s in ("embed_tokens", "wte", "word_embeddings"))
    cols = lambda t: t.reshape(t.shape[0], -1) if embed else t.reshape(t.shape[0], -1).T
    b = cols(c.base)
    xs = torch.stack([cols(x) for x in c.xs])  # models x groups x length
    mag = (xs.norm(dim=2) - b.norm(dim=1)).abs()
    direction = 1 - torch.nn.functional.cosine_similarity(xs, b.unsqueeze(0), dim=2)
    scores = 0.5 * (widen_scores(rank_share(mag), ratio, value) + widen_scores(rank_share(direction), ratio, value))
    delta = (scores.unsqueeze(2) * (xs - b)).sum(dim=0)
    delta = delta if embed else delta.T
    return c.base + delta.reshape(c.base.shape)


def merge_tsv(c):
    """TSV-M as FusionBench's compute_and_sum_svd_mem_reduction: top 1/N singular triplets of each
    task vector side by side, U and V orthogonalised through their own SVDs."""
    taus = [w * d for w, d in zip(c.each("weight"), c.deltas())]
    if c.base.dim() != 2:
        return c.base + c.g("alpha") * torch.stack(taus).mean(dim=0)
    sum_u = sum_s = sum_vh = None
    for i, tau in enumerate(taus):
        u, s, vh = torch.linalg.svd(tau, full_matrices=False)
        if sum_u is None:
            sum_u, sum_s, sum_vh = torch.zeros_like(u), torch.zeros_like(s), torch.zeros_like(vh)
        k = int(s.shape[0] / len(taus))
        sum_u[:, i * k:(i + 1) * k] = u[:, :k]
        sum_s[i * k:(i + 1) * k] = s[:k]
        sum_vh[i * k:(i + 1) * k, :] = vh[:k, :]
    u_u, _, vh_u = torch.linalg.svd(sum_u, full_matrices=False)
    u_v, _, vh_v = torch.linalg.svd(sum_vh, full_matrices=False)
    merged = torch.linalg.multi_dot((u_u, vh_u, torch.diag(sum_s), u_v, vh_v))
    return c.base + c.g("alpha") * merged


def opcm_project(merged, task, alpha):
    """FusionBench's merge_linear_weights: take out of the task vector its diagonal and its top
    split_rank block in the merged delta's singular bases. FusionBench takes full U and V, fine
    for its square layers; an embedding's full U (vocab x vocab) would not fit in memory, and every
    removed entry lies within the thin factors, so those are used: task - U (removed) Vh."""
    u, s, vh = torch.linalg.svd(merged, full_matrices=False)
    split = (s.cumsum(dim=0) / s.sum() > alpha).float().argmax().item()
    p = u.T @ task @ vh.T
    removed = torch.zeros_like(p)
    removed.diagonal().copy_(p.diagonal())
    removed[:split, :split] = p[:split, :split]
    return task - u @ removed @ vh


def merge_opcm(c):
    """OPCM as FusionBench's opcm.py, models in recipe order; the final rescale to the mean task
    vector norm uses this tensor's norms (FusionBench: the whole model's)."""
    taus = c.deltas()
    merged = taus[0]
    for tau in taus[1:]:
        merged = merged + (opcm_project(merged, tau, c.g("alpha")) if tau.dim() == 2 else tau)
    norm = merged.norm()
    target = sum(t.norm() for t in taus) / len(taus)
    return c.base + (merged * (target / norm) if norm > 0 else torch.zeros_like(merged))


def doge_loss(taus, delta, lams):
    """FusionBench doge_ta's taskvector_loss."""
    merged = (taus * lams.view(-1, 1, 1)).sum(dim=0)
    shift = (delta.unsqueeze(0) * lams.view(-1, 1, 1)).sum(dim=0)
    loss = 0.0
    for v in taus:
        loss = loss + (v * v - v * merged - v * shift).sum(dim=1).pow(2).sum()
    return loss


def merge_doge(c):
    """DOGE as FusionBench's doge_ta, per tensor (its top-k mask ranks the whole model)."""
    if c.base.dim() != 2:
        return c.base.clone()
    taus = torch.stack(c.deltas())
    n = taus.shape[0]
    lams = torch.stack([c.g("lambda") / t.norm() for t in taus])
    sum_u = None
    for i, tau in enumerate(taus):
        u, s, _ = torch.linalg.svd(tau, full_matrices=False)
        if sum_u is None:
            sum_u = torch.zeros_like(u)
        k = int(s.shape[0] / n)
        sum_u[:, i * k:(i + 1) * k] = u[:, :k]
    u_u = torch.linalg.svd(sum_u, full_matrices=False)[0][:, : int(s.shape[0] / c.g("subspace"))]
    proj = u_u @ u_u.T
    delta = torch.nn.Parameter(torch.zeros_like(taus[0]))
    opt = torch.optim.Adam([delta], lr=c.g("lr"))
    with torch.enable_grad():
        for _ in range(int(c.g("steps"))):
            opt.zero_grad()
            doge_loss(taus, delta, lams).backward()
            delta.grad.sub_(proj @ delta.grad)
            opt.step()
    delta = delta.detach()
    d = taus[0].numel()
    kth = d - int(d * c.g("density"))
    out = torch.zeros_like(c.base)
    for tau, lam in zip(taus, lams):
        mask = tau.abs() >= tau.abs().view(-1).kthvalue(kth).values
        out += lam * (tau + delta) * mask
    return c.base + out


def merge_core_space(c):
    """Core Space as mergekit PR #646: rank-r factors of each task vector, their shared bases from
    SVDs of the stacked factors, the cores averaged there."""
    base = c.base if c.base is not None else c.xs[0]
    taus = [x - base for x in c.xs]
    if base.dim() != 2:
        return base + c.g("weight") * torch.stack(taus).mean(dim=0)
    r = max(1, min(16, min(base.shape) // 4))
    bs, as_ = [], []
    for tau in taus:
        u, s, vh = torch.linalg.svd(tau, full_matrices=False)
        bs.append(u[:, :r])
        as_.append(torch.diag(s[:r]) @ vh[:r])
    u_b = torch.linalg.svd(torch.cat(bs, dim=1), full_matrices=False)[0]
    v_a = torch.linalg.svd(torch.cat(as_, dim=0), full_matrices=False)[2].T
    common = min(u_b.shape[1], v_a.shape[1])
    u_b, v_a = u_b[:, :common], v_a[:, :common]
    core = sum(u_b.T @ b @ a @ v_a for b, a in zip(bs, as_)) / len(taus)
    return base + c.g("weight") * (u_b @ core @ v_a.T)


METHODS = {
    "linear": merge_linear,
    "task_arithmetic": gta(None, False),
    "ties": gta(SPARSIFY["magnitude"], True),
    "dare_ties": gta(SPARSIFY["random"], True),
    "dare_linear": gta(SPARSIFY["random"], False),
    "breadcrumbs": gta(SPARSIFY["outliers"], False),
    "breadcrumbs_ties": gta(SPARSIFY["outliers"], True),
    "della": gta(SPARSIFY["della"], True),
    "della_linear": gta(SPARSIFY["della"], False),
    "consensus_ta": gta(None, False, tall=True),
    "consensus_ties": gta(SPARSIFY["magnitude"], True, tall=True),
    "sce": merge_sce,
    "model_stock": merge_model_stock,
    "nearswap": merge_nearswap,
    "slerp": merge_slerp,
    "nuslerp": merge_nuslerp,
    "multislerp": merge_multislerp,
    "karcher": merge_karcher,
    "varm": merge_varm,
    "mwa": merge_mwa,
    "ram": merge_ram,
    "ramplus_tl": merge_ramplus_tl,
    "arcee_fusion": merge_arcee_fusion,
    "localize_stitch": merge_localize_stitch,
    "pcb": merge_pcb,
    "widen": merge_widen,
    "cabs": merge_cabs,
    "lrp": merge_lrp,
    "tsv": merge_tsv,
    "opcm": merge_opcm,
    "doge": merge_doge,
    "core_space": merge_core_space,
}

LEGACY = ["linear", "task_arithmetic", "ties", "dare_ties", "slerp"]


def legacy_recipe(args):
    """The old command line (bench/speed/run) as a recipe: one weight and density for all."""
    per_model = {"weight": args.weight, "density": args.density}
    models = [(m, dict(per_model)) for m in args.models]
    if args.method == "slerp" and len(models) != 1:
        sys.exit("slerp: exactly one model besides the base")
    base = None if args.method == "linear" else args.base
    return Recipe(args.method, base, models, {"t": args.t}, config_dir=args.base)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", nargs="?", choices=LEGACY)
    p.add_argument("out")
    p.add_argument("--recipe", help="a mergekit-style YAML recipe (instead of METHOD and --base/--models)")
    p.add_argument("--base")
    p.add_argument("--models", nargs="+")
    p.add_argument("--weight", type=float, default=1.0)
    p.add_argument("--density", type=float, default=0.5)
    p.add_argument("--t", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--max-tensors", type=int, default=0, help="merge only the first K tensors (testing)")
    args = p.parse_args()
    if args.recipe and args.method:
        p.error("give either --recipe or METHOD, not both")
    if not args.recipe and not (args.method and args.base and args.models):
        p.error("METHOD needs --base and --models (or give --recipe)")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.set_grad_enabled(False)  # DOGE turns it back on for its optimisation
    recipe = Recipe.load(args.recipe) if args.recipe else legacy_recipe(args)
    names = recipe.order()
    names = names[: args.max_tensors] if args.max_tensors else names
    writer = SafetensorsWriter(args.out, [(n, recipe.shape(n)) for n in names])
    for n in names:
        writer.write(n, recipe.merge(n))
    writer.close()
    with open(os.path.join(recipe.config_dir, "config.json")) as f:
        config = f.read()
    with open(os.path.join(args.out, "config.json"), "w") as f:
        f.write(config)


if __name__ == "__main__":
    main()
