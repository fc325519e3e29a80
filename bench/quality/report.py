#!/usr/bin/python3
"""Merge-quality benchmark: merges the eight experts with every method of `weld methods`, scores
each merge on the held-out prompts of every task and writes results.md, results.json and
results.png (all methods) and results-scaling.png (normalized accuracy vs experts merged).

Run through bench/quality/run (which builds weld first); see `bench/quality/run --help`.
Standard library and matplotlib only (Debian: python3-matplotlib).
"""
import argparse
import array
import concurrent.futures
import datetime
import itertools
import json
import os
import re
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import task_vectors

# The family's tasks, in the fixed order in which the scaling table adds experts.
TASKS = task_vectors.TASKS
PAIRS = [("cipher_copy", "cipher_reverse"), ("cipher_swap", "cipher_rotl"), ("cipher_rotr", "cipher_sort"),
         ("cipher_evens", "cipher_halves")]
# The scaling table merges the first k experts of TASKS for each k (8 is the main table) with
# these methods and the best SCALING_OTHERS others of the main table.
SCALING_COUNTS = [2, 4, 6]
SCALING_METHODS = ["linear", "task_arithmetic", "ties", "dare_ties", "tsv", "consensus_ta", "model_stock"]
SCALING_OTHERS = 3
DENSITIES = [0.1, 0.3, 0.5]
# Sweep points are chosen on held-out prompts drawn with this seed (`weld eval --task-seed`), then
# reported on the test prompts (seed 0), as the papers tune lambda and density on validation data.
# The two draws are independent; for tasks with few distinct prompts (brackets, small sums) they
# share some prompts.
VALIDATION_SEED = 1
# Data of the data-driven methods (weld task-data): each expert's statistics (weld stats --kind
# fisher|gram) on STATS_EXAMPLES training prompts of its own task (seed STATS_SEED); FW-Merging's
# labeled proxy set, PROXY_EXAMPLES training prompts of each merged task (seed PROXY_SEED);
# AdaMerging's unlabeled prompts: the test prompts themselves (held out, seed 0), answers dropped,
# as the paper adapts at test time. Training prompts never include held-out ones.
STATS_EXAMPLES, STATS_SEED = 128, 1
PROXY_EXAMPLES, PROXY_SEED = 16, 2
# FW-Merging's robustness check: the first POOL_TASKS experts are the targets; the other experts
# join the pool as irrelevant models (tasks not evaluated), for fw_merging and task arithmetic.
POOL_TASKS = 4
POOL_METHODS = ["task_arithmetic", "fw_merging"]
# The methods that read statistics or data (the rest are data-free).
DATA_METHODS = {"fisher", "regmean", "regmean_pp", "ota", "ffg", "adamerging", "fw_merging", "rcp", "expert_merging",
                "concrete", "localize_stitch_learned", "twin"}


@dataclass
class Spec:
    """How one method is run.

    form: which models the recipe lists.
      experts      the experts, no base_model (the method averages models, not task vectors)
      base         base_model: base, models: the experts (task-vector methods)
      base_listed  base_model: base, and the base also listed first in models (nuslerp and
                   multislerp use a base only when it is listed; then they work on task vectors)
      endpoints    pair methods only: base_model: expert A, models: expert B (the method
                   interpolates between "the base" and one other model)
    params: defaults (weight 1 for every model where the method takes a weight, so that lambda
      scales the sum, as in the task-arithmetic and TIES papers); weld's `weld methods` output
      decides which of them are global and which per model.
    sweep: parameter -> values; the grid is their product (the default is merged only once).
    derive: fills in parameters that depend on swept ones.
    """
    form: str
    params: dict = field(default_factory=dict)
    sweep: dict = field(default_factory=dict)
    derive: object = None
    method: str = None  # the recipe's merge_method when the row's name is not one (a mode of a method)


def della_epsilon(p):
    # weld (as mergekit) requires density - epsilon > 0: below density 0.3 halve the default 0.15.
    return {"epsilon": round(p["density"] / 2, 4)} if p["density"] < 0.3 else {}


# Methods that merge all the experts. Defaults follow each paper's data-free setting where it
# gives one; "sum" methods (normalize false) add the task vectors, so lambda < 1, while the
# "mean" ones (ties, della, pcb: normalize or a weighted mean) use lambda 1.
METHODS = {
    "linear": Spec("experts", {"weight": 1}),  # model soup: the plain mean of the experts
    # Ilharco et al. pick lambda on validation data, usually 0.3-0.4 for 8 tasks.
    "task_arithmetic": Spec("base", {"weight": 1, "lambda": 0.3}, {"lambda": [0.3, 0.5, 0.7, 1.0]}),
    # Yadav et al. use k = 20% and lambda = 1 (on the disjoint mean) when there is no validation data.
    "ties": Spec("base", {"weight": 1, "density": 0.2, "lambda": 1},
                 {"density": DENSITIES, "lambda": [0.5, 1.0]}),
    # DARE (Yu et al.) rescales the kept deltas, then TA/TIES with lambda from [0.5, 1.0]; tiny
    # models tolerate less dropping than their LLMs' 90%.
    "dare_ties": Spec("base", {"weight": 1, "density": 0.3, "lambda": 0.5},
                      {"density": DENSITIES, "lambda": [0.5, 1.0]}),
    "dare_linear": Spec("base", {"weight": 1, "density": 0.3, "lambda": 0.5}, {"density": DENSITIES}),
    # Breadcrumbs: drop the top 1% (gamma, weld's default) as outliers and keep the next density.
    "breadcrumbs": Spec("base", {"weight": 1, "density": 0.3, "lambda": 0.5}, {"density": DENSITIES}),
    "breadcrumbs_ties": Spec("base", {"weight": 1, "density": 0.3, "lambda": 0.5}, {"density": DENSITIES}),
    # DELLA: MagPrune around density with weld's epsilon 0.15; della normalizes (lambda 1).
    "della": Spec("base", {"weight": 1, "density": 0.3, "lambda": 1}, {"density": DENSITIES}, della_epsilon),
    "della_linear": Spec("base", {"weight": 1, "density": 0.3, "lambda": 0.5}, {"density": DENSITIES},
                         della_epsilon),
    # TALL-mask consensus (Wang et al.): k = 2, tall_lambda 0.6; the scaling as the method it masks.
    "consensus_ta": Spec("base", {"weight": 1, "lambda": 0.3}),
    "consensus_ties": Spec("base", {"weight": 1, "density": 0.2, "lambda": 0.5}),
    # The rest: weld's defaults are the papers' (see docs/methods.md).
    "sce": Spec("base"),
    "model_stock": Spec("base"),
    "ram": Spec("base"),
    "ramplus_tl": Spec("base"),
    "pcb": Spec("base"),
    "widen": Spec("base"),
    "varm": Spec("base"),
    "tsv": Spec("base"),
    "opcm": Spec("base"),
    "doge": Spec("base"),
    "localize_stitch": Spec("base"),
    "multislerp": Spec("base_listed", {"weight": 1}),
    "karcher": Spec("experts"),  # a listed base would count as one more point of the mean
    # Data-driven (issue 12). "stats": each expert's own statistics folder; "data": a data file of
    # the merged tasks (see STATS_/PROXY_ above). Fisher and RegMean as in their papers (floor 1e-6,
    # alpha 0.9); AdaMerging's default is the paper's (layer-wise, λ0 0.3, Adam lr 1e-3, 100 steps).
    "fisher": Spec("experts", {"stats": "fisher"}),
    "regmean": Spec("experts", {"stats": "gram", "alpha": 0.9}, {"alpha": [0.5, 0.9, 1.0]}),
    # RegMean++: each expert's own training prompts (per-model data), Grams through the merge.
    "regmean_pp": Spec("experts", {"data": "train", "alpha": 0.9}, {"alpha": [0.5, 0.9, 1.0]}),
    "adamerging": Spec("base", {"data": "test"},
                       {"granularity": ["layer", "task"], "lambda_init": [0.3, 1.0], "lr": [1e-3, 1e-2]}),
    "fw_merging": Spec("base", {"data": "proxy"}, {"variant": ["hard", "soft"], "scaling": [1, 2, 4]}),
    # OTA weights by each expert's AdamW second moments ("adam": the expert retrained with
    # --save-optimizer); FFG first keeps the top density of v⊙τ² per task (the paper's sweep range).
    "ota": Spec("experts", {"stats": "adam"}),
    "ffg": Spec("base", {"stats": "adam", "density": 0.2}, {"density": [0.05, 0.1, 0.2, 0.4]}),
    # RCP protects the first expert (its Fisher, "rcp" stats) and grafts the others where their
    # loss gradient on their training prompts asks for it; lambda spans the scales of F·θ²·Δ².
    "rcp": Spec("base", {"stats": "rcp", "lambda": 1000}, {"lambda": [0, 1000, 1e6, 1e9]}),
    # Expert Merging on each expert's training prompts (answers ignored, re-decoded by the expert).
    "expert_merging": Spec("base", {"data": "train"}, {"regularization": [0, 5], "hidden_weight": [0, 1],
                                                       "variant": ["standard", "plus"]}),
    # Concrete adapts on the test prompts without answers, as AdaMerging.
    "concrete": Spec("base", {"data": "test"}, {"lambda": [0.3, 0.5], "variant": ["task_arithmetic", "adamerging"]}),
    # Localize-and-Stitch's learned masks on each expert's training prompts (labeled).
    "localize_stitch_learned": Spec("base", {"mode": "learned", "data": "train", "density": 0.1},
                                    {"density": [0.01, 0.1], "sigmoid_bias": [1, 3]}, method="localize_stitch"),
    # Twin-Merging's router learns from each expert's training prompts; weld eval routes per prompt.
    "twin": Spec("base", {"data": "train"}, {"density": [0.02, 0.1], "lambda": [0.3, 0.5]}),
}

# Methods defined for two models only: run on each pair of PAIRS, expert A then expert B.
PAIR_METHODS = {
    "slerp": Spec("endpoints", {"t": 0.5}),
    "nuslerp": Spec("base_listed", {"weight": 1}),  # slerp of the two task vectors, t = 0.5
    # t is an absolute distance: taken as the median |B - A| (see nearswap_t), so half the
    # elements come from B whole and the rest move t towards it.
    "nearswap": Spec("endpoints", {"t": "median"}),
    "arcee_fusion": Spec("endpoints"),
}
# Reference rows of the pair table. On two experts, task arithmetic with lambda 0.5 is exactly
# their mean (= linear), so it uses lambda 1: both task vectors added whole.
PAIR_REFERENCES = {
    "linear": Spec("experts", {"weight": 1}),
    "task_arithmetic": Spec("base", {"weight": 1, "lambda": 1}),
}

NOT_APPLICABLE = {
    "passthrough": "copies one model's tensors (or stacks layer slices of several): not a merge of the experts",
    "mwa": "weights checkpoints of one training run by their loss or step; the experts are separate runs "
           "with no comparable metric, and equal metrics reduce it to `linear`",
}

ROOT = Path(__file__).resolve().parents[2]


class Fail(Exception):
    """A problem with the script or its inputs: stop with this message."""


def die(message):
    print(f"bench/quality: error: {message}", file=sys.stderr)
    sys.exit(2)


# ---- weld -----------------------------------------------------------------------------------

def weld_methods(weld):
    """{method: {"global": set, "per_model": set}} from `weld methods`."""
    out = subprocess.run([weld, "methods"], capture_output=True, text=True)
    if out.returncode != 0:
        raise Fail(f"`{weld} methods` failed: {out.stderr.strip()}")
    methods, current = {}, None
    for line in out.stdout.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            current = line.split()[0]
            methods[current] = {"global": set(), "per_model": set()}
            continue
        m = re.match(r"\s+(global|per model):\s*(.*)", line)
        if m and current:
            scope = "global" if m.group(1) == "global" else "per_model"
            for item in m.group(2).split(","):
                methods[current][scope].add(re.split(r"[=\s(]", item.strip(), maxsplit=1)[0])
    if not methods:
        raise Fail(f"`{weld} methods` listed no methods")
    return methods


def check_coverage(methods):
    covered = {spec.method or name for name, spec in METHODS.items()} | set(PAIR_METHODS) | set(NOT_APPLICABLE)
    unknown = sorted(set(methods) - covered)
    if unknown:
        raise Fail(f"`weld methods` lists {', '.join(unknown)}, which bench/quality/report.py does not know: "
                   "add each to METHODS or PAIR_METHODS (with its recipe form and defaults) or to "
                   "NOT_APPLICABLE (with the reason)")
    stale = sorted(covered - set(methods))
    if stale:
        raise Fail(f"bench/quality/report.py lists {', '.join(stale)}, which `weld methods` does not: "
                   "remove or rename them")


def tail(text, limit=300):
    lines = [l for l in text.strip().splitlines() if l.strip()]
    msg = lines[-1] if lines else "no message"
    msg = re.sub(r"^weld: (error: )?", "", msg)
    return msg if len(msg) <= limit else msg[:limit] + "…"


def evaluate(args, model_dir, task_seed=0):
    """Per-task accuracy of a model folder, or raises RuntimeError with weld's message."""
    cmd = [args.weld, "eval", str(model_dir), "--tasks", ",".join(TASKS), "--held-out", str(args.held_out),
           "--task-seed", str(task_seed), "--threads", str(args.threads), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError("eval: " + tail(out.stderr or out.stdout))
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {t: result["tasks"][t]["accuracy"] for t in TASKS}


# ---- recipes --------------------------------------------------------------------------------

@dataclass
class Run:
    method: str
    params: dict        # as given to the recipe (weight included)
    members: list       # the experts merged (and evaluated)
    kind: str           # "main", "scale" (fewer experts), "pair", "pair_ref", "pool" or "pool_clean"
    is_default: bool = True
    acc: dict = None
    val_acc: dict = None  # on the validation prompts, for sweep points
    error: str = None
    seconds: float = 0.0
    extra: list = field(default_factory=list)  # "pool": irrelevant experts merged too, not evaluated

    def label(self):
        return params_label(self.params)


def params_label(params):
    parts = []
    for k, v in params.items():
        if k == "weight" and v == 1:
            continue  # every expert has weight 1; said once in results.md
        if k in ("stats", "data"):
            continue  # each data-driven method always reads the same kind (results.md says which)
        name = "λ" if k == "lambda" else k
        parts.append(f"{name}={fmt_num(v)}")
    return ", ".join(parts) or "defaults"


def fmt_num(v):
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def yaml_value(v):
    # JSON scalars are YAML flow scalars; paths are quoted so any character is safe.
    return json.dumps(v)


class Data:
    """The data files and statistics folders the data-driven methods read, made once on first use
    (runs execute on several threads). Without a work folder (the check before running) it hands
    out placeholder paths."""

    def __init__(self, args, work=None):
        self.args, self.work, self.lock, self.made = args, work, threading.RLock(), {}

    def _once(self, key, path, make):
        if self.work is None:
            return str(path)
        with self.lock:
            if key not in self.made:
                path.parent.mkdir(parents=True, exist_ok=True)
                make(path)
                self.made[key] = path
        return str(self.made[key])

    def _weld(self, *words):
        out = subprocess.run([self.args.weld, *words], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(tail(out.stderr or out.stdout))

    def task_file(self, task, split, seed, count):
        path = (self.work or Path("work")) / "data" / f"{task}-{split}-s{seed}-{count}.jsonl"
        return self._once(("task", path), path, lambda p: self._weld(
            "task-data", task, "--split", split, "--seed", str(seed), "--count", str(count), "-o", str(p)))

    def members_file(self, kind, members):
        """The merged tasks' test prompts ("test") or proxy set ("proxy"), task after task."""
        if self.work is None:
            return f"work/data/{kind}.jsonl"
        split, seed, count = {"test": ("held-out", 0, self.args.held_out),
                              "proxy": ("train", PROXY_SEED, PROXY_EXAMPLES)}[kind]
        path = (self.work or Path("work")) / "data" / f"{kind}-{'+'.join(members)}.jsonl"

        def make(p):
            p.write_text("".join(Path(self.task_file(t, split, seed, count)).read_text() for t in members))
        return self._once(("members", path), path, make)

    def optimizer(self, task):
        """The expert's AdamW second moments: the expert retrained with them saved (bench/quality/train
        --only), which must give the committed expert byte for byte."""
        folder = (self.work or Path("work")) / "optimizer"

        def make(p):
            out = subprocess.run([str(ROOT / "bench/quality/train"), "--only", task, "--base",
                                  str(self.args.models / "base"), "--out", str(folder), "--save-optimizer",
                                  "--no-build"], capture_output=True, text=True, env={**os.environ, "WELD": self.args.weld})
            if out.returncode != 0:
                raise RuntimeError(tail(out.stderr or out.stdout))
            retrained = (folder / task / "model.safetensors").read_bytes()
            if retrained != (self.args.models / task / "model.safetensors").read_bytes():
                raise RuntimeError(f"retraining {task} with --save-optimizer did not reproduce the committed expert")
        return self._once(("optimizer", task), folder / task / "optimizer", make)

    def stats(self, task, kind):
        if kind == "adam":
            return self.optimizer(task)
        path = (self.work or Path("work")) / "stats" / f"{task}.{kind}"
        data = self.task_file(task, "train", STATS_SEED, STATS_EXAMPLES)
        return self._once(("stats", path), path, lambda p: self._weld(
            "stats", str(self.args.models / task), "--data", data, "--kind", kind, "-o", str(p), "--threads",
            str(self.args.threads)))


def recipe_text(method, spec, params, members, models_dir, scopes, data=None, extra=()):
    data = data or Data(None)
    base = str(models_dir / "base")
    paths = [str(models_dir / m) for m in [*members, *extra]]
    names = [*members, *extra]
    model_params = {k: v for k, v in params.items() if k in scopes["per_model"]}
    global_params = {k: v for k, v in params.items() if k in scopes["global"]}
    unknown = set(params) - set(model_params) - set(global_params)
    if unknown:
        raise Fail(f"METHODS gives {method} parameter(s) {', '.join(sorted(unknown))}, which `weld methods` "
                   "does not list for it")
    if "data" in global_params:  # a data file of the merged tasks (per-model data is each expert's)
        global_params["data"] = data.members_file(global_params["data"], members)
    listed = []  # (path, takes per-model parameters, expert name)
    if spec.form == "experts":
        base_model, listed = None, [(p, True, n) for p, n in zip(paths, names)]
    elif spec.form == "base":
        base_model, listed = base, [(p, True, n) for p, n in zip(paths, names)]
    elif spec.form == "base_listed":
        base_model, listed = base, [(base, False, None)] + [(p, True, n) for p, n in zip(paths, names)]
    elif spec.form == "endpoints":
        if len(paths) != 2:
            raise Fail(f"{method}: the endpoints form takes two models")
        base_model, listed = paths[0], [(paths[1], True, names[1])]
    else:
        raise Fail(f"{method}: unknown recipe form {spec.form!r}")
    lines = [f"merge_method: {spec.method or method}"]
    if base_model:
        lines.append(f"base_model: {yaml_value(base_model)}")
    lines.append("models:")
    for path, takes, name in listed:
        lines.append(f"  - model: {yaml_value(path)}")
        if takes and model_params:
            mine = dict(model_params)
            if mine.get("stats") == "rcp":  # the first expert is protected (Fisher), the rest graft
                mine["stats"] = "fisher" if name == names[0] else "gradient"
            own = {k: (data.stats(name, v) if k == "stats" else
                       data.task_file(name, "train", STATS_SEED, STATS_EXAMPLES) if k == "data" else v)
                   for k, v in mine.items()}
            lines.append("    parameters: {" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in own.items()) + "}")
    if global_params:
        lines.append("parameters: {" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in global_params.items()) + "}")
    lines.append("dtype: float32")
    return "\n".join(lines) + "\n"


def sweep_points(spec):
    """The default parameters, then every other point of the sweep grid."""
    def complete(p):
        return {**p, **spec.derive(p)} if spec.derive else p
    points = [complete(dict(spec.params))]
    if spec.sweep:
        keys = list(spec.sweep)
        for values in itertools.product(*(spec.sweep[k] for k in keys)):
            p = complete({**spec.params, **dict(zip(keys, values))})
            if p not in points:
                points.append(p)
    return points


def read_safetensors(path):
    """{name: array of floats} of an F32 or BF16 safetensors file (stdlib only)."""
    data = Path(path).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = (8 + n + o for o in info["data_offsets"])
        if info["dtype"] == "F32":
            a = array.array("f")
            a.frombytes(data[start:end])
        elif info["dtype"] == "BF16":
            half = array.array("H")
            half.frombytes(data[start:end])
            a = array.array("f", struct.unpack(f"<{len(half)}f", array.array("I", (h << 16 for h in half)).tobytes()))
        else:
            raise Fail(f"{path}: tensor {name} has dtype {info['dtype']} (expected F32 or BF16)")
        if sys.byteorder != "little":
            a.byteswap()
        tensors[name] = a
    return tensors


def nearswap_t(models_dir, a, b):
    """Median |B - A| over the weights (every 7th element, plenty for a median)."""
    ta = read_safetensors(models_dir / a / "model.safetensors")
    tb = read_safetensors(models_dir / b / "model.safetensors")
    diffs = [abs(x - y) for name in ta for x, y in zip(ta[name][::7], tb[name][::7])]
    return float(f"{statistics.median(diffs):.3g}")


# ---- running --------------------------------------------------------------------------------

def method_runs(method, members, kind, quick):
    points = sweep_points(METHODS[method])
    return [Run(method, p, list(members), kind, is_default=(i == 0))
            for i, p in enumerate(points[:1] if quick else points)]


def scaling_methods(runs, expert_acc, quick):
    """SCALING_METHODS and the SCALING_OTHERS other methods with the best normalized mean at 8."""
    best = {m: run_norm(pairs[-1][0], expert_acc) for m, pairs in shown_runs(runs, quick).items()}
    others = sorted((m for m in best if m not in SCALING_METHODS and best[m] is not None),
                    key=lambda m: best[m], reverse=True)
    return SCALING_METHODS + others[:SCALING_OTHERS]


def plan_scaling(methods, quick):
    return [r for k in SCALING_COUNTS for m in methods for r in method_runs(m, TASKS[:k], "scale", quick)]


def plan_pool(quick):
    """Each POOL_METHODS method on the first POOL_TASKS experts, alone and with the others added."""
    runs = []
    for method in POOL_METHODS:
        for kind, extra in (("pool_clean", []), ("pool", TASKS[POOL_TASKS:])):
            for r in method_runs(method, TASKS[:POOL_TASKS], kind, quick):
                r.extra = list(extra)
                runs.append(r)
    return runs


def plan(args, quick):
    runs = []
    for method in METHODS:
        runs += method_runs(method, TASKS, "main", quick)
    runs += plan_pool(quick)
    for a, b in PAIRS:
        for method, spec in PAIR_REFERENCES.items():
            runs.append(Run(method, dict(spec.params), [a, b], "pair_ref"))
        for method, spec in PAIR_METHODS.items():
            p = dict(spec.params)
            if p.get("t") == "median":
                p["t"] = nearswap_t(args.models, a, b)
            runs.append(Run(method, p, [a, b], "pair"))
    return runs


def spec_of(run):
    table = {"main": METHODS, "scale": METHODS, "pool": METHODS, "pool_clean": METHODS, "pair": PAIR_METHODS,
             "pair_ref": PAIR_REFERENCES}[run.kind]
    return table[run.method]


def execute(args, runs, scopes, work, data, first=1):
    """Merges and scores runs, args.jobs at a time (each merge and eval on args.threads threads)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(lambda ir: execute_one(args, ir[1], ir[0], first + len(runs) - 1, scopes, work, data),
                      enumerate(runs, first)))


def execute_one(args, run, i, total, scopes, work, data):
    tag = run.method + {"main": "", "scale": f" [{len(run.members)} experts]",
                        "pool_clean": f" [{len(run.members)} targets]",
                        "pool": f" [{len(run.members)} targets + {len(run.extra)} irrelevant]"}.get(
        run.kind, f" [{'+'.join(run.members)}]")
    name = f"{i:03d}-{run.method}"
    recipe = work / f"{name}.yml"
    out = work / name
    start = time.monotonic()
    try:
        recipe.write_text(recipe_text(run.method, spec_of(run), run.params, run.members, args.models,
                                      scopes[spec_of(run).method or run.method], data, run.extra))
    except RuntimeError as e:  # making the data or statistics failed
        run.error = f"data: {e}"
        print(f"\n!!!! [{i}/{total}] {tag} ({run.label()}) FAILED: {run.error}\n", file=sys.stderr, flush=True)
        return
    merge = subprocess.run([args.weld, "merge", str(recipe), str(out), "--force", "--quiet",
                            "--threads", str(args.threads)], capture_output=True, text=True)
    merged = time.monotonic()
    try:
        if merge.returncode != 0:
            raise RuntimeError(tail(merge.stderr or merge.stdout))
        run.acc = evaluate(args, out)
        if run.kind in ("main", "scale", "pool", "pool_clean") and METHODS[run.method].sweep and not args.quick:
            run.val_acc = evaluate(args, out, VALIDATION_SEED)
    except RuntimeError as e:
        run.error = str(e)
    run.seconds = time.monotonic() - start
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    if run.error:
        print(f"\n!!!! [{i}/{total}] {tag} ({run.label()}) FAILED: {run.error}\n!!!! recipe: {recipe}"
              f"{'' if args.keep else ' (removed at the end: rerun with --keep DIR to keep it)'}\n",
              file=sys.stderr, flush=True)
        return
    mean = statistics.mean(run.acc[t] for t in run.members)
    print(f"[{i:3d}/{total}] {tag:<34} {run.label():<38} merge {merged - start:5.1f}s  "
          f"eval {run.seconds - (merged - start):4.1f}s  mean {mean:.3f}", flush=True)


def normalized(acc, expert_acc, tasks):
    """acc / own-task expert accuracy per task (None where the expert scores 0) and their mean."""
    per = {t: (acc[t] / expert_acc[t] if expert_acc[t] > 0 else None) for t in tasks}
    defined = [v for v in per.values() if v is not None]
    return per, (statistics.mean(defined) if defined else None)


# ---- report ---------------------------------------------------------------------------------

def pct(v):
    return "–" if v is None else f"{100 * v:.1f}"


def table_row(cells):
    return "| " + " | ".join(cells) + " |"


def main_row(name, params, acc, expert_acc, bold=False, error=None):
    if error:
        return table_row([name, params, f"**error:** {md_escape(error)}"] + [""] * (len(TASKS) + 1))
    _, norm = normalized(acc, expert_acc, TASKS)
    cells = [pct(acc[t]) for t in TASKS] + [pct(statistics.mean(acc.values())), pct(norm)]
    if bold:
        name = f"**{name}**"
    return table_row([name, params] + cells)


def md_escape(text):
    return text.replace("|", "\\|").replace("\n", " ")


def run_norm(run, expert_acc):
    """Normalized mean over the tasks of the experts merged."""
    return normalized(run.acc, expert_acc, run.members)[1] if run.acc else None


def val_mean(run):
    """Mean validation accuracy over the tasks of the experts merged: what chooses a sweep point."""
    return statistics.mean(run.val_acc[t] for t in run.members)


def chosen(rows):
    """The sweep point with the best mean validation accuracy (the first such on ties), or None."""
    ok = [r for r in rows if r.acc and r.val_acc]
    return max(ok, key=val_mean) if ok else None


def shown_runs(runs, quick, kind="main", members=None):
    """Per method merging these members (all experts by default): [(run, note)], the default and,
    if the sweep chose another, that one."""
    members = list(TASKS) if members is None else list(members)
    swept = {m for m, s in METHODS.items() if s.sweep}
    shown = {}
    for method in METHODS:
        rows = [r for r in runs if r.kind == kind and r.method == method and r.members == members]
        if not rows:
            continue
        default = rows[0]
        shown[method] = [(default, "" if method not in swept or quick else " (default)")]
        best = chosen(rows) if len(rows) > 1 else None
        if best is default:
            shown[method] = [(default, f" (default; chosen of {len(rows)})")]
        elif best:
            shown[method].append((best, f" (chosen of {len(rows)})"))
    return shown


def sort_key(norm):
    return -1 if norm is None else norm


def write_report(args, runs, refs, expert_acc, family, wall, chart_names, command):
    L = []
    main = [r for r in runs if r.kind == "main"]
    swept = {m for m, s in METHODS.items() if s.sweep}
    undefined = [t for t in TASKS if expert_acc[t] <= 0]
    commit = commit_text(args.commit)
    L += ["# Merge-quality benchmark: results", "",
          f"Produced by `{command}` on {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}"
          f" with weld {commit}, in {wall / 60:.1f} min: {len(runs)} merges, "
          f"{'default parameters only (--quick)' if args.quick else 'default parameters and sweeps'}.",
          f"Models: `{shown_path(args.models)}`. Accuracy: exact match on {args.held_out} held-out prompts per task "
          f"(`weld eval --tasks {','.join(TASKS)}`), in %.",
          "Normalized accuracy (as in the TIES paper): a model's accuracy on a task divided by that task's "
          "expert's accuracy on it; *norm. mean* is its mean over the tasks.",
          f"Every expert is merged with weight 1; λ is the recipe's `lambda`. The main table merges all "
          f"{len(TASKS)} experts, with `base_model` the base where the method uses one.", ""]
    if undefined:
        many = len(undefined) > 1
        names = ", ".join(undefined[:-1]) + " and " + undefined[-1] if many else undefined[0]
        L += [f"**Note:** the {names} expert{'s score' if many else ' scores'} 0 on {'their' if many else 'its'} "
              f"own task{'s' if many else ''}, so normalized accuracy leaves {'those tasks' if many else 'that task'} "
              "out.", ""]

    L += family_section(refs, family)
    L += orderings_section(runs, refs, expert_acc, args.quick)
    L += data_section(runs, refs, expert_acc, args.quick)
    L += [f"## All {len(TASKS)} experts merged", "",
          "Reference rows first (**bold**), then each method with its default parameters and, where a sweep "
          "chose other parameters, the chosen point: the one with the best mean accuracy on validation prompts "
          f"(held-out prompts drawn with task seed {VALIDATION_SEED}; the table's prompts are seed 0's); "
          "sorted by normalized mean.", "",
          table_row(["method", "params"] + TASKS + ["mean", "norm. mean"]),
          table_row(["---", "---"] + ["---:"] * (len(TASKS) + 2))]
    L.append(main_row("base", "", refs["base"], expert_acc, bold=True))
    for t in TASKS:
        L.append(main_row(f"{t} expert", "", refs[t], expert_acc, bold=True))
    L.append(main_row("multitask", "", refs["multitask"], expert_acc, bold=True))
    shown = [pair for pairs in shown_runs(runs, args.quick).values() for pair in pairs]
    shown.sort(key=lambda rs: sort_key(run_norm(rs[0], expert_acc)), reverse=True)
    for r, note in shown:
        L.append(main_row(r.method, r.label() + note, r.acc, expert_acc, error=r.error))
    L.append("")

    if not args.quick:
        L += ["## Sweeps", "", "Every point of each swept method, the default first; *val. mean* is the mean "
              "accuracy on the validation prompts, which chooses the point.", "",
              table_row(["method", "params"] + TASKS + ["mean", "norm. mean", "val. mean"]),
              table_row(["---", "---"] + ["---:"] * (len(TASKS) + 3))]
        for method in METHODS:
            for r in (r for r in main if r.method == method and method in swept):
                row = main_row(r.method, r.label() + (" (default)" if r.is_default else ""), r.acc,
                               expert_acc, error=r.error)
                val = pct(statistics.mean(r.val_acc.values())) if r.val_acc else "–"
                L.append(row + f" {val} |")
        L.append("")

    L += scaling_section(runs, refs, expert_acc, args.quick, chart_names[1])
    L += ["## Two-model methods, on pairs of experts", "",
          "These methods take exactly two models (or a base and one other), so they merge pairs of experts: "
          "`slerp`, `nearswap` and `arcee_fusion` with `base_model` expert A and `models` expert B; `nuslerp` "
          "on the two task vectors (the base listed as origin, weights 1 1, so t = 0.5). Reference rows "
          "(**bold**): the two experts, the multitask model, `linear` (their mean) and `task_arithmetic` "
          "(λ = 1: both task vectors added whole). Columns: accuracy on the pair's two tasks, their mean, "
          "and the normalized mean over the two tasks.", "",
          table_row(["pair", "method", "params", "task A", "task B", "mean", "norm. mean"]),
          table_row(["---", "---", "---", "---:", "---:", "---:", "---:"])]
    for a, b in PAIRS:
        pair = f"{a} + {b}"

        def pair_row(name, params, acc, error=None, bold=False):
            if error:
                return table_row([pair, name, params, f"**error:** {md_escape(error)}", "", "", ""])
            _, norm = normalized(acc, expert_acc, [a, b])
            return table_row([pair, f"**{name}**" if bold else name, params, f"{a} {pct(acc[a])}",
                              f"{b} {pct(acc[b])}", pct((acc[a] + acc[b]) / 2), pct(norm)])
        for name in (a, b):
            L.append(pair_row(f"{name} expert", "", refs[name], bold=True))
        L.append(pair_row("multitask", "", refs["multitask"], bold=True))
        for r in runs:
            if r.kind in ("pair", "pair_ref") and r.members == [a, b]:
                L.append(pair_row(r.method, r.label(), r.acc, r.error, bold=(r.kind == "pair_ref")))
    L.append("")

    L += ["## Methods not run", ""]
    L += [f"- `{m}`: {why}." for m, why in NOT_APPLICABLE.items()]
    failed = [r for r in runs if r.error]
    if failed:
        L += ["", "## Failed merges", ""]
        L += [f"- `{r.method}` ({r.label()}{', ' + '+'.join(r.members) if r.kind != 'main' else ''}): "
              f"{md_escape(r.error)}" for r in failed]
    L += ["", "## Chart", "",
          f"Normalized mean accuracy of each method merging all {len(TASKS)} experts at its chosen setting, "
          "between the base and the multitask model.", "", f"![]({chart_names[0]})", ""]
    # The sections other scripts write (bench/quality/search, protect, dam, align) stay from the file before.
    old = args.out.read_text() if args.out.exists() else ""
    kept = ""
    for start, end in [("<!-- recipe search: bench/quality/search -->", "<!-- end of recipe search -->"),
                       ("<!-- protection: bench/quality/protect -->", "<!-- end of protection -->"),
                       ("<!-- backdoor: bench/quality/dam -->", "<!-- end of backdoor -->"),
                       ("<!-- alignment: bench/quality/align -->", "<!-- end of alignment -->")]:
        if start in old and end in old:
            kept += "\n" + old[old.index(start):old.index(end) + len(end)] + "\n"
    args.out.write_text("\n".join(L) + kept)


def family_section(refs, family):
    L = ["## The family", "",
         "Each model's accuracy on every task (test prompts) and, for the experts, the length of its task "
         "vector τ = θ_expert − θ_base relative to the base's weights (`bench/quality/task_vectors.py`).", "",
         table_row(["model"] + TASKS + ["mean", "‖τ‖ / ‖θ_base‖"]),
         table_row(["---"] + ["---:"] * (len(TASKS) + 2))]
    for name in ["base", *TASKS, "multitask"]:
        acc = refs[name]
        tau = family["tau_ratio"].get(name)
        L.append(table_row([name] + [pct(acc[t]) for t in TASKS] + [pct(statistics.mean(acc[t] for t in TASKS)),
                                                                      "" if tau is None else f"{100 * tau:.1f}%"]))
    gaps = {t: refs[t][t] - refs["base"][t] for t in TASKS}
    L += ["", f"Experts on their own task: {pct(min(refs[t][t] for t in TASKS))} to "
          f"{pct(max(refs[t][t] for t in TASKS))}; the base is {pct(min(gaps.values()))} to "
          f"{pct(max(gaps.values()))} points below each expert on that expert's task.", "",
          "Pairwise cosines between task vectors, then sign conflicts: of the weights both experts changed, the "
          "fraction changed in opposite directions (in parentheses: among the weights in both experts' top "
          f"{task_vectors.TOP_FRACTION:.0%} by |τ|).", "", task_vectors.markdown(family, TASKS), ""]
    return L


def chosen_run(runs, method, members, quick, kind):
    """The run of method merging members at its chosen setting (the default when not swept)."""
    pairs = shown_runs(runs, quick, kind, members).get(method)
    return pairs[-1][0] if pairs else None


def scaling_table(runs, expert_acc, quick):
    """{method: {k: run at its chosen setting}} for every method merged at every k."""
    table = {}
    for k in SCALING_COUNTS + [len(TASKS)]:
        kind = "main" if k == len(TASKS) else "scale"
        for method in METHODS:
            r = chosen_run(runs, method, TASKS[:k], quick, kind)
            if r is not None:
                table.setdefault(method, {})[k] = r
    return {m: ks for m, ks in table.items() if len(ks) == len(SCALING_COUNTS) + 1}


def verdict(holds):
    return "**holds**" if holds else "**does not hold**"


def orderings_section(runs, refs, expert_acc, quick):
    """The literature's orderings and this issue's targets, each checked against the numbers."""
    norm = {m: run_norm(chosen_run(runs, m, TASKS, quick, "main"), expert_acc) for m in METHODS}
    norm = {m: v for m, v in norm.items() if v is not None}
    if not {"ties", "task_arithmetic", "linear"} <= set(norm):
        return []
    best = max((m for m in norm if m not in DATA_METHODS), key=norm.get)
    L = ["## What the numbers say", "",
         f"At {len(TASKS)} experts, each method at its chosen setting (normalized mean, test prompts):", "",
         f"- best data-free method: `{best}` {pct(norm[best])} (target ≥ 80: "
         f"{'met' if norm[best] >= 0.8 else 'not met'}); task arithmetic {pct(norm['task_arithmetic'])} "
         f"(target ≥ 60: {'met' if norm['task_arithmetic'] >= 0.6 else 'not met'}).",
         f"- TIES ≥ task arithmetic ≥ averaging: ties {pct(norm['ties'])}, task_arithmetic "
         f"{pct(norm['task_arithmetic'])}, linear {pct(norm['linear'])}: "
         f"{verdict(norm['ties'] >= norm['task_arithmetic'] >= norm['linear'])}."]
    base = base_at(refs, expert_acc, len(TASKS))
    above = sorted((m for m in norm if norm[m] > base), key=norm.get, reverse=True)
    L.append(f"- above the base ({pct(base)}, the merge that changes nothing): {len(above)} of {len(norm)} methods"
             f"{': ' + ', '.join(f'`{m}` {pct(norm[m])}' for m in above) if above else ''}.")
    if not quick:
        for dare, plain, same_lambda in (("dare_ties", "ties", False), ("dare_linear", "task_arithmetic", True)):
            ref = norm[plain]
            for density in (0.1, 0.3):
                rows = [r for r in runs if r.kind == "main" and r.method == dare and r.params.get("density") == density]
                if same_lambda:  # dare_linear is not swept over λ: compare with TA at its λ
                    lam = rows[0].params.get("lambda") if rows else None
                    tas = [r for r in runs if r.kind == "main" and r.method == plain and r.params.get("lambda") == lam]
                    ref = run_norm(tas[0], expert_acc) if tas else None
                r = chosen(rows)
                if r is None or ref is None:
                    continue
                d = run_norm(r, expert_acc)
                L.append(f"- DARE within a few (≤ 3) points of the method it sparsifies: `{dare}` density {density:g} "
                         f"({r.label()}) {pct(d)} vs `{plain}`{' λ=' + fmt_num(lam) if same_lambda else ''} {pct(ref)} "
                         f"({100 * (d - ref):+.1f}): {verdict(abs(d - ref) <= 0.03)}.")
    table = scaling_table(runs, expert_acc, quick)
    falling = {m: [run_norm(ks[k], expert_acc) for k in sorted(ks)] for m, ks in table.items()}
    down = [m for m, v in falling.items() if all(a >= b for a, b in zip(v, v[1:]))]
    if falling:
        L.append(f"- normalized accuracy falling as experts are added (every step of 2 → 4 → 6 → 8 no higher than "
                 f"the one before): {len(down)} of {len(falling)} methods ({', '.join(f'`{m}`' for m in down) or 'none'}); "
                 "the scaling table below has every value.")
    return L + [""]


def pool_rows(runs, quick, kind, method):
    rows = [r for r in runs if r.kind == kind and r.method == method]
    return (chosen(rows) if not quick and len(rows) > 1 else None) or (rows[0] if rows else None)


def data_section(runs, refs, expert_acc, quick):
    """Issue 12's claims for the data-driven methods, each checked against the numbers."""
    def norm_of(method, pick=None):
        rows = [r for r in runs if r.kind == "main" and r.method == method and (pick is None or pick(r))]
        r = (chosen(rows) if not quick and len(rows) > 1 else None) or (rows[0] if rows else None)
        return (r, run_norm(r, expert_acc)) if r and r.acc else (r, None)
    ta, n_ta = norm_of("task_arithmetic")
    _, n_lin = norm_of("linear")
    L = ["## Data-driven merges", "",
         "Statistics and data: each expert's Fisher and Gram matrices (`weld stats`) on "
         f"{STATS_EXAMPLES} training prompts of its own task; for OTA and FFG, each expert's AdamW second "
         "moments (the expert retrained with `--save-optimizer`, byte for byte the committed one); AdaMerging "
         "adapts on the test prompts without "
         f"their answers; FW-Merging's proxy set is {PROXY_EXAMPLES} labeled training prompts of each merged task. "
         "Settings chosen on validation prompts, as for every method.", ""]
    if n_ta is None:
        return L
    for label, pick in (("layer-wise", lambda r: r.params.get("granularity", "layer") == "layer"),
                        ("task-wise", lambda r: r.params.get("granularity") == "task")):
        r, n = norm_of("adamerging", pick)
        if n is None:
            continue
        L.append(f"- AdaMerging ({label}, {r.label()}) ≥ task arithmetic + 5 points: {pct(n)} vs "
                 f"{pct(n_ta)} ({100 * (n - n_ta):+.1f}): {verdict(n >= n_ta + 0.05)}"
                 f"{'' if label == 'layer-wise' else ' (the target is for layer-wise)'}.")
    for method in ("regmean", "regmean_pp", "fisher", "ota", "ffg"):
        r, n = norm_of(method)
        if n is not None and n_lin is not None:
            L.append(f"- {method} ({r.label()}) ≥ plain averaging (linear): {pct(n)} vs {pct(n_lin)}: "
                     f"{verdict(n >= n_lin)}.")
    # The methods without a target in the issue, each against the method it builds on.
    for method, reference in (("expert_merging", "task_arithmetic"), ("concrete", "task_arithmetic"),
                              ("localize_stitch_learned", "localize_stitch"), ("rcp", "task_arithmetic"),
                              ("twin", "ties")):
        (r, n), (ref, n_ref) = norm_of(method), norm_of(reference)
        if n is not None and n_ref is not None:
            L.append(f"- {method} ({r.label()}): {pct(n)}; {reference} ({ref.label()}) {pct(n_ref)} "
                     f"({100 * (n - n_ref):+.1f}).")
    targets = TASKS[:POOL_TASKS]
    L += ["", f"FW-Merging with irrelevant models in the pool: the first {POOL_TASKS} experts "
          f"({', '.join(targets)}) are the targets; the other {len(TASKS) - POOL_TASKS} join the pool as "
          "irrelevant models. Normalized mean over the targets (test prompts), each at its setting chosen on "
          "validation.", "",
          table_row(["method", "targets alone", "settings", f"+ {len(TASKS) - POOL_TASKS} irrelevant", "settings",
                     "change"]),
          table_row(["---", "---:", "---", "---:", "---", "---:"])]
    change = {}
    for method in POOL_METHODS:
        clean, noisy = pool_rows(runs, quick, "pool_clean", method), pool_rows(runs, quick, "pool", method)
        if not (clean and noisy and clean.acc and noisy.acc):
            continue
        a, b = run_norm(clean, expert_acc), run_norm(noisy, expert_acc)
        change[method] = b - a
        L.append(table_row([method, pct(a), clean.label(), pct(b), noisy.label(), f"{100 * (b - a):+.1f}"]))
    if "fw_merging" in change and "task_arithmetic" in change:
        fw, ta_change = change["fw_merging"], change["task_arithmetic"]
        L += ["", f"- FW-Merging loses ≤ 2 points with the irrelevant models ({100 * fw:+.1f}) while task "
              f"arithmetic loses more ({100 * ta_change:+.1f}): {verdict(fw >= -0.02 and ta_change < fw)}."]
    return L + [""]


def base_at(refs, expert_acc, k):
    """The base's normalized mean over the first k tasks: what a merge that changes nothing scores."""
    return normalized(refs["base"], expert_acc, TASKS[:k])[1]


def scaling_section(runs, refs, expert_acc, quick, chart_name):
    table = scaling_table(runs, expert_acc, quick)
    if not table:
        return []
    counts = SCALING_COUNTS + [len(TASKS)]
    L = ["## Scaling: more experts merged", "",
         f"The first k experts of {', '.join(TASKS)} merged, for each k; each method at the setting its sweep "
         "chose on validation prompts for that k. Normalized mean over the k merged tasks (test prompts).", "",
         table_row(["method"] + [f"{k} experts" for k in counts] + ["settings chosen"]),
         table_row(["---"] + ["---:"] * len(counts) + ["---"]),
         table_row(["**base** (reference)"] + [pct(base_at(refs, expert_acc, k)) for k in counts] + [""])]
    for method, ks in sorted(table.items(), key=lambda kv: -sort_key(run_norm(kv[1][len(TASKS)], expert_acc))):
        L.append(table_row([method] + [pct(run_norm(ks[k], expert_acc)) for k in counts] +
                           ["; ".join(ks[k].label() for k in counts)]))
    return L + ["", f"![]({chart_name})", ""]


def write_scaling_chart(path, runs, refs, expert_acc, quick):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = scaling_table(runs, expert_acc, quick)
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=100)
    for method, ks in sorted(table.items()):
        counts = sorted(ks)
        ax.plot(counts, [100 * (run_norm(ks[k], expert_acc) or 0) for k in counts], marker="o", label=method)
    counts = SCALING_COUNTS + [len(TASKS)]
    ax.plot(counts, [100 * (base_at(refs, expert_acc, k) or 0) for k in counts], color="black", linestyle="--",
            label="base (reference)")
    ax.set_xticks(counts)
    ax.set_xlabel("experts merged (the first k of the family's fixed order)")
    ax.set_ylabel("normalized mean accuracy, % (chosen setting)")
    ax.set_title("weld merge methods: normalized accuracy vs experts merged")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_json(path, args, runs, refs, expert_acc, family, wall, command):
    """Every number of results.md, for other tools: the family, then one row per merge."""
    chosen_ids = set()
    for kind in ("main", "scale"):
        for k in ([len(TASKS)] if kind == "main" else SCALING_COUNTS):
            for pairs in shown_runs(runs, args.quick, kind, TASKS[:k]).values():
                chosen_ids.add(id(pairs[-1][0]))
    rows = []
    for r in runs:
        row = {"table": r.kind, "method": r.method, "params": r.params, "experts": r.members,
               "accuracy": r.acc, "normalized_mean": run_norm(r, expert_acc) if r.acc else None,
               "mean": statistics.mean(r.acc[t] for t in r.members) if r.acc else None,
               "default": r.is_default}
        if r.extra:
            row["irrelevant_experts"] = r.extra
        if r.val_acc:
            row["validation_accuracy"] = r.val_acc
            row["validation_mean"] = val_mean(r)
        if r.kind in ("main", "scale"):
            row["chosen"] = id(r) in chosen_ids
        if r.error:
            row["error"] = r.error
        rows.append(row)
    models = {name: {"accuracy": refs[name], "tau_ratio": family["tau_ratio"].get(name)}
              for name in ["base", *TASKS, "multitask"]}
    doc = {"command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "weld_commit": args.commit[0], "uncommitted_changes": args.commit[1],
           "minutes": round(wall / 60, 2), "tasks": TASKS,
           "held_out": args.held_out, "validation_seed": VALIDATION_SEED, "test_seed": 0,
           "models": models, "expert_accuracy": expert_acc,
           "family": {k: family[k] for k in ("cosine", "sign_conflict", "sign_conflict_top", "sign_conflict_all")},
           "rows": rows}
    path.write_text(json.dumps(doc, indent=1) + "\n")


def write_chart(path, runs, refs, expert_acc, quick):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = {}
    for method, pairs in shown_runs(runs, quick).items():
        r = pairs[-1][0]  # the chosen sweep point where there is one, else the default
        n = run_norm(r, expert_acc)
        if n is not None:
            best[method] = (n, r.label())
    items = sorted(best.items(), key=lambda kv: kv[1][0])
    fig, ax = plt.subplots(figsize=(10, 8), dpi=100)
    names = [f"{m}  ({lbl})" if lbl != "defaults" else m for m, (_, lbl) in items]
    values = [100 * n for _, (n, _) in items]
    bars = ax.barh(range(len(items)), values, color="#4c72b0")
    ax.set_yticks(range(len(items)), names, fontsize=8)
    for bar, v in zip(bars, values):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:.1f}", va="center", fontsize=7)
    for key, color in (("base", "#c44e52"), ("multitask", "#55a868")):
        n = normalized(refs[key], expert_acc, TASKS)[1]
        if n is not None:
            ax.axvline(100 * n, color=color, linestyle="--", label=f"{key} ({100 * n:.1f})")
    ax.set_xlim(0, 1.1 * max(values + [100 * (normalized(refs[k], expert_acc, TASKS)[1] or 0)
                                       for k in ("base", "multitask")] + [1]))
    ax.set_xlabel("normalized mean accuracy, % of each task's expert (chosen setting per method)")
    ax.set_title(f"weld merge methods: {len(TASKS)} experts merged")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def shown_path(path):
    """path relative to the repository when inside it, so results.md does not name this machine."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def git_commit():
    """(short commit, whether tracked files differ from it), or (None, None) outside a checkout."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return commit, bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        return None, None


def commit_text(commit):
    hash_, dirty = commit
    if hash_ is None:
        return "(commit unknown)"
    return f"`{hash_}`" + (" (with uncommitted changes)" if dirty else "")


def parse_args():
    p = argparse.ArgumentParser(prog="bench/quality/run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "bench/quality/models",
                   help="folder with base, the eight experts and multitask (default: bench/quality/models)")
    p.add_argument("--out", type=Path, default=ROOT / "bench/quality/results.md",
                   help="results file (default: bench/quality/results.md); the chart goes beside it as .png")
    p.add_argument("--held-out", type=int, default=200, help="held-out prompts per task (default 200)")
    p.add_argument("--quick", action="store_true", help="default parameters only, no sweeps")
    p.add_argument("--keep", type=Path, help="keep recipes and merged models in this folder")
    p.add_argument("--jobs", type=int, default=2, help="merges and evals run at a time (default 2)")
    p.add_argument("--threads", type=int, default=1,
                   help="threads for weld merge and eval (default 1: on a busy 2-core machine libtorch with 2 threads "
                        "was 5x slower)")
    p.add_argument("--no-build", action="store_true", help="use build/weld as it is (handled by bench/quality/run)")
    p.add_argument("--weld", default=str(ROOT / "build/weld"), help=argparse.SUPPRESS)
    return p.parse_args()


def main():
    args = parse_args()
    args.commit = git_commit()  # before anything is written: the code this run used
    command = "bench/quality/run" + "".join(" " + shlex.quote(a) for a in sys.argv[1:])
    args.models = args.models.resolve()
    args.out = args.out.resolve()
    start = time.monotonic()
    try:
        if not Path(args.weld).exists():
            raise Fail(f"{args.weld} not found: build weld first (bench/quality/run without --no-build)")
        missing = [m for m in ["base", *TASKS, "multitask"] if not (args.models / m / "config.json").exists()]
        if missing:
            raise Fail(f"{args.models} lacks {', '.join(missing)}: train the models with bench/quality/train "
                       "or pass --models DIR")
        scopes = weld_methods(args.weld)
        check_coverage(scopes)
        runs = plan(args, args.quick)
        for r in runs:  # check every recipe against weld's parameter list before spending time
            recipe_text(r.method, spec_of(r), r.params, r.members, args.models, scopes[spec_of(r).method or r.method],
                        extra=r.extra)
    except Fail as e:
        die(str(e))

    if args.keep:
        work = args.keep.resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="weld-quality-"))
    try:
        print(f"bench/quality: {len(runs)} merges, held-out {args.held_out}, work in {work}", flush=True)
        refs = {}
        for name in ["base", *TASKS, "multitask"]:
            t0 = time.monotonic()
            try:
                refs[name] = evaluate(args, args.models / name)
            except RuntimeError as e:
                die(f"evaluating {args.models / name}: {e}")
            print(f"[ref] {name:<30} eval {time.monotonic() - t0:4.1f}s  mean "
                  f"{statistics.mean(refs[name].values()):.3f}", flush=True)
        expert_acc = {t: refs[t][t] for t in TASKS}
        family = task_vectors.measure(args.models, TASKS)
        data = Data(args, work)
        execute(args, runs, scopes, work, data)
        scaling = plan_scaling(scaling_methods(runs, expert_acc, args.quick), args.quick)
        execute(args, scaling, scopes, work, data, first=len(runs) + 1)
        runs += scaling
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    wall = time.monotonic() - start
    chart = args.out.with_suffix(".png")
    scaling_chart = args.out.with_name(args.out.stem + "-scaling.png")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_report(args, runs, refs, expert_acc, family, wall, (chart.name, scaling_chart.name), command)
    write_json(args.out.with_suffix(".json"), args, runs, refs, expert_acc, family, wall, command)
    write_chart(chart, runs, refs, expert_acc, args.quick)
    write_scaling_chart(scaling_chart, runs, refs, expert_acc, args.quick)
    failed = [r for r in runs if r.error]
    print(f"bench/quality: wrote {args.out}, {args.out.with_suffix('.json').name}, {chart.name} and "
          f"{scaling_chart.name} in {wall / 60:.1f} min ({len(runs)} merges)")
    if failed:
        print("\n" + "!" * 78 + f"\n!!!! {len(failed)} of {len(runs)} merges FAILED (listed in {args.out}):",
              file=sys.stderr)
        for r in failed:
            print(f"!!!!   {r.method} ({r.label()}): {r.error}", file=sys.stderr)
        print("!" * 78, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
